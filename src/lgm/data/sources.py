"""Dataset names that point at files: ``folder:PATH`` and ``hf:PATH``, with options.

Options sit between the scheme and the colon, comma-separated::

    folder:PATH                       defaults (a carved test split: 20% per class, seed 0)
    folder,test=0.1,seed=3:PATH       10% per class, seed 3
    folder,test=5:PATH                5 test images per class
    hf,image=img,label=fine_label:PATH

Everything after the first colon is the path, so no path (whatever characters
it holds) can be mistaken for an option, and the name needs no shell quoting
(no ``?``, ``&`` or ``#``). The name is what run directories and artifacts
record, so every command that reloads the dataset by it carves the same split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lgm.errors import DatasetError

SCHEMES = ("folder", "hf")
DEFAULT_TEST = 0.2
DEFAULT_SEED = 0
OPTIONS = {
    "folder": {"test": "test split to carve from a single class tree: a fraction (0.2) or images per class (5)",
               "seed": "seed of the carved test split (an integer)"},
    "hf": {"test": "test split to carve when the dataset has a single split: a fraction or images per class",
           "seed": "seed of the carved test split",
           "image": "the image column (default: the only column of Image feature / image bytes)",
           "label": "the label column (default: the only ClassLabel column, else 'label' / 'labels')"},
}
SYNTAX = "SCHEME[,key=value...]:PATH, e.g. folder,test=0.1,seed=3:PATH"


def scheme_of(name: str) -> str | None:
    """'folder' / 'hf' when ``name`` is a file-backed dataset name, else None (a registered name)."""
    head, sep, _ = name.partition(":")
    if not sep:
        return None
    scheme = head.split(",", 1)[0]
    return scheme if scheme in SCHEMES else None


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``scheme[,key=value...]:path`` name."""

    name: str
    scheme: str
    path: Path
    options: dict[str, str]

    @classmethod
    def parse(cls, name: str) -> "SourceSpec":
        scheme = scheme_of(name)
        if scheme is None:
            raise ValueError(f"{name!r} is not a {' / '.join(SCHEMES)} dataset name")
        head, _, path = name.partition(":")
        options: dict[str, str] = {}
        for item in head.split(",")[1:]:
            key, eq, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key or not value:
                raise DatasetError(f"{name}: option {item!r} is not key=value ({SYNTAX})")
            if key not in OPTIONS[scheme]:
                known = "; ".join(f"{k}: {v}" for k, v in OPTIONS[scheme].items())
                raise DatasetError(f"{name}: unknown option {key!r} for {scheme}: datasets. Options: {known}")
            if key in options:
                raise DatasetError(f"{name}: option {key!r} given twice")
            options[key] = value
        if not path:
            raise DatasetError(f"{name}: no path after the colon ({SYNTAX})")
        spec = cls(name, scheme, Path(path).expanduser(), options)
        spec.carve_settings()  # bad values fail at parse time, before any file is read
        return spec

    def has_carve_options(self) -> bool:
        return "test" in self.options or "seed" in self.options

    def carve_settings(self) -> tuple[float | int, int]:
        """(test fraction or images per class, seed) for carving a test split."""
        raw = self.options.get("test")
        test: float | int = DEFAULT_TEST
        if raw is not None:
            try:
                test = int(raw) if raw.isdigit() else float(raw)
            except ValueError:
                test = -1
            if (isinstance(test, int) and test < 1) or (isinstance(test, float) and not 0 < test < 1):
                raise DatasetError(f"{self.name}: test={raw} must be a fraction in (0, 1), e.g. test=0.2, "
                                   "or a number of test images per class, e.g. test=5")
        raw_seed = self.options.get("seed", str(DEFAULT_SEED))
        try:
            seed = int(raw_seed)
        except ValueError:
            raise DatasetError(f"{self.name}: seed={raw_seed} must be an integer") from None
        if seed < 0:
            raise DatasetError(f"{self.name}: seed={raw_seed} must be >= 0")
        return test, seed

    def refuse_carve_options(self, why: str) -> None:
        if self.has_carve_options():
            raise DatasetError(f"{self.name}: the test=/seed= options carve a test split, but {why}; "
                               "drop the options to use it")
