"""Checks a registered part the way a plugin author needs: does it build, are its declared dims
what it produces, do gradients reach it, and does a tiny composed model learn with it?

``emofer check-part KIND NAME [key=value ...]`` prints the report;
:func:`emofer.testing.check_part` is the same for a pytest test.

Example:
    >>> report = check_part("fusions", "mlp2x-gelu", steps=10)  # doctest: +SKIP
    >>> report.ok
    True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

SLOTS = {"encoders": "encoder", "face_priors": "face_prior", "fusions": "fusion", "llm_heads": "llm"}
"""Registry (plural CLI name) to the ``model`` config key the part fills."""


@dataclass
class Check:
    """One line of a report: ``level`` is ``ok``, ``warn`` (worth a look, not a failure) or ``fail``."""

    name: str
    level: str
    detail: str


@dataclass
class PartReport:
    """What :func:`check_part` found; ``ok`` when every check passed."""

    kind: str
    name: str
    checks: list[Check] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed (warnings allowed)."""
        return all(c.level != "fail" for c in self.checks)

    def add(self, name: str, ok: bool | str, detail: str) -> None:
        self.checks.append(Check(name, ok if isinstance(ok, str) else ("ok" if ok else "fail"), detail))

    def __str__(self) -> str:
        warned = any(c.level == "warn" for c in self.checks)
        verdict = "FAILED" if not self.ok else ("passed, with warnings" if warned else "all checks passed")
        lines = [f"{self.kind} {self.name!r}: {verdict}"]
        lines += [f"  [{c.level}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def _slot(kind: str) -> str:
    key = kind if kind in SLOTS else {v: k for k, v in SLOTS.items()}.get(kind, kind.replace("-", "_") + "s")
    if key not in SLOTS:
        raise ValueError(f"unknown part kind {kind!r}; choose from {', '.join(SLOTS)}")
    return key


def _dims(report: PartReport, slot: str, model: Any, batch: Mapping[str, Any]) -> None:
    """Declared dims against the shapes the part really produces on one batch."""
    with torch.no_grad():
        features = model.extract_features(batch["pixels"], batch.get("face_pixels"))
        if slot == "encoder":
            enc = model.encoder
            got = tuple(features.visual.shape[1:])
            want = (enc.num_tokens, enc.embed_dim)
            report.add("dims", got == want, f"tokens {got}, declared (num_tokens, embed_dim) = {want}")
        elif slot == "face_prior":
            prior, out = model.face_prior, features.priors
            got = (out.global_feat.shape[-1], out.local_feat.shape[-1], out.local_feat.shape[1])
            want = (prior.global_dim, prior.local_dim, prior.num_local)
            report.add("dims", got == want, f"(global, local, num_local) {got}, declared {want}")
        elif slot == "fusion":
            fused = model.fusion(features.visual, features.priors, model.llm.embed_text(list(batch["questions"])))
            got = tuple(fused.shape[1:])
            want = (model.fusion.num_output_tokens, model.llm.hidden_size)
            report.add("dims", got == want, f"tokens {got}, declared (num_output_tokens, LLM hidden size) = {want}")
        else:
            loss = model(batch)
            report.add("dims", loss.dim() == 0, f"loss shape {tuple(loss.shape)} (a scalar is expected)")


def _gradients(report: PartReport, part: torch.nn.Module, model: Any, batch: Mapping[str, Any]) -> None:
    trainable = [(n, p) for n, p in part.named_parameters() if p.requires_grad]
    if not trainable:
        report.add("gradients", True, "no trainable parameters (a frozen or parameter-free part)")
        return
    model.zero_grad(set_to_none=True)
    model(batch).backward()
    dead = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    detail = f"{len(trainable) - len(dead)}/{len(trainable)} trainable tensors get a gradient"
    if dead:
        detail += (
            f"; none reaches {', '.join(dead[:6])}{' ...' if len(dead) > 6 else ''} — fine for outputs the"
            " LLM reads as text (attribute heads), a wiring bug otherwise"
        )
    report.add("gradients", "fail" if len(dead) == len(trainable) else ("warn" if dead else "ok"), detail)
    model.zero_grad(set_to_none=True)


def _learns(report: PartReport, model: Any, batches: Sequence[Mapping[str, Any]], steps: int, lr: float) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        report.add("learning", False, "the composed model has nothing to train")
        return
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    for batch in itertools.islice(itertools.cycle(batches), steps):
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        report.losses.append(loss.item())
    k = max(1, steps // 5)
    first, last = sum(report.losses[:k]) / k, sum(report.losses[-k:]) / k
    finite = all(math.isfinite(x) for x in report.losses)
    report.add("learning", finite and last < first, f"mean loss of the first {k} steps {first:.4f}, last {k} {last:.4f}")


def check_part(
    kind: str,
    name: str,
    kwargs: Mapping[str, Any] | None = None,
    base: str = "emo-llama-tiny",
    steps: int = 30,
    lr: float = 1e-3,
    samples: int = 64,
    overrides: Sequence[str] = (),
) -> PartReport:
    """Builds ``name`` of registry ``kind`` into the ``base`` preset and checks it on SynthFER.

    Args:
        kind: ``encoders``, ``face_priors``, ``fusions`` or ``llm_heads`` (singular forms work too).
        name: the registered name.
        kwargs: the part's constructor arguments.
        base: the preset whose other parts surround it (tiny, CPU).
        steps: optimizer steps of the learning check.
        lr: AdamW learning rate of the learning check.
        samples: SynthFER training images the steps cycle over.
        overrides: further dotlist overrides of the base config.

    Returns:
        A :class:`PartReport`; building errors are reported as a failed ``build`` check.
    """
    import lightning as L

    from emofer.config import load_config
    from emofer.experiment import build_datamodule
    from emofer.model import build_model

    key = _slot(kind)
    slot = SLOTS[key]
    report = PartReport(key, name)
    cfg = load_config(base, list(overrides))
    cfg.model[slot] = {"name": name, **dict(kwargs or {})}
    cfg.data.train = [{"name": "synthfer", "split": "train", "size": samples}]
    cfg.data.num_workers = 0
    L.seed_everything(cfg.seed, verbose=False)
    try:
        model = build_model(cfg)
    except Exception as err:  # the report names any failure to build or wire
        report.add("build", False, f"{type(err).__name__}: {err}")
        return report
    part = getattr(model, slot)
    n_params = sum(p.numel() for p in part.parameters())
    n_train = sum(p.numel() for p in part.parameters() if p.requires_grad)
    report.add("build", True, f"{type(part).__name__}, {n_params:,} parameters ({n_train:,} trainable)")
    datamodule = build_datamodule(cfg, model)
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    try:
        _dims(report, slot, model, batches[0])
        _gradients(report, part, model, batches[0])
        _learns(report, model, batches, steps, lr)
    except Exception as err:
        report.add("forward", False, f"{type(err).__name__}: {err}")
    return report
