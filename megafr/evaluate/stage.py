"""The ``evaluate`` stage (notebook 07): Tables 1 and 2, the linear baseline's directions, the ablations.

Reads train_reenact's checkpoints (their stored configuration says how each variant was trained
and which frozen networks it used), the evaluation sets of ``data/prepare/eval/`` and the real
reference photos; writes, under ``out_dir`` (``data/evaluate``):

- ``table1_cross.{csv,md}``, ``table2_frontal.{csv,md}``: ours, labelled with the world, and in
  the Markdown the paper's numbers in their own section;
- ``latent_directions.pt`` (:func:`megafr.reenact.directions.save_directions`),
  ``latent_directions.csv`` (R^2 of each direction) and ``latent_ridge_search.csv`` (how the
  ridge penalty was chosen);
- ``ablations.{csv,md}`` (mean and std over seeds per ablation), ``ablations_per_seed.csv`` (one row per
  ablation and seed) and ``ablations/seed=<s>/<name>/`` (each ablation's E_FR checkpoint per seed);
- ``claims.{csv,md}``: the paper's claims judged on the per-seed ablations (:mod:`megafr.evaluate.claims`);

and the DVC metrics / plots / figures through :func:`megafr.stage.write_outputs`.
A sweep run (``run_dir``) writes all of it under ``<run_dir>/`` instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd

from megafr.config import require, require_at_least, study_path
from megafr.errors import CheckpointError, InputError
from megafr.evaluate import ablations as abl
from megafr.evaluate import claims as cl
from megafr.evaluate.external import PaperMetrics
from megafr.evaluate.linear import LinearBaseline, fit_baseline, parse_attributes, parse_ridges
from megafr.evaluate.tables import (NOT_REPRODUCED, PAPER_TABLE_1, PAPER_TABLE_2, Judge, csv_table,
                                    markdown_table, metrics_tree, paper_markdown, world_label)
from megafr.fileio import atomic_write
from megafr.reenact.directions import save_directions
from megafr.reenact.inference import Reenactor
from megafr.reenact.parallel import effective_workers
from megafr.reenact.stage import parse_variants, variant_name
from megafr.reenact.train import Frozen, ReenactConfig, load_frozen, read_checkpoint

REFERENCE_VARIANT = ("e4e", "render")  # MegaFR (e4e): the ablations' base and the linear baseline's encoder


@dataclass(frozen=True)
class EvaluateConfig:
    profile: str  # world that produced the data (labels every table and figure)
    seed: int  # first seed of the ablations' training (data order and initialisation)
    reenact_dir: str  # train_reenact's checkpoints megafr_<encoder>_<condition>.pt
    variants: str  # the train_reenact variants that become table rows (must include e4e:render)
    cross_dir: str  # Table 1 set: source.npy, target.npy (and truth.npy on synthetic worlds)
    cross_pairs: int  # first pairs of it to score
    frontal_dir: str  # Table 2 set: source.npy (and truth.npy, the frontal rendering)
    frontal_pairs: int  # first sources of it to score
    reference_images: str  # real photos [N, S, S, 3] that FID and FD-id compare outputs with
    reference_count: int  # first photos of it used (0: all)
    truth_table: str  # parquet with ground-truth attribute columns per training image ("": measure them)
    direction_attributes: str  # attributes of the linear baseline, e.g. "yaw_deg,pitch_deg,expr_smile"
    direction_images: int  # first training images the directions are fitted on (0: all)
    direction_ridges: str  # candidate ridge penalties; the one whose edits land best on held-out training faces wins
    refine_steps: int  # MegaFR's refinement steps in Tables 1 and 2 (paper: one extra step)
    inception_dir: str  # folder holding clean-fid's inception-2015-12-05.pt ("": clean-fid's own, /tmp)
    arcface_path: str  # ArcFace IR-SE50 file for the paper's ID similarity ("": n/a)
    ablations: str  # ablation groups "loss,layers,condition,refine" ("none": the reference only)
    ablation_steps: int  # training steps of every ablation and of its reference
    ablation_seeds: int  # every trained ablation (and the reference) trained and scored with seeds seed .. seed+n-1
    ablation_pairs: int  # first cross pairs the ablations are scored on
    ablation_workers: int  # ablations trained at a time, in CPU processes sharing the cores (1 on a GPU)
    psp_frontalization_path: str  # released psp_ffhq_frontalization.pt: Table 2's pSp row ("": no row)
    out_dir: str  # where tables, directions and ablation checkpoints go (data/evaluate)
    run_dir: str  # set by sweeps: everything goes under <run_dir>/ instead

    def __post_init__(self):
        for name in ("cross_pairs", "frontal_pairs", "ablation_pairs"):
            value = getattr(self, name)
            require(value >= 2, f"evaluate.{name} must be >= 2 (FD-id needs a spread), got {value}")
        require_at_least("evaluate", self, (("reference_count", 0), ("direction_images", 0), ("refine_steps", 0),
                                            ("ablation_steps", 0), ("ablation_seeds", 1), ("ablation_workers", 1)))
        require(REFERENCE_VARIANT in parse_variants(self.variants),
                f"evaluate.variants must include e4e:render (MegaFR (e4e)), got {self.variants!r}")
        parse_attributes(self.direction_attributes)
        parse_ridges(self.direction_ridges)
        abl.parse_kinds(self.ablations)

    @property
    def folder(self) -> Path:
        """``out_dir``, or ``<run_dir>/evaluate`` for a sweep run."""
        return study_path(self.run_dir) / "evaluate" if self.run_dir else study_path(self.out_dir)


class Trained(NamedTuple):
    reenactors: dict[str, Reenactor]  # variant name (e4e_render, ...) -> trained MegaFR
    base: ReenactConfig  # MegaFR (e4e)'s training configuration (the ablations start from it)
    frozen: Frozen  # the e4e-side frozen networks (inversion, generator, 3D net, ID net)


def load_trained(cfg: EvaluateConfig) -> Trained:
    """Every requested variant from its train_reenact checkpoint (frozen networks loaded once per encoder)."""
    frozen_by_encoder: dict[str, Frozen] = {}
    reenactors, base = {}, None
    for encoder, condition in parse_variants(cfg.variants):
        name = variant_name(encoder, condition)
        path = study_path(cfg.reenact_dir) / f"megafr_{name}.pt"
        data = read_checkpoint(path)
        trained_cfg = _checkpoint_config(path, data)
        if encoder not in frozen_by_encoder:
            frozen_by_encoder[encoder] = load_frozen(trained_cfg)
        try:
            reenactors[name] = Reenactor.from_config(trained_cfg, data, frozen_by_encoder[encoder])
        except RuntimeError as error:  # load_state_dict: weights of another architecture or size
            raise _unfit(path, error) from error
        if (encoder, condition) == REFERENCE_VARIANT:
            base = dataclasses.replace(trained_cfg, seed=cfg.seed)
    return Trained(reenactors, base, frozen_by_encoder["e4e"])


DETAIL_CHARS = 300  # torch's state-dict error is cut to this many characters (it lists every key)
RETRAIN_FIX = "re-train it with `dvc repro train_reenact` (or restore the checkpoint that matches this code)"


def _checkpoint_config(path: Path, data: dict) -> ReenactConfig:
    """The training configuration a train_reenact checkpoint records (CheckpointError if it does not fit)."""
    try:
        return ReenactConfig(**data["config"])
    except (TypeError, InputError) as error:
        raise CheckpointError(f"{path}: its recorded configuration does not fit this code ({error}); "
                              f"{RETRAIN_FIX}") from error


def _unfit(path: Path, error: RuntimeError) -> CheckpointError:
    """torch's load_state_dict error, shortened to its first mismatch, as a CheckpointError naming the file."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = " ".join(lines[:2])
    detail = detail if len(detail) <= DETAIL_CHARS else detail[:DETAIL_CHARS] + " ..."
    return CheckpointError(f"{path}: its weights do not fit the networks of its configuration ({detail}); "
                           f"{RETRAIN_FIX}")


