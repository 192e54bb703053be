"""Ablations of MegaFR (e4e): each loss at zero, other W+ layer groups, 0-3 refinement steps.

Every trained ablation is E_FR (``e4e:render``) re-trained with train_reenact's configuration
(read from its checkpoint) changed in one place, for ``ablation_steps`` steps, into its own folder
``<out_dir>/ablations/<name>/``; the canonical checkpoints are never touched. The reference
("all losses", coarse + medium, the tables' refinement steps) is trained the same way for the same
number of steps, so every comparison is between equally trained models. Refinement-step rows
evaluate the reference model at another number of steps (nothing is trained for them).

Run names follow the sweep helper's convention (``lambda_id=0``), so an ablation can also be run
as a sweep of the train_reenact notebook (``docs/metrics.md``, "Ablations").

Training resumes from an ablation's checkpoint when it was interrupted (``megafr.reenact.train``).
Because that resume looks at the configuration only, the folder also records a digest of the
frozen networks and training images it was trained against, and is emptied when they change.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from megafr.config import require, study_path, study_relative
from megafr.evaluate.tables import EvalSet, Judge, score_method
from megafr.fileio import write_json
from megafr.reenact.inference import Reenactor
from megafr.reenact.train import LOSS_NAMES, Frozen, ReenactConfig, train, upstream_digest
from megafr.training import run_log_path

KINDS = ("loss", "layers", "refine")  # ablation groups; "reference" is always trained
REFERENCE = "reference"
LAYER_CHOICES = ("coarse", "coarse,medium,fine")  # besides the paper's coarse,medium (the reference)
REFINE_CHOICES = (0, 1, 2, 3)  # refinement steps evaluated on the reference model
FIGURE_METRICS = (("aed", "AED (lower is better)"), ("apd", "APD, degrees (lower is better)"),
                  ("csim", "CSIM (higher is better)"))
DIGEST_FILE = "upstream.md5"  # digest of what the ablations were trained against
RUN_LOG = "ablations"  # wall time per ablation, in data/logs/evaluate_ablations.json (outside the tracked outputs)


@dataclass(frozen=True)
class Ablation:
    name: str  # run name, sweep style: "reference", "lambda_id=0", "edit_groups=coarse", "refine_steps=2"
    kind: str  # "reference", "loss", "layers" or "refine"
    changes: tuple[tuple[str, Any], ...]  # ReenactConfig fields replaced for training (none for refine rows)
    refine_steps: int  # refinement steps at evaluation

    @property
    def trained_name(self) -> str:
        """The model this row evaluates: its own, or the reference's for refinement rows."""
        return REFERENCE if self.kind == "refine" else self.name


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"loss,layers,refine"`` -> kinds ("" or "none": the reference only)."""
    kinds = tuple(p.strip() for p in text.split(",") if p.strip() and p.strip() != "none")
    require(all(k in KINDS for k in kinds),
            f"evaluate.ablations must be a comma list of {KINDS} (or none), got {text!r}")
    return kinds


def plan(kinds: Iterable[str], refine_steps: int) -> list[Ablation]:
    """The reference, then every ablation of the requested kinds, in table order."""
    kinds = tuple(kinds)
    rows = [Ablation(REFERENCE, "reference", (), refine_steps)]
    if "loss" in kinds:
        rows += [Ablation(f"lambda_{n}=0", "loss", ((f"lambda_{n}", 0.0),), refine_steps) for n in LOSS_NAMES]
    if "layers" in kinds:
        rows += [Ablation(f"edit_groups={g}", "layers", (("edit_groups", g),), refine_steps) for g in LAYER_CHOICES]
    if "refine" in kinds:
        rows += [Ablation(f"refine_steps={k}", "refine", (), k) for k in REFINE_CHOICES if k != refine_steps]
    return rows


def ablation_config(base: ReenactConfig, ablation: Ablation, steps: int, folder: Path) -> ReenactConfig:
    """train_reenact's configuration for MegaFR (e4e) with the ablation's change, ``steps`` steps, own folder."""
    changes = dict(ablation.changes) if ablation.kind != "refine" else {}
    return dataclasses.replace(base, encoder="e4e", condition="render", steps=steps,
                               out_dir=study_relative(folder / ablation.trained_name), **changes)


def ablation_digest(base: ReenactConfig) -> str:
    """What the ablations' weights depend on besides their configurations (MegaFR e4e's frozen networks, images)."""
    return upstream_digest(dataclasses.replace(base, encoder="e4e", condition="render"))


def clear_if_stale(folder: Path, digest: str) -> bool:
    """Empty ``folder`` when it was trained against other upstream files; record ``digest``. True if cleared."""
    marker = folder / DIGEST_FILE
    stale = marker.is_file() and marker.read_text().strip() != digest
    if stale or (folder.is_dir() and not marker.is_file() and any(folder.iterdir())):
        shutil.rmtree(folder)
        stale = True
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest + "\n")
    return stale


def run_ablations(base: ReenactConfig, frozen: Frozen, images: np.ndarray, pairs: EvalSet, judge: Judge,
                  ablations: list[Ablation], steps: int, folder: Path, digest: str,
                  progress: bool = True) -> pd.DataFrame:
    """Train (or resume) every ablation's E_FR and score it on the cross pairs -> one row per ablation.

    ``digest`` identifies the frozen networks and training images (:func:`ablation_digest`); checkpoints
    in ``folder`` trained against other ones are deleted first (:func:`clear_if_stale`)."""
    clear_if_stale(folder, digest)
    models: dict[str, Reenactor] = {}
    seconds: dict[str, float] = {}
    rows = []
    for ablation in ablations:
        cfg = ablation_config(base, ablation, steps, folder)
        if ablation.trained_name not in models:
            start = time.perf_counter()
            model, _ = train(cfg, frozen, images, progress=progress)
            seconds[ablation.trained_name] = round(time.perf_counter() - start, 2)
            models[ablation.trained_name] = Reenactor(model, frozen, "render")
        reenactor = models[ablation.trained_name]
        result = score_method(lambda s, t, r=reenactor, k=ablation.refine_steps: r.reenact(s, t, refine_steps=k).image,
                              pairs, judge, progress, desc=f"ablation {ablation.name}")
        weights = {f"lambda_{n}": getattr(cfg, f"lambda_{n}") for n in LOSS_NAMES}
        rows.append({"ablation": ablation.name, "kind": ablation.kind, "steps": steps, "edit_groups": cfg.edit_groups,
                     "refine_steps": ablation.refine_steps, **weights, "pairs": len(pairs),
                     **{k: v for k, v in result.scores.items() if v is not None}})
    write_json(run_log_path(folder.parent, RUN_LOG), {"train_seconds": seconds, "steps": steps})
    return pd.DataFrame(rows)


def metrics_tree(table: pd.DataFrame, columns: Iterable[str]) -> dict:
    """``{ablation: {metric: value}}`` for ``dvc metrics`` (numeric leaves)."""
    return {row["ablation"]: {c: round(float(row[c]), 5) for c in columns if c in row and pd.notna(row[c])}
            for row in table.to_dict("records")}


def plot_records(table: pd.DataFrame) -> pd.DataFrame:
    """The bar chart's data for ``dvc plots``: ablation, kind, AED, APD, CSIM."""
    return table[["ablation", "kind", *(m for m, _ in FIGURE_METRICS)]]


