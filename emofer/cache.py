"""A disk cache of what the frozen parts of a model compute, reused across epochs and runs.

When the vision encoder and the face prior do not train, their outputs
(:meth:`EmoFERModel.extract_features`) depend only on the sample, so they are
computed once, written as safetensors shards under
``<cache_dir>/<key>/`` and read back in later epochs and later runs. The key
hashes the components' configs, a fingerprint of their weights and the data
description, so a change to any of them starts a new cache rather than
serving stale features.

A cached feature is only valid for the exact input it was computed from, so
each entry also stores a digest of the sample's input pixels: when a sample
comes back with other pixels (random augmentation, frame jitter), its
features are computed afresh and not stored, and the cache warns once.
:func:`emofer.experiment.train` gives the frozen parts their deterministic
(evaluation) transform while the cache is on, so with deterministic data
(SynthFER, still images, evaluation) every later epoch and run hits.

Example:
    >>> cache = FeatureCache.for_model(model, "~/.cache/emofer/features", data=cfg.data)  # doctest: +SKIP
    >>> features = cache.features(batch, model)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from emofer.config import atomic_write_text

if TYPE_CHECKING:
    from emofer.model import EmoFERModel, Features

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FEATURE_PARTS = ("encoder", "face_prior")
"""The parts whose outputs :meth:`EmoFERModel.extract_features` returns."""

_SEP = "::"
_DIGEST = "input_digest"


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def weights_fingerprint(modules: list[torch.nn.Module]) -> str:
    """A sha256 over every parameter and buffer (names, shapes, dtypes and bytes) of ``modules``."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cache_key(model: EmoFERModel, data: Mapping[str, Any] | DictConfig | None = None) -> tuple[str, dict]:
    """The cache key of a model's frozen parts on some data, and the description it hashes."""
    parts = model.parts()
    cfg = model.cfg
    description = {
        "format": FORMAT_VERSION,
        "encoder": _plain(cfg.encoder),
        "face_prior": _plain(cfg.face_prior) if "face_prior" in parts else None,
        "weights": weights_fingerprint([parts[p] for p in FEATURE_PARTS if p in parts]),
        "data": _plain(data) if data is not None else None,
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], description


def _split(features: Features, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Per-sample tensors ``{field: [T, ...]}`` from a batch's :class:`Features`."""
    fields: dict[str, torch.Tensor] = {"visual": features.visual}
    priors = features.priors
    if priors is not None:
        fields["global_feat"] = priors.global_feat
        fields["local_feat"] = priors.local_feat
        if priors.landmarks is not None:
            fields["landmarks"] = priors.landmarks
        if priors.task_tokens is not None:
            fields["task_tokens"] = priors.task_tokens
        for name, logits in priors.attributes.items():
            fields[f"attributes.{name}"] = logits
    per_sample: list[dict[str, torch.Tensor]] = [{} for _ in range(batch_size)]
    for name, tensor in fields.items():
        grouped = tensor.detach().reshape(batch_size, -1, *tensor.shape[1:]).cpu()
        for i in range(batch_size):
            per_sample[i][name] = grouped[i].clone().contiguous()
    return per_sample


def _join(samples: list[dict[str, torch.Tensor]], device: torch.device) -> Features:
    """The batch's :class:`Features` (frames flattened into the batch) from per-sample tensors."""
    from emofer.encoders.base import FacePriors
    from emofer.model import Features

    def cat(name: str) -> torch.Tensor:
        return torch.stack([s[name] for s in samples]).flatten(0, 1).to(device)

    first = samples[0]
    priors = None
    if "global_feat" in first:
        priors = FacePriors(
            global_feat=cat("global_feat"),
            local_feat=cat("local_feat"),
            landmarks=cat("landmarks") if "landmarks" in first else None,
            attributes={k.split(".", 1)[1]: cat(k) for k in first if k.startswith("attributes.")},
            task_tokens=cat("task_tokens") if "task_tokens" in first else None,
        )
    return Features(visual=cat("visual"), priors=priors)


def _select(tensor: torch.Tensor | None, index: list[int]) -> torch.Tensor | None:
    return None if tensor is None else tensor[index]


def input_digests(batch: Mapping[str, Any]) -> list[torch.Tensor]:
    """Per sample, a 16-byte digest of the frozen parts' inputs (``pixels`` and ``face_pixels``)."""
    inputs = [batch["pixels"]] + ([batch["face_pixels"]] if batch.get("face_pixels") is not None else [])
    arrays = [x.detach().float().cpu().contiguous().numpy() for x in inputs]
    out = []
    for i in range(len(batch["ids"])):
        digest = hashlib.blake2b(digest_size=16)
        for array in arrays:
            digest.update(array[i].tobytes())
        out.append(torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8))
    return out


