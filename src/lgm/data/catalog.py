"""`lgm datasets`: the table of registered datasets, and `--check NAME` (load, decode everything, report)."""

from __future__ import annotations

import sys

import torch

from lgm.data import DATASETS, FileSplit, dataset_info, load_dataset, resolve_data_root


def list_datasets(data_root: str | None = None, brief: bool = False) -> None:
    """Every registered dataset: classes, split sizes, found or not (and where); unless brief, layout and source."""
    root = resolve_data_root(data_root)
    print(f"data root: {root or '(none: pass --data-root DIR or set LGM_DATA_ROOT)'}")
    for name in DATASETS.names():
        info = dataset_info(name)
        if info is None:
            print(f"{name}: (registered without a description)")
            continue
        try:
            where = info.locate(root)
            found = f"found: {where}" if where else "NOT FOUND"
        except OSError as e:  # e.g. an unreadable data root
            found = f"cannot look: {e}"
        print(f"{name:20s} {info.classes:5d} classes  {info.sizes}  [{found}]")
        if not brief:
            print(f"    from: {info.source}")
            for line in info.layout.splitlines():
                print(f"  {line}")
    print("folder:<path>        any <path>/train/<class>/ with <path>/test/<class>/ (or val/) image folders,")
    print("                     or one <path>/<class>/ tree: a stratified test split is carved, 20% per class, seed 0;")
    print("                     folder,test=0.1,seed=3:<path> sets them (test=5: 5 per class). Options go before")
    print("                     the colon; every command reloading the same name carves the same split.")
    print("hf:<path>            a Hugging Face datasets directory (save_to_disk, or [data/]<split>-*.parquet) with an")
    print("                     Image and a ClassLabel column (hf,image=COL,label=COL:<path> names them); train/test,")
    print("                     validation as val (as test when there is no test); one split: carved as above "
          f"[{_hf_state()}]")


def _hf_state() -> str:
    import importlib.util

    return "datasets installed" if importlib.util.find_spec("datasets") else "needs: pip install 'lgm[hf]'"


def check_dataset(name: str, data_root: str | None, on_bad_image: str) -> None:
    """Load ``name``, decode every image of file-backed splits, print what was found."""
    ds = load_dataset(name, data_root, on_bad_image=on_bad_image)
    print(f"{ds.name}: {ds.num_classes} classes, from {ds.source}")
    shown = ", ".join(ds.class_names[:10]) + (f", ... ({ds.num_classes})" if ds.num_classes > 10 else "")
    print(f"  classes: {shown}")
    for split_name, split in ds.splits().items():
        skipped = []
        if isinstance(split, FileSplit):
            split = split.verify(progress=sys.stderr.isatty())
            skipped = split.skipped
        counts = torch.bincount(split.labels.cpu(), minlength=ds.num_classes)
        line = f"  {split_name}: {len(split)} images, per class {int(counts.min())}..{int(counts.max())}"
        groups = getattr(split, "groups", None)
        if groups is not None and ds.group_names:
            g = torch.bincount(groups.cpu(), minlength=len(ds.group_names))
            present = [f"{ds.group_names[i]} {int(g[i])}" for i in range(len(g)) if g[i] > 0]
            line += f"; groups: {', '.join(present)}"
        if skipped:
            line += f"; {len(skipped)} bad file(s) left out"
        print(line)
        for bad in skipped[:20]:
            print(f"    bad: {bad}")
