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


def loss_curves(curves: "pd.DataFrame | dict[str, pd.DataFrame]", title: str, columns: Sequence[str] | None = None):
    """Training curves: every loss term against ``step`` (log scale where positive), one panel per run.

    ``curves`` is one table with a ``step`` column or a dict run name -> table; ``columns`` picks the
    terms (default: every column but ``step``), and terms that are all zero are left out.
    """
    runs = curves if isinstance(curves, dict) else {"": curves}
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.0), squeeze=False)
    for ax, (name, table) in zip(axes[0], runs.items()):
        names = [c for c in (columns or table.columns) if c != "step" and c in table and table[c].abs().sum() > 0]
        for column in names:
            ax.plot(table["step"], table[column], label=column, linewidth=1.0)
        if names and all((table[c] > 0).all() for c in names):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def message_figure(message: str, title: str = ""):
    """A small figure that only says ``message`` (for outputs that do not apply to a profile)."""
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def save_figure(fig, path: str | Path):
    """Save a figure as PNG atomically, close it (so pyplot holds no reference), and return it:
    as a notebook cell's last expression it is still displayed."""
    with atomic_write(Path(path), "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI)
    plt.close(fig)
    return fig


def image_table(
    target,
    cells: Sequence[Sequence["np.ndarray | None"]],
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    cell_titles: Sequence[Sequence[str]] | None = None,
    title: str = "",
):
    """Draw a table of uint8 images [H, W, 3] into ``target`` (a figure or a subfigure) and return its axes.

    ``cells[r][c]`` is an image or None (a blank cell); ``cell_titles[r][c]`` a short caption above
    the cell ("" for none). Column labels head the first row, row labels sit left of the first column.
    """
    nrows, ncols = len(cells), max(len(row) for row in cells)
    axes = target.subplots(nrows, ncols, squeeze=False)
    for r, row in enumerate(cells):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = row[c] if c < len(row) else None
            if image is not None:
                ax.imshow(image, interpolation="nearest")
            caption = cell_titles[r][c] if cell_titles is not None and c < len(cell_titles[r]) else ""
            if caption:
                ax.set_title(caption, fontsize=6, pad=2)
    if col_labels is not None:
        for ax, label in zip(axes[0], col_labels):
            existing = ax.get_title()
            ax.set_title(f"{label}\n{existing}" if existing else label, fontsize=7, pad=3)
    if row_labels is not None:
        for ax, label in zip(axes[:, 0], row_labels):
            ax.set_ylabel(label, fontsize=7)
    if title:
        target.suptitle(title, fontsize=9)
    return axes
