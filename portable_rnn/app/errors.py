"""The error the programs raise for bad user input: the CLI prints it as one line and exits 2."""

from __future__ import annotations

__all__ = ["UsageError", "Terminated"]


class UsageError(Exception):
    """A problem with the user's input (a file, a flag, a checkpoint), said in one line.

    Backend and device problems arrive as :class:`portable_rnn.backends.BackendError`,
    which the CLI reports the same way.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it stops as after Ctrl-C (exit status 143)."""
