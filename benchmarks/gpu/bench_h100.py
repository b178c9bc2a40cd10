"""EMO-LLaMA at 7B scale on one GPU: training, MFU, read-outs, video, and transformers' LLaVA side by side.

The model is the ``emo-llama-7b`` preset with random weights: Vicuna-7B-shaped
LLaMA in bf16 with LoRA (r=64 on q_proj/v_proj), EVA-ViT-g/14 (or CLIP
ViT-L/14 with ``--encoder vit-l``) and FaceXFormer (both frozen), Face Info
Mining over LLaMA-VID tokens (trained), SDPA attention. A training step is
forward + backward + AdamW under bf16 autocast (what ``train.precision:
bf16-mixed`` does), timed with gradient checkpointing off and on.

FLOPs (model FLOPs, for MFU; recomputation under checkpointing not counted):

* frozen forward-only parts (encoder, face prior): their forward, counted
  by ``torch.utils.flop_counter`` (2·params·tokens for linear layers, exact
  for convolutions and attention);
* trained parts (the fusion): 3× their counted forward (= 6·params·tokens);
* LLM: 4·P_base·T for the frozen base weights (2 forward + 2 for the input
  gradients the backward pass still needs; no weight gradients),
  6·P_lora·T for the adapters, plus attention 12·L·D·S² per sequence
  (forward 4·L·D·S², backward twice that; full S², not halved for the
  causal mask). ``T`` counts real tokens (padding excluded), ``P_base``
  excludes the input embedding table (a lookup) and ``lm_head``, which
  runs only over the answer window (``B × window`` positions: 4·P_head per
  position, as the loss computes it).

A full step under ``FlopCounterMode`` is reported next to it as a cross-check
(it counts what actually runs, padding included).

Then, in the same run: the read-outs (``readouts.py``: ``score`` vs
``generate`` vs naive at batch 32 and 128, with peak memory), video steps
at 4, 8 and 16 frames, and the LLaVA-1.5-7B-shaped step of emofer against
transformers' ``LlavaForConditionalGeneration`` with the same weights
(``llava_compare.py``).

Run on the GPU machine: ``bash benchmarks/gpu/run.sh`` (``--quick``: about
3 minutes after start-up). Dry run on CPU at tiny dims:
``python benchmarks/gpu/bench_h100.py --cpu-smoke``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import llava_compare  # noqa: E402
import readouts  # noqa: E402
from _common import Record, preset, report  # noqa: E402

TARGET_MFU = 0.45

PEAK_BF16_TFLOPS = (
    # (substring of torch.cuda.get_device_name, dense bf16 TFLOP/s), first match wins
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
)
"""Dense bf16 peak of common cards (no sparsity), from NVIDIA's data sheets."""


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def experiment(encoder: str, cpu_smoke: bool) -> dict[str, Any]:
    """The config: ``emo-llama-7b`` (tokenizers: emofer's tiny offline ones), or tiny parts for the CPU dry run."""
    from emofer.testing import tiny_bert_tokenizer_dir, tiny_llm_dir

    bert_tokenizer = str(tiny_bert_tokenizer_dir())  # LLaMA-VID's Q-Former reads the question as BERT text
    if not cpu_smoke:
        model: dict[str, Any] = {
            "llm": {"name": "causal-lm", "tokenizer": str(tiny_llm_dir())},
            "fusion": {"visual": {"tokenizer": bert_tokenizer}},
        }
        if encoder == "vit-l":
            model["encoder"] = {"name": "openclip-vit-l-14"}
        return {"extends": "emo-llama-7b", "model": model}
    small = {"num_queries": 8, "dim": 32, "depth": 1, "num_heads": 4}
    return {
        "extends": "emo-llama-7b",
        "model": {
            "encoder": {"name": "vit-tiny"},
            "face_prior": {"name": "facexformer-tiny", "image_size": 64},
            "fusion": {"name": "face-info-mining",
                       "visual": {"name": "llama-vid", "content": "mean", "tokenizer": bert_tokenizer,
                                  "qformer_queries": 8, "dim": 32, "depth": 1, "num_heads": 4},
                       "k_g": 2, **small},
            "llm": {"name": "causal-lm", "path": "tiny-llama", "lora": {"r": 8, "alpha": 16}},
        },
    }


