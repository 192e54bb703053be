"""Ablations of MegaFR (e4e): each loss at zero, other W+ layer groups, raw parameters, 0-3 refinement steps.

Every trained ablation is E_FR (``e4e:render``) re-trained with train_reenact's configuration
(read from its checkpoint) changed in one place, for ``ablation_steps`` steps; the canonical
checkpoints are never touched. The reference ("all losses", train_reenact's edited layers, conditioned
on the rendering, the tables' refinement steps) is trained the same way for the same number of steps,
so every comparison is between equally trained models. The ``layers`` kind trains coarse only, the
paper's coarse + medium and all layers, except the set the reference edits itself (the paper's, unless
a world edits others: the mini world's ``coarse,16px``). Refinement-step rows evaluate the reference
model at another number of steps (nothing is trained for them). The ``condition`` kind feeds E_FR
the raw FLAME parameters instead of the rendering (train_reenact's ``condition="params"``, the
``e4e:params`` variant), at the same budget as the reference.

Seeds: every trained model is trained once per seed ``seed, seed + 1, ..., seed + n - 1`` (``n`` =
``evaluate.ablation_seeds``; the seed sets the data order and any random initialisation), into
``<out_dir>/ablations/seed=<s>/<name>/``, and every row is scored once per seed on the same pairs.
:func:`run_ablations` returns one row per (ablation, seed); :func:`summarise` turns them into the
ablation table (mean over seeds in the metric columns, ``<metric>_std`` the sample standard
deviation over seeds, NaN with one seed, and ``seeds``). The claims table is built from the per-seed
rows (:mod:`megafr.evaluate.claims`).

Run names follow the sweep helper's convention (``lambda_id=0``), so an ablation can also be run
as a sweep of the train_reenact notebook (``docs/metrics.md``, "Ablations").

Training resumes from an ablation's checkpoint when it was interrupted (``megafr.reenact.train``).
Because that resume looks at the configuration only, the folder also records a digest of the
frozen networks and training images it was trained against, and is emptied (every seed) when they
change. Folders of the layout without seeds (``ablations/<name>/``) can never be resumed and are
removed; folders of seeds no longer requested are kept (raising the count again resumes them).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from megafr.config import comma_list, require, study_relative
from megafr.evaluate.tables import COLUMNS, EvalSet, Judge, score_method
from megafr.fileio import write_json
from megafr.reenact.inference import Reenactor
from megafr.reenact.parallel import train_many
from megafr.reenact.train import LOSS_NAMES, Frozen, ReenactConfig, train, upstream_digest
from megafr.training import run_log_path

KINDS = ("loss", "layers", "condition", "refine")  # ablation groups; "reference" is always trained
REFERENCE = "reference"
PAPER_GROUPS = "coarse,medium"  # the layers the paper edits
LAYER_CHOICES = ("coarse", PAPER_GROUPS, "coarse,medium,fine")  # trained as ablations, except the reference's own
CONDITION_CHOICES = ("params",)  # besides the paper's rendering r_t (the reference)
REFINE_CHOICES = (0, 1, 2, 3)  # refinement steps evaluated on the reference model
SEED_PREFIX = "seed="  # per-seed folders: <folder>/seed=<s>/<name>/
STD_SUFFIX = "_std"  # <metric>_std: standard deviation over seeds in the ablation table
FIGURE_METRICS = (("aed", "AED (lower is better)"), ("apd", "APD, degrees (lower is better)"),
                  ("csim", "CSIM (higher is better)"))
DIGEST_FILE = "upstream.md5"  # digest of what the ablations were trained against
RUN_LOG = "ablations"  # wall time per ablation, in data/logs/evaluate_ablations.json (outside the tracked outputs)


@dataclass(frozen=True)
class Ablation:
    name: str  # run name, sweep style: "reference", "lambda_id=0", "edit_groups=coarse", "condition=params", ...
    kind: str  # "reference", "loss", "layers", "condition" or "refine"
    changes: tuple[tuple[str, Any], ...]  # ReenactConfig fields replaced for training (none for refine rows)
    refine_steps: int  # refinement steps at evaluation

    @property
    def trained_name(self) -> str:
        """The model this row evaluates: its own, or the reference's for refinement rows."""
        return REFERENCE if self.kind == "refine" else self.name


