"""The study's result figures, one function each, so a notebook cell is one call.

Every function takes a :class:`~megafr.reenact.inference.Reenactor`, the examples picked by
:mod:`megafr.figures.inputs` and a title (which names the world), and returns the figure, plus
for the measured applications a table of the numbers it plots.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from megafr import plots
from megafr.errors import CheckpointError
from megafr.figures.inputs import POSE_AXES, Eyes, Frontal, Grid, Pairs, Sweep
from megafr.figures.measure import as_images, as_tensor, eyelid_gaps, inversions, latent_edit, pose_degrees
from megafr.reenact.directions import LatentDirection
from megafr.reenact.inference import Reenactor

PLOT_INCHES = 2.8  # height of the plot under an image table
MEASURED_TRUTH = "right answer (3D network)"  # the right answers as the measuring network sees them
EXACT_TRUTH = "right answer (renderer, exact)"  # the right answers' own values, known to the renderer
INVERTED_TRUTH = "right answer inverted (G(E_inv(x)))"  # what the frozen encoder and generator keep of them
COLOURS = {"MegaFR": "#c44e52", "linear latent direction": "#4c72b0", EXACT_TRUTH: "#55a868", MEASURED_TRUTH: "#8c8c8c",
           INVERTED_TRUTH: "#dd8452"}


class Result(NamedTuple):
    figure: plt.Figure
    table: pd.DataFrame  # the numbers the figure shows, one row per output


def _condition_images(condition: torch.Tensor) -> Optional[np.ndarray]:
    """r_t as images, or None for the parameter-fed baseline (its condition is not a picture)."""
    return as_images(condition) if condition.shape[1] == 3 else None


def _images_and_plot(n_rows: int, n_cols: int, plot_cols: int = 1):
    """A figure with an image table on top and ``plot_cols`` plot panels below -> (figure, top, plot axes)."""
    width = max(n_cols * plots.CELL_INCHES, 4.2 * plot_cols)
    fig = plt.figure(figsize=(width, n_rows * plots.CELL_INCHES + PLOT_INCHES + 0.7), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[n_rows * plots.CELL_INCHES + 0.4, PLOT_INCHES])
    return fig, top, bottom.subplots(1, plot_cols, squeeze=False)[0]


def _band(ax, table: pd.DataFrame, x: str, y: str, label: str, marker: str = "o") -> None:
    """Mean of ``y`` per ``x`` with a +-1 standard deviation band (over sources)."""
    stats = table.groupby(x)[y].agg(["mean", "std"]).reset_index().fillna(0.0)
    colour = COLOURS.get(label)
    ax.plot(stats[x], stats["mean"], marker=marker, markersize=3, linewidth=1.2, label=label, color=colour)
    ax.fill_between(stats[x], stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15, color=colour)


# ------------------------------------------------------------------------------------------ 1. grid
@torch.no_grad()
def grid_figure(reenactor: Reenactor, grid: Grid, refine_steps: int, title: str):
    """Rows: sources; columns: the source, its inversion x_s, MegaFR driven by each target, and the right answers.

    The first row shows the targets above the columns they drive.
    """
    n, m = len(grid.sources), len(grid.targets)
    sources = as_tensor(np.repeat(grid.sources, m, axis=0))
    targets = as_tensor(np.tile(grid.targets, (n, 1, 1, 1)))
    out = reenactor.reenact(sources, targets, refine_steps=refine_steps)
    ours = as_images(out.image).reshape(n, m, *grid.sources.shape[1:])
    inverted = as_images(out.inverted)[::m]
    truth_cols = m if grid.truth is not None else 0
    header = [None, None, *grid.targets, *(grid.targets if truth_cols else [])]
    cells = [header] + [[grid.sources[i], inverted[i], *ours[i], *(grid.truth[i] if truth_cols else [])]
                        for i in range(n)]
    labels = ["source", "inverted x_s"] + [f"MegaFR\n→ target {j + 1}" for j in range(m)]
    labels += [f"right answer\n→ target {j + 1}" for j in range(truth_cols)]
    fig = plt.figure(figsize=(len(header) * plots.CELL_INCHES, (n + 1) * plots.CELL_INCHES + 0.9))
    plots.image_table(fig, cells, col_labels=labels, row_labels=["targets"] + [f"source {i + 1}" for i in range(n)],
                      title=f"{title}\n(refine {refine_steps}; each cell: the row's source with the column's "
                            "target expression and pose)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ 2. refinement
@torch.no_grad()
def refinement_figure(reenactor: Reenactor, pairs: Pairs, max_refine: int, title: str):
    """Hard pairs (largest target yaw, widest jaw) after 0 .. ``max_refine`` refinement steps.

    Each output and right answer is captioned with its yaw and jaw opening measured by the 3D network;
    the target's measured values head the target column's cells.
    """
    s, t = as_tensor(pairs.source), as_tensor(pairs.target)
    runs = reenactor.reenact_steps(s, t, range(max_refine + 1))  # one chain: step k equals reenact(..., k)
    first, outs = runs[0], [runs[k].image for k in range(max_refine + 1)]
    images = [as_images(o) for o in outs]
    measured = [pose_degrees(reenactor, o) for o in outs]
    target = pose_degrees(reenactor, t)
    truth = pose_degrees(reenactor, pairs.truth) if pairs.truth is not None else None
    caption = lambda p: f"yaw {p[0]:+.0f}° jaw {p[3]:.0f}°"  # noqa: E731
    inverted = as_images(first.inverted)
    cells, titles = [], []
    for i in range(len(pairs.source)):
        row = [pairs.source[i], inverted[i], pairs.target[i], *(im[i] for im in images)]
        caps = ["", "", caption(target[i]), *(caption(m[i]) for m in measured)]
        if pairs.truth is not None:
            row.append(pairs.truth[i])
            caps.append(caption(truth[i]))
        cells.append(row)
        titles.append(caps)
    labels = ["source", "inverted x_s", "target", *(f"refine {k}" for k in range(max_refine + 1))]
    labels += ["right answer"] if pairs.truth is not None else []
    fig = plt.figure(figsize=(len(labels) * plots.CELL_INCHES + 0.6, len(cells) * (plots.CELL_INCHES + 0.15) + 0.9))
    plots.image_table(fig, cells, col_labels=labels, row_labels=list(pairs.labels), cell_titles=titles,
                      title=f"{title}\n(captions: yaw and jaw opening measured by the 3D network)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ 3. yaw / pitch
@torch.no_grad()
def pose_control_figure(reenactor: Reenactor, directions: Mapping[str, LatentDirection], sweep: Sweep,
                        refine_steps: int, title: str) -> Result:
    """Turn sources to each requested angle with MegaFR (explicit pose) and with the linear latent direction.

    Top: the first source's sweep, each output captioned with its angle measured by the 3D network.
    Bottom: requested against measured angle, mean +- sd over the sweep's sources, for both methods
    (and for the right answers, which shows the measuring network's own error).
    """
    axis, column = sweep.axis, POSE_AXES[sweep.axis]
    name = f"{axis}_deg"
    if name not in directions:
        raise CheckpointError(f"the latent directions file has no {name!r} direction (has {sorted(directions)}); "
                       "re-run the evaluate stage")
    k, a = len(sweep.sources), len(sweep.angles)
    sources = as_tensor(np.repeat(sweep.sources, a, axis=0))
    values = torch.as_tensor(np.tile(sweep.angles, k), dtype=torch.float32)
    outputs = {"MegaFR": reenactor.reenact_params(sources, **{name: values}, refine_steps=refine_steps).image,
               "linear latent direction": latent_edit(reenactor, sources, directions[name], values)}
    if sweep.truth is not None:
        outputs["right answer"] = as_tensor(sweep.truth.reshape(k * a, *sweep.truth.shape[2:]))
    rows = []
    for method, images in outputs.items():
        measured = pose_degrees(reenactor, images)[:, column]
        rows.append(pd.DataFrame({"source": np.repeat(np.arange(k), a), "requested_deg": values.numpy(),
                                  "method": method, "measured_deg": measured}))
    table = pd.concat(rows, ignore_index=True)

    fig, top, (ax,) = _images_and_plot(len(outputs), a + 1)
    cells, titles = [], []
    for r, (method, images) in enumerate(outputs.items()):
        first = as_images(images[:a])
        shown = table[(table["method"] == method) & (table["source"] == 0)]["measured_deg"].to_numpy()
        cells.append([sweep.sources[0] if r == 0 else None, *first])
        titles.append(["", *(f"measured {v:+.0f}°" for v in shown)])
    plots.image_table(top, cells, col_labels=["source", *(f"{axis} {v:+.0f}°" for v in sweep.angles)],
                      row_labels=list(outputs), cell_titles=titles,
                      title=f"{title}: {axis} control, MegaFR against a linear latent direction (refine {refine_steps})")
    for method in outputs:
        label = MEASURED_TRUTH if method == "right answer" else method
        _band(ax, table[table["method"] == method], "requested_deg", "measured_deg", label)
    limit = float(np.abs(sweep.angles).max())
    ax.plot([-limit, limit], [-limit, limit], linestyle="--", color="black", linewidth=0.8, label="measured = requested")
    ax.set_xlabel(f"requested {axis} (degrees)")
    ax.set_ylabel(f"{axis} measured by the 3D network (degrees)")
    ax.set_title(f"{k} sources, mean ± sd", fontsize=8)
    ax.legend(fontsize=7)
    return Result(fig, table)


# ------------------------------------------------------------------------------------------ 4. frontalization
@torch.no_grad()
def frontalization_figure(reenactor: Reenactor, frontal: Frontal, refine_steps: int, title: str) -> Result:
    """Inputs at several yaws turned frontal (yaw = pitch = roll = 0, the source's own expression and jaw).

    The table holds the measured yaw of the inputs, the measured yaw and pitch of MegaFR's outputs and, where
    the inputs have right answers, of the right answers (the 3D network's own error on frontal faces)."""
    n = len(frontal.source)
    zero = torch.zeros(n)
    out = reenactor.reenact_params(as_tensor(frontal.source), yaw_deg=zero, pitch_deg=zero, roll_deg=zero,
                                   refine_steps=refine_steps)
    measured_in, measured_out = pose_degrees(reenactor, frontal.source), pose_degrees(reenactor, out.image)
    table = pd.DataFrame({"input_yaw_measured_deg": measured_in[:, 0], "output_yaw_deg": measured_out[:, 0],
                          "output_pitch_deg": measured_out[:, 1]})
    if frontal.input_yaw is not None:
        table.insert(0, "input_yaw_deg", frontal.input_yaw)
    shown_yaw = frontal.input_yaw if frontal.input_yaw is not None else measured_in[:, 0]
    cells = [list(frontal.source), list(as_images(out.inverted)), list(as_images(out.image))]
    titles = [[""] * n, [""] * n, [f"yaw {y:+.0f}° pitch {p:+.0f}°" for y, p in measured_out[:, :2]]]
    row_labels = ["input", "inverted x_s", "MegaFR frontal"]
    if frontal.truth is not None:
        measured_truth = pose_degrees(reenactor, frontal.truth)
        table["truth_yaw_measured_deg"], table["truth_pitch_measured_deg"] = measured_truth[:, 0], measured_truth[:, 1]
        cells.append(list(frontal.truth))
        titles.append([f"yaw {y:+.0f}° pitch {p:+.0f}°" for y, p in measured_truth[:, :2]])
        row_labels.append("right answer")
    fig = plt.figure(figsize=(max(n, 4) * plots.CELL_INCHES + 0.6, len(cells) * (plots.CELL_INCHES + 0.15) + 0.9))
    plots.image_table(fig, cells, col_labels=[f"input yaw {y:+.0f}°" for y in shown_yaw], row_labels=row_labels,
                      cell_titles=titles,
                      title=f"{title}: frontalization (refine {refine_steps})\ncaptions: pose measured by the 3D "
                            "network")
    fig.tight_layout()
    return Result(fig, table)


# ------------------------------------------------------------------------------------------ 5. eyes
def eyelid_values(degrees: np.ndarray, closed: float, opened: float) -> np.ndarray:
    """Eyelid expression values of opening ``degrees`` (0 closed .. 1 open): linear between the two ends."""
    return closed + np.asarray(degrees, dtype=float) * (opened - closed)


@torch.no_grad()
def eye_opening_figure(reenactor: Reenactor, eyes: Eyes, components: Sequence[int], closed_value: float,
                       open_value: float, refine_steps: int, title: str) -> Result:
    """Closed-eye sources opened to each degree by the eyelid expression components.

    Top: per source, MegaFR's outputs and the right answers, captioned with the eyelid gap the 3D
    network measures. Bottom: requested degree against measured gap, with the right answers' gap
    from the renderer's landmarks (exact), as the 3D network measures it, and as it measures their inversions
    ``G(E_inv(x))``: the opening the frozen encoder and generator can show at all, E_FR's ceiling.
    """
    k, d = len(eyes.source), len(eyes.degrees)
    values = torch.as_tensor(np.tile(eyelid_values(eyes.degrees, closed_value, open_value), k), dtype=torch.float32)
    out = reenactor.reenact_params(as_tensor(np.repeat(eyes.source, d, axis=0)),
                                   expression={c: values for c in components}, refine_steps=refine_steps)
    degree = np.tile(eyes.degrees, k)
    table = pd.DataFrame({"source": np.repeat(np.arange(k), d), "degree": degree,
                          "megafr_gap_mm": eyelid_gaps(reenactor, out.image)})
    truth = eyes.truth.reshape(k * d, *eyes.truth.shape[2:]) if eyes.truth is not None else None
    if truth is not None:
        table["truth_measured_gap_mm"] = eyelid_gaps(reenactor, truth)
        table["truth_inverted_gap_mm"] = eyelid_gaps(reenactor, inversions(reenactor, truth))  # E_FR's ceiling
    if eyes.truth_gap_mm is not None:
        table["truth_gap_mm"] = np.asarray(eyes.truth_gap_mm, dtype=float).reshape(-1)
    source_gap = eyelid_gaps(reenactor, eyes.source)

    ours = as_images(out.image)
    cells, titles, row_labels = [], [], []
    for i in range(k):
        part = slice(i * d, (i + 1) * d)
        cells.append([eyes.source[i], *ours[part]])
        titles.append([f"gap {source_gap[i]:.1f} mm", *(f"gap {g:.1f} mm" for g in table["megafr_gap_mm"][part])])
        row_labels.append(f"source {i + 1}: MegaFR")
        if truth is not None:
            cells.append([None, *truth[part]])
            titles.append(["", *(f"gap {g:.1f} mm" for g in table["truth_measured_gap_mm"][part])])
            row_labels.append(f"source {i + 1}: right answer")
    fig, top, (ax,) = _images_and_plot(len(cells), d + 1)
    plots.image_table(top, cells, col_labels=["closed-eye source", *(f"degree {v:.2f}" for v in eyes.degrees)],
                      row_labels=row_labels, cell_titles=titles,
                      title=f"{title}: eye opening by the eyelid expression (refine {refine_steps})\n"
                            "captions: eyelid gap measured by the 3D network")
    _band(ax, table, "degree", "megafr_gap_mm", "MegaFR")
    if "truth_gap_mm" in table:
        _band(ax, table, "degree", "truth_gap_mm", EXACT_TRUTH, marker="s")
    if "truth_measured_gap_mm" in table:
        _band(ax, table, "degree", "truth_measured_gap_mm", MEASURED_TRUTH, marker="^")
    if "truth_inverted_gap_mm" in table:
        _band(ax, table, "degree", "truth_inverted_gap_mm", INVERTED_TRUTH, marker="v")
    ax.set_xlabel("requested opening degree (0 closed, 1 open)")
    ax.set_ylabel("eyelid gap (mm, < 0: lids crossed)")
    ax.set_title(f"{k} sources, mean ± sd; gap = upper minus lower eyelid landmark height", fontsize=8)
    ax.legend(fontsize=7)
    return Result(fig, table)
