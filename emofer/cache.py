"""A disk cache of what the frozen parts of a model compute, reused across epochs and runs.

When the vision encoder and/or the face prior do not train, their outputs
(what :meth:`EmoFERModel.extract_features` returns for them) depend only on
the sample, so they are computed once, written as safetensors shards under
``<cache_dir>/<key>/`` and read back in later epochs and later runs; a part
that trains (say the encoder, while the pretrained prior is frozen) still
runs on every batch. The key hashes which parts are cached, their configs, a
fingerprint of their weights and the data description, so a change to any of
them starts a new cache rather than serving stale features.

A cached feature is only valid for the exact input it was computed from, so
each entry also stores a digest of the cached parts' input pixels: when a
sample comes back with other pixels (random augmentation, frame jitter), its
features are computed afresh and not stored, and the cache warns once.
:func:`emofer.experiment.train` gives the cached parts their deterministic
(evaluation) transform, so with deterministic data (SynthFER, still images,
evaluation) every later epoch and run hits.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from emofer.config import atomic_write_text
from emofer.part import is_frozen

if TYPE_CHECKING:
    from emofer.model import EmoFERModel, Features

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
FEATURE_PARTS = ("encoder", "face_prior")
"""The parts whose outputs :meth:`EmoFERModel.extract_features` returns."""
PART_INPUTS = {"encoder": "pixels", "face_prior": "face_pixels"}
"""The batch key each feature part reads."""

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


def frozen_feature_parts(model: EmoFERModel) -> list[str]:
    """The feature parts of ``model`` (encoder, face prior) that have no trainable parameter."""
    parts = model.parts()
    return [p for p in FEATURE_PARTS if p in parts and is_frozen(parts[p])]


def cache_key(
    model: EmoFERModel,
    data: Mapping[str, Any] | DictConfig | None = None,
    parts: Sequence[str] = FEATURE_PARTS,
) -> tuple[str, dict]:
    """The cache key of some of a model's feature parts on some data, and the description it hashes."""
    modules = model.parts()
    cached = [p for p in FEATURE_PARTS if p in parts and p in modules]
    description = {
        "format": FORMAT_VERSION,
        "parts": cached,
        "configs": {p: _plain(model.cfg[p]) for p in cached},
        "weights": weights_fingerprint([modules[p] for p in cached]),
        "data": _plain(data) if data is not None else None,
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], description


def _fields(part: str, output: Any) -> dict[str, torch.Tensor]:
    """A part's output as named tensors (rows: frames of the batch)."""
    if part == "encoder":
        return {"visual": output}
    fields = {"global_feat": output.global_feat, "local_feat": output.local_feat}
    if output.landmarks is not None:
        fields["landmarks"] = output.landmarks
    if output.task_tokens is not None:
        fields["task_tokens"] = output.task_tokens
    fields.update({f"attributes.{k}": v for k, v in output.attributes.items()})
    return fields


def _split(fields: dict[str, torch.Tensor], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Per-sample tensors ``{field: [T, ...]}`` from batch tensors ``[B*T, ...]``."""
    per_sample: list[dict[str, torch.Tensor]] = [{} for _ in range(batch_size)]
    for name, tensor in fields.items():
        grouped = tensor.detach().reshape(batch_size, -1, *tensor.shape[1:]).cpu()
        for i in range(batch_size):
            per_sample[i][name] = grouped[i].clone().contiguous()
    return per_sample


def _output(part: str, samples: list[dict[str, torch.Tensor]], device: torch.device) -> Any:
    """A part's batch output (frames flattened into the batch) from per-sample tensors."""

    def cat(name: str) -> torch.Tensor:
        return torch.stack([s[name] for s in samples]).flatten(0, 1).to(device)

    if part == "encoder":
        return cat("visual")
    from emofer.contracts import FacePriorOutput

    first = samples[0]
    return FacePriorOutput(
        global_feat=cat("global_feat"),
        local_feat=cat("local_feat"),
        landmarks=cat("landmarks") if "landmarks" in first else None,
        attributes={k.split(".", 1)[1]: cat(k) for k in first if k.startswith("attributes.")},
        task_tokens=cat("task_tokens") if "task_tokens" in first else None,
    )


def input_digests(batch: Mapping[str, Any], parts: Sequence[str] = FEATURE_PARTS) -> list[torch.Tensor]:
    """Per sample, a 16-byte digest of the inputs of ``parts`` (``pixels``, ``face_pixels``)."""
    keys = [PART_INPUTS[p] for p in parts if batch.get(PART_INPUTS[p]) is not None]
    arrays = [batch[k].detach().float().cpu().contiguous().numpy() for k in keys]
    out = []
    for i in range(len(batch["ids"])):
        digest = hashlib.blake2b(digest_size=16)
        for array in arrays:
            digest.update(array[i].tobytes())
        out.append(torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8))
    return out


