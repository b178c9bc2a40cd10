"""Scaling: train-step time against frames per video and against batch size, with a linear fit and a plot.

The model is a preset (``emo-llama-tiny`` by default: cnn-tiny + tiny
FaceXFormer + Face Info Mining + tiny LLaMA, frames concatenated in time, so
each frame adds its encoder/prior rows and 10 LLM tokens). Inputs are random
tensors in the data contract, so only the model step is timed.

For each sweep a least-squares line ``t = a + b*x`` is fitted; ``b`` is the
marginal cost per frame (or per sample), ``R^2`` says how well a line
explains the times, and the ratio of the largest point to the line's
prediction shows any super-linear tail (attention is quadratic in sequence
length, so it appears once the sequence is long enough to matter).

Run: ``python benchmarks/bench_scaling.py [--quick] [--json out.json] [--plot docs/img/scaling.png]``
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Record, parser, preset, report, setup, time_fn  # noqa: E402

MAX_DEVIATION = 0.15
"""A sweep counts as linear when every point lies within this fraction of the fitted line (R^2 alone
passed a batch curve that was flat from 2 to 4)."""


def make_batch(model: Any, batch: int, frames: int, seed: int = 0) -> dict[str, Any]:
    """A random batch in the data contract for ``model`` (``[B,T,3,H,W]`` pixels, face pixels if it has a prior)."""
    from emofer.data.instructions import category_question

    g = torch.Generator().manual_seed(seed)
    size = model.encoder.image_size
    classes = model.classes
    out = {
        "ids": [str(i) for i in range(batch)],
        "pixels": torch.randn(batch, frames, 3, size, size, generator=g),
        "questions": [category_question(classes, video=frames > 1)] * batch,
        "answers": [classes[i % len(classes)] for i in range(batch)],
        "classes": classes,
        "targets": torch.arange(batch) % len(classes),
    }
    if model.face_prior is not None:
        fs = model.face_prior.image_size
        out["face_pixels"] = torch.randn(batch, frames, 3, fs, fs, generator=g)
    return out


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares ``y = a + b*x``: intercept, slope, R^2 and the last point over the line's prediction."""
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    design = torch.stack([torch.ones_like(x), x], dim=1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    pred = design @ coef
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "intercept_s": float(coef[0]),
        "slope_s": float(coef[1]),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        "last_over_fit": float(y[-1] / pred[-1]),
    }


def sweep(model: Any, points: list[tuple[int, int]], repeats: int) -> dict[str, list[float]]:
    """Seconds of one train step (forward + backward) at each ``(batch, frames)``: min and median.

    Points are timed round-robin, ``repeats`` rounds after one warm-up each,
    so a burst of load from other processes hits every point alike; the
    minimum is the least disturbed figure and is what the fit uses.
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def step(d: dict[str, Any]) -> None:
        model(d).backward()
        for p in params:
            p.grad = None

    data = [make_batch(model, batch, frames) for batch, frames in points]
    for d in data:
        step(d)
    samples: list[list[float]] = [[] for _ in points]
    for _ in range(repeats):
        for i, d in enumerate(data):
            samples[i] += time_fn(lambda d=d: step(d), repeats=1, warmup=0)
    return {"min": [min(s) for s in samples], "median": [statistics.median(s) for s in samples]}


def plot(path: Path, frames: list[int], frame_t: list[float], batches: list[int], batch_t: list[float],
         fits: dict[str, dict[str, float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, xs, ys, key, label in (
        (axes[0], frames, frame_t, "frames", "frames per video (batch 2)"),
        (axes[1], batches, batch_t, "batch", "batch size (1 frame)"),
    ):
        fit = fits[key]
        ax.plot(xs, [1e3 * t for t in ys], "o", label="measured (min of rounds)")
        line = [1e3 * (fit["intercept_s"] + fit["slope_s"] * x) for x in xs]
        ax.plot(xs, line, "-", label=f"linear fit, R²={fit['r2']:.3f}")
        ax.set_xlabel(label)
        ax.set_ylabel("train step (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse(argv: list[str] | None = None) -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--preset", default="emo-llama-tiny", help="model preset to scale")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --json)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per point")
    return p.parse_args(argv)


def run_config(args: Any) -> dict[str, Any]:
    """What a run measures: the preset as resolved now and the sweeps."""
    return {"preset": preset(args.preset), "frames": [1, 2, 4] if args.quick else [1, 2, 4, 8, 16],
            "batches": [1, 2, 4] if args.quick else [1, 2, 4, 8, 16, 32],
            "repeats": args.repeats or (2 if args.quick else 7), "frames_batch": 2}


def main(argv: list[str] | None = None) -> int:
    import emofer

    args = parse(argv)
    setup(args)
    cfg = run_config(args)
    frames, batches, repeats, frames_batch = cfg["frames"], cfg["batches"], cfg["repeats"], cfg["frames_batch"]
    model = emofer.build_model(emofer.load_config(args.preset)).train()

    frame_sweep = sweep(model, [(frames_batch, t) for t in frames], repeats)
    batch_sweep = sweep(model, [(b, 1) for b in batches], repeats)
    frame_t, batch_t = frame_sweep["min"], batch_sweep["min"]
    fits = {"frames": linear_fit(frames, frame_t), "batch": linear_fit(batches, batch_t)}

    records = []
    for t, s in zip(frames, frame_t, strict=True):
        records.append(Record(f"step @ batch {frames_batch}, {t} frames", 1e3 * s, "ms"))
    for b, s in zip(batches, batch_t, strict=True):
        records.append(Record(f"step @ batch {b}, 1 frame", 1e3 * s, "ms"))
    for key, unit in (("frames", "frame"), ("batch", "sample")):
        fit = fits[key]
        records.append(Record(f"{key}: marginal cost per {unit}", 1e3 * fit["slope_s"], "ms", detail=fit))
        records.append(Record(f"{key}: fixed cost (intercept)", 1e3 * fit["intercept_s"], "ms"))
        records.append(Record(f"{key}: R^2 of linear fit", fit["r2"], "", detail=fit))
        xs, ys = (frames, frame_t) if key == "frames" else (batches, batch_t)
        deviation = max(abs(y / (fit["intercept_s"] + fit["slope_s"] * x) - 1) for x, y in zip(xs, ys, strict=True))
        records.append(Record(f"{key}: largest deviation of a point from the line", deviation, "",
                              f"<= {MAX_DEVIATION} (linear)", deviation <= MAX_DEVIATION))
    plot_path = args.plot or (args.json.with_suffix(".png") if args.json else None)
    title = f"{args.preset}: train step scaling ({torch.get_num_threads()} CPU threads)"
    if plot_path:
        plot(plot_path, frames, frame_t, batches, batch_t, fits, title)
    report(f"scaling ({args.preset})", records, args.json,
           {"frames": frames, "frame_times_s": frame_t, "batches": batches, "batch_times_s": batch_t,
            "frame_median_s": frame_sweep["median"], "batch_median_s": batch_sweep["median"],
            "fits": fits, "plot": str(plot_path) if plot_path else None}, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
