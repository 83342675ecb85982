"""Errors lgm raises for bad input; the CLI prints their message without a traceback."""

from __future__ import annotations

import difflib


class LgmError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class UnknownNameError(LgmError, KeyError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(sorted(known))}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MissingResourceError(LgmError, FileNotFoundError):
    """Weights or data files that are not on disk; the message says what to put where."""


class NonFiniteLossError(LgmError):
    """The meta loss became NaN or infinite; the last good checkpoint is kept."""


class DatasetError(LgmError, ValueError):
    """A dataset on disk that does not match its expected layout, or holds bad images; the message says which files."""


class CorruptFileError(LgmError):
    """A file lgm wrote whose content no longer matches the checksum recorded with it (or cannot be parsed)."""
