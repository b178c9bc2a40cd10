"""Classification read-outs: shared-prefix ``score`` vs naive per-candidate scoring vs ``generate`` + parse.

On a trained model (``--model DIR``: a ``save_pretrained`` folder or a run
folder; otherwise a preset trained here for ``--train-steps`` steps) and the
SynthFER test split:

* ``score``: the model's read-out: image + prompt prefix once, its KV cache
  reused for every candidate label;
* ``naive``: the same log-likelihoods with the prefix recomputed for each
  candidate (one full teacher-forced pass per label, through the head's
  public ``answer_logprob``); the visual tokens are still encoded once, so
  only the LLM's work differs;
* ``generate``: greedy decoding (at most 8 tokens) and label parsing; an
  answer naming no candidate is invalid.

Batches are loaded before timing. Each batch runs the three read-outs back
to back, in rotating order, so load from other processes hits them alike.
Samples/s are reported end to end (encoder, prior, fusion and read-out) and
for the LLM read-out alone (given the visual tokens). The prefix pass alone
(``generate`` with one new token) is timed too: every read-out pays it, so
``other / prefix`` bounds how much faster than ``other`` scoring can be.

Run: ``python benchmarks/bench_classify.py [--quick] [--json out.json] [--model DIR]``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Record, parser, report, setup  # noqa: E402

MODES = ("score", "naive", "generate")
PREFILL = "prefill"
"""The image + prompt prefix alone (``generate`` with one new token), which every read-out pays."""
TARGETS = {"naive": 3.0, "generate": 2.0}


def train_model(preset: str, steps: int, batch: int, lr: float) -> tuple[Any, dict[str, Any]]:
    """Trains ``preset`` on SynthFER's training split for ``steps`` steps (Lightning, no test pass)."""
    import lightning as L

    import emofer
    from emofer.experiment import build_datamodule, build_system

    cfg = emofer.load_config(preset, [f"train.max_steps={steps}", f"data.batch_size={batch}",
                                      f"train.lr={lr}", "data.num_workers=0"])
    L.seed_everything(cfg.seed, verbose=False)
    model = emofer.build_model(cfg)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0,
                        gradient_clip_val=cfg.train.gradient_clip_val)
    t0 = time.perf_counter()
    trainer.fit(build_system(cfg, model), datamodule=build_datamodule(cfg, model))
    return model, {"preset": preset, "train_steps": steps, "train_batch": batch, "lr": lr,
                   "train_seconds": time.perf_counter() - t0}


def test_batches(model: Any, samples: int, batch: int) -> list[dict[str, Any]]:
    """SynthFER test batches (the first ``samples`` samples), loaded up front."""
    from emofer.data import EmoFERDataModule

    frames = int(model.cfg.get("num_frames", 1)) if hasattr(model.cfg, "get") else 1
    dm = EmoFERDataModule(
        {"test": [{"name": "synthfer", "split": "test", "size": samples, "num_frames": frames}],
         "eval_batch_size": batch, "num_workers": 0},
        transforms=model.transforms,
    )
    dm.setup("test")
    return [b for loader in dm.test_dataloader() for b in loader]


def naive_scores(llm: Any, tokens: torch.Tensor, questions: list[str], classes: list[str]) -> torch.Tensor:
    """``[B,C]`` candidate log-likelihoods with the whole prefix recomputed for every candidate."""
    return torch.stack([llm.answer_logprob(tokens, questions, [c] * len(questions)) for c in classes], dim=1)


