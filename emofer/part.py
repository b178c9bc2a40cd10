"""The base of every model part: declared attributes checked at construction, and freezing.

Each kind of part (:class:`~emofer.encoders.VisionEncoder`,
:class:`~emofer.encoders.FacePrior`, :class:`~emofer.fusion.Fusion`,
:class:`~emofer.llm.LLMHead`, temporal steps) subclasses :class:`Part` and
declares what every implementation must provide with
:class:`abstract_attribute`. A concrete part provides each one as a class
attribute, a property, or by setting it in ``__init__``; one that forgets
fails when it is built, with the attribute's name — not later, inside the
wiring.

Freezing lives here too, in one place: :meth:`Part.freeze`,
:meth:`Part.unfreeze` (a part with its own policy, such as an LLM with LoRA
adapters, overrides it), :attr:`Part.is_frozen`, and ``train()`` keeping a
frozen part in eval mode. :func:`is_frozen` and :func:`set_frozen` do the same
for any module (a group of parts).

Example:
    >>> class Widget(Part):
    ...     width = abstract_attribute("how wide a widget is")
    >>> class Good(Widget):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.width = 3
    >>> Good().width
    3
    >>> Widget()
    Traceback (most recent call last):
    ...
    TypeError: Widget does not set 'width' (Widget: how wide a widget is); set it in __init__ or define it on the class
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, TypeVar

from torch import nn

P = TypeVar("P", bound="Part")


class abstract_attribute:  # noqa: N801 - used like ``property``
    """A value every concrete subclass must provide (a class attribute, a property, or set in ``__init__``).

    Args:
        doc: what the value is, quoted in the error of a part that lacks it.
    """

    def __init__(self, doc: str = "") -> None:
        self.__doc__ = doc
        self.name = ""
        self.owner = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.owner = name, owner.__name__

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(_missing_message(type(obj), [self])) from None

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


def _missing_message(cls: type, missing: list[abstract_attribute]) -> str:
    names = ", ".join(repr(a.name) for a in missing)
    what = "; ".join(f"{a.owner}: {a.__doc__}" if a.__doc__ else a.owner for a in missing)
    return f"{cls.__qualname__} does not set {names} ({what}); set it in __init__ or define it on the class"


def missing_attributes(obj: Any) -> list[abstract_attribute]:
    """The :class:`abstract_attribute` declarations ``obj`` has neither overridden nor set."""
    missing, seen = [], set()
    for klass in type(obj).__mro__:
        for name, value in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            if isinstance(value, abstract_attribute) and name not in obj.__dict__:
                missing.append(value)
    return missing


class _PartMeta(abc.ABCMeta):
    """Checks the declared attributes once ``__init__`` has run (``ABCMeta``, so ABC mixins combine)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        missing = missing_attributes(obj)
        if missing:
            raise TypeError(_missing_message(cls, missing))
        return obj

    @property
    def __signature__(cls) -> inspect.Signature:
        """The signature of ``__init__`` (without ``self``), not of this ``__call__``: registries read it."""
        sig = inspect.signature(cls.__init__)
        return sig.replace(parameters=list(sig.parameters.values())[1:])


def is_frozen(module: nn.Module) -> bool:
    """True when no parameter of ``module`` requires gradients (parameter-free modules count as frozen)."""
    return not any(p.requires_grad for p in module.parameters())


def set_frozen(module: nn.Module, frozen: bool) -> None:
    """Freezes ``module``, or makes it trainable under its own policy (:meth:`Part.unfreeze`).

    ``module`` may be a :class:`Part` or any module holding parts (each is
    handled by its own policy; other parameters follow ``frozen``).
    """
    if isinstance(module, Part):
        if frozen:
            module.freeze()
        else:
            module.unfreeze()
        return
    parts = [m for m in module.children() if isinstance(m, Part)]
    owned = {id(p) for part in parts for p in part.parameters()}
    for p in module.parameters():
        if id(p) not in owned:
            p.requires_grad_(not frozen)
    for part in parts:
        set_frozen(part, frozen)
    if frozen:
        module.eval()


class Part(nn.Module, metaclass=_PartMeta):
    """A model part: its declared attributes are checked when it is built; it freezes as one.

    A frozen part gets no gradients and stays in eval mode when a parent calls
    ``.train()`` (Lightning does every epoch): no dropout, stochastic depth or
    batch-norm updates in a frozen tower.

    ``pretrained_source`` names where the part's weights were loaded from (a
    directory or hub id), or is None; frozen weights from a named source are
    not copied by ``save_pretrained`` (it reloads them from there).
    """

    pretrained_source: str | None = None

    def freeze(self: P) -> P:
        """Stops gradients to every parameter (adapters included) and switches to eval mode."""
        self.requires_grad_(False)
        self.eval()
        return self

    def unfreeze(self: P) -> P:
        """Makes the part trainable again under its own policy (all parameters by default)."""
        self.requires_grad_(True)
        return self

    @property
    def is_frozen(self) -> bool:
        """True when no parameter requires gradients (parameter-free parts count as frozen)."""
        return is_frozen(self)

    def train(self: P, mode: bool = True) -> P:
        """Sets train mode, except that a frozen part (parameters, none trainable) stays in eval mode.

        A parameter-free part (the ``concat`` temporal step) follows its parent.
        """
        frozen = self.is_frozen and any(True for _ in self.parameters())
        return super().train(mode and not frozen)