def _first(path: str, count: int) -> np.ndarray:
    """The first ``count`` images (0: all) of a .npy array (memory-mapped) or a manifest (read where indexed)."""
    from megafr.datasets.loader import ImageRows, open_images

    path = study_path(path)
    if path.suffix == ".csv":
        photos = open_images(path)
        return ImageRows(photos, np.arange(min(count, len(photos)) if count else len(photos)))
    images = np.load(path, mmap_mode="r")
    return images[:count] if count else images


def build_judge(cfg: EvaluateConfig, trained: Trained, paper: Optional[PaperMetrics] = None) -> Judge:
    """The measuring networks, the paper's metrics that are available, and the reference photos."""
    paper = paper or PaperMetrics.detect(cfg.inception_dir, cfg.arcface_path)
    return Judge(trained.frozen, paper, _first(cfg.reference_images, cfg.reference_count))


def fit_linear(cfg: EvaluateConfig, trained: Trained) -> LinearBaseline:
    """Fit the linear directions on the e4e codes of the training photos and save them."""
    images = _first(trained.base.train_images, cfg.direction_images)
    truth = None
    if cfg.truth_table:
        truth = pd.read_parquet(study_path(cfg.truth_table)).iloc[:len(images)].reset_index(drop=True)
    directions, search = fit_baseline(trained.frozen, images, parse_attributes(cfg.direction_attributes),
                                      parse_ridges(cfg.direction_ridges), truth)
    save_directions(directions, cfg.folder / "latent_directions.pt")
    return LinearBaseline(directions, trained.frozen, search)


class Ablations(NamedTuple):
    runs: pd.DataFrame  # one row per (ablation, seed)
    table: pd.DataFrame  # one row per ablation: mean and <metric>_std over seeds (abl.summarise)
    claims: pd.DataFrame  # the claims table (megafr.evaluate.claims.claims_table)
    not_measured: list  # (claim, reason) of the claims the run could not measure


def ablation_results(runs: pd.DataFrame) -> Ablations:
    """The ablation table and the claims table of the per-seed runs."""
    return Ablations(runs, abl.summarise(runs), cl.claims_table(runs), cl.not_measured(runs))


