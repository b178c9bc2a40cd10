"""Train step: emofer's LLaVA-shaped composition against transformers' ``LlavaForConditionalGeneration``.

Both models get the same weights (copied), the same pixels, the same token
ids (emofer's own packing, with the visual slots marked for LLaVA) and the
same labels, and are timed alternately in one process so machine noise hits
both alike. A loss check proves they compute the same thing.

Two loss settings for LLaVA, both timed against the same emofer step:

* ``llava`` (same loss work as emofer): the LM head runs only over the
  window of positions that predict an answer token (``logits_to_keep``) and
  the cross-entropy covers the answer tokens, as emofer's loss does;
* ``llava-full`` (transformers' default ``labels=`` loss): the LM head over
  every position and the cross-entropy's log-softmax over every logit.

``train.compile`` (emofer's LLM decoder layers and trained fusion compiled,
:func:`emofer.system.compile_trained`) is timed against the eager step in
the same rounds, at ``tiny`` and ``small`` (``--compile off`` skips it); its
first step, compilation included (inductor's caches empty), is reported as start-up time.

Two vision-layer settings are measured:

* ``layer -2`` (what both libraries do for LLaVA-1.5): both read the
  penultimate CLIP layer. emofer truncates the tower after it; transformers
  runs the whole tower and picks the hidden state, one layer more.
* ``layer -1`` (matched compute): both run every layer and read the last,
  so the ratio isolates the composition overhead (tokenisation and packing
  inside emofer's step included; LLaVA gets pre-tokenised tensors).

Run: ``python benchmarks/bench_train_step.py [--quick] [--json out.json]``
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Record, alternate, parser, ratio_record, report, setup  # noqa: E402

TARGET_RATIO = 1.05

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3,
                   "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        "llm": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1100},
        "fim": {"num_queries": 8, "dim": 32, "depth": 1, "num_heads": 4},
        "batch": 4,
        "rounds": 31,
    },
    "small": {
        "vision": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                   "num_attention_heads": 4, "image_size": 112, "patch_size": 14},
        "llm": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 32000},
        "fim": {"num_queries": 16, "dim": 128, "depth": 2, "num_heads": 4},
        "batch": 4,
        "rounds": 9,
    },
    "medium": {
        "vision": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6,
                   "num_attention_heads": 6, "image_size": 224, "patch_size": 14},
        "llm": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 6,
                "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000},
        "fim": {"num_queries": 32, "dim": 256, "depth": 2, "num_heads": 8},
        "batch": 4,
        "rounds": 7,
    },
}
"""Model sizes, tiny to the largest that trains in a few seconds per step on 2 CPU cores, with
the alternating rounds each gets (more where a step is short and noise weighs more).

The vision tower is CLIP-shaped (patch tokens = (image/patch)^2: 16, 64, 256 —
the last is LLaVA-1.5's count at 224 px); the LLM is LLaMA-shaped with
Vicuna's 32000-token vocabulary from ``small`` up.
"""


def emofer_config(size: dict[str, Any], layer: int, face: bool = False, lora: dict[str, Any] | None = None,
                  dtype: str = "float32") -> dict[str, Any]:
    """The emofer model config: hf-clip + mlp2x-gelu + causal-lm (+ tiny FaceXFormer and Face Info Mining).

    ``lora`` and ``dtype`` go to the causal-lm (``gpu/llava_compare.py`` uses them at 7B).
    """
    from emofer.testing import tiny_llm_dir

    tok_dir = tiny_llm_dir()
    llm = {"model_type": "llama", "max_position_embeddings": 2048, "tie_word_embeddings": False,
           "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, **size["llm"]}
    model: dict[str, Any] = {
        "encoder": {"name": "hf-clip", "config": size["vision"], "layer": layer},
        "face_prior": {"name": "none"},
        "fusion": {"name": "mlp2x-gelu"},
        "llm": {"name": "causal-lm", "config": llm, "tokenizer": str(tok_dir), "lora": lora, "dtype": dtype},
        "prompt": {"template": "vicuna_v1", "agr": False},
        "freeze": ["encoder"],
    }
    if face:
        model["face_prior"] = {"name": "facexformer-tiny", "image_size": 64}
        model["fusion"] = {"name": "face-info-mining", "visual": "mlp2x-gelu", **size["fim"]}
        model["freeze"] = ["encoder", "face_prior"]
    return {"model": model}


def llava_from(emofer_model: Any, size: dict[str, Any], layer: int, lora: dict[str, Any] | None = None) -> Any:
    """A ``LlavaForConditionalGeneration`` with the same dims and (copied) weights as ``emofer_model``.

    With ``lora``, peft injects the same adapters into LLaVA's language model
    (vision tower untouched) before the weights, adapters included, are copied.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    lm = emofer_model.llm.model
    text_cfg = LlamaConfig(**lm.config.to_dict())
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**size["vision"]),
        text_config=text_cfg,
        image_token_id=size["llm"]["vocab_size"] - 1,
        vision_feature_layer=layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    llava = LlavaForConditionalGeneration(config)
    if lora is not None:
        from peft import LoraConfig, inject_adapter_in_model

        names = "|".join(lora.get("target_modules", ["q_proj", "v_proj"]))
        inject_adapter_in_model(LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora.get("dropout", 0.0),
                                           target_modules=rf".*language_model.*\.({names})"), llava)
    missing, unexpected = llava.model.vision_tower.load_state_dict(
        emofer_model.encoder.model.state_dict(), strict=False
    )
    if unexpected or any(not ("encoder.layers." in k or "post_layernorm" in k)
                         for k in missing):
        raise RuntimeError(f"vision weights do not line up: missing {missing}, unexpected {unexpected}")
    proj = emofer_model.fusion.proj
    llava.model.multi_modal_projector.linear_1.load_state_dict(proj[0].state_dict())
    llava.model.multi_modal_projector.linear_2.load_state_dict(proj[2].state_dict())
    llava.model.language_model.load_state_dict(lm.model.state_dict())
    llava.lm_head.load_state_dict(lm.lm_head.state_dict())
    assert llava.lm_head.weight.data_ptr() != llava.model.language_model.embed_tokens.weight.data_ptr()
    llava.model.vision_tower.requires_grad_(False)
    if lora is not None:  # what emofer trains: the projector and the adapters
        llava.requires_grad_(False)
        llava.model.multi_modal_projector.requires_grad_(True)
        for name, p in llava.named_parameters():
            p.requires_grad_(p.requires_grad or "lora_" in name)
    return llava.train()


