"""Tables 1 (cross reenactment) and 2 (frontalization): their rows, their scores, the paper's numbers.

Rows are registered methods (:mod:`megafr.evaluate.registry`; one module per row family in
:mod:`megafr.evaluate.rows`), each a function ``(sources, targets) -> outputs`` on [-1, 1] images:
MegaFR (e4e) and MegaFR (pSp), the FLAME-params baseline, inversion only and the linear directions.
On sets with rendered right answers a last row scores the right answers themselves with the same
networks (:func:`score_right_answer`), and ``csim_vs_right`` gives every row's CSIM as a fraction of it.
Before it, given the e4e networks, a row scores the right answers as the e4e encoder and the generator
reproduce them, ``G(E(truth))`` (:func:`score_inverted_right_answer`): what a method whose outputs are
this generator's images can expect at best, so that a row's gap to the right answer splits into the
generator's part and the method's.

Columns (definitions pinned in ``docs/metrics.md``): the paper's FID, LPIPS and ID similarity
(:mod:`megafr.evaluate.external`, ``None`` = n/a), and the study's own: L1 / PSNR / SSIM against
the rendered right answer (worlds that have one), AED / APD (3D face network), CSIM (the study's
ID network, output vs source photo) and FD-id (Frechet distance in that network's features, outputs
vs the reference photos). Motion is judged against the target (Table 1) or against the source's
expression and the frontal pose (Table 2).

Scoring streams over batches (only features and per-pair values are kept), so the paper profile's
1024 px outputs never have to sit in memory at once.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from megafr import metrics
from megafr.config import study_path
from megafr.datasets import protocol
from megafr.datasets.loader import ordered_batches
from megafr.devices import autocast, to_cpu
from megafr.errors import MissingFileError
from megafr.evaluate import rows  # noqa: F401  (registers the table rows)
from megafr.evaluate.external import PAPER_METRICS, PaperMetrics, inception_features
from megafr.evaluate.linear import LinearBaseline
from megafr.evaluate.registry import TASKS, Method, MethodInputs, build_methods
from megafr.imageio import images_to_tensor, tensors_to_images
from megafr.metrics import feature_statistics, frechet_distance, identity_embeddings
from megafr.reenact.inference import Reenactor
from megafr.reenact.train import Frozen, frozen_device, invert

EVAL_BATCH = 32  # pairs per forward pass
KEEP_OUTPUTS = 6  # outputs per row kept for the example figure
TRUTH_METRICS = ("l1", "psnr", "ssim")  # need the right answer (mini and smoke worlds)
OWN_METRICS = ("aed", "apd", "csim", "fd_id")  # the study's measurements, on every world
COLUMNS = PAPER_METRICS + TRUTH_METRICS + OWN_METRICS
CSIM_FRACTION = "csim_vs_right"  # a row's CSIM / the right answer's CSIM (only in tables with a right-answer row)
LOWER_IS_BETTER = {"fid": True, "lpips": True, "id_similarity": False, "l1": True, "psnr": False, "ssim": False,
                   "aed": True, "apd": True, "csim": False, CSIM_FRACTION: False, "fd_id": True}
RIGHT_ANSWER_ROW = "right answer (rendered truth)"  # the set's rendered right answers, scored as a row
RIGHT_ANSWER_NOTES = (  # printed under a table that has the right-answer row
    f"{RIGHT_ANSWER_ROW}: the rendered right answers scored as outputs by the same networks, i.e. what a perfect "
    "method scores in this world (its CSIM the one to reach, its AED/APD the measuring network's floor); its "
    "L1/PSNR/SSIM would compare the right answers with themselves (0, unbounded, 1) and are n/a",
    f"{CSIM_FRACTION}: each row's CSIM as a fraction of the right answer's CSIM",
)
INVERTED_RIGHT_ROW = "right answer, inverted (e4e)"  # G(E(truth)): the right answers as the generator draws them
INVERTED_RIGHT_NOTE = (
    f"{INVERTED_RIGHT_ROW}: the rendered right answers inverted by e4e and redrawn by the generator, G(E(truth)), "
    "scored like the methods: the generator's share of every gap to the right answer (a method whose outputs are "
    "this generator's images cannot expect better; its L1/PSNR/SSIM are the e4e inversion's)")

NOT_REPRODUCED = {  # the paper's baselines without a row of ours, and why (printed under our tables)
    "cross": "ID-disentanglement (Nitzan et al. 2020) is not reproduced: no released weights load into this study's "
             "networks, and retraining it is a project of its own; its row is the paper's only.",
    "frontal": "R&R is not reproduced: no released weights load into this study's networks; its row is the "
               "paper's only. The pSp row needs the released psp_ffhq_frontalization.pt "
               "(evaluate.psp_frontalization_path).",
}

# The paper's published numbers (CelebA-HQ test set, 1024 px; paper Tables 1 and 2). Never ours.
PAPER_TABLE_1 = pd.DataFrame(
    [("ID-disentanglement (Nitzan et al.)", 72.7, 0.46, 0.33), ("MegaFR (pSp)", 23.4, 0.29, 0.47),
     ("MegaFR (e4e)", 24.7, 0.32, 0.44)], columns=["method", "fid", "lpips", "id_similarity"])
PAPER_TABLE_2 = pd.DataFrame(
    [("R&R", 88.0, 0.49, 0.73), ("pSp", 62.8, 0.34, 0.58), ("MegaFR (pSp)", 24.3, 0.23, 0.51),
     ("MegaFR (e4e)", 27.2, 0.27, 0.47)], columns=["method", "fid", "lpips", "id_similarity"])
PAPER_LABEL = "paper, CelebA-HQ 1024 px — not ours"


@dataclass(frozen=True)
class EvalSet:
    """An evaluation set of ``data/prepare/eval/<name>``: uint8 images [N, S, S, 3]."""

    task: str  # "cross" (Table 1) or "frontal" (Table 2)
    source: np.ndarray  # source photos (an array, or ImageRows read where indexed)
    target: Optional[np.ndarray]  # target photos (cross only)
    truth: Optional[np.ndarray]  # rendered right answers (None on photos)

    def __len__(self) -> int:
        return len(self.source)


def load_eval_set(folder: str | Path, task: str, limit: int) -> EvalSet:
    """The first ``limit`` items of an evaluation folder: the synthetic worlds' ``source.npy``, ``target.npy``,
    ``truth.npy``, or the photos protocol's ``pairs.csv`` / ``sources.csv`` (:mod:`megafr.datasets.protocol`)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    folder = study_path(folder)
    if protocol.is_photo_protocol(folder):  # photos: file names drawn by prepare, no right answer
        columns = ("source", "target") if task == "cross" else ("source",)
        images = protocol.eval_images(folder, columns, limit)
        return EvalSet(task, images["source"], images.get("target"), None)
    if not (folder / "source.npy").is_file():
        raise MissingFileError(f"no evaluation set in {folder} (source.npy missing); run the prepare stage")

    def optional(name: str) -> Optional[np.ndarray]:
        path = folder / f"{name}.npy"
        return np.load(path, mmap_mode="r")[:limit] if path.is_file() else None

    target = optional("target") if task == "cross" else None
    if task == "cross" and target is None:
        raise MissingFileError(f"cross-reenactment set {folder} has no target.npy")
    return EvalSet(task, np.load(folder / "source.npy", mmap_mode="r")[:limit], target, optional("truth"))


