"""Stage 0: a tiny base MLLM pretrained on non-expression questions, cached by recipe.

EMO-LLaMA is not trained from scratch: it instruction-tunes a pretrained MLLM
(LLaMA-VID), whose LLM already reads visual tokens. The quickstart does the
same in miniature. Stage 0 trains ``emo-llama-tiny-base`` (the tiny encoder,
LLaMA-VID tokens and the tiny LLaMA; no face prior, no Face Info Mining, no
age-gender-race sentence) on :mod:`SynthFER-Describe
<emofer.data.datasets.synthfer_describe>` — gender, age, ethnicity, head turn
and tilt of SynthFER faces, never their expression — through the ordinary
training path (:func:`emofer.experiment.train`). The exported model is cached
under ``$EMOFER_CACHE/base-models/<recipe hash>/model/``; a variant starts
from it as it would from an imported LLaMA-VID: ``train.init_from`` with
``train.init_missing: keep`` (the parts the base lacks, such as Face Info
Mining's face branch, stay at initialisation and are listed in the run's
``init.json``).

Example:
    >>> path = pretrain_base_model("emo-llama-tiny-base", {"train": {"max_steps": 300}})  # doctest: +SKIP
    >>> cfg = emofer.load_config("emo-llama-tiny", [f"train.init_from={path}", "train.init_missing=keep"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from emofer.config import atomic_write_text, load_config, merge_raw
from emofer.data.datasets.synthfer_describe import TASKS
from emofer.paths import MODEL_DIR, default_cache_dir
from emofer.pretrain import recipe_key

log = logging.getLogger(__name__)

META_FILE = "meta.json"
CACHE_FOLDER = "base-models"
NAME = "base-model"

DEFAULT_DATA: dict[str, Any] = {
    "train": [{"name": "synthfer-describe", "split": "train", "cache": True}],
    "val": [],
    "test": [{"name": "synthfer-describe", "split": "val", "size": 100, "tasks": [task]} for task in TASKS],
}
"""Stage 0's data unless a recipe sets its own: SynthFER-Describe on SynthFER's train faces, held out on val."""


def base_config(preset: str = "emo-llama-tiny-base", overrides: Mapping[str, Any] | None = None) -> DictConfig:
    """Stage 0's resolved experiment config: ``preset`` with :data:`DEFAULT_DATA`, then ``overrides`` (nested)."""
    raw = merge_raw({"extends": preset, "data": dict(DEFAULT_DATA)}, dict(overrides or {}))
    cfg = load_config(raw)
    cfg.name = NAME
    return cfg


def check_no_expression_task(cfg: DictConfig) -> None:
    """Raises ValueError when stage 0's config would train or test on an expression data set.

    Stage 0 stands for a base MLLM that has never seen the expression task:
    every data set it reads must declare its answers (``classes``), and none
    may be an expression name.
    """
    from emofer.data import DATASETS
    from emofer.labels import CANONICAL

    for part in ("train", "val", "test"):
        for entry in cfg.data[part]:
            name = str(entry["name"])
            classes = getattr(DATASETS.get(name), "classes", None)
            if classes is None or set(classes) & set(CANONICAL):
                raise ValueError(
                    f"stage 0 (base model): data.{part} lists {name!r}, whose answers are (or may be) "
                    "expressions; the base model must not see the expression task (use e.g. 'synthfer-describe')"
                )


def pretrain_base_model(
    preset: str = "emo-llama-tiny-base",
    overrides: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Path:
    """Trains the base MLLM of a recipe, or returns the cached one.

    Args:
        preset: the base model's preset (default the tiny LLaMA-VID stand-in).
        overrides: nested overrides of that config (steps, lr, batch size, data ...).
        cache_dir: cache root (default ``$EMOFER_CACHE`` or ``~/.cache/emofer``).
        progress: show Lightning's progress bar.

    Returns:
        The model folder (a ``save_pretrained`` folder, usable as ``train.init_from``).
        ``meta.json`` next to it holds the recipe, the training time and the
        held-out metrics (answer accuracy on the test entry of the recipe's data).
    """
    from emofer.experiment import train

    cfg = base_config(preset, overrides)
    check_no_expression_task(cfg)
    recipe = OmegaConf.to_container(cfg, resolve=True)
    folder = Path(cache_dir or default_cache_dir()) / CACHE_FOLDER / recipe_key({"config": recipe})
    model = folder / MODEL_DIR
    if (folder / META_FILE).exists() and (model / "model.safetensors").exists():
        log.info("base model: reusing %s", model)
        return model
    work = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    metrics = train(cfg, work, progress=progress)
    seconds = time.perf_counter() - start
    meta = {
        "recipe": recipe,
        "seconds": seconds,
        "held_out": {
            name: {k: m[k] for k in ("war", "uar", "invalid_rate")}
            for name, m in metrics.get("per_dataset", {metrics.get("test_set"): metrics}).items()
        },
    }
    atomic_write_text(work / META_FILE, json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    if folder.exists():  # another process finished the same recipe first
        shutil.rmtree(work, ignore_errors=True)
    else:
        os.replace(work, folder)
    log.info("base model pretrained in %.0f s: %s", seconds, meta["held_out"])
    return model


def base_metrics(model: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta.json`` of a cached base model (recipe, seconds, held-out metrics)."""
    return json.loads((Path(model).parent / META_FILE).read_text())
