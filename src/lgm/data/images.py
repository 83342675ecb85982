"""Image files on disk: decoding any PIL mode to RGB or L, and splits backed by files.

``FileSplit`` keeps paths and labels only; images are decoded when asked for,
in a thread pool (PIL's decoders and resizers release the GIL, so threads
decode in parallel without worker processes), straight to the run's
resolution: JPEGs are decoded at a reduced DCT scale when that is still at
least the target size (``Image.draft``), which is most of the speed on
ImageNet-sized photos. Non-square images are center-cropped to a square and
resized to ``size`` x ``size`` (the usual resize-shorter-side + center-crop of
ImageNet evaluation, done in one resampling step).

Bad images -- unreadable, empty, truncated or corrupt files, pixel formats
without a sound RGB reading -- are either fatal (``on_bad_image="fail"``: the
error names every bad file found so far and why) or skipped
(``"skip"``: the file leaves the split with its label, a warning names it).
A bad image is never given a placeholder with a label.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from lgm.data.base import ImageSplit
from lgm.errors import DatasetError

OnBadImage = Literal["fail", "skip"]
BAD_IMAGE_CHOICES = ("fail", "skip")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
# Errors PIL raises for files it cannot read or decode (truncated data is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, Image.DecompressionBombError, MemoryError)
WHITE = 255


@dataclass(frozen=True)
class BadImage:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class BadImageError(DatasetError):
    def __init__(self, where: str, bad: Sequence[BadImage], hint: str = "") -> None:
        self.bad = list(bad)
        shown = "\n  ".join(str(b) for b in self.bad[:20])
        more = f"\n  ... and {len(self.bad) - 20} more" if len(self.bad) > 20 else ""
        hint = hint or "Fix or remove these files, or pass on_bad_image='skip' (CLI: --on-bad-image skip) to leave them out."
        super().__init__(f"{where}: {len(self.bad)} bad image file(s):\n  {shown}{more}\n{hint}")


def check_on_bad_image(value: str) -> str:
    if value not in BAD_IMAGE_CHOICES:
        raise DatasetError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_CHOICES)}, got {value!r}")
    return value


def warn(msg: str) -> None:
    print(f"lgm: warning: {msg}", file=sys.stderr, flush=True)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------------- decoding


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite an image with transparency onto white (how it is displayed), returning RGB."""
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (WHITE, WHITE, WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_mode(im: Image.Image, channels: int) -> Image.Image:
    """``im`` as 8-bit RGB (channels=3) or L (channels=1), converting every PIL mode by its meaning.

    - palette (P/PA) and anything with alpha (RGBA, LA, La, RGBa, P with a
      transparency entry) is composited onto white, not stripped: dropping alpha
      would show whatever colour the invisible pixels happen to hold;
    - 16-bit greyscale (I;16*, and I as PIL opens 16-bit PNGs) keeps its top 8 bits;
      PIL's own convert would clip everything above 255 to white;
    - CMYK, YCbCr, 1 (bilevel) and L go through PIL's conversions;
    - float pixels (F) have no defined range and are refused.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"{mode} pixels outside 0..65535 (min {arr.min()}, max {arr.max()})")
        im = Image.fromarray((arr >> 8).astype(np.uint8), "L")
    elif mode == "F":
        raise ValueError("floating-point pixels (mode F) have no defined range")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = _flatten_alpha(im) if has_alpha else im.convert("RGB")
    elif mode in ("RGBA", "RGBa", "LA", "La"):
        im = _flatten_alpha(im)
    elif "transparency" in im.info and mode in ("L", "RGB"):
        im = _flatten_alpha(im)
    if channels == 3:
        return im if im.mode == "RGB" else im.convert("RGB")
    if im.mode in ("L",):
        return im
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im.convert("L")  # ITU-R 601-2 luma


def decode_image(path: str | os.PathLike | io.BytesIO, size: int, channels: int = 3) -> np.ndarray:
    """The image at ``path`` (or in a binary stream) as uint8 C x size x size: center square crop, antialiased resize.

    Raises the PIL/OS error of a bad file; callers turn it into a :class:`BadImage`.
    """
    with Image.open(path) as im:
        if im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
            # Decode at the smallest DCT scale that still covers size x size.
            im.draft("RGB" if channels == 3 else "L", (size, size))
        im.load()
        im = to_mode(im, channels)
        w, h = im.size
        s = min(w, h)
        if s == 0:
            raise ValueError("image has zero width or height")
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        if (w, h) != (size, size):
            im = im.resize((size, size), Image.BILINEAR, box=box)
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


Source = str | tuple[str, bytes]
"""Where an image comes from: a file path, or (its name in messages, its encoded bytes)."""


def _try_decode(source: Source, size: int, channels: int) -> np.ndarray | BadImage:
    name, data = source if isinstance(source, tuple) else (source, None)
    try:
        return decode_image(source if data is None else io.BytesIO(data), size, channels)
    except DECODE_ERRORS as e:
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return BadImage(name, reason)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide decoding pool per worker count, created on first use."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lgm-decode")
        return pool


def decode_many(paths: Sequence[Source], size: int, channels: int, workers: int) -> list[np.ndarray | BadImage]:
    if workers <= 1 or len(paths) <= 1:
        return [_try_decode(p, size, channels) for p in paths]
    chunk = max(1, len(paths) // (4 * workers))
    return list(decode_pool(workers).map(_try_decode, paths, [size] * len(paths), [channels] * len(paths),
                                         chunksize=chunk))


# ---------------------------------------------------------------------------------------------- file splits


def decoded_bytes_limit() -> int:
    """The most memory a split may take decoded in one piece (env LGM_MAX_DECODED_BYTES, default 32 GiB)."""
    return int(os.environ.get("LGM_MAX_DECODED_BYTES", 32 << 30))


class FileSplit:
    """A split backed by image files: paths, int64 labels and optional int64 groups; decoded lazily.

    ``blobs`` (optional, one per image: encoded bytes or None) holds images
    that live in memory rather than in files, e.g. the image column of a
    Hugging Face dataset; ``paths`` then names them in messages.

    ``load`` decodes the requested images in the thread pool at the requested
    size (pixels in [0, 1], moved to ``device``). ``materialize(size)`` decodes
    the whole split once into an in-memory :class:`ImageSplit` of uint8 at
    ``size`` -- the cache a distillation run works from. ``verify()`` decodes
    everything at a tiny size to find bad files up front.
    """

    def __init__(self, paths: Sequence[str], labels: torch.Tensor | Sequence[int], groups: torch.Tensor | Sequence[int] | None = None,
                 channels: int = 3, on_bad_image: OnBadImage = "fail", workers: int | None = None, name: str = "split",
                 blobs: Sequence[bytes | None] | None = None) -> None:
        self.paths = np.asarray([str(p) for p in paths], dtype=object)
        self.blobs = None
        if blobs is not None:
            # Filled element by element: np.asarray would try to read equal-length bytes as a 2-D array.
            self.blobs = np.empty(len(blobs), dtype=object)
            for i, b in enumerate(blobs):
                self.blobs[i] = b
            if len(self.blobs) != len(self.paths):
                raise ValueError(f"{len(self.paths)} paths but {len(self.blobs)} blobs")
        self.labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        self.groups = None if groups is None else torch.as_tensor(groups, dtype=torch.long).reshape(-1)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        if self.groups is not None and self.groups.shape != self.labels.shape:
            raise ValueError(f"{len(self.labels)} labels but {len(self.groups)} group ids")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.workers = workers or default_workers()
        self.name = name
        self.skipped: list[BadImage] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"FileSplit({self.name!r}, {len(self)} images, {int(self.labels.max()) + 1 if len(self) else 0} classes)"

    def _like(self, keep: np.ndarray | torch.Tensor) -> "FileSplit":
        keep_t = torch.as_tensor(np.asarray(keep), dtype=torch.long).reshape(-1)
        out = FileSplit(self.paths[keep_t.numpy()], self.labels[keep_t], None if self.groups is None else self.groups[keep_t],
                        self.channels, self.on_bad_image, self.workers, self.name,
                        None if self.blobs is None else self.blobs[keep_t.numpy()])
        out.skipped = list(self.skipped)
        return out

    def subset(self, index: torch.Tensor) -> "FileSplit":
        return self._like(index.cpu())

    def fingerprint(self) -> str:
        """Digest of what the rows are: each file by path, size and modification time (a file edited in
        place changes it; nothing is decoded), an in-memory image by its bytes; and the labels. Memoized."""
        if getattr(self, "_fingerprint", None) is None:
            import hashlib
            import os

            h = hashlib.sha256()
            for i, path in enumerate(self.paths):
                blob = None if self.blobs is None else self.blobs[i]
                if blob is not None:
                    h.update(b"b" + hashlib.sha256(blob).digest())
                else:
                    try:
                        st = os.stat(path)
                        h.update(f"f{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
                    except OSError:
                        h.update(f"m{path}\n".encode("utf-8", "surrogateescape"))  # decoding will name it
            h.update(self.labels.numpy().tobytes())
            self._fingerprint = h.hexdigest()[:24]
        return self._fingerprint

    def sources(self, idx: np.ndarray) -> list[Source]:
        """What to decode for rows ``idx``: the file path, or (name, bytes) for an in-memory image."""
        if self.blobs is None:
            return list(self.paths[idx])
        return [p if b is None else (p, b) for p, b in zip(self.paths[idx], self.blobs[idx])]

    def _bad(self, bad: list[BadImage], what: str) -> None:
        if not bad:
            return
        if self.on_bad_image == "fail":
            raise BadImageError(f"{self.name} ({what})", bad)
        self.skipped.extend(bad)
        shown = "; ".join(str(b) for b in bad[:5]) + (f"; ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
        warn(f"{self.name}: skipped {len(bad)} bad image(s) while {what}: {shown}")

    def load(self, index: torch.Tensor, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images ``index`` as float in [0, 1], ``size`` x ``size``, on ``device``.

        A bad file fails (naming it) under ``"fail"``. Under ``"skip"`` its row is
        filled with another image *of the same class* (the next good one in split
        order) so that row and label still agree, and a warning names the file;
        ``verify()`` or ``materialize()`` first to drop bad files outright.
        """
        idx = index.cpu().reshape(-1).numpy()
        out = decode_many(self.sources(idx), size, self.channels, self.workers)
        bad_rows = [i for i, r in enumerate(out) if isinstance(r, BadImage)]
        if bad_rows:
            bad = [out[i] for i in bad_rows]
            if self.on_bad_image == "fail":
                raise BadImageError(f"{self.name} (loading a batch)", bad,
                                    hint="Run `lgm datasets --check NAME` to list every bad file, or pass "
                                         "on_bad_image='skip' (CLI: --on-bad-image skip).")
            self._bad(bad, "loading a batch (rows refilled with images of the same class)")
            for i in bad_rows:
                out[i] = self._same_class_substitute(int(idx[i]), size)
        x = torch.from_numpy(np.stack(out)) if out else torch.empty(0, self.channels, size, size, dtype=torch.uint8)
        device = torch.device(device)
        if device.type == "cuda":
            x = x.pin_memory()
        return x.to(device, non_blocking=True).float().div_(255.0)

    def _same_class_substitute(self, i: int, size: int) -> np.ndarray:
        same = torch.nonzero(self.labels == self.labels[i]).flatten().tolist()
        known_bad = {b.path for b in self.skipped}
        start = same.index(i)
        for j in same[start + 1:] + same[:start]:
            if self.paths[j] in known_bad:
                continue
            r = _try_decode(self.sources(np.asarray([j]))[0], size, self.channels)
            if not isinstance(r, BadImage):
                return r
            self.skipped.append(r)
            known_bad.add(r.path)
        raise BadImageError(f"{self.name}: no readable image left in class {int(self.labels[i])}",
                            [b for b in self.skipped if b.path in {self.paths[j] for j in same}])

    def _decode_all(self, size: int, what: str, progress: bool, batch: int = 256):
        from tqdm.auto import tqdm

        n = len(self)
        arrays: list[np.ndarray | None] = [None] * n
        bad_idx, bad = [], []
        bar = tqdm(total=n, desc=f"{what} {self.name}", disable=not progress, file=sys.stderr, dynamic_ncols=True, unit="img")
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            for i, r in zip(range(start, stop), decode_many(self.sources(np.arange(start, stop)), size, self.channels,
                                                            self.workers)):
                if isinstance(r, BadImage):
                    bad_idx.append(i)
                    bad.append(r)
                else:
                    arrays[i] = r
            bar.update(stop - start)
        bar.close()
        return arrays, bad_idx, bad

    def verify(self, progress: bool = False) -> "FileSplit":
        """Decode every file (at 8 px, cheap) and handle the bad ones: fail, or a split without them."""
        _, bad_idx, bad = self._decode_all(8, "verifying", progress)
        self._bad(bad, "verifying")
        if not bad_idx:
            return self
        keep = np.setdiff1d(np.arange(len(self)), np.asarray(bad_idx))
        out = self._like(keep)
        out.skipped = list(self.skipped)
        return out

    def decoded_bytes(self, size: int) -> int:
        """Memory the whole split takes decoded to uint8 at ``size``."""
        return len(self) * self.channels * size * size

    def materialize(self, size: int, progress: bool = False, max_bytes: int | None = None) -> ImageSplit:
        """Decode every image once into uint8 at ``size`` (bad files: fail, or left out with their labels)."""
        need = self.decoded_bytes(size)
        limit = max_bytes if max_bytes is not None else decoded_bytes_limit()
        if need > limit:
            raise DatasetError(
                f"{self.name}: decoding {len(self)} images at {size}x{size} would take {need / 2**30:.1f} GiB of memory "
                f"(limit {limit / 2**30:.1f} GiB, env LGM_MAX_DECODED_BYTES). Use a lower --res, a class subset, "
                "or the cached real side on a per-class sample (--real-features cached --cache-per-class N)."
            )
        arrays, bad_idx, bad = self._decode_all(size, "decoding", progress)
        self._bad(bad, f"decoding at {size}px")
        keep = np.setdiff1d(np.arange(len(self)), np.asarray(bad_idx, dtype=np.int64))
        keep_t = torch.from_numpy(keep).long()
        if len(keep):
            images = torch.from_numpy(np.stack([arrays[i] for i in keep]))
        else:
            images = torch.empty(0, self.channels, size, size, dtype=torch.uint8)
        groups = None if self.groups is None else self.groups[keep_t]
        return ImageSplit(images, self.labels[keep_t], groups)


# ---------------------------------------------------------------------------------------------- scanning


@dataclass
class ScanResult:
    paths: list[str]
    labels: list[int]
    bad: list[BadImage]
    ignored: int = 0  # files that are not images by their extension (README.txt, .DS_Store, ...)
    groups: list[int] | None = None


def scan_entries(entries: Iterable[tuple[Path, int, int | None]]) -> ScanResult:
    """Check (path, label, group) entries listed by a metadata file: each must be a readable, non-empty file."""
    paths, labels, groups, bad = [], [], [], []
    for path, label, group in entries:
        problem = file_problem(path)
        if problem:
            bad.append(BadImage(str(path), problem))
            continue
        paths.append(str(path))
        labels.append(label)
        groups.append(group)
    has_groups = any(g is not None for g in groups)
    return ScanResult(paths, labels, bad, 0, groups if has_groups else None)


def list_image_files(directory: Path) -> tuple[list[Path], list[BadImage], int]:
    """Image files under ``directory`` (recursively, sorted), bad entries found without decoding, ignored count.

    Bad without decoding: a broken link, an unreadable or empty file with an image extension.
    """
    files, bad, ignored = [], [], 0
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith("."):
                ignored += 1
                continue
            if not is_image_name(name):
                ignored += 1
                continue
            problem = file_problem(p)
            if problem:
                bad.append(BadImage(str(p), problem))
            else:
                files.append(p)
    return files, bad, ignored


def file_problem(p: Path) -> str | None:
    """Why ``p`` cannot be an image, judged without decoding it; None when it may be one."""
    try:
        st = p.stat()
    except FileNotFoundError:
        return "missing file (or a broken link)"
    except OSError as e:
        return f"cannot stat: {e}"
    if not p.is_file():
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    if not os.access(p, os.R_OK):
        return "not readable (permissions)"
    return None


def class_dirs(split_dir: Path) -> list[str]:
    """Sorted names of the class folders of an ImageFolder split directory."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def scan_image_folder(split_dir: Path, classes: Sequence[str], dataset: str, split: str) -> ScanResult:
    """Files of ``split_dir/<class>/**`` labelled by the position of ``<class>`` in ``classes``.

    A missing or empty class folder is an error naming it (an empty class would
    silently shift nothing but leave a label without examples).
    """
    paths, labels, bad, ignored = [], [], [], 0
    missing, empty = [], []
    for label, cls in enumerate(classes):
        d = split_dir / cls
        if not d.is_dir():
            missing.append(cls)
            continue
        files, b, ig = list_image_files(d)
        bad += b
        ignored += ig
        if not files and not b:
            empty.append(cls)
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    if missing:
        raise DatasetError(f"{dataset} {split}: {len(missing)} class folder(s) missing under {split_dir}: "
                           f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    if empty:
        raise DatasetError(f"{dataset} {split}: class folder(s) with no image files under {split_dir}: "
                           f"{', '.join(empty[:20])}{' ...' if len(empty) > 20 else ''} "
                           f"(image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ScanResult(paths, labels, bad, ignored)


def file_split(scan: ScanResult, dataset: str, split: str, on_bad_image: OnBadImage, channels: int = 3,
               class_names: Sequence[str] | None = None) -> FileSplit:
    """A FileSplit from a scan; bad files found by the scan fail or are left out (with a warning)."""
    fs = FileSplit(scan.paths, scan.labels, scan.groups, channels=channels, on_bad_image=on_bad_image,
                   name=f"{dataset} {split}")
    fs._bad(scan.bad, "scanning")
    if class_names is not None and scan.bad and on_bad_image == "skip":
        counts = torch.bincount(fs.labels, minlength=len(class_names))
        empty = [class_names[i] for i in range(len(class_names)) if counts[i] == 0]
        if empty:
            raise DatasetError(f"{dataset} {split}: no usable image left in class(es) {', '.join(empty)} "
                               "after skipping bad files")
    return fs
