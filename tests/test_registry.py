"""Registry semantics, error messages and plugin discovery through real distributions."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from emofer.registry import ComponentConfigError, DuplicateComponentError, Registry, UnknownComponentError


@pytest.fixture
def widgets() -> Registry:
    reg = Registry("widget", "emofer_test.widgets", public_name="WIDGETS")

    @reg.register("round-widget")
    class Round:
        """A round widget.

        More text that the description leaves out.
        """

        def __init__(self, radius: float, color: str = "red") -> None:
            self.radius, self.color = radius, color

    @reg.register()
    def square_widget(side: int = 2) -> dict:
        """Builds a square widget."""
        return {"side": side}

    return reg


def test_register_get_build(widgets):
    obj = widgets.build({"name": "round-widget", "radius": 2.0})
    assert (obj.radius, obj.color) == (2.0, "red")
    assert widgets.build(OmegaConf.create({"name": "round-widget", "radius": 1}), color="blue").color == "blue"
    assert widgets.build({"name": "square_widget"}) == {"side": 2}
    assert widgets.get("square_widget")(side=5) == {"side": 5}


def test_names_describe_contains_iter(widgets):
    assert widgets.names() == ["round-widget", "square_widget"]
    assert widgets.names("round*") == ["round-widget"]
    assert widgets.names("*-widget") == ["round-widget"]
    assert widgets.describe("round-widget") == "A round widget."
    assert "round-widget" in widgets and "hexagon" not in widgets
    assert list(widgets) == ["round-widget", "square_widget"]
    assert len(widgets) == 2
    assert widgets.source("round-widget") == __name__


def test_duplicate_name_is_an_error_naming_the_module(widgets):
    with pytest.raises(DuplicateComponentError, match=rf"'round-widget' is already registered by {__name__}"):

        @widgets.register("round-widget")
        class Other:  # noqa: F841
            pass


def test_force_replaces(widgets):
    @widgets.register("round-widget", force=True)
    def replacement() -> str:
        """Replaced."""
        return "new"

    assert widgets.build({"name": "round-widget"}) == "new"


def test_unknown_name_suggests_lists_and_explains(widgets):
    with pytest.raises(UnknownComponentError) as info:
        widgets.get("round-widgte")
    msg = str(info.value)
    assert "unknown widget 'round-widgte'" in msg
    assert "Did you mean 'round-widget'?" in msg
    assert "Registered widgets: round-widget, square_widget." in msg
    assert "@WIDGETS.register" in msg and "emofer_test.widgets" in msg
    assert isinstance(info.value, LookupError)


def test_unknown_name_without_close_match_has_no_suggestion(widgets):
    with pytest.raises(UnknownComponentError, match=r"unknown widget 'zzz'\. Registered") as info:
        widgets.build({"name": "zzz"})
    assert "Did you mean" not in str(info.value)


def test_wrong_keyword_names_component_and_accepted_args(widgets):
    with pytest.raises(
        ComponentConfigError,
        match=r"widget 'round-widget': unexpected argument 'colour' \(did you mean 'color'\?\)\. "
        r"It accepts: radius, color",
    ):
        widgets.build({"name": "round-widget", "radius": 1, "colour": "blue"})


def test_missing_required_argument(widgets):
    with pytest.raises(ComponentConfigError, match=r"missing required argument\(s\) 'radius'"):
        widgets.build({"name": "round-widget"})


def test_config_without_name(widgets):
    with pytest.raises(ComponentConfigError, match=r"needs a 'name' key"):
        widgets.build({"radius": 1})


def _write_distribution(site: Path, dist: str, group: str, entry: str, module: str, code: str) -> None:
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_plugin_discovered_from_a_real_distribution(plugin_site):
    _write_distribution(
        plugin_site,
        "gadget-plugin",
        "emofer_test.gadgets",
        "laser = gadget_plugin_mod:Laser",
        "gadget_plugin_mod",
        '''
        class Laser:
            """A laser gadget from a plugin."""
            def __init__(self, power: int = 3):
                self.power = power
        ''',
    )
    reg = Registry("gadget", "emofer_test.gadgets")
    assert "laser" in reg
    assert reg.build({"name": "laser", "power": 9}).power == 9
    assert reg.source("laser") == "plugin gadget-plugin (laser)"
    assert reg.describe("laser") == "A laser gadget from a plugin."


def test_broken_plugin_warns_once_and_registry_keeps_working(plugin_site):
    _write_distribution(
        plugin_site,
        "broken-plugin",
        "emofer_test.broken",
        "kaput = broken_plugin_mod:Thing",
        "broken_plugin_mod",
        "raise ImportError('missing dependency xyz')\n",
    )
    reg = Registry("thing", "emofer_test.broken")

    @reg.register("fine")
    def fine() -> int:
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reg.names() == ["fine"]
        assert reg.build({"name": "fine"}) == 1
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "'kaput'" in messages[0] and "broken-plugin" in messages[0] and "missing dependency xyz" in messages[0]


def test_third_party_encoder_shows_in_emofer_list(tmp_path):
    """A package registering an encoder through an entry point appears in `emofer list` unedited."""
    _write_distribution(
        tmp_path,
        "acme-encoders",
        "emofer.encoders",
        "acme-vit = acme_encoders_mod",
        "acme_encoders_mod",
        '''
        from emofer.encoders import ENCODERS

        @ENCODERS.register("acme-vit")
        def acme_vit(width: int = 8):
            """ACME's in-house vision transformer."""
            raise NotImplementedError("not built in this test")
        ''',
    )
    emofer_exe = Path(sys.executable).parent / "emofer"
    env = {"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent), "COLUMNS": "200"}
    out = subprocess.run(
        [str(emofer_exe), "list", "encoders"], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "acme-vit" in out.stdout
    assert "ACME's in-house vision transformer." in out.stdout
    assert "plugin acme-encoders (acme-vit)" in out.stdout
