"""``EmoFERDataModule``: train/val/test loaders from the experiment config's ``data`` node.

It builds every data set of ``data.train`` / ``data.val`` / ``data.test``
through ``DATASETS``, runs each sample through the model's transforms
(``model.transforms(train) -> (encoder_tf, prior_tf | None)``) and the
instruction builder, and batches them into the contract's Batch dict.

Example:
    >>> from torchvision import transforms as T
    >>> tf = T.Compose([T.Resize((32, 32)), T.ToTensor()])
    >>> dm = EmoFERDataModule(
    ...     {"train": [{"name": "synthfer", "split": "train", "size": 28}],
    ...      "test": [{"name": "synthfer", "split": "test", "size": 14}], "batch_size": 4},
    ...     transforms=lambda train: (tf, None))
    >>> dm.setup("fit")
    >>> batch = next(iter(dm.train_dataloader()))
    >>> batch["pixels"].shape
    torch.Size([4, 1, 3, 32, 32])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from emofer.data import DATASETS
from emofer.data.errors import check_policy, summarise
from emofer.data.pipeline import Box, ItemDataset, SampleProcessor, TransformPair, collate
from emofer.data.sampler import BatchView, GroupedBatchSampler, ResumableLoader, mixture_weights

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


def simple_transforms(image_size: int = 224) -> Callable[[bool], TransformPair]:
    """A stand-in for ``model.transforms``: resize and ``ToTensor``, no face prior."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize((image_size, image_size)), T.ToTensor()])
    return lambda train: (tf, None)


def data_config(data: Any = None) -> DictConfig:
    """The ``data`` node validated against :class:`emofer.config.DataConfig` (dict, dataclass or DictConfig)."""
    from emofer.config import DataConfig, validate

    if data is None:
        return OmegaConf.structured(DataConfig)
    if not isinstance(data, (DictConfig, Mapping)):
        data = OmegaConf.structured(data)
    return validate({"data": data}).data


