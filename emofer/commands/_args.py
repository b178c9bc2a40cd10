"""Argument parsing the subcommands share."""

from __future__ import annotations


def key_values(items: list[str], what: str) -> dict:
    """``["dim=64", "act=gelu"]`` to ``{"dim": 64, "act": "gelu"}`` (values parsed as YAML; ``key=`` is "").

    Raises:
        ConfigError: an item without ``=`` or a key, naming ``what`` and the item.
    """
    import yaml

    from emofer.config import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value) if value else ""
    return out
