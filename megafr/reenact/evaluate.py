"""Scoring reenactments on the mini world's evaluation pairs (definitions in :mod:`megafr.metrics`).

For each method and each pair (source photo, target photo, rendered right answer):

- ``l1``, ``psnr``, ``ssim`` of the output against the right answer (mini world only);
- ``aed``, ``apd``: expression and head-pose distance between the output and the target, both
  measured by the 3D face network;
- ``csim``: identity similarity between the output and the source photo.

Methods: MegaFR at a number of refinement steps, and "inversion only" (the inverted source
``x_s`` returned unchanged), the floor every reenactment method must beat on AED and APD.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from megafr import metrics
from megafr.imageio import images_to_tensor
from megafr.reenact.inference import Reenactor

EVAL_BATCH = 32


def score(reenactor: Reenactor, output: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
          truth: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-pair metrics [B] of outputs against their sources, targets and (if known) right answers."""
    measured_out, measured_target = reenactor.measure(output), reenactor.measure(target)
    scores = {
        "aed": metrics.aed(measured_out.expression, measured_target.expression),
        "apd": metrics.apd(measured_out.pose, measured_target.pose),
        "csim": metrics.csim(reenactor.frozen.idnet, output, source),
    }
    if truth is not None:
        scores.update(l1=metrics.l1(output, truth), psnr=metrics.psnr(output, truth), ssim=metrics.ssim(output, truth))
    return scores


def methods(reenactor: Reenactor, refine_steps: Iterable[int]) -> dict[str, Callable]:
    """Name -> function (sources, targets) -> outputs, for MegaFR at each refinement and inversion only."""
    table = {"inversion only": lambda s, t: reenactor.reenact(s, t, refine_steps=0).inverted}
    for steps in refine_steps:
        table[f"refine {steps}"] = lambda s, t, k=steps: reenactor.reenact(s, t, refine_steps=k).image
    return table


@torch.no_grad()
def evaluate_pairs(reenactor: Reenactor, sources: np.ndarray, targets: np.ndarray, truths: np.ndarray | None,
                   refine_steps: Iterable[int] = (0, 1, 2), progress: bool = True) -> pd.DataFrame:
    """Mean metrics per method over uint8 pairs [N, S, S, 3] -> one row per method."""
    rows = []
    for name, run in methods(reenactor, refine_steps).items():
        collected: dict[str, list] = {}
        starts = range(0, len(sources), EVAL_BATCH)
        for start in tqdm(starts, desc=f"evaluate {name}", disable=not progress, leave=False):
            part = slice(start, start + EVAL_BATCH)
            s, t = images_to_tensor(sources[part]), images_to_tensor(targets[part])
            truth = None if truths is None else images_to_tensor(truths[part])
            for key, value in score(reenactor, run(s, t), s, t, truth).items():
                collected.setdefault(key, []).append(value)
        rows.append({"method": name, "pairs": len(sources),
                     **{k: float(torch.cat(v).mean()) for k, v in collected.items()}})
    return pd.DataFrame(rows)