def make_batch(emofer_model: Any, size: dict[str, Any], face: bool = False, seed: int = 0) -> dict[str, Any]:
    """One batch in the data contract: random pixels, FERID questions, class-name answers."""
    from emofer.data.instructions import category_question
    from emofer.labels import FERID7

    g = torch.Generator().manual_seed(seed)
    b, px = size["batch"], size["vision"]["image_size"]
    answers = [FERID7[i % len(FERID7)] for i in range(b)]
    batch = {
        "ids": [str(i) for i in range(b)],
        "pixels": torch.randn(b, 1, 3, px, px, generator=g),
        "questions": [category_question(FERID7)] * b,
        "answers": answers,
        "classes": list(FERID7),
        "targets": torch.tensor([FERID7.index(a) for a in answers]),
    }
    if face:
        batch["face_pixels"] = torch.randn(b, 1, 3, 64, 64, generator=g)
    return batch


def llava_inputs(emofer_model: Any, batch: dict[str, Any], image_token_id: int) -> dict[str, torch.Tensor]:
    """The same token ids, mask, positions and labels as emofer packs them, visual slots marked for LLaVA."""
    head = emofer_model.llm
    packed = head.pack(emofer_model.encoder.num_tokens, list(batch["questions"]), list(batch["answers"]))
    input_ids = packed.input_ids.masked_fill(packed.visual_mask, image_token_id)
    return {
        "input_ids": input_ids,
        "pixel_values": batch["pixels"][:, 0],
        "attention_mask": packed.attention_mask,
        "position_ids": packed.position_ids,
        "labels": packed.labels,
    }


