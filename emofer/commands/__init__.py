"""Subcommands of the ``emofer`` CLI, one module each (see :mod:`emofer.cli`)."""
