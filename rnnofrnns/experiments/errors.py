"""The errors an experiment's command reports as one line (`python -m rnnofrnns` prints
`error: <message>`): UsageError for arguments that cannot work (exit 2, like argparse's own),
RunError for a run that cannot go on (exit 1)."""
from __future__ import annotations


class UsageError(ValueError):
    """An argument or a combination of arguments that cannot work; raised before anything is written."""


class RunError(RuntimeError):
    """A run that stopped: a non-finite loss, an unreadable checkpoint, data that cannot be used."""
