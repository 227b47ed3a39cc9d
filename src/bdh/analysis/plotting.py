"""Shared helpers: matplotlib figures (Agg, no display needed) and JSON-safe conversion of numbers."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..io import atomic_path


def plt_figure(rows: int = 1, cols: int = 1, *, width: float = 6.0, height: float = 4.0):
    """A figure and a flat list of axes, on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    return fig, list(axes.ravel())


def save(fig, path: str | os.PathLike) -> Path:
    """Write `fig` as PNG (dpi 110) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def jsonable(obj, digits: int = 8):
    """Nested dicts/lists/tuples/numpy/torch values as plain JSON values; NaN and infinities become None."""
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            obj = obj.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, dict):
        return {str(k): jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), digits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return None if not math.isfinite(v) else round(v, digits)
    return obj
