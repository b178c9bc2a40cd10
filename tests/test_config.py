"""Config loading: presets, files, inheritance, overrides, misspelt keys, custom imports."""

from __future__ import annotations

import re
import sys
import textwrap

import pytest

import emofer
from emofer.config import ConfigError, load_config, merge_raw, save_config
from emofer.registry import ComponentConfigError


def test_defaults_and_overrides():
    cfg = load_config({}, ["train.lr=1e-4", "model.prompt.agr=true", "data.batch_size=4"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.model.prompt.agr is True
    assert cfg.data.batch_size == 4
    assert cfg.model.prompt.template == "vicuna_v1"


def test_misspelt_key_names_key_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'\. Did you mean 'train\.lr'\?"):
        load_config({}, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.encodr'\. Did you mean 'model\.encoder'\?"):
        load_config({"model": {"encodr": {"name": "x"}}})


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"invalid value for config key 'data\.batch_size'"):
        load_config({}, ["data.batch_size=many"])


def test_unknown_preset_suggests():
    names = emofer.list_presets()
    if names:
        typo = names[0][:-1] + "x"
        with pytest.raises(ConfigError, match=rf"Did you mean '{names[0]}'"):
            load_config(typo)
    with pytest.raises(ConfigError, match=r"no preset or file named 'definitely-not-a-preset'"):
        load_config("definitely-not-a-preset")


def test_yaml_file_with_extends_replaces_renamed_components(tmp_path):
    parent = tmp_path / "parent.yaml"
    parent.write_text(
        textwrap.dedent(
            """
            name: parent
            model:
              encoder: {name: vit-tiny, depth: 2}
              fusion: {name: mlp2x-gelu}
            train: {lr: 0.5, max_steps: 7}
            """
        )
    )
    child = tmp_path / "child.yaml"
    child.write_text(
        f"extends: {parent}\nname: child\nmodel:\n  encoder: {{name: timm, model_name: resnet10t}}\n"
        "  fusion: {}\ntrain: {lr: 0.1}\n"
    )
    cfg = load_config(child, ["model.fusion.extra=3"])
    assert cfg.name == "child"
    assert dict(cfg.model.encoder) == {"name": "timm", "model_name": "resnet10t"}  # no 'depth' leaked
    assert dict(cfg.model.fusion) == {"name": "mlp2x-gelu", "extra": 3}
    assert (cfg.train.lr, cfg.train.max_steps) == (0.1, 7)


def test_extends_cycle_is_an_error(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"extends: {b}\n")
    b.write_text(f"extends: {a}\n")
    with pytest.raises(ConfigError, match="'extends' cycle"):
        load_config(a)


def test_merge_raw_keeps_same_name_kwargs():
    base = {"model": {"llm": {"name": "causal-lm", "path": "p", "lora": {"r": 8}}}}
    out = merge_raw(base, {"model": {"llm": {"lora": {"alpha": 16}}}})
    assert out["model"]["llm"] == {"name": "causal-lm", "path": "p", "lora": {"r": 8, "alpha": 16}}


def test_custom_imports_run_before_build(tmp_path, monkeypatch):
    (tmp_path / "my_custom_fusions.py").write_text(
        "from emofer.fusion import FUSIONS\n"
        "@FUSIONS.register('my-custom-fusion')\n"
        "def my_custom_fusion(spec=None):\n"
        "    '''A user fusion.'''\n"
        "    return 'built'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config({"custom_imports": ["my_custom_fusions"]})
    assert "my_custom_fusions" in sys.modules
    assert emofer.FUSIONS.build({"name": "my-custom-fusion"}) == "built"
    assert cfg.custom_imports == ["my_custom_fusions"]
    with pytest.raises(ConfigError, match="custom_imports: cannot import 'no_such_module_xyz'"):
        load_config({"custom_imports": ["no_such_module_xyz"]})


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config({}, ["train.lr=0.25", "seed=3"])
    save_config(cfg, tmp_path / "cfg.yaml")
    again = load_config(tmp_path / "cfg.yaml")
    assert again == cfg
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("preset", emofer.list_presets())
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    for part in ("encoder", "face_prior", "fusion", "llm"):
        assert "name" in cfg.model[part]


# -- choices and ranges, checked once at load --------------------------------
@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("eval.mode=scor", "'score', 'generate', 'classifier'"),
        ("train.scheduler=linear", "'cosine', 'constant'"),
        ("model.prompt.agr_source=truth", "'predicted', 'ground_truth'"),
        ("data.on_bad_sample=ignore", "'error', 'skip'"),
        ("data.frame_sampling=random", "'uniform', 'fps'"),
        ("data.instruction=chat", "'category', 'conversation', 'mixed'"),
        ("train.init_missing=skip", "'error', 'keep'"),
    ],
)
def test_choices_are_typed_in_the_schema(override: str, choices: str) -> None:
    key, value = override.split("=")
    leaf = key.rsplit(".", 1)[-1]
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}': {leaf} must be one of \[{choices}\], got '{value}'$"):
        load_config("emo-llama-tiny", [override])


