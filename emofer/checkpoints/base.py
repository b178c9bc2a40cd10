"""The checkpoint-import framework: formats, key-mapping rules and the mapping engine.

A :class:`CheckpointFormat` knows one on-disk layout (LLaVA-1.5, transformers'
LLaVA, ...): it recognises a folder (:meth:`~CheckpointFormat.detect`), builds
the emofer config whose model can hold it (:meth:`~CheckpointFormat.build_config`),
reads its tensors under their own names (:meth:`~CheckpointFormat.source_state`)
and renames them into emofer's state-dict keys with ordered :class:`Rule` s.

:func:`map_state` applies the rules and never guesses: every source key is
mapped, dropped by a named rule, or an error listing the keys; a tensor whose
shape does not fit is an error naming both keys and shapes; emofer weights
under the parts the format fills (:meth:`~CheckpointFormat.fills`) must all be
filled, and every other weight the checkpoint lacks is reported as kept at
initialisation (module prefixes, as :func:`emofer.model.kept_parts` gives them).

Example:
    >>> import torch
    >>> rules = [Rule.rename(r"proj\\.(weight|bias)", r"fusion.proj.\\1"),
    ...          Rule.drop(r"extra\\..*", "an unused head")]
    >>> rules[0].apply("proj.weight")
    'fusion.proj.weight'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from emofer.model import kept_parts

__all__ = [
    "CheckpointError",
    "CheckpointFormat",
    "MappedState",
    "Rule",
    "canonical_key",
    "load_mapped",
    "map_state",
    "read_config",
    "read_state",
    "weight_files",
]

SHOWN = 12
"""How many keys an error message lists before saying how many more there are."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported: unknown format, unmapped, missing or mis-shaped keys."""


