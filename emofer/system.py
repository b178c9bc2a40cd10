"""The Lightning system that trains and evaluates an :class:`~emofer.model.EmoFERModel`.

The model is built elsewhere (:func:`emofer.build_model`) and handed in, as
Lightning's style asks: the system adds the optimisation (training stages,
per-part learning rates, warmup + cosine), the metrics and the predictions.

Training stages say which parts train, for how many steps, at which learning
rates::

    stages:
      - {train: [fusion], steps: 200}                          # warm the projector up
      - {train: [fusion, llm], lr_groups: {llm: 2.0e-4}}       # then tune the LLM too

A stage unfreezes the parts it names through
:meth:`EmoFERModel.set_frozen`, so a part with its own policy (an LLM with
LoRA adapters) trains what that policy says, and freezes the others (they
stay in eval mode: no dropout, no batch-norm statistics drift). Without
stages, the parts the model was built trainable (not in ``model.freeze``)
train for the whole run.

Example:
    >>> model = emofer.build_model(emofer.load_config("emo-llama-tiny"))  # doctest: +SKIP
    >>> system = EmoFERSystem(model, lr=1e-3, max_steps=300, eval_mode="score")  # doctest: +SKIP
    >>> lightning.Trainer(max_steps=300).fit(system, datamodule)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import nn

from emofer.config import EVAL_MODES, SCHEDULERS
from emofer.metrics import INVALID, SCALARS, expression_metrics, summarize
from emofer.part import is_frozen

if TYPE_CHECKING:
    from emofer.cache import FeatureCache
    from emofer.model import EmoFERModel, Features

log = logging.getLogger(__name__)



def compile_trained(model: EmoFERModel, **options: Any) -> list[str]:
    """``torch.compile``s, in place, the parts of ``model`` that train now (``train.compile``).

    A part built of repeated blocks (the LLM's decoder layers: an
    ``nn.ModuleList`` of one class) has each block compiled, so one graph
    serves every layer and start-up pays for one layer (regional
    compilation); any other trained part is compiled whole. Frozen parts run
    eagerly. ``Module.compile`` keeps state-dict keys as they are, so
    checkpoints and ``save_pretrained`` do not change. Compilation happens at
    the first step (tens of seconds on a CPU). ``options`` go to ``torch.compile``
    (e.g. ``backend``). Returns what was compiled.
    """
    done = []
    for name, part in model.parts().items():
        if not any(p.requires_grad for p in part.parameters()):
            continue
        blocks = max(
            (m for m in part.modules() if isinstance(m, nn.ModuleList) and len(m) > 1
             and len({type(c) for c in m}) == 1 and any(True for _ in m[0].parameters())),
            key=len, default=None,
        )
        if blocks is not None:
            for block in blocks:
                block.compile(**options)
            done.append(f"{name}: {len(blocks)} x {type(blocks[0]).__name__}")
        else:
            for module in part if isinstance(part, nn.ModuleList) else [part]:
                if any(True for _ in module.parameters()):
                    module.compile(**options)
                    done.append(f"{name}: {type(module).__name__}")
    log.info("train.compile: %s", "; ".join(done) or "nothing trains")
    return done


@dataclass(frozen=True)
class Stage:
    """One training stage: the parts that train, for how long, at which learning rates.

    Attributes:
        train: part names (keys of :meth:`EmoFERModel.parts`).
        steps: optimizer steps of this stage; None for the last stage (until ``max_steps``).
        lr_groups: per-part learning rates for this stage (else the run's).
    """

    train: tuple[str, ...]
    steps: int | None = None
    lr_groups: Mapping[str, float] | None = None


def parse_stages(stages: Sequence[Mapping[str, Any]], parts: Sequence[str]) -> list[Stage]:
    """Validates stage mappings (``{train, steps, lr_groups}``) against the model's part names."""
    out = []
    for i, raw in enumerate(stages):
        unknown = set(raw) - {"train", "steps", "lr_groups", "name"}
        if unknown:
            raise ValueError(
                f"train.stages[{i}]: unknown key(s) {sorted(unknown)}; use train, steps, lr_groups"
            )
        train = tuple(raw.get("train") or ())
        lr_groups = dict(raw.get("lr_groups") or {})
        bad = [p for p in (*train, *lr_groups) if p not in parts]
        if bad:
            raise ValueError(f"train.stages[{i}]: unknown part(s) {bad}; this model has {list(parts)}")
        steps = raw.get("steps")
        if steps is None and i != len(stages) - 1:
            raise ValueError(f"train.stages[{i}]: only the last stage may leave 'steps' out")
        out.append(Stage(train, None if steps is None else int(steps), lr_groups))
    return out


def lr_factor(step: int, warmup_steps: int, max_steps: int, scheduler: str) -> float:
    """The learning-rate multiplier at ``step``: linear warmup, then cosine to 0 or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class _GroupSchedule:
    """The LR multiplier of one parameter group: stage rate / base rate x warmup-cosine.

    Holds plain numbers only, so ``LambdaLR.state_dict()`` (which stores this
    object's ``__dict__``) stays loadable with ``weights_only=True``.
    """

    stage_ends: list[int | None]
    stage_lrs: list[float]
    base_lr: float
    warmup: int
    total: int
    kind: str

    def __call__(self, step: int) -> float:
        index = next((i for i, end in enumerate(self.stage_ends) if end is None or step < end), -1)
        scale = self.stage_lrs[index] / self.base_lr if self.base_lr else 0.0
        return scale * lr_factor(step, self.warmup, self.total, self.kind)


class EmoFERSystem(L.LightningModule):
    """Trains and evaluates an EmoFERModel: stages, per-part LRs, metrics, predictions.

    Args:
        model: the assembled model.
        classes: the evaluation classes (canonical names; metrics index into
            them); default the model's classes.
        lr: learning rate of every part without its own.
        lr_groups: per-part learning rates, e.g. ``{"fusion": 1e-3, "llm": 2e-4}``.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup_steps: linear warmup steps.
        scheduler: ``cosine`` (to 0 at ``max_steps``) or ``constant`` after warmup.
        max_steps: total optimizer steps (for the schedule).
        stages: training stages (see the module docstring); none = one stage.
        eval_mode: ``score``, ``generate`` or ``classifier``.
        max_new_tokens: answer length in ``generate`` mode.
        feature_cache: serves the frozen encoder/prior outputs from disk.
        compile: ``torch.compile`` the parts that train (:func:`compile_trained`).
    """

    def __init__(
        self,
        model: EmoFERModel,
        classes: Sequence[str] | None = None,
        lr: float = 1e-3,
        lr_groups: Mapping[str, float] | None = None,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        scheduler: str = "cosine",
        max_steps: int = 100,
        stages: Sequence[Mapping[str, Any]] | None = None,
        eval_mode: str = "score",
        max_new_tokens: int = 8,
        feature_cache: FeatureCache | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"eval mode {eval_mode!r} is not one of {EVAL_MODES}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {scheduler!r} is not one of {SCHEDULERS}")
        self.model = model
        self.classes = list(classes or model.classes)
        self.lr = lr
        self.lr_groups = dict(lr_groups or {})
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.scheduler = scheduler
        self.max_steps = max_steps
        self.eval_mode = eval_mode
        self.max_new_tokens = max_new_tokens
        self.feature_cache = feature_cache
        self._parts = dict(model.parts())
        bad = [p for p in self.lr_groups if p not in self._parts]
        if bad:
            raise ValueError(f"train.lr_groups: unknown part(s) {bad}; this model has {list(self._parts)}")
        if stages:
            self.stages = parse_stages(stages, list(self._parts))
        else:
            trainable = tuple(n for n, m in self._parts.items() if not is_frozen(m))
            self.stages = [Stage(trainable)]
        if feature_cache is not None:
            trained = sorted({p for s in self.stages for p in s.train if p in feature_cache.parts})
            if trained:
                raise ValueError(f"the feature cache needs its parts frozen, but stages train {trained}")
        self.val_metrics = expression_metrics(len(self.classes), prefix="val/")
        self.test_metrics = expression_metrics(len(self.classes), prefix="test/")
        self._records: list[dict[str, Any]] = []
        self._skipped: list[str] = []
        self._active_stage: int | None = None
        self.test_results: dict[str, Any] | None = None
        self.test_records: list[dict[str, Any]] = []
        self.compiled = compile_trained(model) if compile else []

    def set_eval_classes(self, classes: Sequence[str]) -> None:
        """Evaluates against ``classes`` from now on (e.g. the next test set's, in its order)."""
        self.classes = list(classes)
        self.val_metrics = expression_metrics(len(self.classes), prefix="val/").to(self.device)
        self.test_metrics = expression_metrics(len(self.classes), prefix="test/").to(self.device)

    # -- stages and learning rates ------------------------------------------------------------

    def stage_at(self, step: int) -> int:
        """Index of the stage active at optimizer step ``step``."""
        start = 0
        for i, stage in enumerate(self.stages):
            if stage.steps is None or step < start + stage.steps:
                return i
            start += stage.steps
        return len(self.stages) - 1

    def part_lr(self, part: str, stage: int | None) -> float:
        """The learning rate of ``part`` in ``stage`` (None: the run-level rate)."""
        if stage is not None and self.stages[stage].lr_groups and part in self.stages[stage].lr_groups:
            return float(self.stages[stage].lr_groups[part])
        return float(self.lr_groups.get(part, self.lr))

    def apply_stage(self, index: int) -> None:
        """Unfreezes the parts of a stage and freezes (and puts in eval mode) all others."""
        training = set(self.stages[index].train)
        self.model.set_frozen([name for name in self._parts if name not in training])
        if index != self._active_stage:
            log.info("training stage %d: %s", index, ", ".join(sorted(training)) or "(nothing)")
            self._active_stage = index

    def _stage_params(self) -> dict[str, list[nn.Parameter]]:
        """Per part, the parameters that train in at least one stage (in a fixed order)."""
        trainable: dict[str, set[int]] = {name: set() for name in self._parts}
        for stage in self.stages:
            self.model.set_frozen([name for name in self._parts if name not in stage.train])
            for name, module in self._parts.items():
                trainable[name] |= {id(p) for p in module.parameters() if p.requires_grad}
        self._active_stage = None
        self.apply_stage(self.stage_at(self.global_step))
        return {
            name: [p for p in module.parameters() if id(p) in trainable[name]]
            for name, module in self._parts.items()
        }

    # -- steps -----------------------------------------------------------------------------------

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> list:
        """Predictions (:class:`~emofer.model.Prediction`) for a batch, in this system's eval mode.

        Lightning's ``trainer.predict(system, dataloaders)`` calls it; the model's
        own ``forward`` is the training loss.
        """
        return self.model.predict_batch(
            batch, mode=self.eval_mode, features=self._features(batch), max_new_tokens=self.max_new_tokens
        )

    def _features(self, batch: Mapping[str, Any]) -> Features | None:
        if self.feature_cache is None:
            return None
        return self.feature_cache.features(batch, self.model)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        stage = self.stage_at(self.global_step)
        if stage != self._active_stage:
            self.apply_stage(stage)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.model(batch, features=self._features(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, keep=False)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, keep=True)

    def _evaluate(self, batch: Mapping[str, Any], metrics: Any, keep: bool) -> None:
        if keep:  # samples skipped under on_bad_sample: skip are counted, never scored
            self._skipped += batch.get("skipped", [])
        if not batch["ids"]:
            return
        index = {c: i for i, c in enumerate(self.classes)}
        truth = [batch["classes"][int(t)] for t in batch["targets"]]
        missing = sorted({t for t in truth if t not in index})
        if missing:
            raise ValueError(f"true class(es) {missing} are not among the evaluation classes {self.classes}")
        preds = self.predict_step(batch)
        # a label outside the evaluation classes is no valid answer to this question
        pred_idx = [index.get(p.label, INVALID) if p.label is not None else INVALID for p in preds]
        metrics.update(torch.tensor(pred_idx), torch.tensor([index[t] for t in truth]))
        if keep:
            for sid, true, pred in zip(batch["ids"], truth, preds, strict=True):
                self._records.append(
                    {
                        "id": sid,
                        "true": true,
                        "pred": pred.label if pred.label in index else None,
                        "scores": {k: float(v) for k, v in pred.scores.items()},
                        "text": pred.text,
                    }
                )

    # -- optimisation ----------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        groups, parts = [], []
        for name, params in self._stage_params().items():
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            for subset, wd in ((decay, self.weight_decay), (no_decay, 0.0)):
                if subset:
                    groups.append({"params": subset, "lr": self.part_lr(name, None), "weight_decay": wd})
                    parts.append(name)
        if not groups:
            raise ValueError("nothing to train: every part is frozen and no stage names one")
        optimizer = torch.optim.AdamW(groups)
        ends, end = [], 0
        for stage in self.stages:
            end = None if stage.steps is None else end + stage.steps
            ends.append(end)
        lambdas = [
            _GroupSchedule(
                ends,
                [self.part_lr(p, i) for i in range(len(self.stages))],
                self.part_lr(p, None),
                self.warmup_steps,
                self.max_steps,
                self.scheduler,
            )
            for p in parts
        ]
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- epoch ends ------------------------------------------------------------------------------

    def on_validation_epoch_end(self) -> None:
        values = summarize(self.val_metrics.compute(), self.classes, prefix="val/")
        # already reduced across processes; sync_dist averages identical values (and silences Lightning)
        self.log_dict({f"val/{k}": values[k] for k in SCALARS}, prog_bar=True, sync_dist=True)
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self._records = []
        self._skipped = []

    def on_test_epoch_end(self) -> None:
        self.test_results = summarize(self.test_metrics.compute(), self.classes, prefix="test/")
        self.test_metrics.reset()
        records, skipped = self._records, self._skipped
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (records, skipped))
            records = [r for part, _ in gathered for r in part]
            skipped = [m for _, part in gathered for m in part]
        self.test_results["skipped_samples"] = len(skipped)
        if skipped:
            from emofer.data.errors import summarise

            log.warning(summarise("test", skipped))
        self.test_records = sorted(records, key=lambda r: r["id"])
        self._records = []
        self.log_dict({f"test/{k}": self.test_results[k] for k in SCALARS}, sync_dist=True)
        if self.feature_cache is not None:
            self.feature_cache.flush()

    def on_train_end(self) -> None:
        if self.feature_cache is not None:
            self.feature_cache.flush()