# ------------------------------------------------------------------------------------------ rows
def table_methods(task: str, reenactors: Mapping[str, Reenactor], linear: LinearBaseline, refine_steps: int,
                  inversion_frozen: Frozen, psp_frontal: Optional[Method] = None) -> dict[str, Method]:
    """Row name -> method for Table 1 (``cross``) or Table 2 (``frontal``), in the tables' order: every
    registered row that these trained variants, linear baseline and frozen networks can build
    (``psp_frontal``: the released pSp frontalization network's row,
    :func:`megafr.evaluate.rows.psp_frontalization.psp_frontalization`, Table 2 only)."""
    return build_methods(task, MethodInputs(reenactors, linear, refine_steps, inversion_frozen, psp_frontal))


# --------------------------------------------------------------------------------------- scoring
class Judge:
    """The study's measuring networks (3D face network, ID network), the paper's metrics, and the
    reference photos' features that FID and FD-id compare against.

    Every network runs on the frozen networks' device (the paper's metric networks are moved
    there); batches given to :meth:`pair_scores` must be on it, and the scores stay there."""

    def __init__(self, frozen: Frozen, paper: PaperMetrics, reference: np.ndarray):
        self.face = frozen.face
        self.idnet = frozen.idnet
        self.device = frozen_device(frozen)
        self.paper = paper.to(self.device)
        batches = (images_to_tensor(reference[i:i + EVAL_BATCH]).to(self.device)
                   for i in range(0, len(reference), EVAL_BATCH))
        self.reference_ids = np.concatenate([to_cpu(identity_embeddings(self.idnet, x)).numpy() for x in batches])
        paper.set_reference(reference)

    @torch.no_grad()
    def pair_scores(self, task: str, out: torch.Tensor, source: torch.Tensor, target: Optional[torch.Tensor],
                    truth: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-pair values [B] of one batch (only the metrics that can be computed)."""
        measured = self.face.net(out)
        if task == "cross":
            wanted = self.face.net(target)
            expression, pose = wanted.expression, wanted.pose
        else:  # frontalization keeps the source's expression and wants the frontal pose
            expression, pose = self.face.net(source).expression, torch.zeros_like(measured.pose)
        scores = {"aed": metrics.aed(measured.expression, expression), "apd": metrics.apd(measured.pose, pose),
                  "csim": metrics.csim(self.idnet, out, source)}
        if truth is not None:
            scores.update(l1=metrics.l1(out, truth), psnr=metrics.psnr(out, truth), ssim=metrics.ssim(out, truth))
        for name, fn in (("lpips", self.paper.lpips), ("id_similarity", self.paper.id_similarity)):
            value = fn(out, source)
            if value is not None:
                scores[name] = value
        return scores


@dataclass
class RowResult:
    scores: dict[str, Optional[float]]  # column -> mean value (None: n/a)
    examples: np.ndarray  # uint8 [KEEP_OUTPUTS, S, S, 3] first outputs, for the figure


BatchOutputs = Callable[[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]],
                        torch.Tensor]  # (sources, targets, truth) of one batch -> the outputs to score


def score_method(method: Method, data: EvalSet, judge: Judge, progress: bool = False, desc: str = "") -> RowResult:
    """Run ``method`` over the set in batches and return the mean of every metric that can be computed."""
    return _score(lambda source, target, truth: method(source, target), data, judge, progress, desc)


def score_right_answer(data: EvalSet, judge: Judge, progress: bool = False) -> RowResult:
    """The set's rendered right answers scored as if a method had output them: what a perfect method scores in
    this world. L1/PSNR/SSIM are left n/a (against themselves they are 0, unbounded and 1)."""
    if data.truth is None:
        raise ValueError(f"this {data.task} set has no right answers to score")
    result = _score(lambda source, target, truth: truth, data, judge, progress, f"{data.task}: {RIGHT_ANSWER_ROW}")
    result.scores.update(dict.fromkeys(TRUTH_METRICS))
    return result


def score_inverted_right_answer(frozen: Frozen, data: EvalSet, judge: Judge, progress: bool = False) -> RowResult:
    """The set's rendered right answers inverted by ``frozen``'s e4e encoder and redrawn by its generator,
    ``G(E(truth))``, scored as if a method had output them (the inversion as the "inversion only" row computes it)."""
    if data.truth is None:
        raise ValueError(f"this {data.task} set has no right answers to invert")
    return _score(lambda source, target, truth: invert(frozen, truth)[0], data, judge, progress,
                  f"{data.task}: {INVERTED_RIGHT_ROW}")


@torch.no_grad()
def _score(outputs: BatchOutputs, data: EvalSet, judge: Judge, progress: bool, desc: str) -> RowResult:
    """The mean of every metric that can be computed on ``outputs`` of the set's batches, and the first outputs.

    Batches are read through a DataLoader (:func:`megafr.datasets.loader.ordered_batches`; files of a
    manifest are decoded by worker processes on CUDA) and moved to the judge's device; only per-pair
    values, features and the example outputs come back."""
    collected: dict[str, list[torch.Tensor]] = {}
    id_features, inception, examples = [], [], []
    device = judge.device
    batches = ordered_batches((data.source, data.target, data.truth), EVAL_BATCH, device)
    for source, target, truth in tqdm(batches, total=-(-len(data) // EVAL_BATCH), desc=desc, disable=not progress,
                                      leave=False):
        with autocast(device):
            out = outputs(source, target, truth).to(device).float().clamp(-1, 1)
            scores = judge.pair_scores(data.task, out, source, target, truth)
        for key, value in scores.items():
            collected.setdefault(key, []).append(to_cpu(value))
        id_features.append(to_cpu(identity_embeddings(judge.idnet, out)).numpy())
        as_uint8 = tensors_to_images(to_cpu(out))
        if judge.paper.inception is not None:
            inception.append(inception_features(judge.paper.inception, as_uint8))
        if sum(len(e) for e in examples) < KEEP_OUTPUTS:
            examples.append(as_uint8)
    scores: dict[str, Optional[float]] = {c: None for c in COLUMNS}
    scores.update({k: float(torch.cat(v).mean()) for k, v in collected.items()})
    scores["fd_id"] = frechet_distance(*feature_statistics(np.concatenate(id_features)),
                                       *feature_statistics(judge.reference_ids))
    if inception:
        scores["fid"] = judge.paper.fid_of_features(np.concatenate(inception))
    return RowResult(scores, np.concatenate(examples)[:KEEP_OUTPUTS])


def build_table(methods: Mapping[str, Method], data: EvalSet, judge: Judge, progress: bool = False,
                inversion: Optional[Frozen] = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One row per method, then, where the set has right answers, the inverted right answers' row (given the
    e4e networks ``inversion``) and the right answer's row: ``method``, ``pairs`` and every column (NaN where
    n/a), with ``csim_vs_right`` after ``csim`` when the right answer is scored; also each method's example
    outputs (the right answers are the set's own ``truth``)."""
    rows, examples = [], {}
    for name, method in methods.items():
        result = score_method(method, data, judge, progress, desc=f"{data.task}: {name}")
        rows.append(_table_row(name, len(data), result.scores))
        examples[name] = result.examples
    if data.truth is None:
        return pd.DataFrame(rows, columns=["method", "pairs", *COLUMNS]), examples
    if inversion is not None:
        inverted = score_inverted_right_answer(inversion, data, judge, progress)
        rows.append(_table_row(INVERTED_RIGHT_ROW, len(data), inverted.scores))
        examples[INVERTED_RIGHT_ROW] = inverted.examples
    rows.append(_table_row(RIGHT_ANSWER_ROW, len(data), score_right_answer(data, judge, progress).scores))
    return with_csim_fraction(pd.DataFrame(rows, columns=["method", "pairs", *COLUMNS])), examples


def _table_row(name: str, pairs: int, scores: Mapping[str, Optional[float]]) -> dict:
    """One row of a table: its name, its number of pairs and its scores (NaN where n/a)."""
    return {"method": name, "pairs": pairs, **{k: np.nan if v is None else v for k, v in scores.items()}}


def with_csim_fraction(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` with ``csim_vs_right`` after ``csim``: each row's CSIM over the right-answer row's."""
    right = table.loc[table["method"] == RIGHT_ANSWER_ROW, "csim"].item()
    shown = table.copy()
    shown.insert(shown.columns.get_loc("csim") + 1, CSIM_FRACTION, table["csim"] / right)
    return shown


# ---------------------------------------------------------------------------------------- output
def world_label(profile: str) -> str:
    """How a table of ours is labelled: mini/smoke numbers are that world's, never the paper's; paper-ci's are noise."""
    if profile == "paper":
        return "ours, paper profile (real photos, official weights)"
    if profile == "paper-ci":
        return ("ours, paper-ci profile (the paper code path on stand-ins: sample photos, random networks in the "
                "official layouts) — its numbers mean nothing")
    return f"ours, {profile} world (synthetic SynthHeads) — {profile}-world numbers, not comparable with the paper"


def csv_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as written to CSV: n/a where a metric could not be computed."""
    return table.astype(object).where(table.notna(), "n/a")


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    shown = table.copy().astype(object)
    for column in table.columns:
        if column in LOWER_IS_BETTER:
            shown[column] = [("n/a" if pd.isna(v) else f"{v:.4g}") for v in table[column]]
    shown.columns = [f"{c} {'↓' if LOWER_IS_BETTER[c] else '↑'}" if c in LOWER_IS_BETTER else c for c in table.columns]
    return shown


def markdown_table(table: pd.DataFrame, title: str, label: str, notes: Optional[Mapping[str, str]] = None) -> str:
    """A Markdown section: title with its world label, the table, one note per n/a column, the note of a
    measured column whose network is not the paper's (``not comparable`` in its log line), and what the
    right-answer row and ``csim_vs_right`` are when the table has them."""
    lines = [f"### {title} ({label})", "", _formatted(table).to_markdown(index=False), ""]
    missing = [c for c in COLUMNS if c in table.columns and table[c].isna().all()]
    for column in missing:
        reason = (notes or {}).get(column, "not measurable on this world (no right answer)")
        lines.append(f"- {column}: n/a — {reason}")
    for column, note in (notes or {}).items():
        if column not in missing and column in table.columns and "not comparable" in note:
            lines.append(f"- {column}: {note}")
    if INVERTED_RIGHT_ROW in set(table["method"]):
        lines.append(f"- {INVERTED_RIGHT_NOTE}")
    if RIGHT_ANSWER_ROW in set(table["method"]):
        lines += [f"- {note}" for note in RIGHT_ANSWER_NOTES]
    return "\n".join(lines + [""])


def paper_markdown(table: pd.DataFrame, title: str, note: str = "") -> str:
    """The paper's published numbers as their own section (never mixed with ours), with ``note`` under it."""
    lines = [f"### {title} ({PAPER_LABEL})", "", _formatted(table).to_markdown(index=False), ""]
    return "\n".join(lines + ([f"- {note}", ""] if note else []))


def metrics_tree(table: pd.DataFrame) -> dict:
    """``{row: {metric: value}}`` with numeric leaves only (n/a columns left out), row names as keys;
    ``csim_vs_right`` where the table has it."""
    tree = {}
    for row in table.to_dict("records"):
        key = row["method"].lower().replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        tree[key] = {c: round(float(row[c]), 5) for c in (*COLUMNS, CSIM_FRACTION) if c in row and pd.notna(row[c])}
    return tree


def examples_figure(data: EvalSet, examples: Mapping[str, np.ndarray], title: str):
    """Columns: the inputs (source, target), each row's output, and the right answer where known."""
    from megafr import plots

    n = min(len(v) for v in examples.values())
    columns, labels = [data.source[:n]], ["source"]
    if data.target is not None:
        columns, labels = columns + [data.target[:n]], labels + ["target"]
    columns += [examples[name][:n] for name in examples]
    labels += list(examples)
    if data.truth is not None:
        columns, labels = columns + [data.truth[:n]], labels + ["right answer"]
    cells = np.stack(columns, axis=1).reshape(-1, *data.source.shape[1:])
    return plots.image_grid(cells, len(columns), title, col_labels=[_wrap(label) for label in labels])


def _wrap(label: str, width: int = 14) -> str:
    return textwrap.fill(label, width)
