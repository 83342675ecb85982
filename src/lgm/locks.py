"""Exclusive use of a directory by one lgm process: an advisory lock held for the process's work.

The lock is ``fcntl.flock`` on a small file inside the directory. The OS releases it when its holder
dies in any way (SIGKILL included), so a lock never outlives its process and no stale-lock clean-up
is needed; the file itself stays (removing it could let two processes lock different files).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from lgm.errors import LgmError

LOCK_FILE = ".lgm.lock"


class DirectoryInUseError(LgmError):
    """Another live process holds the directory's lock."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def exclusive(directory: str | Path, what: str, way_out: str) -> Iterator[Path]:
    """Hold ``directory``'s lock for the ``with`` block (creating the directory); refuse at once if held.

    ``what`` names the directory in the message ("run directory", "real-feature cache"); ``way_out``
    says what to do instead.
    """
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryInUseError(
                f"the {what} {directory} is in use by another lgm process (pid {_holder(path)}); "
                f"{way_out}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)  # releases the lock
