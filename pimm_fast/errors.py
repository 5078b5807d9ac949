"""Errors a user can fix: the command line prints them as one line (``pimm-fast: error: ...``) and exits 2."""
from __future__ import annotations


class UsageError(ValueError):
    """A bad option, path or input that the user can fix; the message says what is wrong and what to do.

    Raised by any command (or library code called by one) to have ``pimm-fast`` print
    ``pimm-fast: error: <message>`` on stderr and exit with status 2, without a traceback.
    """


class TrainingDiverged(FloatingPointError):
    """The loss or the model's output stopped being finite; raised before a NaN reaches a metric or a file."""