def run_name(field: str, value: Any) -> str:
    """An ablation's name, sweep style: ``run_name("lambda_id", 0)`` -> ``"lambda_id=0"``."""
    return f"{field}={value}"


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"loss,layers,condition,refine"`` -> kinds ("" or "none": the reference only)."""
    kinds = tuple(kind for kind in comma_list(text) if kind != "none")
    require(all(k in KINDS for k in kinds),
            f"evaluate.ablations must be a comma list of {KINDS} (or none), got {text!r}")
    return kinds


def same_groups(a: str, b: str) -> bool:
    """Whether two ``edit_groups`` values name the same groups (order and spaces aside)."""
    return set(comma_list(a)) == set(comma_list(b))


def layer_choices(reference_groups: str) -> tuple[str, ...]:
    """The layer sets trained as ``layers`` ablations: coarse, the paper's coarse + medium and all layers, less
    the one the reference already edits."""
    return tuple(g for g in LAYER_CHOICES if not same_groups(g, reference_groups))


def plan(kinds: Iterable[str], refine_steps: int, reference_groups: str = PAPER_GROUPS) -> list[Ablation]:
    """The reference (editing ``reference_groups``, train_reenact's ``edit_groups``), then every ablation of the
    requested kinds, in table order."""
    kinds = tuple(kinds)
    rows = [Ablation(REFERENCE, "reference", (), refine_steps)]
    if "loss" in kinds:
        rows += [Ablation(run_name(f"lambda_{n}", 0), "loss", ((f"lambda_{n}", 0.0),), refine_steps)
                 for n in LOSS_NAMES]
    if "layers" in kinds:
        rows += [Ablation(run_name("edit_groups", g), "layers", (("edit_groups", g),), refine_steps)
                 for g in layer_choices(reference_groups)]
    if "condition" in kinds:
        rows += [Ablation(run_name("condition", c), "condition", (("condition", c),), refine_steps)
                 for c in CONDITION_CHOICES]
    if "refine" in kinds:
        rows += [Ablation(run_name("refine_steps", k), "refine", (), k) for k in REFINE_CHOICES if k != refine_steps]
    return rows


def seed_list(seed: int, count: int) -> tuple[int, ...]:
    """The ablations' seeds: ``seed, seed + 1, ..., seed + count - 1``."""
    require(count >= 1, f"evaluate.ablation_seeds must be >= 1, got {count}")
    return tuple(seed + k for k in range(count))


def seed_folder(folder: Path, seed: int) -> Path:
    """Where the models of one seed are trained: ``<folder>/seed=<seed>``."""
    return folder / f"{SEED_PREFIX}{seed}"


def ablation_config(base: ReenactConfig, ablation: Ablation, steps: int, folder: Path,
                    seed: Optional[int] = None) -> ReenactConfig:
    """train_reenact's configuration for MegaFR (e4e) with the ablation's change, ``steps`` steps, ``seed``
    (None: the base's), in ``folder/<trained name>``."""
    fields: dict[str, Any] = {"encoder": "e4e", "condition": "render", "steps": steps,
                              "seed": base.seed if seed is None else seed,
                              "out_dir": study_relative(folder / ablation.trained_name)}
    if ablation.kind != "refine":
        fields.update(ablation.changes)
    return dataclasses.replace(base, **fields)


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


def drop_unseeded(folder: Path) -> list[str]:
    """Remove the sub-folders of ``folder`` that are not per-seed folders (``seed=<s>``): checkpoints of the layout
    without seeds, which no run resumes any more. Returns their names."""
    dropped = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(SEED_PREFIX))
    for name in dropped:
        shutil.rmtree(folder / name)
    return dropped


