"""The assembled model: encoder → face prior → fusion → temporal step → LLM head.

:func:`build_model` builds the parts from a config in that order, reads each
one's dims and wires the next (a mismatch is a :class:`WiringError` naming
both parts). :class:`EmoFERModel` is a plain ``nn.Module`` consuming the
batches of the data module (their keys: docs/data.md, "EmoFERDataModule"), with three read-outs
(``score``, ``generate``, ``classifier``), ``classify`` for raw images and
videos, and ``save_pretrained`` / ``from_pretrained``.

Example:
    >>> import emofer
    >>> model = emofer.build_model(emofer.load_config("llava-tiny"))
    >>> from PIL import Image
    >>> [p.label in model.classes for p in model.classify(Image.new("RGB", (64, 64)))]
    [True]
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from emofer._wiring import (
    PARTS,
    WiringError,
    build_fusion,
    check_agr,
    check_classes,
    check_freeze,
    expect_part,
    fusion_spec,
    llm_overrides,
    model_node,
)
from emofer.config import EVAL_MODES, INIT_MISSING
from emofer.contracts import FacePriorOutput
from emofer.encoders import ENCODERS, FACE_PRIORS, FacePrior, VisionEncoder
from emofer.fusion.temporal import build_temporal
from emofer.llm import LLM_HEADS, LLMHead
from emofer.llm.agr import ATTRIBUTE_LABELS, agr_sentences
from emofer.llm.classifier import ClassifierHead
from emofer.llm.parsing import invalid_rate, parse_label
from emofer.part import is_frozen, set_frozen
from emofer.safe_io import fault_point, read_safetensors, recover_folder, replace_folder, verify_manifest

log = logging.getLogger(__name__)

__all__ = ["EmoFERModel", "Features", "Prediction", "WiringError", "build_model"]

MODES = EVAL_MODES  # the read-outs, defined once in emofer.config
CONFIG_FILE, WEIGHTS_FILE, ADAPTER_DIR = "config.yaml", "model.safetensors", "adapter"


@dataclass
class Features:
    """What the encoder and the face prior produce (what a frozen-feature cache stores).

    Attributes:
        visual: ``[B*T,N,D]`` encoder tokens, frames flattened into the batch.
        priors: the face prior's output for the same ``B*T`` rows, or None.
    """

    visual: torch.Tensor
    priors: FacePriorOutput | None = None


@dataclass
class Prediction:
    """One read-out: the label (None = invalid answer), per-label scores and the raw text."""

    label: str | None
    scores: dict[str, float] = field(default_factory=dict)
    text: str = ""


class EmoFERModel(nn.Module):
    """Encoder, face prior, fusion, temporal step and LLM head wired together.

    Build it with :func:`build_model`. Parts listed in the config's ``freeze``
    get no gradients and stay in eval mode even when the model trains.
    """

    def __init__(
        self,
        cfg: DictConfig,
        encoder: nn.Module,
        face_prior: nn.Module | None,
        fusion: nn.Module,
        temporal: nn.Module,
        llm: nn.Module,
        custom_imports: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.custom_imports = list(custom_imports)
        self.encoder = encoder
        self.face_prior = face_prior
        self.fusion = fusion
        self.temporal = temporal
        self.llm = llm

    @property
    def classes(self) -> list[str]:
        """The model's candidate labels (``cfg.classes``)."""
        return list(self.cfg.classes)

    def parts(self) -> dict[str, nn.Module]:
        """The parts by name, for freeze policies and per-part learning rates.

        ``fusion`` groups the fusion with the temporal step that follows it.
        """
        parts: dict[str, nn.Module] = {"encoder": self.encoder}
        if self.face_prior is not None:
            parts["face_prior"] = self.face_prior
        parts["fusion"] = nn.ModuleList([self.fusion, self.temporal])
        parts["llm"] = self.llm
        return parts

    def set_frozen(self, names: Sequence[str]) -> None:
        """Freezes the named parts and makes every other part trainable (under its own policy)."""
        unknown = sorted(set(names) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown part(s) {unknown} to freeze; parts are {list(PARTS)}")
        for name, part in self.parts().items():
            set_frozen(part, name in names)
        self.train(self.training)

    @property
    def input_size(self) -> int:
        """The largest input resolution of the encoder and the face prior (pixels per side)."""
        sizes = [self.encoder.image_size] + ([self.face_prior.image_size] if self.face_prior is not None else [])
        return max(sizes)

    def transforms(self, train: bool = False) -> tuple[Callable, Callable | None]:
        """(encoder transform, face-prior transform or None): PIL image to ``[3,H,W]``."""
        prior = None if self.face_prior is None else self.face_prior.transform(train)
        return self.encoder.transform(train), prior

    # -- forward path ---------------------------------------------------
    def extract_features(self, pixels: torch.Tensor, face_pixels: torch.Tensor | None = None) -> Features:
        """Encoder tokens and face priors of ``[B,T,3,H,W]`` frames, flattened to ``B*T`` rows."""
        if pixels.dim() != 5:
            raise ValueError(f"pixels must be [B,T,3,H,W], got {tuple(pixels.shape)}")
        visual = self.run_part("encoder", pixels)
        priors = None
        if self.face_prior is not None:
            if face_pixels is None:
                raise ValueError(f"face prior {self.cfg.face_prior.name!r} needs 'face_pixels' in the batch")
            priors = self.run_part("face_prior", face_pixels)
        return Features(visual=visual, priors=priors)

    def run_part(self, name: str, pixels: torch.Tensor) -> Any:
        """One feature part (``encoder`` or ``face_prior``) on ``[B,T,3,H,W]`` frames flattened into the batch.

        The pixels are cast to the part's device and dtype; a frozen part runs without autograd.
        """
        part = self.parts()[name]
        weight = next((p for p in part.parameters() if p.is_floating_point()), None)
        x = pixels.flatten(0, 1)
        if weight is not None:
            x = x.to(device=weight.device, dtype=weight.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not is_frozen(part)):
            return part(x)

    def encode(
        self, batch: Mapping[str, Any], features: Features | None = None
    ) -> tuple[torch.Tensor, list[str]]:
        """LLM-space tokens ``[B,M,D]`` and the questions as the LLM reads them (AGR sentence first)."""
        if features is None:
            features = self.extract_features(batch["pixels"], batch.get("face_pixels"))
        questions = list(batch["questions"])
        rows = features.visual.shape[0]
        if rows % len(questions):
            raise ValueError(f"{rows} visual rows do not divide into {len(questions)} samples")
        frames = rows // len(questions)
        if self.cfg.prompt.agr:
            sentences = self._agr(batch, features.priors, len(questions), frames)
            questions = [f"{s} {q}" for s, q in zip(sentences, questions, strict=True)]
        text = self.llm.embed_text(questions)
        if text is not None and frames > 1:
            text = (text[0].repeat_interleave(frames, 0), text[1].repeat_interleave(frames, 0))
        extra = {"questions": questions} if getattr(self.fusion, "reads_questions", False) else {}
        fused = self.fusion(features.visual, features.priors, text, **extra)
        return self.temporal(fused, frames), questions

    def _agr(self, batch: Mapping[str, Any], priors: FacePriorOutput | None, size: int, frames: int) -> list[str]:
        keys = ("age", "gender", "race")
        if self.cfg.prompt.agr_source == "ground_truth":
            if "attributes" not in batch:
                raise ValueError("prompt.agr_source is 'ground_truth' but the batch has no 'attributes'")
            return agr_sentences(
                {k: batch["attributes"][k] for k in keys}, ATTRIBUTE_LABELS, self.cfg.prompt.agr_template
            )
        assert priors is not None and self.face_prior is not None  # checked by build_model
        probs = {k: priors.attributes[k].reshape(size, frames, -1).softmax(-1).mean(1) for k in keys}
        labels = {k: self.face_prior.attribute_labels[k] for k in keys}
        return agr_sentences(probs, labels, self.cfg.prompt.agr_template)

    def forward(self, batch: Mapping[str, Any], features: Features | None = None) -> torch.Tensor:
        """The training loss of a batch (answer tokens only, or cross-entropy for the classifier)."""
        tokens, questions = self.encode(batch, features)
        return self.llm.loss(
            tokens, questions, list(batch["answers"]), batch.get("targets"), batch.get("classes")
        )

    def score_batch(self, batch: Mapping[str, Any], features: Features | None = None) -> torch.Tensor:
        """Log-likelihood ``[B,C]`` of each of ``batch["classes"]``."""
        tokens, questions = self.encode(batch, features)
        return self.llm.score(tokens, questions, list(batch["classes"]))

    def class_log_probs(self, batch: Mapping[str, Any], features: Features | None = None) -> torch.Tensor:
        """The ``classifier`` read-out: the classifier head's logits for ``batch["classes"]``, log-softmaxed ``[B,C]``.

        It reads the head's linear layer directly — no question, no candidate
        scoring through the LLM-head interface — and refuses any other head.
        On a classifier head it gives the numbers ``score`` gives.
        """
        if not isinstance(self.llm, ClassifierHead):
            raise ValueError(
                f"read-out 'classifier' needs the classifier head (llm.name=classifier); this model's "
                f"head is {self.cfg.llm.name!r}, so use 'score' or 'generate'"
            )
        tokens, _ = self.encode(batch, features)
        return self.llm.logits(tokens)[:, self.llm.indices(list(batch["classes"]))].float().log_softmax(-1)

    def generate_batch(
        self, batch: Mapping[str, Any], features: Features | None = None, max_new_tokens: int = 8
    ) -> list[str]:
        """Greedy answers, one text per sample."""
        tokens, questions = self.encode(batch, features)
        return self.llm.generate(tokens, questions, max_new_tokens)

    def predict_batch(
        self,
        batch: Mapping[str, Any],
        mode: str = "score",
        features: Features | None = None,
        max_new_tokens: int = 8,
    ) -> list[Prediction]:
        """One :class:`Prediction` per sample, read out by ``score``, ``generate`` or ``classifier``."""
        if mode not in MODES:
            raise ValueError(f"unknown read-out mode {mode!r}; choose from {', '.join(MODES)}")
        classes = list(batch["classes"])
        if mode == "generate":
            texts = self.generate_batch(batch, features, max_new_tokens)
            labels = [parse_label(t, classes) for t in texts]
            log.debug("generate: %d answers, invalid rate %.3f", len(labels), invalid_rate(labels))
            return [Prediction(label=lab, text=t) for lab, t in zip(labels, texts, strict=True)]
        if mode == "classifier":
            scores = self.class_log_probs(batch, features).cpu()
        else:
            scores = self.score_batch(batch, features).float().cpu()
        return [
            Prediction(label=classes[int(row.argmax())], scores=dict(zip(classes, row.tolist(), strict=True)))
            for row in scores
        ]

    # -- raw inputs -----------------------------------------------------
    @torch.no_grad()
    def classify(
        self,
        inputs: Any,
        labels: Sequence[str] | None = None,
        mode: str = "score",
        question: str | None = None,
        num_frames: int = 8,
        batch_size: int = 16,
        max_new_tokens: int = 8,
        face_crop: bool | None = None,
    ) -> list[Prediction]:
        """Predicts the expression of images and videos.

        Args:
            inputs: one input or a list of them: PIL images, image or video
                paths, frame folders (a clip as a folder of images, sorted by
                name), ``[3,H,W]`` image tensors or ``[T,3,H,W]`` video tensors
                (raw RGB, uint8 0-255 or float 0-1; the model's transforms run on them).
            labels: candidate labels; the model's classes by default.
            mode: ``"score"``, ``"generate"`` or ``"classifier"``.
            question: the instruction; FERID's category question by default.
            num_frames: frames sampled uniformly from each video file.
            batch_size: inputs per forward pass.
            max_new_tokens: generation budget in ``generate`` mode.
            face_crop: crop the largest detected face (OpenCV's Haar cascade on
                the middle frame, box enlarged by 50%, applied to every frame);
                None (default) crops inputs whose sides both exceed twice the
                model's input size — photos, not face crops — and leaves the rest.
        """
        from emofer.data.instructions import category_question

        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        labels = list(labels) if labels is not None else self.classes
        if not labels or any(not isinstance(x, str) or not x.strip() for x in labels):
            raise ValueError(f"classify: labels must be a non-empty list of non-empty strings, got {labels!r}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"classify: labels must not repeat, got {labels!r}")
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"classify: num_frames must be an integer of at least 1, got {num_frames!r}")
        clips = [_frames_of(x, num_frames) for x in items]
        if face_crop is not False:
            clips = crop_faces(clips, None if face_crop else 2 * self.input_size)
        enc_tf, prior_tf = self.transforms(False)
        was_training = self.training
        self.eval()
        try:
            preds: list[Prediction | None] = [None] * len(items)
            for length in sorted({len(c) for c in clips}):
                idx = [i for i, c in enumerate(clips) if len(c) == length]
                for start in range(0, len(idx), batch_size):
                    chunk = idx[start : start + batch_size]
                    batch = _raw_batch(
                        [clips[i] for i in chunk], question or category_question(labels, video=length > 1),
                        enc_tf, prior_tf,
                    )
                    batch["ids"], batch["classes"] = [str(i) for i in chunk], labels
                    for i, pred in zip(
                        chunk, self.predict_batch(batch, mode, max_new_tokens=max_new_tokens), strict=True
                    ):
                        preds[i] = pred
        finally:
            self.train(was_training)
        return preds  # type: ignore[return-value]

    @torch.no_grad()
    def answer_logits(self, inputs: Any, question: str, answer: str, num_frames: int = 8) -> torch.Tensor:
        """The logits ``[B,A,V]`` that predict each token of ``answer`` (teacher forcing), per input.

        The public read-out for comparing a model with its source (e.g. an imported
        LLaVA with transformers' ``LlavaForConditionalGeneration``): the prompt is packed
        exactly as in training, the answer's ``A`` tokens follow it.

        Args:
            inputs: what :meth:`classify` takes (one input or a list; one frame count), or a
                batch mapping with ``pixels`` ``[B,T,3,H,W]`` (and ``face_pixels``) already made.
            question: the instruction, the same for every input.
            answer: the answer turn whose tokens are scored.
            num_frames: frames sampled uniformly from each video file.
        """
        if not hasattr(self.llm, "answer_logits"):
            raise ValueError(f"LLM head {self.cfg.llm.name!r} reads no answer tokens; answer_logits needs causal-lm")
        if isinstance(inputs, Mapping):
            batch = {**inputs, "questions": [question] * len(inputs["pixels"])}
        else:
            items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            clips = [_frames_of(x, num_frames) for x in items]
            if len({len(c) for c in clips}) > 1:
                raise ValueError(f"answer_logits takes inputs of one frame count, got {[len(c) for c in clips]}")
            batch = _raw_batch(clips, question, *self.transforms(False))
        was_training = self.training
        self.eval()
        try:
            tokens, questions = self.encode(batch)
            rows = self.llm.answer_logits(tokens, questions, [answer] * len(questions))
        finally:
            self.train(was_training)
        return torch.stack(rows)

    # -- persistence ----------------------------------------------------
    def _source_keys(self) -> set[str]:
        """State-dict keys restored from named pretrained sources or saved as adapters, not in the weights file."""
        keys: set[str] = set()
        for name in ("encoder", "face_prior", "llm"):
            part = getattr(self, name)
            if part is None:
                continue
            if part.pretrained_source:
                keys |= {f"{name}.{k}" for k, p in part.named_parameters() if not p.requires_grad}
        keys |= {f"llm.{k}" for k in self.llm.adapter_keys()}
        source = getattr(self, "checkpoint_source", None)  # imported: emofer.checkpoints.source
        if source is not None:
            keys |= source.unchanged(self)
        return keys

    def save_pretrained(self, directory: str | os.PathLike[str], include_pretrained: bool = False) -> None:
        """Writes ``config.yaml``, ``model.safetensors`` and (with LoRA) the peft adapter to ``directory``.

        Frozen weights of parts loaded from a named pretrained source (e.g. the
        base LLM under LoRA) are not copied: ``from_pretrained`` reloads them
        from that source. Pass ``include_pretrained=True`` to copy them too
        (needed if such weights were trained and then frozen again).

        Files and folders the parts' config names are carried, nulled or recorded in
        ``sources.json`` (see :mod:`emofer.checkpoints.carried`), and ``custom_imports``
        keeps only the modules that register a part this model uses.

        A model imported from another project's checkpoint (:func:`emofer.from_checkpoint`)
        writes only the weights that differ from it, plus ``checkpoint.json`` naming the
        checkpoint's files; ``include_pretrained=True`` copies everything instead.

        The folder is replaced as a whole (:func:`emofer.safe_io.replace_folder`):
        written as a sibling with a ``manifest.json`` of SHA-256 hashes, then
        swapped in, so a kill at any point leaves the old model or the new one,
        never a mix. Files in ``directory`` that a save did not write are refused, not deleted.
        """
        replace_folder(directory, lambda tmp: self._write_folder(tmp, include_pretrained), keep=_saved_file)

    def _write_folder(self, directory: Path, include_pretrained: bool) -> None:
        """Writes the files of :meth:`save_pretrained` into a fresh ``directory`` (the sibling being swapped in)."""
        from safetensors.torch import save_file

        from emofer.checkpoints.carried import carry_sources, needed_imports
        from emofer.config import save_config
        from emofer.paths import default_cache_dir

        skip = set() if include_pretrained else self._source_keys()
        cfg = OmegaConf.to_container(self.cfg, resolve=True)  # sources carried or recorded: sources.json
        whole = [n for n in self.parts() if not any(k.startswith(f"{n}.") for k in skip)]
        carry_sources(self, directory, cfg, whole, default_cache_dir())
        fault_point("sources")
        save_config(
            OmegaConf.create({"model": cfg, "custom_imports": needed_imports(cfg, self.custom_imports)}),
            directory / CONFIG_FILE,
        )
        fault_point(CONFIG_FILE)
        adapters = {f"llm.{k}" for k in self.llm.adapter_keys()}
        tensors, aliases, seen = {}, {}, {}
        for key, value in self.state_dict().items():
            if key in skip or key in adapters:
                continue
            ptr = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
            if ptr in seen:  # tied weights are stored once
                aliases[key] = seen[ptr]
                continue
            seen[ptr] = key
            tensors[key] = value.detach().contiguous().cpu()
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"aliases": json.dumps(aliases), "format": "emofer"})
        fault_point(WEIGHTS_FILE)
        if adapters:
            self.llm.save_adapter(directory / ADAPTER_DIR)
            fault_point(ADAPTER_DIR)
        source = getattr(self, "checkpoint_source", None)
        if source is not None and not include_pretrained:
            source.save(directory, self)
            fault_point("checkpoint.json")

    def load_weights(self, directory: str | os.PathLike[str], missing: str = "error") -> list[str]:
        """Loads the weights a :meth:`save_pretrained` folder holds into this model.

        A folder with a ``checkpoint.json`` (an imported model, see
        :mod:`emofer.checkpoints.source`) first re-reads its base weights from that
        checkpoint, which must not have moved or changed.

        The folder's model must have this model's shapes, and every weight it
        holds must have a place here (its config may differ in what holds no
        weights, e.g. ``temporal`` or ``prompt``): how a run starts from another
        run's model (``train.init_from``).

        Args:
            directory: a :meth:`save_pretrained` folder.
            missing: ``"error"`` — every weight of this model must be in the
                folder; ``"keep"`` — weights the folder lacks stay at their
                initialisation (a base model without this model's Face Info
                Mining branch, say), and are returned and logged.

        Returns:
            The parts kept at initialisation, as module prefixes (e.g.
            ``fusion.face_queries``); empty when every weight was loaded.

        Raises:
            FileNotFoundError: ``directory`` holds no weights file.
            RuntimeError: a weight is unexpected or of another shape, or missing under ``missing="error"`` (named).
        """
        if missing not in INIT_MISSING:
            raise ValueError(f"missing must be one of {INIT_MISSING}, not {missing!r}")
        from emofer.checkpoints.source import fill_from_source

        directory = Path(directory)
        if not (directory / WEIGHTS_FILE).exists():
            raise FileNotFoundError(f"{directory} holds no {WEIGHTS_FILE}; is it a save_pretrained directory?")
        kept_by_import = fill_from_source(self, directory)
        tensors, metadata = read_safetensors(directory / WEIGHTS_FILE)
        aliases = json.loads(metadata.get("aliases", "{}"))
        tensors.update({alias: tensors[key] for alias, key in aliases.items()})
        mismatch = f"{directory / WEIGHTS_FILE} does not fit this model"
        try:
            absent, unexpected = self.load_state_dict(tensors, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise RuntimeError(f"{mismatch}: {err}") from None
        not_restored = sorted(set(absent) - self._source_keys())
        if unexpected or (not_restored and missing == "error"):
            raise RuntimeError(f"{mismatch}: missing {not_restored[:8]}, unexpected {sorted(unexpected)[:8]}")
        if (directory / ADAPTER_DIR).exists():
            self.llm.load_adapter(directory / ADAPTER_DIR)
        kept = sorted(set(kept_parts(not_restored, set(tensors))) | set(kept_by_import))
        if kept_by_import:
            self.checkpoint_source.mark_kept(self, kept_by_import)
        if kept:
            log.warning("kept at initialisation (not in %s): %s", directory, ", ".join(kept))
        return kept

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> EmoFERModel:
        """Rebuilds a model written by :meth:`save_pretrained` (safetensors only, nothing unpickled)."""
        from emofer.config import load_config

        directory = Path(directory)
        recover_folder(directory)
        if not (directory / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{directory} holds no {CONFIG_FILE}; is it a save_pretrained directory?")
        from emofer.checkpoints.carried import resolve_sources
        from emofer.checkpoints.source import verify_folder

        verify_manifest(directory, editable=(CONFIG_FILE,))
        verify_folder(directory)  # an imported model's checkpoint is still there, unchanged
        model = build_model(resolve_sources(load_config(directory / CONFIG_FILE), directory))
        model.load_weights(directory)
        return model


def _raw_batch(clips: list[list[Any]], question: str, enc_tf: Callable, prior_tf: Callable | None) -> dict:
    """A batch of PIL frame lists (one frame count) through the model's transforms, one question for all."""
    batch: dict[str, Any] = {
        "pixels": torch.stack([torch.stack([enc_tf(f) for f in clip]) for clip in clips]),
        "questions": [question] * len(clips),
    }
    if prior_tf is not None:
        batch["face_pixels"] = torch.stack([torch.stack([prior_tf(f) for f in clip]) for clip in clips])
    return batch


def _saved_file(name: str) -> bool:
    """Whether ``name`` (relative to a model folder) is a file :meth:`EmoFERModel.save_pretrained` writes."""
    return name in (CONFIG_FILE, WEIGHTS_FILE, "checkpoint.json", "sources.json") or name.startswith(
        (f"{ADAPTER_DIR}/", "sources/")
    )


def _frames_of(item: Any, num_frames: int) -> list[Any]:
    """An input as a list of RGB PIL frames (one for an image)."""
    from PIL import Image

    from emofer.data.media import is_video_file, load_image, to_rgb
    from emofer.data.video import read_video

    if isinstance(item, Image.Image):
        return [to_rgb(item)]
    if isinstance(item, torch.Tensor):
        from torchvision.transforms.functional import to_pil_image

        frames = item if item.dim() == 4 else item[None]
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"tensor inputs must be [3,H,W] or [T,3,H,W], got {tuple(item.shape)}")
        if frames.is_floating_point() and not torch.isfinite(frames).all():
            bad = int((~torch.isfinite(frames)).sum())
            raise ValueError(f"a tensor input of shape {tuple(item.shape)} holds {bad} NaN or infinite value(s)")
        return [to_pil_image(f) for f in frames]
    if isinstance(item, (str, os.PathLike)):
        if os.path.isdir(item):  # a frame folder, as the data sets read them
            from emofer.data.media import list_frames
            from emofer.data.video import uniform_indices

            files = list_frames(item)
            return [load_image(files[i]) for i in uniform_indices(len(files), num_frames)]
        return read_video(item, num_frames) if is_video_file(item) else [load_image(item)]
    raise TypeError(f"cannot classify a {type(item).__name__}; pass PIL images, paths, frame folders or tensors")


def crop_faces(clips: list[list[Any]], larger_than: int | None = None) -> list[list[Any]]:
    """Each clip cropped to the largest face of its middle frame (the same box on every frame).

    Args:
        clips: lists of PIL frames.
        larger_than: crop only clips whose frames exceed this size on both
            sides; None crops every clip. A clip with no face found stays whole.
    """
    from emofer.face_detect import FaceCropper, enlarge_box

    cropper = FaceCropper()
    out = []
    for frames in clips:
        width, height = frames[0].size
        box = None
        if larger_than is None or min(width, height) > larger_than:
            box = cropper.detect(frames[len(frames) // 2])
        if box is None:
            out.append(frames)
            continue
        region = enlarge_box(box, (width, height), cropper.margin)
        out.append([f.crop(region) for f in frames])
    return out


def build_model(cfg: Any) -> EmoFERModel:
    """Builds an :class:`EmoFERModel` from an experiment config or its ``model`` node.

    Parts are built in order (encoder, face prior, LLM head, fusion wired from
    their dims, temporal step); parts in ``freeze`` are frozen.

    Raises:
        WiringError: two parts cannot be connected; the message names both.
    """
    cfg, imports = model_node(cfg)
    check_freeze(cfg.freeze)
    check_classes(cfg.classes)
    encoder = expect_part(ENCODERS.build(cfg.encoder), VisionEncoder, "encoder", cfg.encoder.name)
    prior = FACE_PRIORS.build(cfg.face_prior)
    if prior is not None:
        expect_part(prior, FacePrior, "face prior", cfg.face_prior.name)
    llm = expect_part(LLM_HEADS.build(cfg.llm, **llm_overrides(cfg)), LLMHead, "LLM head", cfg.llm.name)
    check_agr(cfg, prior)
    fusion = build_fusion(cfg, fusion_spec(cfg, encoder, prior, llm))
    temporal = build_temporal(cfg.temporal, llm.hidden_size)
    model = EmoFERModel(cfg, encoder, prior, fusion, temporal, llm, imports)
    for name, part in model.parts().items():
        if name in cfg.freeze:
            set_frozen(part, True)
    return model.train()


def kept_parts(absent: list[str], present: set[str]) -> list[str]:
    """The shortest module prefixes that cover every absent key and no present one.

    ``["fusion.face_queries", "fusion.face_proj.weight", "fusion.face_proj.bias"]`` with
    nothing else under ``fusion.face_proj`` becomes ``["fusion.face_proj", "fusion.face_queries"]``.
    """
    out: set[str] = set()
    for key in absent:
        parts = key.split(".")
        chosen = key
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if not any(k == prefix or k.startswith(prefix + ".") for k in present):
                chosen = prefix
                break
        out.add(chosen)
    return sorted(out)

