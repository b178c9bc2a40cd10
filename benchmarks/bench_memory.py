"""Peak memory of the read-outs: ``score`` vs ``generate`` vs naive per-candidate scoring, at equal batch.

A ``causal-lm`` head (LLaMA-shaped, random weights: memory does not depend on
them) reads 25 visual tokens per sample (``emo-llama-tiny``'s count) and
FERID's category question, and scores the 7 classes or generates up to 8
tokens (how many it generates depends on the random weights; its peak is
the prompt's prefill either way, as ``prefix alone`` shows). Each read-out
runs once under ``torch.profiler`` with
``profile_memory``; the figure is the peak of the CPU allocator's live bytes
above what was allocated before the call (the weights excluded). On a GPU
(``--device cuda``) it is ``torch.cuda.max_memory_allocated``.

* ``score``: prefix + every candidate in one packed pass (no KV cache);
* ``generate``: ``GenerationMixin.generate`` (prefix, then its KV cache grows a token a step);
* ``prefix alone``: ``generate`` with one new token;
* ``naive``: one teacher-forced pass per candidate (``answer_logprob``), prefix recomputed each time.

Run: ``python benchmarks/bench_memory.py [--quick] [--json out.json]``
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Record, parser, peak_memory, report, setup  # noqa: E402

TARGET = 1.2
"""``score``'s peak at most this times ``generate``'s at the same batch."""
VISUAL_TOKENS = 25
MAX_NEW_TOKENS = 8

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1100},
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 32000},
}
"""The LLMs of ``bench_train_step``'s ``tiny`` and ``small`` sizes."""


def build_head(size: dict[str, Any], device: str) -> Any:
    from emofer.llm.causal_lm import CausalLMHead
    from emofer.testing import tiny_llm_dir

    config = {"model_type": "llama", "max_position_embeddings": 2048, "tie_word_embeddings": False,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, **size}
    torch.manual_seed(0)
    return CausalLMHead(config=config, tokenizer=str(tiny_llm_dir())).to(device).eval()


def measure(name: str, size: dict[str, Any], batch: int, device: str) -> list[Record]:
    from emofer.data.instructions import category_question
    from emofer.labels import FERID7

    head = build_head(size, device)
    classes = list(FERID7)
    questions = [category_question(classes)] * batch
    tokens = torch.randn(batch, VISUAL_TOKENS, head.hidden_size, generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    calls = {
        "score": lambda: head.score(tokens, questions, classes),
        "generate": lambda: head.generate(tokens, questions, MAX_NEW_TOKENS),
        "prefix alone": lambda: head.generate(tokens, questions, 1),
        "naive": lambda: [head.answer_logprob(tokens, questions, [c] * batch) for c in classes],
    }
    peaks: dict[str, int] = {}
    with torch.no_grad():
        for mode, fn in calls.items():
            fn()  # warm-up: lazy buffers (rotary caches, tokenizer caches) are not the read-out's
            peaks[mode], out = peak_memory(fn, device)
            if mode == "generate":
                new_tokens = max(len(head.tok(t, add_special_tokens=False)["input_ids"]) for t in out)
    prompt = int(head.pack(VISUAL_TOKENS, questions[:1]).lengths[0])
    tag = f"{name} @ batch {batch}"
    ratio = peaks["score"] / peaks["generate"]
    detail = {"peaks_bytes": peaks, "prompt_tokens": prompt, "classes": len(classes),
              "answer_tokens": {c: len(head.answer_ids(c)) for c in classes},
              "generated_tokens_max": new_tokens, "batch": batch, "llm": size}
    records = [Record(f"{tag}: {m} peak", peaks[m] / 2**20, "MiB") for m in calls]
    records.append(Record(f"{tag}: score / generate peak", ratio, "x", f"<= {TARGET}", ratio <= TARGET, detail))
    records.append(Record(f"{tag}: score / prefix-alone peak", peaks["score"] / peaks["prefix alone"], "x"))
    records.append(Record(f"{tag}: score / naive peak", peaks["score"] / peaks["naive"], "x"))
    return records


def parse(argv: list[str] | None = None) -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=None, choices=sorted(SIZES))
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 32 128; quick 8)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def run_config(args: Any) -> dict[str, Any]:
    """What a run measures: the LLM sizes, batches, visual tokens, answer budget."""
    from emofer.data.instructions import category_question
    from emofer.labels import FERID7

    sizes = args.sizes or (["tiny"] if args.quick else sorted(SIZES))
    return {"sizes": {s: SIZES[s] for s in sizes}, "batches": args.batches or ([8] if args.quick else [32, 128]),
            "visual_tokens": VISUAL_TOKENS, "max_new_tokens": MAX_NEW_TOKENS,
            "question": category_question(list(FERID7)), "template": "vicuna_v1", "device": args.device}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    setup(args)
    cfg = run_config(args)
    records = []
    for name, size in cfg["sizes"].items():
        for batch in cfg["batches"]:
            records += measure(name, size, batch, args.device)
    report("read-out peak memory", records, args.json, config=cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
