"""Read-outs and video for ``bench_h100.py``: ``score`` vs ``generate`` vs naive scoring, and frames per clip.

* read-outs, per batch size: seconds per call and peak memory of ``score``
  (prefix + candidates in one packed pass), ``generate`` (greedy, up to 8
  tokens, through transformers' ``generate``) and naive scoring (one full
  teacher-forced pass per candidate), all on the same encoded visual tokens
  of one batch, no grad, bf16 autocast; targets: ``score`` >= 2x
  ``generate`` at batch 32, ``score``'s peak <= 1.2x ``generate``'s;
* video: a training step (forward + backward + AdamW) on clips of 4, 8 and
  16 frames (``temporal: concat``: each frame adds its visual tokens).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch
from _common import Record, peak_memory  # noqa: E402 (benchmarks/ is on sys.path, see bench_h100.py)

TARGET_VS_GENERATE = 2.0
TARGET_MEMORY = 1.2
MAX_NEW_TOKENS = 8


def release(device: torch.device) -> None:
    """Frees what Python and the CUDA caching allocator hold for dropped tensors."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_readouts(runner: Any, make_batch: Callable[..., dict[str, Any]], sizes: list[int], steps: int
                     ) -> list[Record]:
    """Times and peak memory of the three read-outs at each batch size (out of memory is recorded, not fatal)."""
    model, device = runner.model, runner.device
    model.eval()
    records = []
    for size in sizes:
        records += _readouts_at(runner, make_batch(model, size, device, seed=1), size, steps)
    model.train()
    return records


def _readouts_at(runner: Any, batch: dict[str, Any], size: int, steps: int) -> list[Record]:
    model, device = runner.model, runner.device
    classes = list(batch["classes"])
    release(device)
    with torch.no_grad(), runner.autocast():
        tokens, questions = model.encode(batch)
    llm = model.llm
    calls = {
        "score": lambda: llm.score(tokens, questions, classes),
        "generate": lambda: llm.generate(tokens, questions, MAX_NEW_TOKENS),
        "naive": lambda: [llm.answer_logprob(tokens, questions, [c] * size) for c in classes],
    }
    records, seconds, peaks = [], {}, {}
    for mode, fn in calls.items():

        def run(fn: Callable[[], Any] = fn) -> Any:
            with torch.no_grad(), runner.autocast():
                return fn()

        try:
            run()  # warm-up
            peaks[mode], _ = peak_memory(run, device)
            seconds[mode] = runner.timed(run, steps, 0)
        except torch.cuda.OutOfMemoryError as err:
            records.append(Record(f"{mode} @ batch {size}: out of memory", 0.0, "images/s",
                                  detail={"error": str(err)[:300]}))
        release(device)
    for mode in seconds:
        records.append(Record(f"{mode} @ batch {size}", size / seconds[mode], "images/s",
                              detail={"seconds": seconds[mode], "classes": len(classes)}))
        records.append(Record(f"{mode} @ batch {size}: peak memory above the model", peaks[mode] / 2**30, "GiB"))
    if "score" in seconds and "generate" in seconds:
        speed = seconds["generate"] / seconds["score"]
        target = TARGET_VS_GENERATE if size == 32 else None
        records.append(Record(f"score vs generate @ batch {size}", speed, "x",
                              None if target is None else f">= {target}",
                              None if target is None else speed >= target))
        mem = peaks["score"] / peaks["generate"]
        records.append(Record(f"score / generate peak memory @ batch {size}", mem, "x", f"<= {TARGET_MEMORY}",
                              mem <= TARGET_MEMORY, {"peaks_bytes": peaks}))
    if "score" in seconds and "naive" in seconds:
        records.append(Record(f"score vs naive @ batch {size}", seconds["naive"] / seconds["score"], "x"))
    return records


def measure_video(runner: Any, make_batch: Callable[..., dict[str, Any]], frames: list[int], batch: int,
                  steps: int, warmup: int) -> list[Record]:
    """Training steps on clips of each frame count (checkpointing as the runner's model has it)."""
    records = []
    for t in frames:
        clip = make_batch(runner.model, batch, runner.device, frames=t)
        release(runner.device)
        if runner.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            step = runner.timed(lambda clip=clip: runner.train_step(clip), steps, warmup)
        except torch.cuda.OutOfMemoryError as err:
            runner.opt.zero_grad(set_to_none=True)
            records.append(Record(f"video {t} frames: out of memory at batch {batch}", 0.0, "clips/s",
                                  detail={"error": str(err)[:300]}))
            continue
        records.append(Record(f"video {t} frames: step time", 1e3 * step, "ms", detail={"batch": batch}))
        records.append(Record(f"video {t} frames: clips/s", batch / step, "clips/s"))
        if runner.device.type == "cuda":
            records.append(Record(f"video {t} frames: peak memory", torch.cuda.max_memory_allocated() / 2**30, "GiB"))
    return records
