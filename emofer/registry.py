"""One ``Registry`` class; one instance per component kind.

A registry maps lower-case kebab-case ids to classes or factory functions.
Components join a registry three ways: the :meth:`Registry.register`
decorator in an imported module, a module listed under ``custom_imports:``
in a config, or an entry point in the registry's group (loaded lazily on the
first lookup).

Example:
    >>> from emofer.registry import Registry
    >>> TOYS = Registry("toy")
    >>> @TOYS.register("ball")
    ... class Ball:
    ...     '''A round toy.'''
    ...     def __init__(self, size: int = 1):
    ...         self.size = size
    >>> TOYS.build({"name": "ball", "size": 3}).size
    3
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

log = logging.getLogger(__name__)

DOCS_URL = "docs/registries.md"


class UnknownComponentError(KeyError):
    """Raised when a registry has no component of the requested name (a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicateComponentError(KeyError, ValueError):
    """Raised when a name is registered twice without ``force=True``."""

    def __str__(self) -> str:
        return str(self.args[0])


class ComponentConfigError(TypeError):
    """Raised when a component is built with arguments it does not accept."""


@dataclass(frozen=True)
class Entry:
    """A registered component: the object and where it came from."""

    name: str
    obj: Callable[..., Any]
    source: str  # "emofer", "plugin <dist> (<entry point>)" or the defining module

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


def _source_of(obj: Any) -> str:
    module = getattr(obj, "__module__", "") or ""
    return "emofer" if module == "emofer" or module.startswith("emofer.") else module


class Registry:
    """A named collection of buildable components of one kind.

    Args:
        kind: what the registry holds, used in messages (``"encoder"``).
        entry_point_group: the ``importlib.metadata`` entry-point group whose
            plugins are loaded on first lookup (``"emofer.encoders"``).
        builtin_packages: packages whose public submodules are imported on
            first lookup to register the built-in components (so
            ``import emofer`` stays light).
        public_name: the name users import the instance by (``"ENCODERS"``),
            used in messages.
    """

    def __init__(
        self,
        kind: str,
        entry_point_group: str | None = None,
        builtin_packages: tuple[str, ...] = (),
        public_name: str | None = None,
    ) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.public_name = public_name or kind.upper().replace(" ", "_") + "S"
        self._builtin_packages = builtin_packages
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = False
        self._loading = False
        self._plugin_source: str | None = None

    # -- registration -------------------------------------------------
    def register(
        self, name: str | None = None, *, force: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that registers a class or factory function.

        Args:
            name: the id; defaults to the object's ``__name__``.
            force: replace an existing registrant instead of raising.
        """

        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name or obj.__name__, obj, force=force)
            return obj

        return decorator

    def add(self, name: str, obj: Callable[..., Any], *, force: bool = False) -> None:
        """Registers ``obj`` under ``name`` (the non-decorator form)."""
        if not callable(obj):
            raise TypeError(f"{self.kind} {name!r}: only classes and functions can be registered")
        existing = self._entries.get(name)
        if existing is not None and existing.obj is not obj and not force:
            where = getattr(existing.obj, "__module__", "?")
            raise DuplicateComponentError(
                f"{self.kind} {name!r} is already registered by {where}."
                f"{existing.obj.__qualname__}; pass force=True to replace it"
            )
        source = self._plugin_source or _source_of(obj)
        self._entries[name] = Entry(name, obj, source)

    # -- lookup -------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._plugins_loaded or self._loading:
            return
        self._loading = True
        try:
            for package in self._builtin_packages:
                _import_submodules(package)
            if self.entry_point_group:
                for ep in metadata.entry_points(group=self.entry_point_group):
                    self._load_entry_point(ep)
        finally:
            self._loading = False
            self._plugins_loaded = True

    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = getattr(ep.dist, "name", None) or "unknown distribution"
        self._plugin_source = f"plugin {dist} ({ep.name})"
        try:
            obj = ep.load()
            if not inspect.ismodule(obj) and ep.name not in self._entries:
                self.add(ep.name, obj)
        except Exception as err:  # a broken plugin must not break emofer
            warnings.warn(
                f"emofer: could not load {self.kind} plugin {ep.name!r} = {ep.value!r} "
                f"from {dist} (entry-point group {self.entry_point_group}): "
                f"{type(err).__name__}: {err}",
                RuntimeWarning,
                stacklevel=3,
            )
        finally:
            self._plugin_source = None

    def _entry(self, name: str) -> Entry:
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        msg = f"unknown {self.kind} {name!r}."
        if close:
            msg += " Did you mean " + ", ".join(repr(c) for c in close) + "?"
        msg += f" Registered {self.kind}s: " + (", ".join(known) if known else "(none)") + "."
        group = self.entry_point_group or "an entry point"
        msg += (
            f" To add one, decorate it with @{self.public_name}.register(...) in a module you "
            f"import (or list under custom_imports:), or declare an entry point in the group "
            f"{group!r}; see {DOCS_URL}."
        )
        return msg

    def get(self, name: str) -> Callable[..., Any]:
        """Returns the registered class or factory."""
        return self._entry(name).obj

    def source(self, name: str) -> str:
        """Where ``name`` came from: ``emofer``, a plugin, or a user module."""
        return self._entry(name).source

    def describe(self, name: str) -> str:
        """The first line of the component's docstring."""
        return self._entry(name).description

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell wildcard pattern."""
        self._ensure_loaded()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry(kind={self.kind!r}, group={self.entry_point_group!r})"

    # -- building -----------------------------------------------------
    def build(self, cfg: Mapping[str, Any] | Any, **overrides: Any) -> Any:
        """Builds a component from ``{"name": ..., **kwargs}``.

        ``cfg`` may be a dict or an omegaconf node; ``overrides`` are merged on
        top (used by neighbours to pass wiring dims). A keyword the component
        does not accept raises :class:`ComponentConfigError` naming the
        component and what it does accept.
        """
        kwargs = _to_dict(cfg)
        if "name" not in kwargs:
            raise ComponentConfigError(
                f"a {self.kind} config needs a 'name' key; got keys {sorted(kwargs)}"
            )
        name = kwargs.pop("name")
        kwargs.update(overrides)
        obj = self.get(name)
        _check_kwargs(self.kind, name, obj, kwargs)
        return obj(**kwargs)


    def check_types(self, cfg: Mapping[str, Any] | Any, where: str) -> None:
        """Checks a component config's numbers and flags against the builder's annotations, without building.

        Only ``int``, ``float`` and ``bool`` arguments (optionally ``| None``)
        are checked; unknown names are left to :meth:`build`. ``where`` is the
        config key of the component (``"model.fusion"``), named in the error.

        Raises:
            ComponentConfigError: e.g. ``model.fusion.num_queries is 'four'; fusion 'x' expects int``.
        """
        kwargs = _to_dict(cfg)
        name = kwargs.pop("name", None)
        if name not in self:
            return
        obj = self.get(name)
        try:
            hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
        except Exception:  # annotations that do not resolve are not checked
            return
        for key, value in kwargs.items():
            expected = _scalar_types(hints.get(key))
            if expected and not any(_is_a(value, t) for t in expected):
                wanted = " or ".join(t.__name__ for t in expected)
                raise ComponentConfigError(
                    f"config key '{where}.{key}' is {value!r}; {self.kind} {name!r} expects {wanted}"
                )


def _scalar_types(hint: Any) -> tuple[type, ...]:
    """The scalar types (int, float, bool, None) an annotation allows, or () when it allows anything else."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not members or not all(m in (int, float, bool, type(None)) for m in members):
        return ()
    return tuple(members)


def _is_a(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _import_submodules(package: str) -> None:
    """Imports ``package`` and every public submodule of it (built-ins register on import).

    ``package`` may be a plain module, which is imported alone.
    """
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def _to_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, str):
        return {"name": cfg}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def accepted_arguments(obj: Callable[..., Any]) -> tuple[list[str], list[str], bool]:
    """(all keyword names, required names, accepts **kwargs) of a builder."""
    sig = inspect.signature(obj)
    names, required, var_kw = [], [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return names, required, var_kw


def _check_kwargs(kind: str, name: str, obj: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    names, required, var_kw = accepted_arguments(obj)
    unknown = [] if var_kw else [k for k in kwargs if k not in names]
    missing = [k for k in required if k not in kwargs]
    if not unknown and not missing:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, names, n=1)
        parts.append(f"unexpected argument {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if missing:
        parts.append("missing required argument(s) " + ", ".join(repr(m) for m in missing))
    raise ComponentConfigError(
        f"{kind} {name!r}: " + "; ".join(parts) + ". It accepts: " + (", ".join(names) or "(nothing)")
    )