class FeatureCache:
    """Safetensors shards of per-sample outputs of frozen feature parts, keyed by sample id.

    Args:
        directory: the folder of one cache key (``<cache_dir>/<key>``).
        parts: the cached parts (``encoder``, ``face_prior``); the others run on every batch.
        shard_size: samples per shard written.
        writer: a tag put in shard names so processes never write the same file (e.g. the pid).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        parts: Sequence[str] = FEATURE_PARTS,
        shard_size: int = 2048,
        writer: str = "0",
    ) -> None:
        unknown = sorted(set(parts) - set(FEATURE_PARTS))
        if unknown or not parts:
            raise ValueError(f"cached parts must be some of {FEATURE_PARTS}, got {list(parts)}")
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.parts = tuple(p for p in FEATURE_PARTS if p in parts)
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
        parts: Sequence[str] | None = None,
        writer: str = "0",
    ) -> FeatureCache:
        """The cache of ``model``'s frozen feature parts (or of ``parts``) on ``data`` under ``cache_dir``."""
        parts = list(parts) if parts is not None else frozen_feature_parts(model)
        present = model.parts()
        parts = [p for p in parts if p in present]
        if not parts:
            raise ValueError("nothing to cache: the model's encoder and face prior both train")
        key, description = cache_key(model, data, parts)
        directory = Path(cache_dir).expanduser() / key
        meta = directory / "meta.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps(description, indent=2, sort_keys=True, default=str))
        log.info("feature cache of %s: %s", " and ".join(parts), directory)
        return cls(directory, parts=parts, writer=writer)

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

    def _cached_outputs(self, batch: Mapping[str, Any], model: EmoFERModel) -> dict[str, Any]:
        """The cached parts' outputs for a batch: read back, or computed (and stored when new)."""
        ids: list[str] = list(batch["ids"])
        digests = input_digests(batch, self.parts)
        known = {i: self._get(sid) for i, sid in enumerate(ids) if sid in self}
        stale = {i for i, entry in known.items() if not torch.equal(entry[_DIGEST], digests[i])}
        missing = [i for i in range(len(ids)) if i not in known or i in stale]
        samples: list[dict[str, torch.Tensor] | None] = [known.get(i) for i in range(len(ids))]
        if missing:
            fields: dict[str, torch.Tensor] = {}
            with torch.no_grad():
                for part in self.parts:
                    fields.update(_fields(part, model.run_part(part, batch[PART_INPUTS[part]][missing])))
            for i, sample in zip(missing, _split(fields, len(missing)), strict=True):
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
                ids[min(stale)],
            )
        self.changed += len(stale)
        self.hits += len(ids) - len(missing)
        self.misses += len(missing)
        device = batch["pixels"].device
        return {part: _output(part, samples, device) for part in self.parts}  # type: ignore[arg-type]

    def features(self, batch: Mapping[str, Any], model: EmoFERModel) -> Features:
        """The batch's :class:`Features`: cached parts served from disk, the other parts run.

        A sample whose id is cached but whose input pixels differ from the
        cached entry's is computed afresh and not stored.
        """
        from emofer.model import Features

        outputs = self._cached_outputs(batch, model)
        for part in FEATURE_PARTS:
            if part in model.parts() and part not in outputs:
                outputs[part] = model.run_part(part, batch[PART_INPUTS[part]])
        return Features(visual=outputs["encoder"], priors=outputs.get("face_prior"))

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
