"""Figures of the study, one function per figure, so a notebook cell is one call.

Every figure carries a title that says which world it comes from (``mini``, ``smoke`` or
``paper``), so mini-world pictures are never mistaken for the paper's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from megafr.fileio import atomic_write

CELL_INCHES = 1.1  # size of one image cell in a grid figure
DPI = 110


def image_grid(
    images: np.ndarray,
    ncols: int,
    title: str,
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    cell_titles: Sequence[str] | None = None,
):
    """A grid of uint8 images [N, H, W, 3] (row-major) with optional column/row headers and per-cell titles."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * CELL_INCHES, nrows * CELL_INCHES + 0.5), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if k < n:
            ax.imshow(images[k], interpolation="nearest")
            if cell_titles is not None:
                ax.set_title(cell_titles[k], fontsize=6, pad=2)
    if col_labels is not None:
        for ax, label in zip(axes[0], col_labels):
            ax.set_title(label, fontsize=7, pad=3)
    if row_labels is not None:
        for ax, label in zip(axes[:, 0], row_labels):
            ax.set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def pose_histograms(table: pd.DataFrame, title: str):
    """Histograms of yaw, pitch, roll and jaw opening (degrees) of a SynthHeads split."""
    columns = [("yaw_deg", "yaw"), ("pitch_deg", "pitch"), ("roll_deg", "roll"), ("jaw_deg", "jaw opening")]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.0 * len(columns), 2.6))
    for ax, (column, label) in zip(axes, columns):
        ax.hist(table[column], bins=24, color="#4c72b0")
        ax.set_xlabel(f"{label} (degrees)")
        ax.set_ylabel("images")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def message_figure(message: str):
    """A small figure that only says ``message`` (for outputs that do not apply to a profile)."""
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9)
    return fig


def save_figure(fig, path: str | Path):
    """Save a figure as PNG atomically, close it (so pyplot holds no reference), and return it:
    as a notebook cell's last expression it is still displayed."""
    with atomic_write(Path(path), "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI)
    plt.close(fig)
    return fig
