"""Errors for bad data, and the bookkeeping behind ``on_bad_sample: skip``.

Every message names the file (and the line, for annotation files), so a bad
sample never surfaces as a traceback from deep inside PIL or PyAV.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from emofer.config import ON_BAD_SAMPLE

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Data that cannot be used: a missing root or annotation file, a bad sample or annotation line."""


class BadSampleError(DataError):
    """One sample cannot be loaded: a missing, corrupt or truncated image or video.

    Built as ``BadSampleError(path, reason)``; a single argument is taken as
    the whole message (so the error survives DataLoader workers re-raising it).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(self.path if reason is None else f"{self.path}: {reason}")


class AnnotationError(DataError):
    """A malformed annotation line, or a label that is unknown or out of range.

    Built as ``AnnotationError(path, line, reason)``; a single argument is the whole message.
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None = None, reason: str | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(where if reason is None else f"{where}: {reason}")


def check_policy(on_bad_sample: str) -> str:
    """Validates an ``on_bad_sample`` value (``error`` or ``skip``)."""
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
    return on_bad_sample


class SkipLog:
    """Counts skipped samples or lines under ``on_bad_sample: skip`` and reports them once.

    Args:
        what: what is being read, for the report (``"rafdb train"``).
        on_bad_sample: ``error`` raises the first problem; ``skip`` records it.
    """

    def __init__(self, what: str, on_bad_sample: str = "error") -> None:
        self.what = what
        self.policy = check_policy(on_bad_sample)
        self.messages: list[str] = []

    def bad(self, err: DataError) -> None:
        """Raises ``err`` under ``error``; records it under ``skip``."""
        if self.policy == "error":
            raise err
        self.messages.append(str(err))

    def __len__(self) -> int:
        return len(self.messages)

    def report(self, examples: int = 3) -> str | None:
        """Logs one warning summarising the skips (None when nothing was skipped)."""
        if not self.messages:
            return None
        msg = summarise(self.what, self.messages, examples)
        log.warning(msg)
        return msg


def summarise(what: str, messages: list[str], examples: int = 3) -> str:
    """One line: how many were skipped, by file, with a few examples."""
    files = Counter(m.split(":", 1)[0].split(", line")[0] for m in messages)
    shown = "; ".join(messages[:examples])
    more = f" (and {len(messages) - examples} more)" if len(messages) > examples else ""
    return (
        f"{what}: skipped {len(messages)} bad sample(s) or line(s) in {len(files)} file(s): {shown}{more}"
    )