class FeatureCache:
    """Safetensors shards of per-sample frozen features, keyed by sample id.

    Args:
        directory: the folder of one cache key (``<cache_dir>/<key>``).
        shard_size: samples per shard written.
        writer: a tag put in shard names so processes never write the same file (e.g. the rank).
    """

    def __init__(self, directory: str | os.PathLike[str], shard_size: int = 2048, writer: str = "0") -> None:
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.writer = writer
        self.hits = 0
        self.misses = 0
        self.changed = 0
        self._index: dict[str, Path] = {}
        self._loaded: dict[str, dict[str, torch.Tensor]] = {}
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self._scan()

    @classmethod
    def for_model(
        cls,
        model: EmoFERModel,
        cache_dir: str | os.PathLike[str],
        data: Mapping[str, Any] | DictConfig | None = None,
        writer: str = "0",
    ) -> FeatureCache:
        """The cache of ``model``'s encoder and prior outputs on ``data`` under ``cache_dir``."""
        key, description = cache_key(model, data)
        directory = Path(cache_dir).expanduser() / key
        meta = directory / "meta.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps(description, indent=2, sort_keys=True, default=str))
        log.info("feature cache %s", directory)
        return cls(directory, writer=writer)

    def _scan(self) -> None:
        from safetensors import safe_open

        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    self._index.setdefault(name.split(_SEP, 1)[0], shard)

    def __len__(self) -> int:
        return len(self._index) + len(self._pending)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._index or sample_id in self._pending

    def _get(self, sample_id: str) -> dict[str, torch.Tensor]:
        if sample_id in self._pending:
            return self._pending[sample_id]
        if sample_id not in self._loaded:
            from safetensors.torch import load_file

            for name, tensor in load_file(str(self._index[sample_id])).items():
                sid, field = name.split(_SEP, 1)
                self._loaded.setdefault(sid, {})[field] = tensor
        return self._loaded[sample_id]

    def features(self, batch: Mapping[str, Any], model: EmoFERModel) -> Features:
        """The batch's features: cached ones read back, missing ones computed and stored.

        A sample whose id is cached but whose input pixels differ from the
        cached entry's is computed afresh and not stored.
        """
        ids: list[str] = list(batch["ids"])
        digests = input_digests(batch)
        known = {i: self._get(sid) for i, sid in enumerate(ids) if sid in self}
        stale = [i for i, entry in known.items() if not torch.equal(entry[_DIGEST], digests[i])]
        missing = [i for i in range(len(ids)) if i not in known or i in stale]
        samples: list[dict[str, torch.Tensor] | None] = [known.get(i) for i in range(len(ids))]
        if missing:
            pixels = batch["pixels"][missing]
            face = _select(batch.get("face_pixels"), missing)
            with torch.no_grad():
                computed = _split(model.extract_features(pixels, face), len(missing))
            for i, sample in zip(missing, computed, strict=True):
                sample[_DIGEST] = digests[i]
                samples[i] = sample
                if i not in stale:
                    self._pending[ids[i]] = sample
            if len(self._pending) >= self.shard_size:
                self.flush()
        if stale and not self.changed:
            log.warning(
                "feature cache: %s came back with other input pixels (random augmentation or frame "
                "jitter?); such samples are computed afresh and not cached",
                ids[stale[0]],
            )
        self.changed += len(stale)
        self.hits += len(ids) - len(missing)
        self.misses += len(missing)
        return _join(samples, batch["pixels"].device)  # type: ignore[arg-type]

    def flush(self) -> None:
        """Writes the pending samples as one new shard (atomically: temp file, then rename)."""
        if not self._pending:
            return
        from safetensors.torch import save_file

        tensors = {
            f"{sid}{_SEP}{field}": t for sid, fields in self._pending.items() for field, t in fields.items()
        }
        shard = self.directory / f"shard-{self.writer}-{uuid.uuid4().hex[:12]}.safetensors"
        tmp = shard.with_name(f".{shard.name}.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, shard)
        for sid, fields in self._pending.items():
            self._index[sid] = shard
            self._loaded[sid] = fields
        log.debug("feature cache: wrote %d samples to %s", len(self._pending), shard.name)
        self._pending = {}
