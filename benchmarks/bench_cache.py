"""Frozen-feature cache: epoch time without it, first epoch with it, later epochs with it.

Trains through the real Lightning path (``EmoFERSystem`` + ``EmoFERDataModule``
+ :class:`emofer.cache.FeatureCache`) on SynthFER with the encoder and face
prior frozen. Both runs keep SynthFER's rendered faces in memory and use the
deterministic (evaluation) transforms, so from the second epoch on the only
difference between them is the cache. Epochs are timed by a callback from
epoch start to epoch end (data loading included).

Reported per model: uncached epoch (fastest of epochs 2..E), the first
cached epoch (features computed and stored), later cached epochs (fastest of
epochs 2..E; the fastest, because load from other processes only ever adds time),
the first epoch of a new run that reads the cache back from disk (to compare with
the first uncached epoch: both render SynthFER's faces, which later epochs keep), and
the bound on the speed-up: the uncached epoch over the uncached epoch minus
the time its frozen parts took (timed inside the same run; Amdahl: the cache
can remove no more).

Run: ``python benchmarks/bench_cache.py [--quick] [--json out.json]``
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Record, parser, preset, report, setup  # noqa: E402

TARGET_SPEEDUP = 3.0

MODELS: dict[str, list[str]] = {
    # EMO-LLaMA's recipe at tiny dims: frozen encoder and face prior, trained fusion and LLM
    "emo-llama-tiny": ["model.freeze=[encoder,face_prior]"],
    # the supervised baseline: frozen encoder, trained linear projection and classifier
    "classifier-tiny": ["model.freeze=[encoder]"],
}


def config(preset: str, samples: int, batch: int, epochs: int, cache_dir: str | None) -> Any:
    import emofer

    overrides = MODELS[preset] + [
        f"data.train=[{{name: synthfer, split: train, size: {samples}, cache: true}}]",
        f"data.batch_size={batch}",
        "data.num_workers=0",
        "train.max_steps=-1",
        f"train.max_epochs={epochs}",
        f"train.feature_cache={cache_dir is not None}",
    ]
    if cache_dir is not None:
        overrides.append(f"train.cache_dir={cache_dir}")
    return emofer.load_config(preset, overrides)


def timed_fit(cfg: Any, cache_dir: str | None) -> tuple[list[float], list[float], dict[str, int]]:
    """Seconds of each training epoch of ``cfg``, seconds spent in the frozen parts per epoch, cache counts."""
    import lightning as L

    from emofer.experiment import _feature_cache, build_datamodule, build_system
    from emofer.model import build_model

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.frozen: list[float] = []

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.frozen.append(0.0)
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.seconds.append(time.perf_counter() - self.t0)

    L.seed_everything(cfg.seed, verbose=False)
    model = build_model(cfg)
    timer = EpochTimer()
    extract = model.extract_features

    def timed_extract(*args: Any, **kwargs: Any) -> Any:  # the frozen parts' time, cached run or not
        t0 = time.perf_counter()
        out = extract(*args, **kwargs)
        timer.frozen[-1] += time.perf_counter() - t0
        return out

    model.extract_features = timed_extract
    cache = _feature_cache(cfg, model) if cache_dir is not None else None
    if cache_dir is not None and cache is None:
        raise RuntimeError("the feature cache was not enabled (are the feature parts frozen?)")
    from emofer.cache import frozen_feature_parts

    # both runs give the frozen parts their deterministic transform, as a cached run must
    datamodule = build_datamodule(cfg, model, cached=frozen_feature_parts(model))
    system = build_system(cfg, model, feature_cache=cache)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=cfg.train.max_epochs, max_steps=-1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )
    trainer.fit(system, datamodule=datamodule)
    stats = {"hits": cache.hits, "misses": cache.misses} if cache is not None else {}
    return timer.seconds, timer.frozen, stats


def measure(preset: str, samples: int, batch: int, epochs: int) -> list[Record]:
    with tempfile.TemporaryDirectory(prefix="emofer-bench-cache-") as tmp:
        plain, plain_frozen, _ = timed_fit(config(preset, samples, batch, epochs, None), None)
        cached, _, stats = timed_fit(config(preset, samples, batch, epochs, tmp), tmp)
        reread, _, reread_stats = timed_fit(config(preset, samples, batch, 1, tmp), tmp)
    best = min(range(1, len(plain)), key=plain.__getitem__)
    uncached, frozen = plain[best], plain_frozen[best]
    later = min(cached[1:])
    speedup = uncached / later
    bound = uncached / max(uncached - frozen, 1e-9)
    detail = {"uncached_epochs_s": plain, "cached_epochs_s": cached, "new_run_epoch_s": reread,
              "cache": stats, "new_run_cache": reread_stats, "samples": samples, "batch": batch,
              "frozen_parts_s_per_epoch": plain_frozen}
    return [
        Record(f"{preset}: epoch without cache", uncached, "s", detail=detail),
        Record(f"{preset}: first epoch with cache", cached[0], "s"),
        Record(f"{preset}: later epochs with cache", later, "s"),
        Record(f"{preset}: first epoch without cache (faces rendered)", plain[0], "s"),
        Record(f"{preset}: first epoch of a new run reading the cache (faces rendered)", reread[0], "s"),
        Record(f"{preset}: later epochs speed-up", speedup, "x", f">= {TARGET_SPEEDUP}",
               speedup >= TARGET_SPEEDUP, detail),
        Record(f"{preset}: frozen parts' share of an uncached epoch", 100 * frozen / uncached, "%"),
        Record(f"{preset}: speed-up bound (Amdahl)", bound, "x"),
    ]


def parse(argv: list[str] | None = None) -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, choices=sorted(MODELS), help="models to run")
    p.add_argument("--samples", type=int, default=None, help="SynthFER training samples per epoch")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (>= 2)")
    return p.parse_args(argv)


def run_config(args: Any) -> dict[str, Any]:
    """What a run measures: each model's config as resolved now, samples, epochs."""
    models = args.models or (["emo-llama-tiny"] if args.quick else sorted(MODELS))
    return {"models": {m: preset(m, MODELS[m]) for m in models},
            "samples": args.samples or (32 if args.quick else 256),
            "epochs": max(2, args.epochs or (2 if args.quick else 4)), "batch": 16}


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    args = parse(argv)
    setup(args)
    cfg = run_config(args)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    samples, epochs = cfg["samples"], cfg["epochs"]
    records = []
    for name in cfg["models"]:
        records += measure(name, samples, 16, epochs)
    report("frozen-feature cache", records, args.json, {"samples": samples, "epochs": epochs}, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
