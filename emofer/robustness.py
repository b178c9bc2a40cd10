"""Prompt robustness: one trained model evaluated under several prompts (``eval.prompt_variants``).

An MLLM's answer depends on how it is asked. The variants are:

- ``ferid`` — FERID's category question with the options in the data set's
  order (what ``emofer eval`` asks; its numbers equal the plain evaluation's);
- ``ferid/order-k`` (``orders: K``) — the same question with the label list
  in the k-th seeded permutation (``numpy.random.default_rng([seed, k])``);
- one variant per question wording of the instruction set (``wordings:
  true``): the conversational questions of :data:`emofer.data.instructions.CONVERSATION_TEMPLATES`,
  each followed by the same option list;
- ``<wording>/no-options`` (``no_options: true``) — each wording asked without
  listing the options.

Every variant is read out as ``eval.mode`` says (``score``: the label scores
after that prompt; ``generate``: the greedy answer, parsed, with its invalid
rate). :func:`summarize_variants` reports UAR and WAR as mean ± std (sample
std) and the worst case over the variants.

Example:
    >>> [v.name for v in prompt_variants(orders=2, no_options=True)]
    ['ferid', 'ferid/order-1', 'ferid/order-2', 'ferid/no-options']
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emofer.data.instructions import CATEGORY_TEMPLATE, CONVERSATION_TEMPLATES
from emofer.metrics import INVALID, expression_metrics, summarize

log = logging.getLogger(__name__)

OPTIONS = " Choose one from the following options: {{{options}}}."
"""The option list FERID appends to its question."""
WORDINGS = {
    "ferid": CATEGORY_TEMPLATE[: CATEGORY_TEMPLATE.index(" Choose")],
    "feel": CONVERSATION_TEMPLATES[0][0],
    "describe": CONVERSATION_TEMPLATES[1][0],
    "which-emotion": CONVERSATION_TEMPLATES[2][0],
    "gives-away": CONVERSATION_TEMPLATES[3][0],
}
"""The question wordings of the instruction set, by short name (``{medium}`` is image or video)."""
METRICS = ("uar", "war", "invalid_rate")


@dataclass(frozen=True)
class PromptVariant:
    """One way of asking: a wording, with or without the options, in an option order.

    Attributes:
        name: e.g. ``ferid``, ``ferid/order-2``, ``feel``, ``describe/no-options``.
        wording: a key of :data:`WORDINGS`.
        options: list the candidate labels after the question.
        order: 0 = the data set's order; k > 0 = the k-th seeded permutation.
        seed: seed of the permutations.
    """

    name: str
    wording: str = "ferid"
    options: bool = True
    order: int = 0
    seed: int = 0

    def question(self, classes: Sequence[str], video: bool = False) -> str:
        """The question text for a data set's ``classes``."""
        text = WORDINGS[self.wording].format(medium="video" if video else "image")
        if not self.options:
            return text
        labels = list(classes)
        if self.order:
            rng = np.random.default_rng([self.seed, self.order])
            labels = [labels[i] for i in rng.permutation(len(labels))]
        return text + OPTIONS.format(options=", ".join(labels))


def prompt_variants(orders: int = 0, wordings: bool = False, no_options: bool = False, seed: int = 0) -> list[PromptVariant]:
    """The variants an ``eval.prompt_variants`` node asks for (``ferid`` always first)."""
    if orders < 0:
        raise ValueError(f"eval.prompt_variants.orders must be >= 0, got {orders}")
    names = list(WORDINGS) if wordings else ["ferid"]
    out = [PromptVariant("ferid", seed=seed)]
    out += [PromptVariant(f"ferid/order-{k}", order=k, seed=seed) for k in range(1, orders + 1)]
    out += [PromptVariant(w, wording=w, seed=seed) for w in names if w != "ferid"]
    if no_options:
        out += [PromptVariant(f"{w}/no-options", wording=w, options=False, seed=seed) for w in names]
    return out


