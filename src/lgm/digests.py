"""Content digests of files: plain (integrity checks read the bytes every time) and memoized for weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _file_sha256(f: Path) -> str:
    # Weights are read once per process: a file of the same size and mtime is taken to be unchanged.
    st = f.stat()
    key = (str(f), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(f)
    return _DIGESTS[key]


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file (of a directory: over its files' names and digests), memoized per size and mtime.

    Hashing runs at about 1 GB/s, so a ViT-L file costs about a second, paid once per process.
    """
    p = Path(path).resolve()
    if not p.is_dir():
        return _file_sha256(p)
    digest = hashlib.sha256()
    for f in sorted(f for f in p.iterdir() if f.is_file()):
        digest.update(f"{f.name}:{_file_sha256(f)}\n".encode())
    return digest.hexdigest()
