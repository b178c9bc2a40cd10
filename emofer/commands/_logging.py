"""The console of emofer's commands: one line per message, no third-party adverts or deprecation spam.

Noise is filtered where it comes from, by logger and message, not by silencing
everything; ``-v`` shows all of it.
"""

from __future__ import annotations

import logging
import os
import warnings

_LIGHTNING_RANK_ZERO = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
"""Where Lightning's ``rank_zero_info`` messages (and its litlogger advert) are logged."""


class _DropMessages(logging.Filter):
    """Drops records whose message contains one of ``needles``."""

    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.needles)


class _NotLightning(logging.Filter):
    """Lightning's root package prints its records with a console handler of its own;
    ours skips them, so each Lightning message appears once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "lightning" or record.name.startswith("lightning."))


def configure(verbose: bool = False, progress: bool = True) -> None:
    """Sets up logging for one ``emofer`` command.

    Args:
        verbose: debug logs and every third-party message and warning.
        progress: False hides every progress bar, the Hugging Face libraries' too
            (their weight-loading bars), in this process and the workers it starts.
    """
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, show_time=False)
    handler.addFilter(_NotLightning())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler])
    if not progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if verbose:
        return
    for name in _LIGHTNING_RANK_ZERO:
        logging.getLogger(name).addFilter(_DropMessages("litlogger"))
    # torch deprecated LeafSpec; Lightning's own pytree helper still builds one on every step
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