@dataclass(frozen=True)
class Rule:
    """One key-mapping rule: a full-match regex over source keys and what it does with them.

    Attributes:
        pattern: regex that must match the whole source key.
        target: ``re`` replacement template giving the emofer key (``\\1`` etc.); None drops the key.
        reason: why a dropped key is dropped (required for drops; shown in reports).
        transform: optional function applied to the tensor (e.g. a reshape).
    """

    pattern: str
    target: str | None
    reason: str = ""
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.target is None and not self.reason:
            raise ValueError(f"drop rule {self.pattern!r} needs a reason")
        re.compile(self.pattern)

    @classmethod
    def rename(
        cls, pattern: str, target: str, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> Rule:
        """A rule mapping keys matching ``pattern`` to ``target`` (a replacement template)."""
        return cls(pattern, target, transform=transform)

    @classmethod
    def drop(cls, pattern: str, reason: str) -> Rule:
        """A rule dropping keys matching ``pattern``, for ``reason``."""
        return cls(pattern, None, reason)

    def apply(self, key: str) -> str | None:
        """The emofer key for ``key`` (``""`` when dropped), or None when the rule does not match."""
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return None
        return "" if self.target is None else match.expand(self.target)


@dataclass
class MappedState:
    """The outcome of :func:`map_state`.

    Attributes:
        state: emofer state-dict key (as the model names it) → tensor.
        dropped: source key → the reason its rule gives.
        kept: module prefixes of emofer weights the checkpoint does not fill (kept at initialisation).
        adapters: emofer keys of fresh LoRA adapters (initialised, as every LoRA run starts).
    """

    state: dict[str, torch.Tensor]
    dropped: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph saying what was filled, dropped and kept."""
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines = [f"filled {len(self.state)} tensors"]
        for reason, count in reasons.items():
            lines.append(f"dropped {count} ({reason})")
        lines.append("kept at initialisation: " + (", ".join(self.kept) if self.kept else "nothing"))
        if self.adapters:
            lines.append(f"{len(self.adapters)} LoRA adapter tensors fresh")
        return "; ".join(lines)


def canonical_key(key: str) -> str:
    """An emofer state-dict key without peft's wrapping (``base_model.model.``, ``.base_layer``)."""
    return key.replace(".base_model.model.", ".").replace(".base_layer.", ".")


def _listing(keys: Sequence[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" ... and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def map_state(
    source: Mapping[str, torch.Tensor],
    rules: Sequence[Rule],
    model: nn.Module,
    fills: Sequence[str] = (),
    origin: str = "the checkpoint",
) -> MappedState:
    """Renames ``source`` into ``model``'s state-dict keys by ``rules`` (first matching rule wins).

    Args:
        source: the checkpoint's tensors under their own names.
        rules: ordered renames and drops.
        model: the emofer model to be filled (its shapes are checked; meta tensors are fine).
        fills: emofer key prefixes (e.g. ``"encoder."``, ``"llm."``) that the checkpoint
            must fill completely: an emofer weight there without a source is an error.
        origin: how messages name the checkpoint (its path).

    Raises:
        CheckpointError: source keys no rule covers, keys mapped to nothing in the model or
            twice, shapes that do not fit, or weights under ``fills`` the checkpoint lacks;
            every message names the keys.
    """
    model_state = model.state_dict()
    by_canonical: dict[str, str] = {}
    for key in model_state:
        by_canonical.setdefault(canonical_key(key), key)
    adapters = sorted(k for k in model_state if "lora_" in k)
    state: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    unmatched, unknown, twice, misshaped = [], [], [], []
    filled_from: dict[str, str] = {}
    for key in source:
        for rule in rules:
            target = rule.apply(key)
            if target is None:
                continue
            if target == "":
                dropped[key] = rule.reason
                break
            model_key = by_canonical.get(canonical_key(target))
            if model_key is None:
                unknown.append(f"{key} -> {target}")
                break
            if model_key in filled_from:
                twice.append(f"{key} and {filled_from[model_key]} -> {target}")
                break
            tensor = source[key]
            if rule.transform is not None:
                tensor = rule.transform(tensor)
            want = tuple(model_state[model_key].shape)
            if tuple(tensor.shape) != want:
                misshaped.append(f"{key} {tuple(tensor.shape)} -> {model_key} {want}")
                break
            filled_from[model_key] = key
            state[model_key] = tensor
            break
        else:
            unmatched.append(key)
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} key(s) no rule maps or drops (extra keys?): {_listing(sorted(unmatched))}")
    if unknown:
        problems.append(f"{len(unknown)} key(s) mapped to weights this model lacks: {_listing(unknown)}")
    if twice:
        problems.append(f"{len(twice)} weight(s) filled twice: {_listing(twice)}")
    if misshaped:
        problems.append(f"{len(misshaped)} key(s) of the wrong shape: {_listing(misshaped)}")
    absent = [k for k in model_state if k not in state and "lora_" not in k]
    required = [k for k in absent if any(canonical_key(k).startswith(p) for p in fills)]
    if required:
        problems.append(
            f"{len(required)} weight(s) the checkpoint should hold but lacks (missing keys): "
            f"{_listing([canonical_key(k) for k in required])}"
        )
    if problems:
        raise CheckpointError(f"{origin} does not fit the model: " + "; ".join(problems))
    own = getattr(model, "_source_keys", set)()  # restored by a part's own pretrained source
    absent = [k for k in absent if k not in own]
    kept = kept_parts(absent, set(state) | set(adapters) | set(own))
    return MappedState(state=state, dropped=dropped, kept=kept, adapters=adapters)


def load_mapped(model: nn.Module, mapped: MappedState) -> None:
    """Copies the mapped tensors into ``model`` (cast to each weight's dtype; meta weights are replaced)."""
    current = model.state_dict()
    meta = any(v.is_meta for v in current.values())
    state = {k: v.to(dtype=current[k].dtype) for k, v in mapped.state.items()}
    model.load_state_dict(state, strict=False, assign=meta)


# -- reading checkpoint folders --------------------------------------------
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLES = ("model.safetensors", "pytorch_model.bin")


def weight_files(path: str | Path) -> list[Path]:
    """The weight files of a checkpoint: one file, or a folder's single or sharded (indexed) weights.

    Raises:
        CheckpointError: the folder holds no weights in a known layout (the message lists what it holds).
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist")
    for index in _INDEXES:
        if (path / index).is_file():
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            lacking = [s for s in shards if not (path / s).is_file()]
            if lacking:
                raise CheckpointError(f"{path / index} lists shards that are not there: {lacking}")
            return [path / s for s in shards]
    for single in _SINGLES:
        if (path / single).is_file():
            return [path / single]
    found = sorted(p.name for p in path.iterdir())[:20]
    raise CheckpointError(
        f"{path} holds no weights ({' or '.join(_SINGLES)}, or a sharded *.index.json); it holds {found}"
    )


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file or folder (safetensors, or ``.bin`` read with ``weights_only=True``)."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            part = load_file(str(file))
        else:
            part = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(part, dict):
                raise CheckpointError(f"{file} does not hold a state dict (a {type(part).__name__})")
        clash = sorted(set(part) & set(state))
        if clash:
            raise CheckpointError(f"{file} repeats keys of an earlier shard: {_listing(clash)}")
        state.update(part)
    return state


def read_config(path: str | Path) -> dict[str, Any]:
    """A folder's ``config.json`` as a dict (empty when there is none)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is not valid JSON: {err}") from None


class CheckpointFormat:
    """One on-disk format: a detector, a config builder and a key map.

    Subclasses register with ``@CHECKPOINT_FORMATS.register("name")`` and set
    :attr:`name`; :func:`emofer.from_checkpoint` and ``emofer import`` use them.
    """

    name: str = ""
    needs_vision: bool = False
    """Whether the vision tower comes from a separate file or folder (``vision=``)."""

    def detect(self, path: Path) -> str | None:
        """A sentence saying what was found that makes ``path`` this format, or None."""
        raise NotImplementedError

    def build_config(self, path: Path, vision: Path | None, base: DictConfig | None) -> DictConfig:
        """The emofer experiment config whose model can hold this checkpoint.

        ``base`` is a preset (e.g. ``emo-llama-7b``) whose other parts are kept.
        """
        raise NotImplementedError

    def source_state(self, path: Path, vision: Path | None) -> dict[str, torch.Tensor]:
        """Every tensor of the checkpoint under its own key names."""
        raise NotImplementedError

    def rules(self, cfg: DictConfig) -> list[Rule]:
        """Ordered renames into emofer's state-dict keys, and drops with a named reason."""
        raise NotImplementedError

    def fills(self, cfg: DictConfig) -> list[str]:
        """emofer key prefixes the checkpoint must fill completely (default: the encoder, fusion and LLM)."""
        return ["encoder.", "fusion.", "llm."]

    def source_files(self, path: Path, vision: Path | None) -> list[Path]:
        """The files the weights are read from (recorded, so an imported model can re-read them)."""
        files = list(weight_files(path))
        if vision is not None:
            files += weight_files(vision)
        return files
