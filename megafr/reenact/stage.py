"""The ``train_reenact`` stage (notebook 06): train MegaFR and its parameter-fed baseline, then score them.

A stage run trains one E_FR per *variant* ``encoder:condition`` (``e4e:render`` is the paper's
MegaFR (e4e), ``psp:render`` MegaFR (pSp), ``e4e:params`` the baseline fed raw FLAME parameters
instead of the rendering), each with its own checkpoint, and scores every variant on the
cross-reenactment pairs at the requested refinement steps (:mod:`megafr.reenact.evaluate`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from megafr import plots
from megafr.config import comma_list, require, study_path
from megafr.datasets.loader import open_images
from megafr.reenact.evaluate import evaluate_pairs
from megafr.reenact.inference import Reenactor
from megafr.reenact.parallel import train_many
from megafr.reenact.train import CONDITIONS, ENCODERS, ReenactConfig, load_frozen, train

GRID_PAIRS = 6  # sources x targets shown in the figure


def parse_variants(text: str) -> list[tuple[str, str]]:
    """``"e4e:render,e4e:params"`` -> [("e4e", "render"), ("e4e", "params")], validated."""
    variants = []
    for item in comma_list(text):
        encoder, _, condition = item.partition(":")
        require(encoder in ENCODERS and condition in CONDITIONS,
                f"variant {item!r} must be <encoder>:<condition> with encoder in {ENCODERS} and condition in {CONDITIONS}")
        variants.append((encoder, condition))
    require(bool(variants), "train_reenact.variants must name at least one variant, e.g. e4e:render")
    return variants


def parse_steps(text: str | int) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2), each >= 0; a single value may arrive as an int (``-p refine_steps 0``)."""
    steps = tuple(int(part) for part in comma_list(text))
    require(all(s >= 0 for s in steps), f"refine steps must be >= 0, got {text!r}")
    return steps


def variant_name(encoder: str, condition: str) -> str:
    return f"{encoder}_{condition}"


def load_eval_pairs(eval_dir: str | Path, limit: int) -> dict[str, np.ndarray | None]:
    """Source, target and right-answer images of an evaluation set (``data/prepare/eval/cross``). On photos
    (the protocol's ``pairs.csv``) there is no right answer: ``truth`` is None and the images are read
    where indexed."""
    from megafr.datasets import protocol

    folder = study_path(eval_dir)
    if protocol.is_photo_protocol(folder):
        return {**protocol.eval_images(folder, ("source", "target"), limit), "truth": None}
    return {name: np.load(folder / f"{name}.npy")[:limit] for name in ("source", "target", "truth")}


def run_variants(cfg: ReenactConfig, variants: str, pairs: dict[str, np.ndarray], refine_steps: str | int,
                 progress: bool = True, workers: int = 1) -> tuple[dict[str, pd.DataFrame], pd.DataFrame,
                                                                  dict[str, Reenactor]]:
    """Train (or resume) every variant and score it -> (curves, scores table, reenactors). ``workers`` > 1:
    the variants train that many at a time in CPU processes (:func:`megafr.reenact.parallel.train_many`), each
    scored here as soon as it has finished."""
    images = open_images(study_path(cfg.train_images))  # memory-mapped array or manifest: read batch by batch
    configs = {variant_name(encoder, condition): dataclasses.replace(cfg, encoder=encoder, condition=condition)
               for encoder, condition in parse_variants(variants)}
    done: dict[str, tuple[pd.DataFrame, Reenactor, pd.DataFrame]] = {}

    def finish(name: str) -> None:  # load (or train) the variant and score it
        variant_cfg = configs[name]
        frozen = load_frozen(variant_cfg)
        model, curve = train(variant_cfg, frozen, images, progress=progress)
        reenactor = Reenactor(model, frozen, variant_cfg.condition)
        table = evaluate_pairs(reenactor, pairs["source"], pairs["target"], pairs["truth"],
                               parse_steps(refine_steps), progress=progress)
        done[name] = curve, reenactor, table.assign(variant=name)

    if workers > 1:
        train_many(configs, workers, progress, on_trained=finish)
    for name in configs:
        if name not in done:
            finish(name)
    curves = {name: done[name][0] for name in configs}
    reenactors = {name: done[name][1] for name in configs}
    return curves, pd.concat([done[name][2] for name in configs], ignore_index=True), reenactors


def metrics_tree(scores: pd.DataFrame) -> dict:
    """Scores table -> ``{variant: {method: {metric: value}}}`` (numeric leaves for ``dvc metrics``)."""
    tree: dict = {}
    values = [c for c in scores.columns if c not in ("variant", "method", "pairs")]
    for row in scores.to_dict("records"):
        method = row["method"].replace(" ", "_")
        tree.setdefault(row["variant"], {})[method] = {k: round(float(row[k]), 5) for k in values}
    return tree


def curves_table(curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All variants' training curves in one long table (variant, step, terms) for ``dvc plots``."""
    return pd.concat([c.assign(variant=name) for name, c in curves.items()], ignore_index=True)


def reenactment_grid(reenactor: Reenactor, pairs: dict[str, np.ndarray], title: str, n: int = GRID_PAIRS):
    """Rows: pairs; columns: source, inverted source, target, r_t, MegaFR (refine 1), right answer."""
    from megafr.imageio import images_to_tensor, tensors_to_images

    s, t = images_to_tensor(pairs["source"][:n]), images_to_tensor(pairs["target"][:n])
    out = reenactor.reenact(s, t, refine_steps=1)
    condition = out.condition if out.condition.shape[1] == 3 else out.inverted * 0
    columns = [pairs["source"][:n], tensors_to_images(out.inverted), pairs["target"][:n],
               tensors_to_images(condition), tensors_to_images(out.image)]
    labels = ["source", "inverted x_s", "target", "rendering r_t", "MegaFR (refine 1)"]
    if pairs["truth"] is not None:  # photos have no right answer
        columns, labels = columns + [pairs["truth"][:n]], labels + ["right answer"]
    cells = np.stack(columns, axis=1).reshape(-1, *pairs["source"].shape[1:])
    return plots.image_grid(cells, len(columns), title, col_labels=labels)


def curve_figure(curves: dict[str, pd.DataFrame], title: str):
    """Training curves of every loss term, one panel per variant."""
    return plots.loss_curves(curves, title)
