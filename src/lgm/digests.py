"""Content digests of files lgm is handed (weights), memoized so that each file is read once per process."""

from __future__ import annotations

import hashlib
from pathlib import Path

_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_sha256(f: Path) -> str:
    st = f.stat()
    key = (str(f), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
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
