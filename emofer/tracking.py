"""Experiment tracking: Lightning's loggers by name (``train.loggers``).

``train.loggers`` is a list of logger names, or mappings of a ``name`` and
the logger's own arguments::

    train:
      loggers:
        - csv                                       # the default: <run>/logs/metrics.csv
        - tensorboard                               # <run>/tensorboard/events.out.tfevents.*
        - {name: wandb, project: emo-llama, entity: my-team}
        - {name: mlflow, tracking_uri: "file:./mlruns"}

A logger whose package is not installed is an error naming the package.
Every run is named by its config's ``name`` (a grid's run id); a grid groups
its runs (:func:`group_runs`: W&B ``group`` and MLflow ``experiment_name`` =
the grid's name) unless the config says otherwise.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from emofer.config import ConfigError

LOGGERS = {
    "csv": ("CSVLogger", None),
    "tensorboard": ("TensorBoardLogger", "tensorboard"),
    "wandb": ("WandbLogger", "wandb"),
    "mlflow": ("MLFlowLogger", "mlflow"),
}
"""Logger name to (Lightning class in ``lightning.pytorch.loggers``, the package it needs)."""

GROUP_KEY = {"wandb": "group", "mlflow": "experiment_name"}
"""The argument of each tracking service's logger that groups a grid's runs."""


def _split(entry: Any, index: int) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        name, args = entry, {}
    elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        args = dict(OmegaConf.to_container(entry) if isinstance(entry, DictConfig) else entry)
        name = args.pop("name")
    else:
        raise ConfigError(f"train.loggers[{index}]: a logger name or a mapping with 'name:', got {entry!r}")
    if name not in LOGGERS:
        raise ConfigError(f"train.loggers[{index}]: unknown logger {name!r}; valid: {', '.join(LOGGERS)}")
    return name, args


def build_loggers(entries: Sequence[Any], out: Path, run_name: str) -> list[Any]:
    """The Lightning loggers of ``train.loggers`` for a run writing into ``out``."""
    from lightning.pytorch import loggers

    built = []
    for index, entry in enumerate(entries):
        name, args = _split(entry, index)
        cls_name, package = LOGGERS[name]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"train.loggers[{index}]: the {name} logger needs the {package!r} package "
                f"(pip install {package}); it is not installed"
            )
        defaults: dict[str, Any] = {
            "csv": {"save_dir": out, "name": "logs", "version": ""},
            "tensorboard": {"save_dir": out, "name": "tensorboard", "version": ""},
            "wandb": {"name": run_name, "save_dir": str(out)},
            "mlflow": {"run_name": run_name},
        }[name]
        built.append(getattr(loggers, cls_name)(**{**defaults, **args}))
    return built


def group_runs(cfg: DictConfig, group: str) -> DictConfig:
    """The config with its W&B/MLflow loggers grouped under ``group`` (a grid's name) unless set."""
    entries = []
    for index, entry in enumerate(cfg.train.loggers):
        name, args = _split(entry, index)
        if name in GROUP_KEY:
            args.setdefault(GROUP_KEY[name], group)
            entry = {"name": name, **args}
        entries.append(entry)
    cfg.train.loggers = entries
    return cfg
