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

from typing import Iterable

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


def outputs(reenactor: Reenactor, sources: torch.Tensor, targets: torch.Tensor,
            refine_steps: Iterable[int]) -> dict[str, torch.Tensor]:
    """Method name -> outputs of one batch, for "inversion only" and MegaFR at each refinement step, from one
    inversion and one chain of F (:meth:`Reenactor.reenact_steps`)."""
    steps = list(refine_steps)
    runs = reenactor.reenact_steps(sources, targets, steps or (0,))
    return {"inversion only": runs[min(runs)].inverted, **{f"refine {k}": runs[k].image for k in steps}}


@torch.no_grad()
def evaluate_pairs(reenactor: Reenactor, sources: np.ndarray, targets: np.ndarray, truths: np.ndarray | None,
                   refine_steps: Iterable[int] = (0, 1, 2), progress: bool = True) -> pd.DataFrame:
    """Mean metrics per method over uint8 pairs [N, S, S, 3] -> one row per method (:func:`outputs`)."""
    refine_steps = tuple(refine_steps)
    collected: dict[str, dict[str, list]] = {}
    for start in tqdm(range(0, len(sources), EVAL_BATCH), desc="evaluate", disable=not progress, leave=False):
        part = slice(start, start + EVAL_BATCH)
        s, t = images_to_tensor(sources[part]), images_to_tensor(targets[part])
        truth = None if truths is None else images_to_tensor(truths[part])
        for name, output in outputs(reenactor, s, t, refine_steps).items():
            for key, value in score(reenactor, output, s, t, truth).items():
                collected.setdefault(name, {}).setdefault(key, []).append(value)
    return pd.DataFrame([{"method": name, "pairs": len(sources), **{k: float(torch.cat(v).mean()) for k, v in values.items()}}
                         for name, values in collected.items()])
