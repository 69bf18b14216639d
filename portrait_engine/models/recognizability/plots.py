"""PNG plots of the RI evaluation: ERC, ROC, CMC, and image grids.

The curve plots need matplotlib (``pip install portrait-engine[plot]``) and draw off-screen
(the Agg backend); :func:`save_image_grid` needs only Pillow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from portrait_engine.models.recognizability.evaluation import ErrorRejectCurve


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "plotting needs matplotlib: pip install 'portrait-engine[plot]'"
        ) from error
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_erc(
    curves: Mapping[str, ErrorRejectCurve], path: str | os.PathLike, title: str = ""
) -> Path:
    """Error-versus-reject curves, one line per quality score, the area in the legend."""
    plt = _pyplot()
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, curve in curves.items():
        ax.plot(curve.fractions, curve.fnmr, marker=".", label=f"{name} (area {curve.area:.4f})")
    fmr = next(iter(curves.values())).fmr
    ax.set_xlabel("fraction of lowest-quality pairs rejected")
    ax.set_ylabel(f"FNMR at FMR = {fmr:g}")
    ax.set_title(title or "error versus reject")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_roc(
    rocs: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, title: str = ""
) -> Path:
    """ROC curves ``{name: (far, tar)}`` on a logarithmic FAR axis."""
    plt = _pyplot()
    if not rocs:
        raise ValueError("rocs is empty: nothing to plot")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (far, tar) in rocs.items():
        keep = far > 0
        ax.plot(far[keep], tar[keep], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title or "verification ROC")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def plot_cmc(cmcs: Mapping[str, Sequence[float]], path: str | os.PathLike, title: str = "") -> Path:
    """Cumulative match curves ``{name: accuracy at rank 1, 2, …}``."""
    plt = _pyplot()
    if not cmcs:
        raise ValueError("cmcs is empty: nothing to plot")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, cmc in cmcs.items():
        ax.plot(np.arange(1, len(cmc) + 1), cmc, marker=".", label=name)
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "cumulative match curve")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def save_image_grid(
    images: torch.Tensor, path: str | os.PathLike, columns: int = 8, padding: int = 2
) -> Path:
    """Save ``(N, 3, H, W)`` images in [-1, 1] as one PNG grid, ``columns`` per row."""
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - pillow is a dependency
        raise ImportError("saving images needs Pillow: pip install pillow") from error
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a (N, 3, H, W) tensor, got {shape}")
    if len(images) == 0:
        raise ValueError("images is empty: nothing to save")
    count, _, height, width = images.shape
    columns = max(1, min(columns, count))
    rows = (count + columns - 1) // columns
    grid = torch.ones(3, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for n, image in enumerate(images.detach().float().cpu()):
        r, c = divmod(n, columns)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        grid[:, top : top + height, left : left + width] = image.clamp(-1, 1)
    pixels = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path