def variants_from_config(node: Any) -> list[PromptVariant]:
    """The variants of ``cfg.eval.prompt_variants``; empty when it asks for nothing beyond ``ferid``."""
    variants = prompt_variants(int(node.orders), bool(node.wordings), bool(node.no_options), int(node.seed))
    return variants if len(variants) > 1 else []


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
        elif isinstance(value, dict):
            value = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in value.items()}
        out[key] = value
    return out


@torch.no_grad()
def evaluate_variants(
    model: Any,
    loaders: Sequence[Any],
    names: Sequence[str],
    variants: Sequence[PromptVariant],
    mode: str = "score",
    max_new_tokens: int = 8,
) -> dict[str, list[dict[str, Any]]]:
    """Per data set, one row per variant: ``variant``, ``question`` (first batch's) and the metrics.

    Each batch is read once and asked every variant's question. The medium
    (image or video) follows the data set's own question.
    """
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[dict[str, Any]]] = {}
    for name, loader in zip(names, loaders, strict=True):
        metrics: dict[str, Any] = {}
        classes: list[str] = []
        asked: dict[str, str] = {}
        for batch in loader:
            batch.pop("skipped", None)
            batch = _to(batch, device)
            classes = list(batch["classes"])
            video = " video" in batch["questions"][0]
            index = {c: i for i, c in enumerate(classes)}
            truth = torch.as_tensor([int(t) for t in batch["targets"]])
            for v in variants:
                question = v.question(classes, video)
                asked.setdefault(v.name, question)
                preds = model.predict_batch(
                    {**batch, "questions": [question] * len(batch["ids"])}, mode=mode, max_new_tokens=max_new_tokens
                )
                idx = torch.as_tensor([index.get(p.label, INVALID) if p.label is not None else INVALID for p in preds])
                metrics.setdefault(v.name, expression_metrics(len(classes))).update(idx, truth)
        out[name] = [
            {"variant": v.name, "question": asked.get(v.name, ""),
             **{k: summarize(metrics[v.name].compute(), classes)[k] for k in (*METRICS, "num_samples")}}
            for v in variants if v.name in metrics
        ]
    return out


def summarize_variants(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Across the variants of one data set: ``<metric>_mean``, ``_std`` (sample std), ``_worst``
    (lowest UAR/WAR, highest invalid rate) and ``_best``, plus ``variants`` (how many)."""
    out: dict[str, Any] = {"variants": len(rows)}
    for key in METRICS:
        values = [float(r[key]) for r in rows]
        out[f"{key}_mean"] = statistics.fmean(values) if values else None
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        worst, best = (max, min) if key == "invalid_rate" else (min, max)
        out[f"{key}_worst"] = worst(values) if values else None
        out[f"{key}_best"] = best(values) if values else None
    return out


def variants_markdown(per_set: dict[str, list[dict[str, Any]]]) -> str:
    """Per-variant rows, then the spread per data set, as Markdown."""
    lines = ["| data set | variant | UAR | WAR | invalid |", "|---|---|---|---|---|"]
    for name, rows in per_set.items():
        for r in rows:
            lines.append(f"| {name} | {r['variant']} | {r['uar']:.4f} | {r['war']:.4f} | {r['invalid_rate']:.4f} |")
    lines += ["", "| data set | variants | UAR mean ± std | UAR worst | WAR mean ± std | WAR worst | invalid worst |",
              "|---|---|---|---|---|---|---|"]
    for name, rows in per_set.items():
        s = summarize_variants(rows)

        def pm(key: str, s: dict[str, Any] = s) -> str:
            return f"{s[f'{key}_mean']:.4f}" + ("" if s[f"{key}_std"] is None else f" ± {s[f'{key}_std']:.4f}")

        lines.append(f"| {name} | {s['variants']} | {pm('uar')} | {s['uar_worst']:.4f} | {pm('war')} | "
                     f"{s['war_worst']:.4f} | {s['invalid_rate_worst']:.4f} |")
    return "\n".join(lines) + "\n"