def run_ablations(base: ReenactConfig, frozen: Frozen, images: np.ndarray, pairs: EvalSet, judge: Judge,
                  ablations: list[Ablation], steps: int, folder: Path, digest: str,
                  progress: bool = True, seeds: Optional[Iterable[int]] = None, workers: int = 1) -> pd.DataFrame:
    """Train (or resume) every ablation's E_FR once per seed and score it on the cross pairs -> one row per
    (ablation, seed), seeds outermost (``seeds`` None: the base's seed only). ``workers`` > 1: the trainings
    run that many at a time in CPU processes (:func:`megafr.reenact.parallel.train_many`), each loaded and
    scored here as soon as it has finished.

    Each seed's models go to ``folder/seed=<s>/<name>/``. ``digest`` identifies the frozen networks and training
    images (:func:`ablation_digest`); checkpoints in ``folder`` trained against other ones are deleted first
    (:func:`clear_if_stale`), and so are folders of the layout without seeds (:func:`drop_unseeded`)."""
    seeds = tuple(seeds) if seeds is not None else (base.seed,)
    require(len(seeds) >= 1 and len(set(seeds)) == len(seeds), f"ablation seeds must be distinct, got {seeds}")
    clear_if_stale(folder, digest)
    drop_unseeded(folder)
    seconds: dict[str, float] = {}
    rows: dict[tuple[int, str], dict] = {}  # (seed, ablation name) -> table row
    scored: set[tuple[int, str]] = set()  # (seed, trained name) of the models scored

    def score(seed: int, trained_name: str) -> None:  # load (or train) one model, score every row that uses it
        here = seed_folder(folder, seed)
        reenactor = None
        scored.add((seed, trained_name))
        for ablation in (a for a in ablations if a.trained_name == trained_name):
            cfg = ablation_config(base, ablation, steps, here, seed)
            if reenactor is None:
                start = time.perf_counter()
                model, _ = train(cfg, frozen, images, progress=progress)
                seconds.setdefault(f"{here.name}/{trained_name}", round(time.perf_counter() - start, 2))
                reenactor = Reenactor(model, frozen, cfg.condition)
            k = ablation.refine_steps
            result = score_method(lambda s, t, r=reenactor, k=k: r.reenact(s, t, refine_steps=k).image,
                                  pairs, judge, progress, desc=f"ablation {ablation.name}, seed {seed}")
            weights = {f"lambda_{n}": getattr(cfg, f"lambda_{n}") for n in LOSS_NAMES}
            rows[seed, ablation.name] = {
                "ablation": ablation.name, "kind": ablation.kind, "seed": seed, "steps": steps,
                "batch_size": cfg.batch_size, "edit_groups": cfg.edit_groups, "condition": cfg.condition,
                "refine_steps": ablation.refine_steps, **weights, "pairs": len(pairs),
                **{k: v for k, v in result.scores.items() if v is not None}}

    trained = {(seed, a.trained_name): f"{seed_folder(folder, seed).name}/{a.trained_name}"
               for seed in seeds for a in ablations}  # every model, in table order
    if workers > 1:  # each model is scored here as soon as its worker has trained it
        jobs = {job: ablation_config(base, next(a for a in ablations if a.trained_name == name), steps,
                                     seed_folder(folder, seed), seed)
                for (seed, name), job in trained.items()}
        by_job = {job: key for key, job in trained.items()}
        seconds.update(train_many(jobs, workers, progress, on_trained=lambda job: score(*by_job[job])))
    for seed, name in trained:
        if (seed, name) not in scored:
            score(seed, name)
    write_json(run_log_path(folder.parent, RUN_LOG), {"train_seconds": seconds, "steps": steps, "seeds": list(seeds),
                                                      "workers": workers})
    return pd.DataFrame([rows[seed, a.name] for seed in seeds for a in ablations])


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The score columns of an ablation table, in the tables' column order."""
    return [c for c in COLUMNS if c in table.columns]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """The ablation table: one row per ablation (in the runs' order), its settings, ``seeds``, and per metric the
    mean over seeds and ``<metric>_std``, the sample standard deviation over seeds (ddof 1; NaN with one seed)."""
    metrics = metric_columns(runs)
    settings = [c for c in runs.columns if c not in metrics and c != "seed"]
    groups = runs.groupby("ablation", sort=False)
    table = groups[settings].first().reset_index(drop=True)
    table["seeds"] = groups["seed"].nunique().to_numpy()
    for metric in metrics:
        table[metric] = groups[metric].mean().to_numpy()
        table[metric + STD_SUFFIX] = groups[metric].std(ddof=1).to_numpy()
    return table


