"""Lazy matplotlib access (Agg backend, no display, nothing imported at module import time)."""

from __future__ import annotations

from lgm.errors import LgmError


def pyplot():
    """matplotlib.pyplot on the Agg backend; a clear error when the ``analysis`` extra is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise LgmError("plots need matplotlib: pip install 'lgm[analysis]' (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