def answer_window_loss(llava: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """LLaVA's loss with emofer's loss work: LM head over the answer window, cross-entropy on answer tokens."""
    targets = inputs["labels"][:, 1:]
    where = targets != -100
    cols = where.any(0).nonzero().squeeze(1)
    keep = torch.arange(int(cols[0]), int(cols[-1]) + 1)
    args = {k: v for k, v in inputs.items() if k != "labels"}
    logits = llava(**args, logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(logits[where[:, keep]].float(), targets[:, keep][where[:, keep]])


def train_step(loss_fn: Any, params: list[torch.nn.Parameter]) -> float:
    loss = loss_fn()
    loss.backward()
    for p in params:
        p.grad = None
    return float(loss.detach())


def measure_layer(name: str, size: dict[str, Any], layer: int, rounds: int, fim: bool, compile_: bool
                  ) -> list[Record]:
    """emofer vs LLaVA at one vision-layer setting (+ Face Info Mining with ``fim``, + compiled with ``compile_``)."""
    import time

    import emofer
    from emofer.system import compile_trained

    torch.manual_seed(0)
    ours = emofer.build_model(emofer_config(size, layer)).train()
    llava = llava_from(ours, size, layer)
    batch = make_batch(ours, size)
    inputs = llava_inputs(ours, batch, llava.config.image_token_id)
    with torch.no_grad():
        losses = {"emofer": float(ours(batch)), "llava": float(answer_window_loss(llava, inputs)),
                  "llava-full": float(llava(**inputs).loss)}
    for k, v in losses.items():
        if abs(v - losses["emofer"]) > 1e-4 * max(1.0, abs(v)):
            raise RuntimeError(f"{name}: emofer loss {losses['emofer']} != {k} loss {v}; not the same step")
    ours_params = [p for p in ours.parameters() if p.requires_grad]
    llava_params = [p for p in llava.parameters() if p.requires_grad]
    fns = {
        "emofer": lambda: train_step(lambda: ours(batch), ours_params),
        "llava": lambda: train_step(lambda: answer_window_loss(llava, inputs), llava_params),
        "llava-full": lambda: train_step(lambda: llava(**inputs).loss, llava_params),
    }
    face = None
    if fim:
        torch.manual_seed(0)
        face = emofer.build_model(emofer_config(size, layer, face=True)).train()
        face_batch = make_batch(face, size, face=True)
        face_params = [p for p in face.parameters() if p.requires_grad]
        fns["emofer+fim"] = lambda: train_step(lambda: face(face_batch), face_params)
    startup = None
    if compile_:
        compiled = emofer.build_model(emofer_config(size, layer)).train()
        compiled.load_state_dict(ours.state_dict())
        what = compile_trained(compiled)
        compiled_params = [p for p in compiled.parameters() if p.requires_grad]
        t0 = time.perf_counter()
        compiled_loss = train_step(lambda: compiled(batch), compiled_params)
        startup = time.perf_counter() - t0
        if abs(compiled_loss - losses["emofer"]) > 1e-4 * max(1.0, abs(compiled_loss)):
            raise RuntimeError(f"{name}: compiled loss {compiled_loss} != eager loss {losses['emofer']}")
        fns["emofer compiled"] = lambda: train_step(lambda: compiled(batch), compiled_params)
    with torch.no_grad():
        fwd = alternate({"emofer": lambda: ours(batch), "llava": lambda: answer_window_loss(llava, inputs)},
                        rounds=rounds)
    times = alternate(fns, rounds=rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    tag = f"{name}/layer{layer}"
    detail = {"times_s": times, "losses": losses, "fwd_s": fwd,
              "seq_len": int(inputs["attention_mask"].shape[1]), "image_tokens": ours.encoder.num_tokens,
              "batch": size["batch"], "rounds": rounds}
    records = [
        ratio_record(f"{tag} fwd+bwd emofer/llava (same loss work)", times["emofer"], times["llava"],
                     TARGET_RATIO, detail=detail),
        ratio_record(f"{tag} fwd+bwd emofer/llava-full (transformers' full-logit loss)", times["emofer"],
                     times["llava-full"]),
        ratio_record(f"{tag} fwd emofer/llava (same loss work)", fwd["emofer"], fwd["llava"]),
    ]
    records += [Record(f"{tag} fwd+bwd {k}", med[k] * 1e3, "ms") for k in ("emofer", "llava", "llava-full")]
    if face is not None:
        extra = ratio_record(f"{name} face-info-mining step / emofer step", times["emofer+fim"], times["emofer"],
                             detail={"fim": size["fim"],
                                     "face_tokens": face.fusion.num_output_tokens - ours.encoder.num_tokens})
        records.append(extra)
    if startup is not None:
        records.append(ratio_record(f"{tag} train.compile: compiled / eager step", times["emofer compiled"],
                                    times["emofer"], detail={"compiled": what}))
        records.append(Record(f"{tag} train.compile: first step (compilation)", startup, "s",
                              detail={"eager_step_s": med["emofer"]}))
    return records


def parse(argv: list[str] | None = None) -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=None, choices=sorted(SIZES), help="sizes to run")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating rounds per size (default: 31 tiny, 9 small, 7 medium; 5 with --quick)")
    p.add_argument("--compile", choices=("on", "off"), default=None,
                   help="time train.compile at tiny and small, layer -2 (default: on; off with --quick)")
    return p.parse_args(argv)


def run_config(args: Any) -> dict[str, Any]:
    """What a run measures: sizes, rounds, the settings compared."""
    from emofer.data.instructions import category_question
    from emofer.labels import FERID7

    sizes = args.sizes or (["tiny"] if args.quick else ["tiny", "small", "medium"])
    compile_on = (args.compile or ("off" if args.quick else "on")) == "on"
    return {"sizes": {s: SIZES[s] for s in sizes},
            "rounds": {s: args.rounds or (5 if args.quick else SIZES[s]["rounds"]) for s in sizes},
            "compile_sizes": [s for s in sizes if compile_on and s in ("tiny", "small")],
            "layers": [-2, -1], "question": category_question(list(FERID7)), "template": "vicuna_v1",
            "losses": ["emofer answer window", "llava answer window", "llava full logits"]}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    setup(args)
    cfg = run_config(args)
    if cfg["compile_sizes"]:
        # start-up as a first run sees it: inductor's on-disk caches start empty
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="emofer-bench-inductor-")
    records = []
    for name, size in cfg["sizes"].items():
        for layer in cfg["layers"]:
            records += measure_layer(name, size, layer, cfg["rounds"][name], fim=layer == -2,
                                     compile_=layer == -2 and name in cfg["compile_sizes"])
    report("train step: emofer vs transformers LLaVA", records, args.json, config=cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