def build(cfg: dict[str, Any], device: torch.device) -> Any:
    """Builds the model directly on ``device`` (random init there, no host copy of 7B weights)."""
    import emofer

    config = emofer.load_config(cfg)
    try:
        with torch.device(device):
            model = emofer.build_model(config)
    except Exception as err:  # a part that cannot be built under a device context
        print(f"building on {device} failed ({err!r}); building on the host and moving")
        model = emofer.build_model(config)
    return model.to(device)


def set_checkpointing(lm: Any, on: bool) -> None:
    """Turns the LLM's activation checkpointing on or off (either transformers API)."""
    if on:
        enable = getattr(lm, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        disable = getattr(lm, "activation_checkpointing_disable", None) or lm.gradient_checkpointing_disable
        disable()
    state = any(getattr(m, "gradient_checkpointing", False) for m in lm.modules())
    if state != on:
        raise RuntimeError(f"could not turn activation checkpointing {'on' if on else 'off'}")


def make_batch(model: Any, size: int, device: torch.device, seed: int = 0, frames: int = 1) -> dict[str, Any]:
    """Random pixels (``frames`` per sample) at the encoder's and prior's sizes, FERID questions, class names."""
    from emofer.data.instructions import category_question

    g = torch.Generator().manual_seed(seed)
    classes = model.classes
    px, fpx = model.encoder.image_size, model.face_prior.image_size
    return {
        "ids": [str(i) for i in range(size)],
        "pixels": torch.randn(size, frames, 3, px, px, generator=g).to(device),
        "face_pixels": torch.randn(size, frames, 3, fpx, fpx, generator=g).to(device),
        "questions": [category_question(classes)] * size,
        "answers": [classes[i % len(classes)] for i in range(size)],
        "classes": classes,
        "targets": (torch.arange(size) % len(classes)).to(device),
    }


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class Runner:
    """Holds the model, device and autocast; runs steps and counts FLOPs."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model, self.device = model, device
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(self.trainable, lr=2e-4, **fused)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def sync(self) -> None:
        Runner.sync_device(self.device)

    @staticmethod
    def sync_device(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step(self, batch: dict[str, Any]) -> float:
        with self.autocast():
            loss = self.model(batch)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def timed(self, fn: Callable[[], Any], steps: int, warmup: int) -> float:
        """Mean seconds per call over ``steps`` calls after ``warmup`` calls."""
        for _ in range(warmup):
            fn()
        self.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / steps

    def model_flops(self, batch: dict[str, Any]) -> dict[str, float]:
        """Model FLOPs of one training step on ``batch`` by the rules in the module docstring."""
        model = self.model
        llm = model.llm
        with torch.no_grad(), self.autocast():
            px, fpx = batch["pixels"].flatten(0, 1), batch["face_pixels"].flatten(0, 1)
            encoder = count_flops(lambda: model.encoder(px.to(next(model.encoder.parameters()).dtype)))
            prior = count_flops(lambda: model.face_prior(fpx.to(next(model.face_prior.parameters()).dtype)))
            features = model.extract_features(batch["pixels"], batch["face_pixels"])
            fusion = count_flops(lambda: model.encode(batch, features))
            tokens, questions = model.encode(batch, features)
        packed = llm.pack(tokens.shape[1], questions, list(batch["answers"]))
        lengths = packed.attention_mask.sum(-1).double()
        cfg = llm.model.config.get_text_config()
        layers, width = int(cfg.num_hidden_layers), int(cfg.hidden_size)
        embed = llm.model.get_input_embeddings().weight.numel()
        head = llm.model.get_output_embeddings().weight.numel()
        lora = sum(p.numel() for n, p in llm.named_parameters() if "lora_" in n)
        base = sum(p.numel() for n, p in llm.named_parameters() if "lora_" not in n) - embed - head
        real_tokens = float(lengths.sum())
        answer_cols = (packed.labels[:, 1:] != -100).any(0).nonzero().squeeze(1)
        window = float(len(packed.labels) * (int(answer_cols[-1]) - int(answer_cols[0]) + 1))
        attention = 12.0 * layers * width * float((lengths**2).sum())
        llm_flops = (4.0 * base + 6.0 * lora) * real_tokens + 4.0 * head * window + attention
        return {
            "encoder_fwd": float(encoder),
            "face_prior_fwd": float(prior),
            "fusion_fwd_bwd": 3.0 * fusion,
            "llm": llm_flops,
            "llm_attention": attention,
            "total": encoder + prior + 3.0 * fusion + llm_flops,
            "llm_tokens": real_tokens,
            "lm_head_positions": window,
            "llm_seq_len_max": float(lengths.max()),
            "visual_tokens_per_sample": float(tokens.shape[1]),
            "llm_base_params": float(base),
            "lm_head_params": float(head),
            "llm_lora_params": float(lora),
            "llm_layers": float(layers),
            "llm_width": float(width),
        }


def measure_training(runner: Runner, args: argparse.Namespace, peak: float | None) -> tuple[list[Record], dict]:
    model, device = runner.model, runner.device
    batch = make_batch(model, args.batch, device)
    flops = runner.model_flops(batch)
    detail: dict[str, Any] = {"flops": flops, "batch": args.batch}
    records = [Record("model TFLOP per train step", flops["total"] / 1e12, "TFLOP", detail=flops)]
    for on in args.checkpointing:
        set_checkpointing(runner.model.llm.model, on)
        tag = f"LoRA step, checkpointing {'on' if on else 'off'}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            step = runner.timed(lambda: runner.train_step(batch), args.steps, args.warmup)
        except torch.cuda.OutOfMemoryError as err:
            records.append(Record(f"{tag}: out of memory at batch {args.batch}", 0.0, "samples/s",
                                  detail={"error": str(err)[:300]}))
            runner.opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        records.append(Record(f"{tag}: samples/s", args.batch / step, "samples/s"))
        records.append(Record(f"{tag}: LLM tokens/s", flops["llm_tokens"] / step, "tokens/s"))
        records.append(Record(f"{tag}: step time", 1e3 * step, "ms"))
        achieved = flops["total"] / step / 1e12
        records.append(Record(f"{tag}: model TFLOP/s", achieved, "TFLOP/s"))
        if peak:
            mfu = achieved / peak
            records.append(Record(f"{tag}: MFU", 100 * mfu, "%", f">= {100 * TARGET_MFU:.0f}%",
                                  mfu >= TARGET_MFU, {"peak_tflops": peak}))
        if device.type == "cuda":
            records.append(Record(f"{tag}: peak memory", torch.cuda.max_memory_allocated() / 2**30, "GiB"))
        detail[tag] = {"step_s": step}
    if args.count_step:
        set_checkpointing(runner.model.llm.model, False)
        counted = count_flops(lambda: runner.train_step(batch))
        records.append(Record("counted TFLOP per train step (FlopCounterMode)", counted / 1e12, "TFLOP",
                              detail={"counted_over_model": counted / flops["total"]}))
    return records, detail


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny parts on the CPU: checks the logic, not speed")
    p.add_argument("--quick", action="store_true", help="fewer steps (with --cpu-smoke: the test's run)")
    p.add_argument("--json", type=Path, default=None, help="write the records to this JSON file")
    p.add_argument("--encoder", choices=("eva-g", "vit-l"), default="eva-g", help="EVA-ViT-g/14 or CLIP ViT-L/14")
    p.add_argument("--batch", type=int, default=None, help="training batch (images); default 32, smoke 2")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per setting")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    p.add_argument("--checkpointing", default="off,on", help="settings to run: off,on | off | on")
    p.add_argument("--score-batches", type=int, nargs="+", default=None, help="read-out batch sizes (32 128)")
    p.add_argument("--score-steps", type=int, default=None, help="timed calls per read-out and batch size")
    p.add_argument("--frames", type=int, nargs="*", default=None,
                   help="video frame counts (4 8 16; smoke 1 2; the flag alone skips video)")
    p.add_argument("--video-batch", type=int, default=None, help="clips per video step (default 8, smoke 2)")
    p.add_argument("--llava-rounds", type=int, default=None,
                   help="alternating rounds of the LLaVA-shaped comparison (default 10, quick 4; 0 skips it)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s (default: by card name)")
    p.add_argument("--no-count-step", dest="count_step", action="store_false",
                   help="skip the FlopCounterMode cross-check step")
    args = p.parse_args(argv)
    smoke, quick = args.cpu_smoke, args.quick
    args.checkpointing = [{"off": False, "on": True}[s] for s in args.checkpointing.split(",")]
    args.batch = args.batch or (2 if smoke else 32)
    args.steps = args.steps or (1 if smoke and quick else 2 if smoke or quick else 10)
    args.warmup = args.warmup or (1 if smoke or quick else 3)
    args.score_batches = args.score_batches or ([2, 4] if smoke else [32, 128])
    args.score_steps = args.score_steps or (1 if smoke or quick else 5)
    args.frames = ([1, 2] if smoke else [4, 8, 16]) if args.frames is None else args.frames
    args.video_batch = args.video_batch or (2 if smoke else 8)
    args.llava_rounds = (3 if smoke else 4 if quick else 10) if args.llava_rounds is None else args.llava_rounds
    return args


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """What a run measures: the model config as resolved now and every setting."""
    cfg = experiment(args.encoder, args.cpu_smoke)
    model = preset(cfg["extends"])
    for part, value in cfg["model"].items():
        model["model"][part] = {**model["model"][part], **value} if isinstance(value, dict) else value
    model["model"]["llm"].pop("tokenizer", None)  # a local path; the tokenizer is emofer's tiny one
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "peak_tflops")}
    shape = ts_sizes()["tiny"] if args.cpu_smoke else llava_compare.LLAVA_7B
    return {"model": model, "settings": settings, "llava_shape": shape, "llava_lora": llava_compare.LORA,
            "max_new_tokens": readouts.MAX_NEW_TOKENS}


def ts_sizes() -> dict[str, Any]:
    import bench_train_step

    return bench_train_step.SIZES


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    smoke = args.cpu_smoke
    if smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        raise SystemExit("no CUDA device; use --cpu-smoke for a dry run on the CPU")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    torch.manual_seed(0)
    cfg = run_config(args)
    clock = {}

    t0 = time.perf_counter()
    model = build(experiment(args.encoder, smoke), device)
    build_s = time.perf_counter() - t0
    params = {k: sum(p.numel() for p in part.parameters()) for k, part in model.parts().items()}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"built on {name} in {build_s:.1f}s; parameters {params}; trainable {trainable}", flush=True)
    runner = Runner(model, device)
    records = [Record("build time", build_s, "s", detail={"params": params, "trainable": trainable})]
    t0 = time.perf_counter()
    train_records, detail = measure_training(runner, args, peak)
    records += train_records
    clock["training_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    records += readouts.measure_readouts(runner, make_batch, args.score_batches, args.score_steps)
    clock["readouts_s"] = time.perf_counter() - t0
    if args.frames:
        t0 = time.perf_counter()
        set_checkpointing(runner.model.llm.model, False)
        records += readouts.measure_video(runner, make_batch, args.frames, args.video_batch,
                                          1 if smoke or args.quick else 3, 0 if smoke else 1)
        clock["video_s"] = time.perf_counter() - t0
    del runner, model
    readouts.release(device)  # the 7B EMO-LLaMA's memory back before the two 7B LLaVA-shaped models
    if args.llava_rounds:
        t0 = time.perf_counter()
        shape = cfg["llava_shape"]
        records += llava_compare.run(shape, device, torch.float32 if smoke else torch.bfloat16,
                                         args.llava_rounds, lambda: Runner.sync_device(device),
                                         1e-4 if smoke else 2e-2)
        clock["llava_s"] = time.perf_counter() - t0
    for r in records:
        if isinstance(r.value, float) and not math.isfinite(r.value):
            raise RuntimeError(f"{r.name} is not finite: {r.value}")
    report(f"EMO-LLaMA 7B-shaped on {name}" if not smoke else "EMO-LLaMA gpu benchmark (cpu smoke, tiny dims)",
           records, args.json, {"detail": detail, "peak_tflops": peak, "encoder": args.encoder,
                                "cpu_smoke": smoke, "params": params, "phase_seconds": clock}, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
