"""emofer's LLaVA-1.5-7B-shaped step against transformers' ``LlavaForConditionalGeneration``, same weights.

emofer: ``hf-clip`` (CLIP ViT-L/14 at 336 px, layer -2, 576 image tokens) +
``mlp2x-gelu`` + ``causal-lm`` (Vicuna-7B-shaped LLaMA with LoRA r=64 on
q_proj/v_proj, dropout 0 so the losses can be compared). LLaVA: the same
dims, peft's same adapters injected into its language model, every weight
(adapters included) copied from emofer's. Both in bf16, SDPA; a step is
forward + backward (projector and adapters train), timed alternately; LLaVA
uses the same loss work as emofer (LM head over the answer window, see
``bench_train_step.answer_window_loss``). The losses are checked equal
before timing. This is ``bench_train_step.py``'s comparison at 7B shape.
"""

from __future__ import annotations

import gc
from typing import Any

import bench_train_step as ts  # noqa: E402 (benchmarks/ is on sys.path, see bench_h100.py)
import torch
from _common import Record, alternate, ratio_record  # noqa: E402

LLAVA_7B: dict[str, Any] = {
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
               "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768},
    "llm": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
            "rms_norm_eps": 1e-5},
    "batch": 8,
}
"""LLaVA-1.5-7B's shape (CLIP ViT-L/14-336 + Vicuna-7B)."""
LORA = {"r": 64, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _to(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {k: (v.to(device, dtype) if torch.is_tensor(v) and v.is_floating_point() else
                v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def measure(shape: dict[str, Any], device: torch.device, dtype: torch.dtype, rounds: int, sync: Any,
            tolerance: float) -> list[Record]:
    """The paired step ratio (median, quartiles over rounds) and both step times; raises if the losses differ."""
    import emofer

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            ours = emofer.build_model(ts.emofer_config(shape, -2, lora=LORA, dtype=str(dtype).split(".")[1]))
            ours = ours.to(device, dtype).train()
            llava = ts.llava_from(ours, shape, -2, lora=LORA).to(device, dtype)
    finally:
        torch.set_default_dtype(previous)
    batch = _to(ts.make_batch(ours, shape), device, dtype)
    inputs = _to(ts.llava_inputs(ours, batch, llava.config.image_token_id), device, dtype)
    with torch.no_grad():
        losses = {"emofer": float(ours(batch)), "llava": float(ts.answer_window_loss(llava, inputs))}
    gap = abs(losses["emofer"] - losses["llava"])
    if gap > tolerance * max(1.0, abs(losses["llava"])):
        raise RuntimeError(f"LLaVA-shaped step: emofer loss {losses['emofer']} != LLaVA loss {losses['llava']}")
    ours_params = [p for p in ours.parameters() if p.requires_grad]
    llava_params = [p for p in llava.parameters() if p.requires_grad]
    trainable = {"emofer": sum(p.numel() for p in ours_params), "llava": sum(p.numel() for p in llava_params)}
    if trainable["emofer"] != trainable["llava"]:
        raise RuntimeError(f"LLaVA-shaped step: different trainable parameters {trainable}")

    def step(loss_fn: Any, params: list[torch.nn.Parameter]) -> None:
        ts.train_step(loss_fn, params)
        sync()

    times = alternate({"emofer": lambda: step(lambda: ours(batch), ours_params),
                       "llava": lambda: step(lambda: ts.answer_window_loss(llava, inputs), llava_params)},
                      rounds=rounds, warmup=2)
    detail = {"losses": losses, "trainable": trainable, "batch": shape["batch"], "rounds": rounds,
              "seq_len": int(inputs["attention_mask"].shape[1]), "image_tokens": ours.encoder.num_tokens,
              "dtype": str(dtype), "shape": shape, "lora": LORA}
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    records = [
        ratio_record("LLaVA-shaped step: emofer / transformers LLaVA (fwd+bwd, same loss work)",
                     times["emofer"], times["llava"], ts.TARGET_RATIO, detail=detail),
        Record("LLaVA-shaped step: emofer fwd+bwd", 1e3 * med["emofer"], "ms"),
        Record("LLaVA-shaped step: LLaVA fwd+bwd", 1e3 * med["llava"], "ms"),
    ]
    return records


def run(shape: dict[str, Any], device: torch.device, dtype: torch.dtype, rounds: int, sync: Any,
        tolerance: float) -> list[Record]:
    """:func:`measure`, then the two models' memory handed back."""
    records = measure(shape, device, dtype, rounds, sync, tolerance)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records
