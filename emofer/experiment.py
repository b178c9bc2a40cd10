"""One experiment end to end: build, train with Lightning, export, evaluate, write the results.

What a run folder holds after :func:`train`:

- ``config.yaml``: the resolved experiment config;
- ``checkpoints/last.ckpt``: Lightning's checkpoint (``resume=True`` continues from it);
- ``model/``: the trained model, :meth:`EmoFERModel.save_pretrained`;
- ``metrics.json``: test metrics (see :func:`emofer.metrics.summarize`) plus run facts;
- ``predictions.jsonl``: one line per test sample
  ``{"id", "true", "pred", "scores", "text"}`` (``pred`` is null for an invalid answer);
- ``logs/``: Lightning's CSV log of the training curves (other loggers: ``train.loggers``, :mod:`emofer.tracking`).

Every result file is written atomically. Under a multi-process strategy
(``ddp``, ``fsdp``, ``deepspeed``) every process trains and evaluates its share;
the metrics are reduced across processes and only rank 0 writes.

Example:
    >>> cfg = emofer.load_config("emo-llama-tiny", ["train.max_steps=50"])  # doctest: +SKIP
    >>> metrics = emofer.experiment.train(cfg, "runs/try")  # doctest: +SKIP
    >>> metrics["uar"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from emofer.checkpoint_io import AtomicCheckpointIO, RNGStates, resume_checkpoint
from emofer.config import atomic_write_text, save_config
from emofer.paths import MODEL_DIR, default_cache_dir, model_folder
from emofer.safe_io import UnsafeFileError, load_checkpoint, recover_folder

if TYPE_CHECKING:
    import lightning as L

    from emofer.cache import FeatureCache
    from emofer.model import EmoFERModel
    from emofer.system import EmoFERSystem

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE, PREDICTIONS_FILE = "metrics.json", "predictions.jsonl"


def launches_processes(cfg: DictConfig) -> bool:
    """True when Lightning would start the run's processes itself (several, none launched by torchrun/SLURM).

    Asked of a ``Trainer`` built for the config's devices and strategy (built
    only, never run), so Lightning's own device parsing and cluster detection
    decide: several processes, not created by the cluster, and a launcher
    that cannot run in this process.
    """
    import lightning as L

    t = cfg.train
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # no second "GPU available" banner
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        trainer = L.Trainer(
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            precision=t.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    finally:
        quiet.setLevel(level)
    if trainer.world_size == 1 or trainer.strategy.cluster_environment.creates_processes_externally:
        return False
    launcher = trainer.strategy.launcher
    return launcher is not None and not launcher.is_interactive_compatible


def build_system(
    cfg: DictConfig,
    model: EmoFERModel,
    classes: Sequence[str] | None = None,
    feature_cache: FeatureCache | None = None,
) -> EmoFERSystem:
    """The :class:`EmoFERSystem` a config describes, around an already built model."""
    from omegaconf import OmegaConf

    from emofer.system import EmoFERSystem

    t = cfg.train
    return EmoFERSystem(
        model,
        classes=classes,
        lr=t.lr,
        lr_groups=OmegaConf.to_container(t.lr_groups),
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        scheduler=t.scheduler,
        max_steps=t.max_steps,
        stages=OmegaConf.to_container(t.stages),
        eval_mode=cfg.eval.mode,
        max_new_tokens=cfg.eval.max_new_tokens,
        feature_cache=feature_cache,
        compile=t.compile,
    )


def build_trainer(
    cfg: DictConfig, out: Path, progress: bool = True, max_steps: int | None = None
) -> L.Trainer:
    """A Lightning ``Trainer`` for the config's ``train`` section, checkpointing into ``out``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

    from emofer.tracking import build_loggers

    t = cfg.train
    callbacks: list[Any] = [
        ModelCheckpoint(
            dirpath=out / CHECKPOINT_DIR,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=max(1, t.checkpoint_every),
            save_on_train_epoch_end=False,
        ),
        RNGStates(),
    ]
    if progress:
        callbacks.append(RichProgressBar(leave=True))
    callbacks.append(progress_file(out, lines=not progress and not sys.stderr.isatty()))
    has_val = bool(cfg.data.val)
    plugins = []
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":  # submitit requeues a preempted job, not Lightning
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_steps=t.max_steps if max_steps is None else max_steps,
        max_epochs=t.max_epochs,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        callbacks=callbacks,
        logger=build_loggers(t.loggers, out, cfg.name),
        plugins=[*plugins, AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        limit_val_batches=None if has_val else 0,
        val_check_interval=t.val_every if has_val and t.val_every else None,
        check_val_every_n_epoch=None if has_val and t.val_every else 1,
        default_root_dir=out,
    )