class EmoFERDataModule(LightningDataModule):
    """Builds, transforms and batches the data sets of an experiment's ``data`` config.

    Args:
        data: the ``data`` node (``DataConfig``, its DictConfig, or a plain dict of its fields).
            Each entry of ``train``/``val``/``test`` is a ``DATASETS`` config
            ``{name, **kwargs}`` plus an optional ``weight`` (share of training
            draws; default: in proportion to size). ``on_bad_sample`` and
            ``num_frames`` are passed to data sets that take them unless set there.
        transforms: ``model.transforms``: ``train -> (encoder_tf, prior_tf | None)``.
            Default: resize to 224 and ``ToTensor``, no prior.
        seed: seeds the training batch order (with the epoch).
        face_detector: ``PIL image -> (x, y, w, h) | None`` for ``face_crop`` on samples
            without a box (default: OpenCV's Haar cascade).

    Batches follow the data contract (``ids``, ``pixels [B,T,3,H,W]``,
    ``face_pixels``, ``questions``, ``answers``, ``classes``, ``targets``,
    ``attributes``), plus ``landmarks [B,T,68,2]`` in ``[-1,1]`` when every
    sample has them. Each training batch comes from data sets sharing classes
    and media kind. ``val_dataloader``/``test_dataloader`` return one loader
    per data set (see :attr:`names`).
    """

    def __init__(
        self,
        data: Any = None,
        transforms: Callable[[bool], TransformPair] | None = None,
        seed: int = 0,
        face_detector: Callable[[Image.Image], Box | None] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = data_config(data)
        check_policy(self.cfg.on_bad_sample)
        self.transforms = transforms or simple_transforms()
        self.seed = seed
        self.face_detector = face_detector
        self.datasets: dict[str, list[Dataset]] = {}
        self.weights: list[float] | None = None
        self.bad_samples: list[str] = []

    # -- building --------------------------------------------------------
    def build_dataset(self, entry: Mapping[str, Any]) -> Dataset:
        """One data set from its ``{name, **kwargs}`` entry (``weight`` removed), with data-wide defaults."""
        from emofer.registry import accepted_arguments

        cfg = {k: v for k, v in entry.items() if k != "weight"}
        names, _, _ = accepted_arguments(DATASETS.get(cfg["name"]))
        for key, value in (("on_bad_sample", self.cfg.on_bad_sample), ("num_frames", self.cfg.num_frames)):
            if key in names and key not in cfg:
                cfg[key] = value
        return DATASETS.build(cfg)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for part in wanted.get(stage or "", STAGES):
            if part not in self.datasets:
                entries = [dict(OmegaConf.to_container(e, resolve=True)) if isinstance(e, DictConfig) else dict(e)
                           for e in self.cfg[part]]
                self.datasets[part] = [self.build_dataset(e) for e in entries]
                if part == "train" and any("weight" in e for e in entries):
                    self.weights = [float(e.get("weight", 1.0)) for e in entries]

    def names(self, part: str) -> list[str]:
        """Names of the data sets of ``train``, ``val`` or ``test`` (one per eval loader)."""
        return [getattr(ds, "name", type(ds).__name__) for ds in self.datasets.get(part, [])]

    def _processor(self, train: bool) -> SampleProcessor:
        c = self.cfg
        return SampleProcessor(
            self.transforms(train), train=train, num_frames=c.num_frames, frame_sampling=c.frame_sampling,
            fps=c.fps, folder_fps=c.folder_fps, instruction=c.instruction, face_crop=c.face_crop,
            face_detector=self.face_detector, face_margin=c.face_margin,
        )

    def _loader_kwargs(self) -> dict[str, Any]:
        workers = self.cfg.num_workers
        # an own generator: starting a loader's pass never draws from the global RNG (which a
        # checkpoint restores for the model's dropout), so a resumed run draws what the first one did
        generator = torch.Generator().manual_seed(self.seed)
        return {"num_workers": workers, "persistent_workers": workers > 0, "collate_fn": collate, "generator": generator}

    # -- loaders ---------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if "train" not in self.datasets:
            self.setup("fit")
        sets = self.datasets["train"]
        if not sets:
            raise ValueError("data.train lists no data set")
        processor = self._processor(train=True)
        items = [ItemDataset(ds, processor, self.cfg.on_bad_sample) for ds in sets]
        keys: dict[tuple, int] = {}
        groups: list[int] = []
        for ds in sets:
            key = (tuple(_classes(ds)), bool(getattr(ds, "video", False)))
            groups += [keys.setdefault(key, len(keys))] * len(ds)  # type: ignore[arg-type]
        labels = [_labels(ds) for ds in sets] if self.cfg.balanced_sampler else None
        weights = mixture_weights([len(ds) for ds in sets], self.weights, labels)  # type: ignore[arg-type]
        sampler = GroupedBatchSampler(groups, self.cfg.batch_size, weights, seed=self.seed)
        return ResumableLoader(BatchView(ConcatDataset(items)), sampler=sampler, batch_size=None, **self._loader_kwargs())

    def _eval_loaders(self, part: str) -> list[DataLoader]:
        if part not in self.datasets:
            self.setup("validate" if part == "val" else "test")
        processor = self._processor(train=False)
        return [
            DataLoader(ItemDataset(ds, processor, self.cfg.on_bad_sample, replace=False),
                       batch_size=self.cfg.eval_batch_size,
                       shuffle=False, **self._loader_kwargs())
            for ds in self.datasets[part]
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    # -- bad samples -----------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Takes the skipped-sample messages out of the batch (they are reported once at teardown)."""
        if isinstance(batch, dict):
            self.bad_samples += batch.pop("skipped", [])
        return batch

    def teardown(self, stage: str) -> None:
        self.report_bad_samples()

    def report_bad_samples(self) -> str | None:
        """Logs one warning counting the samples skipped under ``on_bad_sample: skip`` (then resets)."""
        if not self.bad_samples:
            return None
        msg = summarise("emofer data", list(dict.fromkeys(self.bad_samples)))  # a sample drawn twice counts once
        log.warning(msg)
        self.bad_samples = []
        return msg


def _classes(ds: Dataset) -> list[str]:
    classes = getattr(ds, "classes", None)
    return list(classes) if classes is not None else list(ds[0]["classes"])


def _labels(ds: Dataset) -> list[int]:
    if hasattr(ds, "labels"):
        return list(ds.labels())
    return [int(ds[i]["label"]) for i in range(len(ds))]  # type: ignore[arg-type]
