"""``hf:PATH``: a Hugging Face ``datasets`` directory on disk, read without copying it into a cache.

Two layouts are read: what ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
write (``state.json`` / ``dataset_dict.json`` next to ``.arrow`` files), and a
directory of parquet files as the Hub holds them (``train-00000-of-00001.parquet``,
``data/test-*.parquet``, ``<config>/train/0000.parquet``; the split is the
first part of the file name or the name of a folder above it). Reading needs
the optional ``datasets`` package (``pip install 'lgm[hf]'``), imported only here.

The image column is the one of ``Image`` feature (or of ``{bytes, path}``
structs, or of raw bytes); the label column the one of ``ClassLabel`` feature
(class names from the feature), else an integer or string column named
``label``/``labels`` (class names: its sorted distinct values). Either can be
named with options: ``hf,image=img,label=fine_label:PATH``.

Splits: ``train``; ``test``, else ``validation`` as the test split (as the
Hub's Food-101 and ImageNet-1k hold their official test sets); with a
``test``, a ``validation`` is the official validation split. A dataset with a
single split gets a test split carved as for a single folder tree (options
``test=`` and ``seed=``, recorded in ``meta["split"]``). A split whose labels
are all -1 (an unlabelled test set) is left out with a warning.

Encoded images are held in memory (the size of the image column on disk) and
decoded lazily like image files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lgm.data.base import ImageDataset, carve_test_split
from lgm.data.images import BadImage, FileSplit, OnBadImage, check_on_bad_image, file_problem, warn
from lgm.data.sources import SourceSpec
from lgm.errors import DatasetError, MissingResourceError

HF_LAYOUT = """\
  <path>/dataset_dict.json, <path>/<split>/{state.json,dataset_info.json,*.arrow}   DatasetDict.save_to_disk
  <path>/{state.json,dataset_info.json,*.arrow}                                    Dataset.save_to_disk (one split)
  <path>/[data/]<split>-*.parquet  or  <path>/.../<split>/*.parquet                parquet files, e.g. from the Hub
  columns: an image (Image feature) and a label (ClassLabel, or an int/str column 'label')"""
EXTRA_HINT = "pip install 'lgm[hf]' (or: pip install datasets)"
VAL_NAMES = ("validation", "valid", "val", "dev")
SPLIT_NAMES = ("train", "test") + VAL_NAMES
IMAGE_NAMES = ("image", "img", "images", "picture", "pixel_values")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target")


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise MissingResourceError(
            f"reading hf: datasets needs the Hugging Face `datasets` package: {EXTRA_HINT}") from None
    return datasets


@dataclass
class Table:
    """One split as read: its arrow table and its ``datasets.Features``."""

    table: Any
    features: Any


def read_splits(path: Path, name: str) -> dict[str, Table]:
    """Split name -> table of the saved dataset or parquet files at ``path``."""
    datasets = import_datasets()
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises many types for a damaged directory
            raise DatasetError(f"{name}: cannot read {path} with datasets.load_from_disk: "
                               f"{type(e).__name__}: {e}") from None
        if isinstance(loaded, datasets.DatasetDict):
            return {k: _arrow(v) for k, v in loaded.items()}
        return {"train": _arrow(loaded)}  # one split, whatever it was called: a test split is carved from it
    files = sorted(path.rglob("*.parquet"))
    if not files:
        from lgm.data.readers import describe

        raise MissingResourceError(f"{name}: no saved dataset (dataset_dict.json / state.json) or parquet files in "
                                   f"{path}; {describe(path)}\nExpected layout:\n{HF_LAYOUT}")
    import pyarrow as pa
    import pyarrow.parquet as pq

    grouped: dict[str, list[Path]] = {}
    for f in files:
        grouped.setdefault(parquet_split(f.relative_to(path)), []).append(f)
    out = {}
    for split, group in grouped.items():
        try:
            tables = [pq.read_table(f) for f in group]
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(f"{name}: cannot read the {split} parquet files ({', '.join(str(f) for f in group[:3])}"
                               f"{' ...' if len(group) > 3 else ''}): {e}") from None
        out[split] = Table(table, datasets.Features.from_arrow_schema(table.schema))
    return out


def _arrow(ds) -> Table:
    # "arrow" format with a full slice: the memory-mapped table, with any saved index mapping applied.
    return Table(ds.with_format("arrow")[:], ds.features)


def parquet_split(rel: Path) -> str:
    """The split of a parquet file from its path: 'data/train-00000-of-00001.parquet' -> 'train'."""
    stem = rel.name[: -len(".parquet")]
    for cand in (stem.split("-", 1)[0], stem.split(".", 1)[0], *reversed(rel.parts[:-1])):
        if cand.lower() in SPLIT_NAMES:
            return cand.lower()
    return "train"


def pick_column(table: Table, wanted: str | None, kind: str, name: str) -> str:
    """The image or label column: the named one, else detected by feature type, else by a conventional name."""
    datasets = import_datasets()
    columns = list(table.table.column_names)
    if wanted is not None:
        if wanted not in columns:
            raise DatasetError(f"{name}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    if kind == "image":
        typed = [c for c in columns if isinstance(table.features.get(c), datasets.Image)]
        typed = typed or [c for c in columns if _is_image_storage(table.table.schema.field(c).type)]
        conventional = IMAGE_NAMES
    else:
        typed = [c for c in columns if isinstance(table.features.get(c), datasets.ClassLabel)]
        conventional = LABEL_NAMES
    if len(typed) == 1:
        return typed[0]
    preferred = [c for c in conventional if c in (typed or columns)]
    if preferred and (typed or kind == "label"):
        return preferred[0]
    feats = ", ".join(f"{c} ({_describe_feature(table.features.get(c))})" for c in columns)
    typ = "Image" if kind == "image" else "ClassLabel"
    found = f"several {typ} columns ({', '.join(typed)})" if typed else f"no {typ} column"
    raise DatasetError(f"{name}: cannot tell the {kind} column: {found}. Columns: {feats}. "
                       f"Name it: hf,{kind}=COLUMN:{table_path_hint(name)}")


def table_path_hint(name: str) -> str:
    return name.partition(":")[2]


def _describe_feature(f) -> str:
    return type(f).__name__ if f is not None else "?"


def _is_image_storage(t) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def image_sources(table: Table, column: str, name: str) -> tuple[list[bytes | None], list[str | None]]:
    """(encoded bytes or None, file path or None) of every row of the image column."""
    import pyarrow as pa

    blobs: list[bytes | None] = []
    paths: list[str | None] = []
    for chunk in table.table.column(column).chunks:
        t = chunk.type
        if pa.types.is_struct(t):
            n = len(chunk)
            blobs += chunk.field("bytes").to_pylist() if t.get_field_index("bytes") >= 0 else [None] * n
            paths += chunk.field("path").to_pylist() if t.get_field_index("path") >= 0 else [None] * n
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
            blobs += chunk.to_pylist()
            paths += [None] * len(chunk)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            paths += chunk.to_pylist()
            blobs += [None] * len(chunk)
        else:
            raise DatasetError(f"{name}: column {column!r} holds {t}, not images "
                               "(an Image feature, image bytes or file paths)")
    return blobs, paths


def class_table(tables: dict[str, Table], column: str, name: str) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Class names and every split's labels (int64, -1 = unlabelled) from the label column."""
    datasets = import_datasets()
    import pyarrow as pa

    feats = {s: t.features.get(column) for s, t in tables.items()}
    missing = [s for s, t in tables.items() if column not in t.table.column_names]
    if missing:
        raise DatasetError(f"{name}: split(s) {', '.join(missing)} have no column {column!r}")
    class_labels = [f for f in feats.values() if isinstance(f, datasets.ClassLabel)]
    if class_labels:
        names = list(class_labels[0].names)
        if any(not isinstance(f, datasets.ClassLabel) or list(f.names) != names for f in feats.values()):
            raise DatasetError(f"{name}: the splits' {column!r} columns name different classes")
        return names, {s: _int_column(t, column) for s, t in tables.items()}
    types = {t.table.schema.field(column).type for t in tables.values()}
    if all(pa.types.is_integer(t) for t in types):
        raw = {s: _int_column(t, column) for s, t in tables.items()}
        values = sorted({v for r in raw.values() for v in r.tolist() if v >= 0})
        lookup = {v: i for i, v in enumerate(values)}
        labels = {s: torch.tensor([lookup.get(v, -1) for v in r.tolist()], dtype=torch.long) for s, r in raw.items()}
        return [str(v) for v in values], labels
    if all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in types):
        raw_s = {s: t.table.column(column).to_pylist() for s, t in tables.items()}
        values_s = sorted({v for r in raw_s.values() for v in r if v is not None})
        lookup_s = {v: i for i, v in enumerate(values_s)}
        labels = {s: torch.tensor([lookup_s.get(v, -1) if v is not None else -1 for v in r], dtype=torch.long)
                  for s, r in raw_s.items()}
        return values_s, labels
    raise DatasetError(f"{name}: label column {column!r} holds {', '.join(map(str, types))}; "
                       "expected a ClassLabel, integer or string column")


def _int_column(table: Table, column: str) -> torch.Tensor:
    """An integer column as int64 (nulls -> -1, "no label"), copied out of the read-only arrow buffers."""
    return torch.from_numpy(table.table.column(column).fill_null(-1).to_numpy().astype(np.int64))


def assign_splits(available: list[str], name: str) -> dict[str, str]:
    """lgm split (train / test / val) -> the dataset's split name."""
    if "train" not in available:
        if len(available) != 1:
            raise DatasetError(f"{name}: no 'train' split among {', '.join(available)}; expected train "
                               "(and test / validation), or a single split to carve a test split from")
        return {"train": available[0]}
    out = {"train": "train"}
    val = next((v for v in VAL_NAMES if v in available), None)
    if "test" in available:
        out["test"] = "test"
        if val is not None:
            out["val"] = val
    elif val is not None:
        out["test"] = val
    return out


def load_hf(name: str, on_bad_image: OnBadImage = "fail") -> ImageDataset:
    """``hf[,test=..][,seed=..][,image=COL][,label=COL]:PATH`` (see the module docstring)."""
    spec = SourceSpec.parse(name)
    check_on_bad_image(on_bad_image)
    path = spec.path
    if not path.is_dir():
        from lgm.data.readers import describe

        raise MissingResourceError(f"{name}: {describe(path)}\nExpected layout:\n{HF_LAYOUT}")
    tables = read_splits(path, name)
    first = tables.get("train") or next(iter(tables.values()))
    image_col = pick_column(first, spec.options.get("image"), "image", name)
    label_col = pick_column(first, spec.options.get("label"), "label", name)
    class_names, labels = class_table(tables, label_col, name)
    for split in list(tables):
        lab = labels[split]
        if len(lab) and bool((lab < 0).all()):
            warn(f"{name}: split {split!r} has no labels (all -1); it is left out")
            del tables[split], labels[split]
        elif bool((lab < 0).any()):
            raise DatasetError(f"{name}: split {split!r} has {int((lab < 0).sum())} unlabelled row(s) "
                               f"(label -1 or missing in column {label_col!r})")
    if not tables:
        raise DatasetError(f"{name}: no split with labels")
    plan = assign_splits(list(tables), name)
    unused = sorted(set(tables) - set(plan.values()))
    if unused:
        warn(f"{name}: split(s) {', '.join(unused)} not used (lgm reads train, test, and validation)")
    rows = {s: _rows(tables[s], image_col, path, s, name) for s in set(plan.values())}
    meta: dict[str, Any] = {"hf_columns": {"image": image_col, "label": label_col}, "hf_splits": dict(plan)}
    splits: dict[str, FileSplit] = {}
    if "test" in plan:
        spec.refuse_carve_options(f"{path} has its own {plan['test']!r} split")
        for ours, theirs in plan.items():
            idx = torch.arange(len(labels[theirs]))
            splits[ours] = _file_split(rows[theirs], labels[theirs], idx, name, ours, on_bad_image, class_names)
        meta["test_split"] = f"the dataset's {plan['test']!r} split"
    else:
        test, seed = spec.carve_settings()
        src = plan["train"]
        ids = [f"{src}/{i}" for i in range(len(labels[src]))]
        train_idx, test_idx, record = carve_test_split(labels[src], class_names, ids, test, seed, name)
        splits["train"] = _file_split(rows[src], labels[src], train_idx, name, "train", on_bad_image, class_names)
        splits["test"] = _file_split(rows[src], labels[src], test_idx, name, "test", on_bad_image, class_names)
        how = f"{test:.0%} per class" if isinstance(test, float) else f"{test} per class"
        meta["test_split"] = f"carved from {src!r}: {how}, stratified, seed {seed}"
        meta["split"] = record
    return ImageDataset(name, class_names, splits["train"], splits["test"], source=str(path), meta=meta,
                        val=splits.get("val"))


@dataclass
class _Rows:
    names: list[str]
    blobs: list[bytes | None]
    bad: list[str | None]
    """Why a row cannot be an image (found without decoding), else None."""


def _rows(table: Table, column: str, root: Path, split: str, name: str) -> _Rows:
    blobs, paths = image_sources(table, column, name)
    names, bad = [], []
    for i, (b, p) in enumerate(zip(blobs, paths)):
        if b is not None:
            names.append(f"{root} {split} row {i}" + (f" ({p})" if p else ""))
            bad.append(None if len(b) else "empty image bytes")
        elif p:
            # A path-only image (an Image feature saved without embedding its file): relative to the dataset.
            file = Path(p) if Path(p).is_absolute() else root / p
            names.append(str(file))
            bad.append(file_problem(file))
        else:
            names.append(f"{root} {split} row {i}")
            bad.append("no image (neither bytes nor a path)")
    return _Rows(names, blobs, bad)


def _file_split(rows: _Rows, labels: torch.Tensor, index: torch.Tensor, name: str, split: str,
                on_bad_image: OnBadImage, class_names: list[str]) -> FileSplit:
    idx = index.tolist()
    good = [i for i in idx if rows.bad[i] is None]
    bad = [BadImage(rows.names[i], rows.bad[i]) for i in idx if rows.bad[i] is not None]
    fs = FileSplit([rows.names[i] for i in good], labels[good], channels=3, on_bad_image=on_bad_image,
                   name=f"{name} {split}", blobs=[rows.blobs[i] for i in good])
    fs._bad(bad, "reading")
    if bad and on_bad_image == "skip":
        counts = torch.bincount(fs.labels, minlength=len(class_names))
        empty = [class_names[c] for c in range(len(class_names)) if counts[c] == 0]
        if empty and split == "train":
            raise DatasetError(f"{name} {split}: no usable image left in class(es) {', '.join(empty)} "
                               "after skipping bad rows")
    return fs
