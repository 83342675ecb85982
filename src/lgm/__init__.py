"""lgm: dataset distillation for linear probes on frozen backbones (Linear Gradient Matching)."""

from lgm.version import __version__

__all__ = [
    "__version__",
    "DistillConfig",
    "DistilledSet",
    "distill",
    "load_backbone",
    "load_dataset",
    "list_backbones",
]


def __getattr__(name: str):
    # Lazy: `import lgm` stays cheap (the CLI's --help does not pay for torch).
    if name == "DistillConfig":
        from lgm.config import DistillConfig

        return DistillConfig
    if name == "DistilledSet":
        from lgm.artifacts import DistilledSet

        return DistilledSet
    if name == "distill":
        from lgm.distillation import distill

        return distill
    if name in ("load_backbone", "list_backbones"):
        import lgm.backbones as b

        return getattr(b, name)
    if name == "load_dataset":
        from lgm.data import load_dataset

        return load_dataset
    raise AttributeError(f"module 'lgm' has no attribute {name!r}")