def test_the_choice_lists_are_defined_once() -> None:
    from emofer import model, system
    from emofer.config import EVAL_MODES, SCHEDULERS

    assert model.MODES is EVAL_MODES and system.EVAL_MODES is EVAL_MODES and system.SCHEDULERS is SCHEDULERS
    assert EVAL_MODES == ("score", "generate", "classifier")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["train.lr=-0.01"], r"'train\.lr' is -0\.01; expected a number >= 0"),
        (["train.lr_groups={fusion: -1e-3}"], r"'train\.lr_groups\.fusion' is -0\.001; expected a number >= 0"),
        (["train.max_steps=-1"], r"'train\.max_steps' is -1; expected an integer >= 0 \(0: no training\), or -1 with train\.max_epochs >= 1"),
        (["train.max_steps=-5", "train.max_epochs=3"], r"'train\.max_steps' is -5; expected an integer >= 0"),
        (["data.num_frames=0"], r"'data\.num_frames' is 0; expected a number >= 1"),
        (["data.batch_size=0"], r"'data\.batch_size' is 0; expected a number >= 1"),
        (["data.num_workers=-2"], r"'data\.num_workers' is -2; expected a number >= 0"),
        (["data.fps=0"], r"'data\.fps' is 0\.0; expected a number > 0"),
        (["model.classes=[]"], r"'model\.classes' is \[\]; expected a non-empty list"),
        (["eval.max_new_tokens=0"], r"'eval\.max_new_tokens' is 0; expected a number >= 1"),
        (["train.warmup_steps=-5"], r"'train\.warmup_steps' is -5; expected a number >= 0"),
    ],
)
def test_ranges_are_checked_at_load_naming_key_value_and_expectation(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("emo-llama-tiny", overrides)


def test_until_epochs_is_explicit() -> None:
    cfg = load_config("emo-llama-tiny", ["train.max_steps=-1", "train.max_epochs=2"])
    assert (cfg.train.max_steps, cfg.train.max_epochs) == (-1, 2)
    assert load_config("emo-llama-tiny", ["train.lr=0"]).train.lr == 0.0  # explicit: trains nothing
    assert load_config("emo-llama-tiny", ["train.max_steps=0"]).train.max_steps == 0  # a zero-shot evaluation


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.fusion.num_queries=four", r"config key 'model\.fusion\.num_queries' is 'four'; fusion 'face-info-mining' expects int"),
        ("model.encoder.width=2.5", r"config key 'model\.encoder\.width' is 2\.5; encoder 'cnn-tiny' expects int"),
        ("data.batch_size=four", r"invalid value for config key 'data\.batch_size': Value 'four' of type 'str' could not be converted to Integer$"),
    ],
)
def test_type_errors_in_overrides_fail_at_load_naming_the_key(override: str, match: str) -> None:
    with pytest.raises((ConfigError, ComponentConfigError), match=match):
        load_config("emo-llama-tiny", [override])