def metrics_tree(table: pd.DataFrame, columns: Iterable[str]) -> dict:
    """``{ablation: {metric: value}}`` for ``dvc metrics`` (numeric leaves; NaN left out)."""
    return {row["ablation"]: {c: round(float(row[c]), 5) for c in columns if c in row and pd.notna(row[c])}
            for row in table.to_dict("records")}


def summary_columns(table: pd.DataFrame) -> list[str]:
    """The numbers of the ablation table the metrics file keeps: every metric's mean and std, and ``seeds``."""
    columns = [c for m in metric_columns(table) for c in (m, m + STD_SUFFIX) if c in table.columns]
    return columns + (["seeds"] if "seeds" in table.columns else [])


def plot_records(table: pd.DataFrame) -> pd.DataFrame:
    """The bar chart's data for ``dvc plots``: ablation, kind, AED, APD, CSIM (means over seeds), their std and
    the number of seeds."""
    wanted = ["ablation", "kind", *(m for m, _ in FIGURE_METRICS), *(m + STD_SUFFIX for m, _ in FIGURE_METRICS),
              "seeds"]
    return table[[c for c in wanted if c in table.columns]]


def ablation_figure(table: pd.DataFrame, title: str):
    """Bars of AED, APD and CSIM per ablation, the mean over seeds with the standard deviation over seeds as error
    bars (the reference in a darker colour, its mean as a dashed line)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FIGURE_METRICS), figsize=(4.2 * len(FIGURE_METRICS), 0.32 * len(table) + 1.4),
                             sharey=True)
    colours = {"reference": "#1f3b73", "loss": "#4c72b0", "layers": "#55a868", "condition": "#8172b2",
               "refine": "#c44e52"}
    positions = np.arange(len(table))[::-1]
    for ax, (metric, label) in zip(axes, FIGURE_METRICS):
        std = table.get(metric + STD_SUFFIX)
        error = None if std is None or std.isna().all() else std.fillna(0.0).to_numpy(float)
        ax.barh(positions, table[metric], color=[colours[k] for k in table["kind"]], xerr=error,
                error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
        reference = table.loc[table["ablation"] == REFERENCE, metric]
        if len(reference):
            ax.axvline(float(reference.iloc[0]), color="#1f3b73", linewidth=0.8, linestyle="--")
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels(table["ablation"], fontsize=7)
    seeds = int(table["seeds"].max()) if "seeds" in table.columns and len(table) else 1
    fig.suptitle(f"{title}; mean over {seeds} seed{'s' if seeds > 1 else ''}"
                 + (", bars: std over seeds" if seeds > 1 else ""), fontsize=9)
    fig.tight_layout()
    return fig


def markdown(table: pd.DataFrame, title: str, label: str, columns: Iterable[str]) -> str:
    """The ablation table as a Markdown section: ``mean ± std`` over seeds per metric (the mean alone with one
    seed), and the number of seeds."""
    columns = [c for c in columns if c in table.columns]
    settings = [c for c in ("ablation", "kind", "steps", "refine_steps", "seeds") if c in table.columns]
    shown = table[settings].copy()
    for column in columns:
        std = table.get(column + STD_SUFFIX)
        shown[column] = [f"{v:.4g}" if std is None or pd.isna(s) else f"{v:.4g} ± {s:.2g}"
                         for v, s in zip(table[column], std if std is not None else [np.nan] * len(table))]
    return "\n".join([f"### {title} ({label})", "", shown.to_markdown(index=False), ""])


def train_seconds(folder: Path) -> Mapping[str, float]:
    """Wall time of each trained model in the last run, keyed ``seed=<s>/<name>`` (from its run log, see
    ``run_log_path``)."""
    import json

    path = run_log_path(folder.parent, RUN_LOG)
    return json.loads(path.read_text())["train_seconds"] if path.is_file() else {}

