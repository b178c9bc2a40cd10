"""From a data set's sample dict to model input: frames, face crop, the model's transforms, the prompt.

:class:`SampleProcessor` reads the media (still image, frame paths, video file
or SynthFER's in-memory frames), samples ``T`` frames of a clip, optionally
crops the face (the sample's box, else a detector), applies the encoder's
and the face prior's transforms, and builds the instruction.
:class:`ItemDataset` wraps a data set with it and applies
``on_bad_sample``. :func:`collate` stacks items into the contract's Batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from emofer.data.errors import BadSampleError, DataError, check_policy
from emofer.data.instructions import make_prompt
from emofer.data.media import is_video_file, load_image, to_rgb
from emofer.data.video import read_video, sample_indices

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], torch.Tensor]
TransformPair = tuple[Transform, Transform | None]
Box = tuple[int, int, int, int]

ATTRIBUTES = ("age", "gender", "race")

MEMO_BYTES = 2 << 30
"""At most this many bytes of transformed frames are kept per :class:`SampleProcessor` (SynthFER's
7,000 training faces at 32 px take 86 MB per transform); frames beyond it are transformed every time."""


def crop_bounds(box: Sequence[float], size: tuple[int, int], margin: float = 0.5) -> Box:
    """``(left, top, right, bottom)`` of an ``(x, y, w, h)`` box grown by ``margin`` (FaceXFormer's 50%)."""
    from emofer.face_detect import enlarge_box

    x, y, w, h = (int(round(v)) for v in box)
    return enlarge_box((x, y, w, h), size, margin)


class SampleProcessor:
    """Turns one sample dict into a model item: ``pixels [T,3,H,W]``, prompt, target, extras.

    Args:
        transforms: ``(encoder_tf, prior_tf | None)`` for this phase, each PIL -> ``[3,H,W]``.
        train: training randomness (frame jitter, option order, template choice).
        num_frames: frames taken from each clip (still images give one).
        frame_sampling: ``uniform`` (T segments) or ``fps`` (LLaMA-VID, at most ``num_frames``).
        fps: frames per second for ``fps`` sampling.
        folder_fps: frame rate assumed for frame folders under ``fps`` sampling.
        instruction: ``category``, ``conversation`` or ``mixed`` (evaluation always asks the category).
        face_crop: crop the face before the transforms (the sample's ``box``, else ``face_detector``).
        face_detector: returns the largest face ``(x, y, w, h)`` or None; default OpenCV's Haar cascade.
        face_margin: growth of the face box before cropping.
    """

    def __init__(
        self,
        transforms: TransformPair,
        train: bool = False,
        num_frames: int = 1,
        frame_sampling: str = "uniform",
        fps: float = 1.0,
        folder_fps: float = 25.0,
        instruction: str = "category",
        face_crop: bool = False,
        face_detector: Callable[[Image.Image], Box | None] | None = None,
        face_margin: float = 0.5,
    ) -> None:
        self.encoder_tf, self.prior_tf = transforms
        self.train = train
        self.num_frames = num_frames
        self.frame_sampling = frame_sampling
        self.fps = fps
        self.folder_fps = folder_fps
        self.instruction = instruction
        self.face_crop = face_crop
        self.face_detector = face_detector
        self.face_margin = face_margin
        self.face_fallbacks = 0
        self._memo: dict[tuple[Any, ...], torch.Tensor] = {}
        self._memo_bytes = 0

    def _transform(self, which: str, tf: Transform, frame: Image.Image, key: tuple[Any, ...] | None) -> torch.Tensor:
        """``tf(frame)``; with a ``key`` and a transform split into ``fixed``/``random`` parts
        (:class:`emofer.encoders._common.Preprocess`), the fixed part is kept per key and only the
        random part runs again: the same numbers, without resizing the same face every epoch."""
        fixed = getattr(tf, "fixed", None)
        if key is None or fixed is None:
            return tf(frame)
        memo_key = (which, *key)
        out = self._memo.get(memo_key)
        if out is None:
            out = fixed(frame)
            if self._memo_bytes < MEMO_BYTES:
                self._memo[memo_key] = out
                self._memo_bytes += out.numel() * out.element_size()
        random = getattr(tf, "random", None)
        return out if random is None else random(out)

    def _rng(self) -> np.random.Generator | None:
        """Training randomness, drawn from torch's RNG: DataLoader seeds it per worker, and
        Lightning's ``seed_everything(seed, workers=True)`` makes that reproducible. None in evaluation."""
        return np.random.default_rng(int(torch.randint(0, 2**62, ()).item())) if self.train else None

    def frames(self, sample: dict[str, Any], rng: np.random.Generator | None) -> tuple[list[Image.Image], list[int]]:
        """The sample's frames as RGB images, and which of its frames they are."""
        if "image" in sample:
            return [to_rgb(sample["image"])], [0]
        media = sample.get("frames", sample.get("media"))
        if isinstance(media, (list, tuple)):
            if not media:
                raise BadSampleError(str(sample.get("id")), "clip has no frames")
            idx = sample_indices(len(media), self.num_frames, self.train, rng, self.frame_sampling,
                                 self.folder_fps, self.fps)
            return [to_rgb(m) if isinstance(m, Image.Image) else load_image(m) for m in (media[i] for i in idx)], idx
        if not isinstance(media, str):
            raise BadSampleError(str(sample.get("id")), f"no readable media (got {type(media).__name__})")
        if is_video_file(media):
            return read_video(media, self.num_frames, self.train, rng, self.frame_sampling, self.fps), []
        return [load_image(media)], [0]

    def _crop(self, frames: list[Image.Image], sample: dict[str, Any]) -> tuple[list[Image.Image], Box | None]:
        box = sample.get("box")
        if box is None:
            if self.face_detector is None:
                from emofer.face_detect import FaceCropper

                self.face_detector = FaceCropper(margin=self.face_margin).detect
            box = self.face_detector(frames[len(frames) // 2])
            if box is None:
                self.face_fallbacks += 1
                if self.face_fallbacks == 1:
                    log.warning("no face found in %s; using the whole frame (later misses are only counted)",
                                sample.get("id"))
                return frames, None
        bounds = crop_bounds(box, frames[0].size, self.face_margin)
        if bounds[2] <= bounds[0] or bounds[3] <= bounds[1]:
            w, h = frames[0].size
            where = f" (annotation: {sample['source']})" if sample.get("source") else ""
            raise BadSampleError(_media_name(sample), f"face box (x, y, w, h) = {tuple(box)} lies outside the "
                                                      f"{w}x{h} image{where}")
        return [f.crop(bounds) for f in frames], bounds

    def __call__(self, sample: dict[str, Any], memo: Any = None) -> dict[str, Any]:
        """The model item of ``sample``.

        ``memo``: a key of the data set when the sample's frames are the same
        images every time it is read (an in-memory data set such as SynthFER
        with ``cache``): the deterministic part of each transform is then
        computed once per frame and kept under ``(memo, media id, frame)`` (the
        sample's ``media_id`` when several samples share frames, else its ``id``).
        """
        rng = self._rng()
        frames, idx = self.frames(sample, rng)
        bounds = None
        if self.face_crop:
            frames, bounds = self._crop(frames, sample)
        keys: list[tuple[Any, ...] | None] = [None] * len(frames)
        if memo is not None and not self.face_crop and len(idx) == len(frames):
            media = str(sample.get("media_id", sample["id"]))
            keys = [(memo, media, i) for i in idx]
        pixels = torch.stack([self._transform("encoder", self.encoder_tf, f, k) for f, k in zip(frames, keys, strict=True)])
        classes = tuple(sample["classes"])
        video = "image" not in sample and not _is_image(sample.get("media"))
        if sample.get("question") is not None:
            question, answer = sample["question"], sample["answer"]
        else:
            question, answer = make_prompt(classes, sample["label"], self.instruction if self.train else "category",
                                           video, rng)
        item: dict[str, Any] = {
            "id": str(sample["id"]),
            "pixels": pixels,
            "question": question,
            "answer": answer,
            "classes": classes,
            "target": int(sample["label"]),
        }
        if self.prior_tf is not None:
            face = [self._transform("prior", self.prior_tf, f, k) for f, k in zip(frames, keys, strict=True)]
            item["face_pixels"] = torch.stack(face)
        if sample.get("attributes") is not None:
            item["attributes"] = {k: int(sample["attributes"].get(k, -1)) for k in ATTRIBUTES}
        landmarks = sample.get("landmarks")
        if landmarks is not None and idx:
            item["landmarks"] = _unit_landmarks(np.asarray(landmarks), idx, bounds, frames[0].size)
        return item


def _media_name(sample: dict[str, Any]) -> str:
    """The file a sample was read from (its id when it has no file)."""
    media = sample.get("media")
    return media if isinstance(media, str) else str(sample.get("id"))


def _is_image(media: Any) -> bool:
    return isinstance(media, str) and not is_video_file(media)


def _unit_landmarks(lm: np.ndarray, idx: list[int], bounds: Box | None, size: tuple[int, int]) -> torch.Tensor:
    """Pixel landmarks (``[68,2]`` or ``[T,68,2]``) of the chosen frames to ``[-1,1]`` of the (cropped) frame."""
    from emofer.contracts import pixels_to_landmarks

    pts = torch.as_tensor(lm[None] if lm.ndim == 2 else lm[idx], dtype=torch.float32)
    if lm.ndim == 2:
        pts = pts.expand(len(idx), -1, -1)
    if bounds is not None:
        pts = pts - pts.new_tensor(bounds[:2])
    return pixels_to_landmarks(pts, size[0], size[1])


class ItemDataset(Dataset):
    """A data set seen through a :class:`SampleProcessor`, with the ``on_bad_sample`` policy.

    Under ``skip`` a sample that cannot be read is, in training
    (``replace=True``), replaced by the next good one; in evaluation
    (``replace=False``) it becomes a placeholder that :func:`collate` drops, so
    metrics never count a sample twice. Either way the item records what was
    skipped (``item["skipped"]``), so it can be counted and reported once.
    """

    def __init__(
        self, base: Dataset, processor: SampleProcessor, on_bad_sample: str = "error", max_tries: int = 16,
        replace: bool = True,
    ) -> None:
        self.base = base
        self.processor = processor
        self.policy = check_policy(on_bad_sample)
        self.max_tries = max_tries
        self.replace = replace
        self.name = getattr(base, "name", type(base).__name__)
        # the processor may be shared by several data sets: the base's identity keeps their memos apart
        self.memo = id(base) if getattr(base, "fixed_media", False) else None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[str] = []
        n = len(self)
        for attempt in range(min(self.max_tries, n)):
            j = (index + attempt) % n
            try:
                item = self.processor(self.base[j], memo=self.memo)
            except BadSampleError as err:
                if self.policy == "error":
                    raise
                skipped.append(str(err))
                if not self.replace:
                    return {"bad": True, "skipped": skipped}
                continue
            item["skipped"] = skipped
            return item
        raise DataError(f"{self.name}: {len(skipped)} bad samples in a row from index {index}; last: {skipped[-1]}")


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks items into the Batch of the data contract.

    Clips of different lengths (``fps`` sampling) are padded by repeating
    their last frame. ``landmarks`` (``[B,T,68,2]`` in ``[-1,1]``) is present
    when every item has them; ``attributes`` when any has them (-1 where
    unknown); ``skipped`` lists bad samples skipped under ``on_bad_sample: skip``.
    Placeholders of skipped evaluation samples are dropped: a batch of only
    those has empty ``ids`` (and only ``ids``, ``targets`` and ``skipped``).
    """
    skipped = [m for it in items for m in it.get("skipped", ())]
    items = [it for it in items if not it.get("bad")]
    if not items:
        return {"ids": [], "targets": torch.zeros(0, dtype=torch.long), "skipped": skipped}
    classes = items[0]["classes"]
    if any(it["classes"] != classes for it in items):
        raise ValueError("a batch mixes data sets with different classes; group them (the train sampler does)")
    length = max(it["pixels"].shape[0] for it in items)
    batch: dict[str, Any] = {
        "ids": [it["id"] for it in items],
        "pixels": torch.stack([_pad(it["pixels"], length) for it in items]),
        "questions": [it["question"] for it in items],
        "answers": [it["answer"] for it in items],
        "classes": list(classes),
        "targets": torch.tensor([it["target"] for it in items], dtype=torch.long),
    }
    if all("face_pixels" in it for it in items):
        batch["face_pixels"] = torch.stack([_pad(it["face_pixels"], length) for it in items])
    if any("attributes" in it for it in items):
        batch["attributes"] = {
            k: torch.tensor([it.get("attributes", {}).get(k, -1) for it in items], dtype=torch.long)
            for k in ATTRIBUTES
        }
    if all("landmarks" in it for it in items):
        batch["landmarks"] = torch.stack([_pad(it["landmarks"], length) for it in items])
    if skipped:
        batch["skipped"] = skipped
    return batch


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    if x.shape[0] == length:
        return x
    return torch.cat([x, x[-1:].expand(length - x.shape[0], *x.shape[1:])])
