"""Errors lgm raises for bad input; the CLI prints their message without a traceback."""

from __future__ import annotations

import difflib


class LgmError(Exception):
    """A problem with the user's input or environment, explained in the message (exit status 1)."""

    exit_code = 1


class UsageError(LgmError, ValueError):
    """Settings that cannot work together or an unknown name: a usage error (exit status 2, as argparse's)."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """An unknown name, with the closest known ones.

    ``listing=False``: ``known`` holds suggestions only (the whole list is too long to print, e.g. timm's);
    ``also`` are suggestions put first; ``extra`` is appended (another place to look, how to list everything).
    """

    def __init__(self, kind: str, name: str, known: list[str], listing: bool = True, extra: str = "",
                 also: list[str] = ()) -> None:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5) if listing else list(known)
        close = list(also) + [c for c in close if c not in also]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        listed = f" Known {kind}s: {', '.join(sorted(known))}." if listing else ""
        super().__init__(f"unknown {kind} {name!r}.{hint}{listed}" + (f" {extra}" if extra else ""))

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