PROGRESS_FILE = "progress.json"


def progress_file(out: Path, lines: bool, every_s: float = 2.0) -> Any:
    """A callback that keeps ``OUT/progress.json`` (``step``, ``max_steps``, ``loss``, ``time``) current
    (what ``emofer grid`` shows of a running run) and, with ``lines`` (no bar, stderr a log file),
    prints ``step 120/1500  loss 1.2345  4.1 steps/s`` to stderr every twentieth of the run or minute."""
    from lightning.pytorch.callbacks import Callback

    class ProgressFile(Callback):
        def __init__(self) -> None:
            self.written = self.printed = 0.0
            self.first: tuple[float, int] | None = None
            self.step = -1

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_rank != 0:
                return
            now, step, total = time.time(), int(trainer.global_step), int(trainer.max_steps)
            if self.first is None:
                self.first, self.printed = (now, step), now
            loss = trainer.callback_metrics.get("train/loss")
            loss = None if loss is None else float(loss)
            last = step >= total > 0
            if now - self.written >= every_s or last:
                self.written = now
                record = {"step": step, "max_steps": total, "loss": loss, "time": now}
                atomic_write_text(out / PROGRESS_FILE, json.dumps(record) + "\n")
            new = step != self.step  # with gradient accumulation, several batches make one step
            self.step = step
            if lines and new and (last or now - self.printed >= 60 or step % max(1, total // 20) == 0):
                self.printed = now
                rate = (step - self.first[1]) / max(now - self.first[0], 1e-9)
                shown = "" if loss is None else f"  loss {loss:.4f}"
                print(f"step {step}/{total if total > 0 else '?'}{shown}  {rate:.1f} steps/s", file=sys.stderr, flush=True)

    return ProgressFile()


def build_datamodule(cfg: DictConfig, model: EmoFERModel, cached: Sequence[str] = ()) -> Any:
    """The data module of a config, with the model's transforms.

    Parts whose features are cached (``cached``) get their deterministic
    (evaluation) transform in training too, so a cached feature is the one
    the part would compute; the other parts keep their training augmentation.
    """
    from emofer.data import EmoFERDataModule

    transforms = _CachedTransforms(model, cached) if cached else model.transforms
    return EmoFERDataModule(cfg.data, transforms=transforms, seed=cfg.seed)


class _CachedTransforms:
    """``model.transforms`` with the evaluation transform for cached parts (picklable for workers)."""

    def __init__(self, model: EmoFERModel, cached: Sequence[str]) -> None:
        train, evaluation = model.transforms(True), model.transforms(False)
        self.pairs = {
            True: (
                evaluation[0] if "encoder" in cached else train[0],
                evaluation[1] if "face_prior" in cached else train[1],
            ),
            False: evaluation,
        }

    def __call__(self, train: bool) -> tuple[Any, Any]:
        return self.pairs[bool(train)]


def _feature_cache(cfg: DictConfig, model: EmoFERModel) -> FeatureCache | None:
    """The feature cache of the run's frozen feature parts, when ``train.feature_cache`` asks for one."""
    if not cfg.train.feature_cache:
        return None
    from emofer.cache import FeatureCache, frozen_feature_parts

    staged = {p for s in cfg.train.stages for p in s.get("train", [])}
    parts = [p for p in frozen_feature_parts(model) if p not in staged]
    if not parts:
        log.warning("train.feature_cache is on but the encoder and face prior both train: no cache")
        return None
    root = Path(cfg.train.cache_dir) if cfg.train.cache_dir else default_cache_dir() / "features"
    data = {k: cfg.data[k] for k in ("train", "val", "test", "num_frames", "face_crop")}
    return FeatureCache.for_model(model, root, data=data, parts=parts, writer=f"p{os.getpid()}")


def _eval_loader(loader: Any, trainer: L.Trainer) -> Any:
    """The test loader, split across processes without repeating samples (so metrics equal one process)."""
    if trainer.world_size <= 1:
        return loader
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DataLoader

    sampler = UnrepeatedDistributedSampler(
        loader.dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )


def export_model(model: EmoFERModel, directory: Path) -> None:
    """``save_pretrained``, which swaps the folder in whole (never half-written, never a mix)."""
    model.save_pretrained(directory)


def write_outputs(out: Path, metrics: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Writes ``metrics.json`` and ``predictions.jsonl`` atomically."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write_text(out / PREDICTIONS_FILE, lines)
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")


def check_test_sets(datamodule: Any) -> None:
    """Builds the test sets (their annotation files are read) and refuses none or an empty one —
    before training, so a bad test set never waits for the end of a run to be reported."""
    from emofer.data.errors import DataError

    datamodule.setup("test")
    names, sets = datamodule.names("test"), datamodule.datasets["test"]
    if not sets:
        raise DataError("data.test lists no data set to evaluate on")
    empty = [name for name, ds in zip(names, sets, strict=True) if len(ds) == 0]
    if empty:
        raise DataError(f"data.test: test set(s) {empty} hold no samples")


def _test(trainer: L.Trainer, system: EmoFERSystem, datamodule: Any) -> tuple[dict, list[dict]]:
    """Evaluates every test set in turn; the first one's metrics lead, all are under ``per_dataset``."""
    check_test_sets(datamodule)
    start = time.perf_counter()
    names, sets = datamodule.names("test"), datamodule.datasets["test"]
    per_dataset: dict[str, dict] = {}
    records: list[dict] = []
    for name, dataset, loader in zip(names, sets, datamodule.test_dataloader(), strict=True):
        classes = getattr(dataset, "classes", None) or dataset[0]["classes"]
        system.set_eval_classes(list(classes))
        trainer.test(system, dataloaders=_eval_loader(loader, trainer), verbose=False)
        assert system.test_results is not None
        per_dataset[name] = system.test_results
        records += [{"dataset": name, **r} for r in system.test_records]
    metrics: dict[str, Any] = {**per_dataset[names[0]], "test_set": names[0]}
    if len(per_dataset) > 1:
        metrics["per_dataset"] = per_dataset
    metrics.update(eval_mode=system.eval_mode, eval_seconds=time.perf_counter() - start)
    return metrics, records


def train(cfg: DictConfig, out: str | os.PathLike[str], resume: bool = False, progress: bool = True) -> dict:
    """Trains a config, exports the model, evaluates it on the test split and writes the run folder.

    Args:
        cfg: a resolved experiment config (:func:`emofer.load_config`).
        out: the run folder.
        resume: continue from ``out/checkpoints/last.ckpt`` when it exists.
        progress: show Lightning's rich progress bar.

    Returns:
        The test metrics (as written to ``metrics.json``).
    """
    import lightning as L

    from emofer.model import build_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg)
    if cfg.train.init_from:
        kept = model.load_weights(model_folder(cfg.train.init_from), missing=cfg.train.init_missing)
        log.info("starting from the weights of %s", cfg.train.init_from)
        atomic_write_text(out / "init.json", json.dumps({"init_from": str(cfg.train.init_from), "kept_at_init": kept}, indent=2))
    cache = _feature_cache(cfg, model)
    datamodule = build_datamodule(cfg, model, cached=cache.parts if cache else ())
    system = build_system(cfg, model, feature_cache=cache)
    check_test_sets(datamodule)
    trainer = build_trainer(cfg, out, progress)
    last = out / CHECKPOINT_DIR / "last.ckpt"
    ckpt = resume_checkpoint(last) if resume else None
    if resume and ckpt is None:
        log.warning("no checkpoint in %s: starting from scratch", last.parent)
    if trainer.is_global_zero:
        save_config(cfg, out / "config.yaml")
    start = time.perf_counter()
    with warnings.catch_warnings():
        if model.cfg.freeze:  # frozen parts stay in eval mode by design (EmoFERModel.train)
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    train_seconds = time.perf_counter() - start
    if trainer.is_global_zero:
        export_model(model, out / MODEL_DIR)
    metrics, records = _test(trainer, system, datamodule)
    metrics.update(
        run=cfg.name,
        steps=trainer.global_step,
        train_seconds=train_seconds,
        world_size=trainer.world_size,
    )
    if cache is not None:
        metrics["feature_cache"] = {"dir": str(cache.directory), "hits": cache.hits, "misses": cache.misses}
    if trainer.is_global_zero:
        write_outputs(out, metrics, records)
    return metrics


def load_trained(path: str | os.PathLike[str], cfg: DictConfig | None = None) -> EmoFERModel:
    """A trained model from a ``save_pretrained`` folder, a run folder or a Lightning ``.ckpt``.

    A ``.ckpt`` needs ``cfg`` (the run's config) to build the model it restores.
    """
    from emofer.model import EmoFERModel, build_model

    recover_folder(Path(path) / MODEL_DIR)  # a run's export that a kill interrupted
    path = model_folder(path)
    if path.is_dir():
        return EmoFERModel.from_pretrained(path)
    if path.suffix == ".ckpt":
        if cfg is None:
            raise ValueError(f"{path} is a Lightning checkpoint: pass the run's config to rebuild the model")
        model = build_model(cfg)
        state = load_checkpoint(path).get("state_dict")
        if not isinstance(state, dict):
            raise UnsafeFileError(f"{path} holds no 'state_dict': not a Lightning checkpoint of an emofer run")
        prefix = "model."
        model.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        return model
    raise FileNotFoundError(f"{path} is neither a model folder, a run folder nor a .ckpt file")


def evaluate(
    cfg: DictConfig, model_path: str | os.PathLike[str], out: str | os.PathLike[str], progress: bool = True
) -> dict:
    """Evaluates a trained model on the config's test data and writes metrics and predictions into ``out``."""
    import lightning as L

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = load_trained(model_path, cfg)
    cache = _feature_cache(cfg, model)
    datamodule = build_datamodule(cfg, model, cached=cache.parts if cache else ())
    system = build_system(cfg, model, feature_cache=cache)
    trainer = build_trainer(cfg, out, progress, max_steps=0)
    metrics, records = _test(trainer, system, datamodule)
    metrics.update(run=cfg.name, model=str(model_path), world_size=trainer.world_size)
    if trainer.is_global_zero:
        write_outputs(out, metrics, records)
    return metrics


def run(cfg: DictConfig, out: Path, resume: bool = False) -> dict:
    """Runs one grid run: :func:`train` here, or ``emofer train`` in a subprocess when Lightning must
    launch several processes (they re-run their launching command, which must be that one run).

    ``resume`` continues from the run's last checkpoint (a preempted job requeued).
    """
    if not launches_processes(cfg):
        # EMOFER_PROGRESS=lines: `emofer grid` shows its own live table on this terminal
        bar = sys.stderr.isatty() and os.environ.get("EMOFER_PROGRESS") != "lines"
        return train(cfg, out, resume=resume, progress=bar)
    save_config(cfg, out / "config.yaml")
    cmd = [sys.executable, "-m", "emofer.cli", "train", "-c", str(out / "config.yaml"), "--out", str(out)]
    # --resume: the folder is this run's (the grid cleared it for a fresh run, so only a preempted run
    # finds a checkpoint there); without it `emofer train` refuses a folder that holds files
    cmd.append("--resume")
    log.info("launching %s", " ".join(cmd))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with status {done.returncode}")
    return json.loads((out / METRICS_FILE).read_text())
