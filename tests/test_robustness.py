"""Prompt variants: the questions they ask and the spread they report (fixed numbers, by hand)."""

from __future__ import annotations

import statistics

import pytest

from emofer.data.instructions import category_question
from emofer.robustness import PromptVariant, prompt_variants, summarize_variants, variants_markdown

CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]


def test_the_ferid_variant_asks_what_evaluation_asks():
    for video in (False, True):
        assert PromptVariant("ferid").question(CLASSES, video) == category_question(CLASSES, video)


def test_orders_are_seeded_permutations_of_the_label_list():
    variants = prompt_variants(orders=3, seed=7)
    questions = [v.question(CLASSES) for v in variants]
    assert len(set(questions)) == 4  # the data set's order and three others
    for v in variants[1:]:
        listed = v.question(CLASSES).split("{")[1].rstrip("}.").split(", ")
        assert sorted(listed) == sorted(CLASSES) and listed != CLASSES
    assert [v.question(CLASSES) for v in prompt_variants(orders=3, seed=7)] == questions  # reproducible
    assert [v.question(CLASSES) for v in prompt_variants(orders=3, seed=8)] != questions


def test_wordings_and_no_options():
    variants = {v.name: v for v in prompt_variants(wordings=True, no_options=True)}
    assert list(variants)[:5] == ["ferid", "feel", "describe", "which-emotion", "gives-away"]
    assert variants["feel"].question(CLASSES, video=True) == (
        "How does the person in the video feel? Choose one from the following options: "
        "{surprise, fear, disgust, happiness, sadness, anger, neutral}."
    )
    assert variants["ferid/no-options"].question(CLASSES) == "What is the facial expression of the person in the image?"
    assert all("{" not in v.question(CLASSES) for n, v in variants.items() if n.endswith("/no-options"))
    assert len(variants) == 10
    with pytest.raises(ValueError, match="orders"):
        prompt_variants(orders=-1)


def test_the_spread_matches_a_hand_computation():
    rows = [
        {"variant": "ferid", "uar": 0.50, "war": 0.60, "invalid_rate": 0.00},
        {"variant": "ferid/order-1", "uar": 0.40, "war": 0.45, "invalid_rate": 0.10},
        {"variant": "feel", "uar": 0.30, "war": 0.39, "invalid_rate": 0.20},
    ]
    s = summarize_variants(rows)
    assert s["variants"] == 3
    assert s["uar_mean"] == pytest.approx(0.40) and s["uar_std"] == pytest.approx(0.10)  # sample std of .5 .4 .3
    assert s["war_mean"] == pytest.approx(0.48) and s["war_std"] == pytest.approx(statistics.stdev([0.6, 0.45, 0.39]))
    assert (s["uar_worst"], s["war_worst"], s["war_best"]) == (0.30, 0.39, 0.60)
    assert s["invalid_rate_worst"] == 0.20 and s["invalid_rate_best"] == 0.0  # the worst invalid rate is the highest
    text = variants_markdown({"set": [{**r, "num_samples": 10} for r in rows]})
    assert "| set | feel | 0.3000 | 0.3900 | 0.2000 |" in text
    # WAR: deviations .12, -.03, -.09 from .48; sqrt((.0144 + .0009 + .0081) / 2) = .1082
    assert "| set | 3 | 0.4000 ± 0.1000 | 0.3000 | 0.4800 ± 0.1082 | 0.3900 | 0.2000 |" in text
