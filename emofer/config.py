"""Structured experiment configs: typed schema, presets, inheritance, overrides.

An experiment config has ``model``, ``data``, ``train``, ``eval``,
``custom_imports`` and ``seed``. Component configs inside it are
``{name: <registered id>, **kwargs}``. A preset may start from another with
``extends: <preset>``; when a child changes a component's ``name`` the
component is replaced, not merged, so kwargs of the old component never leak
into the new one.

Example:
    >>> import emofer
    >>> cfg = emofer.load_config("llava-tiny", ["train.lr=1e-4"])
    >>> cfg.train.lr
    0.0001
"""

from __future__ import annotations

import difflib
import importlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints  # noqa: UP035 - omegaconf needs typing.Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from emofer.labels import FERID7

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config that cannot be loaded: unknown preset, misspelt key, bad value."""


EvalMode = Literal["score", "generate", "classifier"]
Scheduler = Literal["cosine", "constant"]
AgrSource = Literal["predicted", "ground_truth"]
OnBadSample = Literal["error", "skip"]
FrameSampling = Literal["uniform", "fps"]
InstructionKind = Literal["category", "conversation", "mixed"]
InitMissing = Literal["error", "keep"]
EVAL_MODES: tuple[str, ...] = get_args(EvalMode)
"""The read-outs (``eval.mode``, ``emofer predict --mode``, ``EmoFERModel.predict_batch``), defined once."""
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
AGR_SOURCES: tuple[str, ...] = get_args(AgrSource)
ON_BAD_SAMPLE: tuple[str, ...] = get_args(OnBadSample)
INIT_MISSING: tuple[str, ...] = get_args(InitMissing)


def _help(text: str, *, gt: float | None = None, ge: float | None = None, nonempty: bool = False) -> dict[str, Any]:
    """A field's help text and the range :func:`validate` checks (``gt``/``ge`` a bound, ``nonempty`` a list)."""
    return {"help": text, "gt": gt, "ge": ge, "nonempty": nonempty}


@dataclass
class PromptConfig:
    template: str = field(default="vicuna_v1", metadata=_help("registered prompt template"))
    system: str | None = field(default=None, metadata=_help("system prompt; None = the template's"))
    agr: bool = field(default=False, metadata=_help("prepend the age-gender-race sentence"))
    agr_template: str = field(
        default="The person appears to be {gender} aged {age}, {race}.",
        metadata=_help("format of the age-gender-race sentence"),
    )
    agr_source: AgrSource = field(
        default="predicted", metadata=_help("'predicted' (the face prior) or 'ground_truth'")
    )


@dataclass
class ModelConfig:
    encoder: dict[str, Any] = field(default_factory=lambda: {"name": "vit-tiny"})
    face_prior: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    fusion: dict[str, Any] = field(default_factory=lambda: {"name": "mlp2x-gelu"})
    llm: dict[str, Any] = field(default_factory=lambda: {"name": "causal-lm"})
    temporal: str = field(default="concat", metadata=_help("a registered temporal step: concat | mean | attention"))
    prompt: PromptConfig = field(default_factory=PromptConfig)
    classes: list[str] = field(
        default_factory=lambda: list(FERID7), metadata=_help("candidate labels, canonical names", nonempty=True)
    )
    freeze: list[str] = field(
        default_factory=lambda: ["encoder", "face_prior"],
        metadata=_help("parts kept frozen: encoder, face_prior, fusion, llm"),
    )


@dataclass
class DataConfig:
    train: list[dict[str, Any]] = field(
        default_factory=lambda: [{"name": "synthfer", "split": "train"}]
    )
    val: list[dict[str, Any]] = field(default_factory=list)
    test: list[dict[str, Any]] = field(
        default_factory=lambda: [{"name": "synthfer", "split": "test"}]
    )
    batch_size: int = field(default=16, metadata=_help("training batch size", ge=1))
    eval_batch_size: int = field(default=32, metadata=_help("evaluation batch size", ge=1))
    num_workers: int = field(default=0, metadata=_help("data-loader worker processes", ge=0))
    num_frames: int = field(
        default=1, metadata=_help("frames per clip; also the default num_frames of data sets that take one", ge=1)
    )
    frame_sampling: FrameSampling = field(
        default="uniform", metadata=_help("uniform (T segments) | fps (LLaMA-VID)")
    )
    fps: float = field(default=1.0, metadata=_help("frames per second under frame_sampling=fps", gt=0))
    folder_fps: float = field(default=25.0, metadata=_help("frame rate assumed for frame folders under fps", gt=0))
    face_crop: bool = False
    face_margin: float = field(default=0.5, metadata=_help("growth of the face box before cropping", ge=0))
    balanced_sampler: bool = False
    on_bad_sample: OnBadSample = field(default="error", metadata=_help("'error' or 'skip'"))
    instruction: InstructionKind = field(default="category", metadata=_help("category | conversation | mixed"))