def run_modes(model: Any, batches: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """Times the three read-outs batch by batch; returns seconds, predictions and the score/naive gap."""
    from emofer.llm.parsing import parse_label

    llm = model.llm
    seconds = {m: 0.0 for m in (*MODES, PREFILL)}
    readout = {m: 0.0 for m in (*MODES, PREFILL)}
    preds: dict[str, list[str | None]] = {m: [] for m in MODES}
    truth: list[str] = []
    gap = 0.0
    for i, batch in enumerate(batches):
        classes = list(batch["classes"])
        truth += [classes[int(t)] for t in batch["targets"]]
        modes = (*MODES, PREFILL)
        order = modes[i % 4 :] + modes[: i % 4]
        scores: dict[str, torch.Tensor] = {}
        for mode in order:
            t0 = time.perf_counter()
            tokens, questions = model.encode(batch)
            t1 = time.perf_counter()
            if mode == "score":
                scores[mode] = llm.score(tokens, questions, classes)
                labels = [classes[int(j)] for j in scores[mode].argmax(-1)]
            elif mode == "naive":
                scores[mode] = naive_scores(llm, tokens, questions, classes)
                labels = [classes[int(j)] for j in scores[mode].argmax(-1)]
            elif mode == "generate":
                labels = [parse_label(t, classes) for t in llm.generate(tokens, questions, max_new_tokens)]
            else:
                llm.generate(tokens, questions, 1)
            t2 = time.perf_counter()
            seconds[mode] += t2 - t0
            readout[mode] += t2 - t1
            if mode in preds:
                preds[mode] += labels
        gap = max(gap, float((scores["score"] - scores["naive"]).abs().max()))
    return {"seconds": seconds, "readout_seconds": readout, "preds": preds, "truth": truth, "gap": gap}


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    from emofer.experiment import load_trained

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="a trained model folder or run folder")
    p.add_argument("--preset", default="emo-llama-tiny", help="preset trained here when --model is not given")
    p.add_argument("--train-steps", type=int, default=None, help="training steps when --model is not given")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate when training here")
    p.add_argument("--samples", type=int, default=None, help="test samples (SynthFER test split)")
    p.add_argument("--batch", type=int, default=None, help="evaluation batch size (32; 16 with --quick)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    args = p.parse_args(argv)
    setup(args)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    if args.model is not None:
        model, info = load_trained(args.model), {"model": str(args.model)}
    else:
        steps = args.train_steps or (2 if args.quick else 300)
        model, info = train_model(args.preset, steps, 16, args.lr)
    model.eval()
    samples = args.samples or (32 if args.quick else 700)
    batch = args.batch or (16 if args.quick else 32)
    batches = test_batches(model, samples, batch)
    with torch.no_grad():
        run_modes(model, batches[:1], args.max_new_tokens)  # warm-up
        out = run_modes(model, batches, args.max_new_tokens)
    n = len(out["truth"])
    acc = {m: sum(p == t for p, t in zip(out["preds"][m], out["truth"], strict=True)) / n for m in MODES}
    invalid = {m: sum(p is None for p in out["preds"][m]) / n for m in MODES}
    rate = {m: n / out["seconds"][m] for m in (*MODES, PREFILL)}
    readout = {m: n / out["readout_seconds"][m] for m in (*MODES, PREFILL)}
    if out["gap"] > 1e-3:
        raise RuntimeError(f"score and naive log-likelihoods differ by {out['gap']}: not the same quantity")
    records = []
    for m in MODES:
        records.append(Record(f"{m}: samples/s (end to end)", rate[m], "samples/s"))
        records.append(Record(f"{m}: samples/s (LLM read-out only)", readout[m], "samples/s"))
    records.append(Record("prefix alone: samples/s (LLM read-out only)", readout[PREFILL], "samples/s"))
    for other, target in TARGETS.items():
        # no read-out can beat its own prefix pass: this is the most score could gain over `other`
        records.append(Record(f"score vs {other}: bound (prefix alone vs {other}, read-out only)",
                              readout[PREFILL] / readout[other], "x"))
        records.append(Record(f"score vs {other}: bound (prefix alone vs {other}, end to end)",
                              rate[PREFILL] / rate[other], "x"))
        speedup = rate["score"] / rate[other]
        records.append(Record(f"score vs {other}: speed-up (end to end)", speedup, "x", f">= {target}",
                              speedup >= target))
        records.append(Record(f"score vs {other}: speed-up (read-out only)",
                              readout["score"] / readout[other], "x", f">= {target}",
                              readout["score"] / readout[other] >= target))
    for m in MODES:
        target = None if m == "score" else "score >= this"
        meets = None if m == "score" else acc["score"] >= acc[m]
        records.append(Record(f"{m}: accuracy", acc[m], "", target, meets))
    for m in MODES:
        records.append(Record(f"{m}: invalid rate", invalid[m], "", "0" if m == "score" else None,
                              invalid[m] == 0 if m == "score" else None))
    records.append(Record("max |score - naive| log-likelihood", out["gap"], "nats"))
    report("classification read-outs", records, args.json,
           info | {"samples": n, "batch": batch, "classes": len(batches[0]["classes"])})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
