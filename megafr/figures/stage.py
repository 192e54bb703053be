"""The ``figures`` stage (notebook 08): what it writes to ``data/metrics/figures.json`` and ``data/plots/``.

Every number is measured on the figures' own outputs by the frozen 3D face network:

- ``pose_control.<yaw|pitch>``: mean |measured - requested| angle over the sweep, for MegaFR, the
  linear latent direction and the right answers (the last is the measuring network's own error);
- ``frontalization``: mean |yaw| of the inputs, mean |yaw| and |pitch| of MegaFR's frontal outputs and,
  where the inputs have them, of the right answers (the measuring network's own error);
- ``eye_opening``: mean |measured - right| eyelid gap (mm), right = the renderer's landmarks;
- ``talking_head``: landmark jitter (:mod:`megafr.figures.talking`) of MegaFR and of the right answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from megafr.figures.talking import TalkingResult
from megafr.stage import figure_path

DECIMALS = 5


def _round(tree):
    if isinstance(tree, dict):
        return {key: _round(value) for key, value in tree.items()}
    return tree if isinstance(tree, int) else round(float(tree), DECIMALS)


MIN_OPENING_MM = 0.1  # below this measured opening of the right answers, no fraction is reported (it would be noise)


def _key(method: str) -> str:
    return method.replace(" ", "_").lower()


def pose_control_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``{<method>_mae_deg: mean |measured - requested|}`` of a pose-control table."""
    error = (table["measured_deg"] - table["requested_deg"]).abs()
    return {f"{_key(method)}_mae_deg": float(values.mean()) for method, values in error.groupby(table["method"], sort=False)}


def pose_control_curve(table: pd.DataFrame) -> pd.DataFrame:
    """Requested angle -> mean measured angle per method (one column each), for ``dvc plots``."""
    wide = table.pivot_table(index="requested_deg", columns="method", values="measured_deg", aggfunc="mean", sort=False)
    return wide.rename(columns=lambda m: f"{_key(m)}_deg").reset_index()


def eye_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Eyelid gaps (mm) of the eye-opening figure: each column's mean at the closed and the open degree and
    their difference (the opening), MegaFR's opening as a fraction of the right answers' (both measured by
    the 3D network; only where theirs exceeds ``MIN_OPENING_MM``), the same fraction for the right answers'
    inversions (E_FR's ceiling), and the mean errors against the true gaps where known."""
    metrics = {}
    if "truth_gap_mm" in table:
        metrics["megafr_gap_mae_mm"] = float((table["megafr_gap_mm"] - table["truth_gap_mm"]).abs().mean())
        if "truth_measured_gap_mm" in table:
            metrics["truth_measured_gap_mae_mm"] = float((table["truth_measured_gap_mm"] - table["truth_gap_mm"]).abs().mean())
    closed, opened = table["degree"] == table["degree"].min(), table["degree"] == table["degree"].max()
    for column in ("megafr_gap_mm", "truth_measured_gap_mm", "truth_inverted_gap_mm", "truth_gap_mm"):
        if column in table:
            name = column.removesuffix("_gap_mm")
            metrics[f"{name}_gap_closed_mm"] = float(table.loc[closed, column].mean())
            metrics[f"{name}_gap_open_mm"] = float(table.loc[opened, column].mean())
            metrics[f"{name}_opening_mm"] = metrics[f"{name}_gap_open_mm"] - metrics[f"{name}_gap_closed_mm"]
    if metrics.get("truth_measured_opening_mm", 0.0) > MIN_OPENING_MM:  # MegaFR's opening as a share of the right answers'
        metrics["megafr_opening_fraction"] = metrics["megafr_opening_mm"] / metrics["truth_measured_opening_mm"]
        if "truth_inverted_opening_mm" in metrics:  # the inversions' share: the most any E_FR can open
            metrics["inverted_opening_fraction"] = (metrics["truth_inverted_opening_mm"]
                                                    / metrics["truth_measured_opening_mm"])
    return metrics


def eye_curve(table: pd.DataFrame) -> pd.DataFrame:
    """Degree -> mean gaps (mm), for ``dvc plots``."""
    return table.drop(columns="source").groupby("degree", as_index=False).mean()


def frontal_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Mean |yaw| of the inputs, mean |yaw| and |pitch| of MegaFR's outputs and of the right answers (if measured)."""
    source = "input_yaw_deg" if "input_yaw_deg" in table else "input_yaw_measured_deg"
    metrics = {"input_abs_yaw_deg": float(np.abs(table[source]).mean()),
               "megafr_abs_yaw_deg": float(np.abs(table["output_yaw_deg"]).mean()),
               "megafr_abs_pitch_deg": float(np.abs(table["output_pitch_deg"]).mean())}
    if "truth_yaw_measured_deg" in table:
        metrics["truth_measured_abs_yaw_deg"] = float(np.abs(table["truth_yaw_measured_deg"]).mean())
        metrics["truth_measured_abs_pitch_deg"] = float(np.abs(table["truth_pitch_measured_deg"]).mean())
    return metrics


def metrics_tree(yaw: pd.DataFrame, pitch: pd.DataFrame, frontal: pd.DataFrame, eyes: pd.DataFrame,
                 talking: TalkingResult) -> dict:
    """Everything above in one tree with numeric leaves."""
    return _round({
        "pose_control": {"yaw": pose_control_metrics(yaw), "pitch": pose_control_metrics(pitch)},
        "frontalization": frontal_metrics(frontal),
        "eye_opening": eye_metrics(eyes),
        "talking_head": talking.jitter(),
    })


def plot_tables(yaw: pd.DataFrame, pitch: pd.DataFrame, eyes: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``data/plots/figures_<name>.csv`` records."""
    return {"yaw_control": pose_control_curve(yaw), "pitch_control": pose_control_curve(pitch),
            "eye_opening": eye_curve(eyes)}


def video_paths(run_dir: str = "") -> tuple[Path, Path]:
    """``data/figures/figures_talking_head.mp4`` and ``.gif`` (or under ``run_dir`` for a sweep run)."""
    png = figure_path("figures", "talking_head", run_dir)
    return png.with_suffix(".mp4"), png.with_suffix(".gif")