def run_ablations(cfg: EvaluateConfig, trained: Trained, judge: Judge, pairs, progress: bool = True) -> Ablations:
    """Every ablation of ``cfg.ablations`` trained for ``cfg.ablation_steps`` with each of ``cfg.ablation_seeds``
    seeds and scored on ``pairs``; the ablation and claims tables built from them."""
    from megafr.datasets.loader import open_images

    images = open_images(study_path(trained.base.train_images))  # memory-mapped array or manifest
    runs = abl.run_ablations(trained.base, trained.frozen, images, pairs, judge,
                             abl.plan(abl.parse_kinds(cfg.ablations), cfg.refine_steps, trained.base.edit_groups),
                             cfg.ablation_steps,
                             cfg.folder / "ablations", abl.ablation_digest(trained.base), progress,
                             seeds=abl.seed_list(cfg.seed, cfg.ablation_seeds),
                             workers=effective_workers(cfg.ablation_workers, "evaluate.ablation_workers"))
    return ablation_results(runs)


def psp_frontal_row(cfg: EvaluateConfig, trained: Trained):
    """Table 2's pSp frontalization row when ``cfg.psp_frontalization_path`` names the released file, else None."""
    from megafr.evaluate.rows.psp_frontalization import psp_frontalization

    return psp_frontalization(cfg.psp_frontalization_path, trained.frozen) if cfg.psp_frontalization_path else None


TABLE_TITLES = {"table1_cross": "Table 1: cross reenactment", "table2_frontal": "Table 2: frontalization"}
TABLE_TASKS = {"table1_cross": "cross", "table2_frontal": "frontal"}
PAPER_TABLES = {"table1_cross": PAPER_TABLE_1, "table2_frontal": PAPER_TABLE_2}


def table_markdown(cfg: EvaluateConfig, key: str, table: pd.DataFrame, judge: Judge) -> str:
    """Our table (labelled with its world) followed by the paper's, in separate sections."""
    ours = markdown_table(table, TABLE_TITLES[key], world_label(cfg.profile), judge.paper.reasons)
    return ours + "\n" + paper_markdown(PAPER_TABLES[key], TABLE_TITLES[key], NOT_REPRODUCED[TABLE_TASKS[key]])


def ablation_markdown(cfg: EvaluateConfig, table: pd.DataFrame) -> str:
    """The ablation table (mean ± std over seeds), labelled with its world."""
    return abl.markdown(table, "Ablations of MegaFR (e4e)", world_label(cfg.profile), abl.metric_columns(table))


def claims_markdown(cfg: EvaluateConfig, ablations: Ablations) -> str:
    """The claims table with its budget, rule and the claims not measured, labelled with its world."""
    return cl.markdown(ablations.claims, "Claims of the paper, judged on the ablations", world_label(cfg.profile),
                       ablations.not_measured)


def write_tables(cfg: EvaluateConfig, tables: dict[str, pd.DataFrame], ablations: Ablations,
                 linear: LinearBaseline, judge: Judge) -> list[Path]:
    """CSV and Markdown of every table under the stage folder; returns the paths."""
    folder = cfg.folder
    written = []
    for key, table in tables.items():
        written += _write(folder / f"{key}.csv", csv_table(table).to_csv(index=False, float_format="%.6g"))
        written += _write(folder / f"{key}.md", table_markdown(cfg, key, table, judge))
    written += _write(folder / "ablations.csv", ablations.table.to_csv(index=False, float_format="%.6g"))
    written += _write(folder / "ablations_per_seed.csv", ablations.runs.to_csv(index=False, float_format="%.6g"))
    written += _write(folder / "ablations.md", ablation_markdown(cfg, ablations.table))
    written += _write(folder / "claims.csv", ablations.claims.to_csv(index=False, float_format="%.6g"))
    written += _write(folder / "claims.md", claims_markdown(cfg, ablations))
    written += _write(folder / "latent_directions.csv", linear.fit_report().to_csv(index=False, float_format="%.6g"))
    written += _write(folder / "latent_ridge_search.csv", linear.ridge_search.to_csv(index=False, float_format="%.6g"))
    return written


def _write(path: Path, text: str) -> list[Path]:
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return [path]


def stage_metrics(tables: dict[str, pd.DataFrame], ablations: Ablations, linear: LinearBaseline,
                  judge: Judge) -> dict:
    """The DVC metrics tree: numeric leaves only (n/a metrics are left out, their availability is 0/1; the
    ablations' means, stds over seeds and seed counts; each claim's effect mean, std and verdict as 1/0/-1)."""
    return {
        **{key: metrics_tree(table) for key, table in tables.items()},
        "ablations": abl.metrics_tree(ablations.table, abl.summary_columns(ablations.table)),
        "claims": cl.metrics_tree(ablations.claims),
        "latent_directions_r2": {n: round(d.r2, 5) for n, d in linear.directions.items()},
        "paper_metrics_available": {name: int(judge.paper.available(name)) for name in judge.paper.reasons},
    }