@dataclass
class TrainConfig:
    max_steps: int = field(
        default=100, metadata=_help("optimizer steps; 0 = no training; -1 = until train.max_epochs (then >= 1)")
    )
    max_epochs: int = field(default=-1, metadata=_help("epochs; -1 = until train.max_steps", ge=-1))
    lr: float = field(
        default=1e-3, metadata=_help("learning rate; a negative learning rate would climb the loss, 0 trains nothing", ge=0)
    )
    lr_groups: dict[str, float] = field(
        default_factory=dict, metadata=_help("per-part learning rates, e.g. {fusion: 1e-3, llm: 2e-4}", ge=0)
    )
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay", ge=0))
    warmup_steps: int = field(default=0, metadata=_help("linear warmup steps", ge=0))
    scheduler: Scheduler = field(default="cosine", metadata=_help("cosine | constant"))
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = field(default=1, metadata=_help("machines", ge=1))
    strategy: str = "auto"
    accumulate_grad_batches: int = field(default=1, metadata=_help("batches per optimizer step", ge=1))
    gradient_clip_val: float | None = field(default=1.0, metadata=_help("gradient-norm clip; None = off", ge=0))
    stages: list[dict[str, Any]] = field(default_factory=list)
    feature_cache: bool = False
    cache_dir: str | None = None
    out_dir: str = "runs"
    checkpoint_every: int = field(default=100, metadata=_help("optimizer steps between checkpoints", ge=1))
    val_every: int = field(
        default=0, metadata=_help("steps between validations with data.val; 0 = per epoch", ge=0)
    )
    init_from: str | None = field(
        default=None, metadata=_help("a save_pretrained (or run) folder whose weights this run starts from")
    )
    compile: bool = field(
        default=False, metadata=_help("torch.compile the parts that train (LLM layers one by one); slower start")
    )
    init_missing: InitMissing = field(
        default="error",
        metadata=_help("weights of this model that init_from lacks: 'error', or 'keep' them at initialisation"),
    )
    loggers: list[Any] = field(
        default_factory=lambda: ["csv"],
        metadata=_help("Lightning loggers: names or {name, args}: csv, tensorboard, wandb, mlflow"),
    )


@dataclass
class PromptVariantsConfig:
    orders: int = field(default=0, metadata=_help("seeded permutations of the label list to ask with (0: none)"))
    wordings: bool = field(default=False, metadata=_help("also ask with each question wording of the instruction set"))
    no_options: bool = field(default=False, metadata=_help("also ask each wording without listing the options"))
    seed: int = field(default=0, metadata=_help("seed of the label-order permutations"))


@dataclass
class EvalConfig:
    mode: EvalMode = field(default="score", metadata=_help("score | generate | classifier"))
    max_new_tokens: int = field(default=8, metadata=_help("answer length in generate mode", ge=1))
    prompt_variants: PromptVariantsConfig = field(
        default_factory=PromptVariantsConfig,
        metadata=_help("evaluate under several prompts (emofer eval, emofer suite): docs/evaluation.md"),
    )
    temperature: Any = field(
        default=1.0, metadata=_help("divides the score read-out's log-likelihoods: a number, or 'fit' (on data.val)")
    )
    calibration_bins: int = field(
        default=15, metadata=_help("confidence bins of the ECE and reliability diagram", ge=1)
    )


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    extends: str | None = field(default=None, metadata=_help("preset this config starts from"))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    custom_imports: list[str] = field(default_factory=list)
    seed: int = 0


def list_presets() -> list[str]:
    """Names of the presets shipped in ``emofer/configs``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_info(name: str) -> dict[str, str]:
    """A shipped preset's ``description`` (the first sentence of its header comment) and ``extends``."""
    path = PRESET_DIR / f"{name}.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text:
            break
        header.append(text)
    words = " ".join(header)
    end = words.find(". ")
    description = words[: end + 1] if end >= 0 else words
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    parent = raw.get("extends") if isinstance(raw, dict) else None
    return {"description": description, "extends": str(parent or "")}