def ablation_figure(table: pd.DataFrame, title: str):
    """Bars of AED, APD and CSIM per ablation (the reference in a darker colour, its value as a line)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FIGURE_METRICS), figsize=(4.2 * len(FIGURE_METRICS), 0.32 * len(table) + 1.4),
                             sharey=True)
    colours = {"reference": "#1f3b73", "loss": "#4c72b0", "layers": "#55a868", "refine": "#c44e52"}
    positions = np.arange(len(table))[::-1]
    for ax, (metric, label) in zip(axes, FIGURE_METRICS):
        ax.barh(positions, table[metric], color=[colours[k] for k in table["kind"]])
        reference = table.loc[table["ablation"] == REFERENCE, metric]
        if len(reference):
            ax.axvline(float(reference.iloc[0]), color="#1f3b73", linewidth=0.8, linestyle="--")
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels(table["ablation"], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def markdown(table: pd.DataFrame, title: str, label: str, columns: Iterable[str]) -> str:
    """The ablation table as a Markdown section."""
    shown = table[["ablation", "kind", "steps", "refine_steps", *[c for c in columns if c in table.columns]]].copy()
    for column in columns:
        if column in shown.columns:
            shown[column] = [f"{v:.4g}" for v in shown[column]]
    return "\n".join([f"### {title} ({label})", "", shown.to_markdown(index=False), ""])


def train_seconds(folder: Path) -> Mapping[str, float]:
    """Wall time of each trained ablation in the last run (from its run log, see ``run_log_path``)."""
    import json

    path = run_log_path(folder.parent, RUN_LOG)
    return json.loads(path.read_text())["train_seconds"] if path.is_file() else {}