def _resolve_path(name_or_path: str | os.PathLike[str]) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    known = list_presets()
    close = difflib.get_close_matches(str(name_or_path), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ConfigError(
        f"no preset or file named {str(name_or_path)!r}.{hint} Presets: {', '.join(known) or '(none)'}."
    )


def merge_raw(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges plain dicts; a component whose ``name`` changes is replaced whole."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            renamed = "name" in value and "name" in old and value["name"] != old["name"]
            out[key] = dict(value) if renamed else merge_raw(old, value)
        else:
            out[key] = value
    return out


def _load_raw(name_or_path: str | os.PathLike[str], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = _resolve_path(name_or_path)
    if str(path) in seen:
        raise ConfigError(f"'extends' cycle: {' -> '.join(seen + (str(path),))}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # YAML syntax, encoding: name the file
        raise ConfigError(f"{path}: not a readable YAML config ({' '.join(str(err).split())})") from None
    raw = OmegaConf.to_container(loaded, resolve=False)
    if not raw:
        raise ConfigError(f"{path}: the config file is empty (a config names at least what it changes)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent:
        raw = merge_raw(_load_raw(parent, seen + (str(path),)), raw)
    return raw


def _valid_keys(schema: DictConfig, dotted: str) -> list[str]:
    node: Any = schema
    for part in [p for p in dotted.split(".")[:-1] if p]:
        if not isinstance(node, DictConfig) or part not in node:
            return []
        node = node[part]
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def validate(raw: dict[str, Any] | DictConfig) -> DictConfig:
    """Merges a plain config into the typed schema and checks its ranges, once.

    Misspelt keys name a suggestion; a value of the wrong type, outside a
    field's choices (``Literal``) or out of its range names the key, the
    value and what was expected.
    """
    schema = OmegaConf.structured(ExperimentConfig)
    try:
        cfg = OmegaConf.merge(schema, raw)
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = err.full_key or str(getattr(err, "key", ""))
        valid = _valid_keys(schema, key)
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
        prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
        hint = f" Did you mean {prefix + close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown config key {key!r}.{hint} Valid keys here: {', '.join(valid)}."
        ) from None
    except ValidationError as err:
        reason = str(err.msg).splitlines()[0]
        hint = get_type_hints(err.object_type).get(str(err.key)) if is_dataclass(err.object_type) else None
        if get_origin(hint) is Literal:
            reason = f"{err.key} must be one of {list(get_args(hint))}, got {err.value!r}"
        raise ConfigError(f"invalid value for config key {err.full_key!r}: {reason}") from None
    check_ranges(cfg)
    return cfg  # type: ignore[return-value]


def _out_of_range(meta: Any, value: Any) -> str | None:
    """What ``value`` should have been under a field's ``_help`` range, or None when it is in range."""
    if value is None:
        return None
    if meta.get("nonempty") and len(value) == 0:
        return "a non-empty list"
    if meta.get("gt") is not None and not value > meta["gt"]:
        return f"a number > {meta['gt']}"
    if meta.get("ge") is not None and not value >= meta["ge"]:
        return f"a number >= {meta['ge']}"
    return None


def check_ranges(cfg: Any, schema: type = ExperimentConfig, prefix: str = "") -> None:
    """Checks every ranged field of the schema (``_help(..., ge=...)``); a value out of range is a named error."""
    hints = get_type_hints(schema)
    for f in fields(schema):
        key, value = prefix + f.name, cfg[f.name]
        if is_dataclass(hints[f.name]):
            check_ranges(value, hints[f.name], key + ".")
            continue
        values = value.items() if isinstance(value, DictConfig) else [("", value)]
        for sub, v in values:
            expected = _out_of_range(f.metadata, v)
            if expected:
                name = f"{key}.{sub}" if sub else key
                raise ConfigError(f"config key {name!r} is {v!r}; expected {expected} ({f.metadata['help']})")
    if schema is TrainConfig and cfg.max_steps < 0 and not (cfg.max_steps == -1 and cfg.max_epochs >= 1):
        raise ConfigError(
            f"config key '{prefix}max_steps' is {cfg.max_steps!r}; expected an integer >= 0 (0: no training), or -1 "
            f"with {prefix}max_epochs >= 1 to train until that many epochs (max_epochs is {cfg.max_epochs!r})"
        )


def load_config(
    name_or_path: str | os.PathLike[str] | dict[str, Any] = "emo-llama-tiny",
    overrides: list[str] | tuple[str, ...] = (),
) -> DictConfig:
    """Loads a preset by name, a YAML file, or a dict, and applies dotlist overrides.

    ``custom_imports`` modules are imported before this returns, so their
    components are registered before anything is built.

    Args:
        name_or_path: preset name (see :func:`list_presets`), YAML path, or dict.
        overrides: ``key.sub=value`` strings, applied in order.
    """
    if isinstance(name_or_path, (dict, DictConfig)):
        raw = name_or_path if isinstance(name_or_path, dict) else OmegaConf.to_container(name_or_path)
        raw = dict(raw)  # type: ignore[arg-type]
        parent = raw.pop("extends", None)
        if parent:
            raw = merge_raw(_load_raw(parent), raw)
    else:
        raw = _load_raw(name_or_path)
    if overrides:
        try:
            dot = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
        except Exception as err:
            raise ConfigError(f"malformed override in {list(overrides)}: {err}") from None
        raw = merge_raw(raw, dot)  # type: ignore[arg-type]
    cfg = validate(raw)
    import_custom(cfg.custom_imports)
    for check in LOAD_CHECKS:
        check(cfg)
    return cfg


LOAD_CHECKS: list[Callable[[DictConfig], None]] = []
"""Checks :func:`load_config` runs on every loaded config; the layers above the config add theirs
(:mod:`emofer._wiring` checks the model's component arguments against their registries)."""


def import_custom(modules: list[str] | ListConfig) -> None:
    """Imports the ``custom_imports`` modules so their components register."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"custom_imports: cannot import {module!r}: {err}") from err


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def umask_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file (or folder) under the current umask.

    ``tempfile`` creates private (0600/0700) files; what emofer writes through a
    temp file gets this mode instead, so colleagues sharing a folder can read it.
    """
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temp file and rename (never half-written).

    The file gets the umask's mode, as a plain ``open()`` would give it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through a temp file and rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_config(cfg: DictConfig, path: str | os.PathLike[str]) -> None:
    """Writes the resolved config as YAML, atomically."""
    atomic_write_text(path, to_yaml(cfg))
