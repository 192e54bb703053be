"""Landmark losses: MegaFR's 3D landmark and gap terms (eq. 4-5) and the 3D face network's 2D terms.

- ``landmark_loss`` (eq. 4): ``sum_i |p_t^i - p_f^i|_1`` over 3D landmarks (FLAME model space, metres).
- ``pair_loss`` (eq. 5): ``sum_j |(p_t^jU - p_t^jL) - (p_f^jU - p_f^jL)|_1`` over the eyelid and lip
  pairs of :mod:`megafr.face3d.landmarks`.
- ``weighted_landmark_loss``: the 3D face network's 2D landmark term (paper Sec. 3.1): L1 in NDC
  units with larger weights on the eye and mouth landmarks, which L_pair later reads.
- ``silhouette_loss``: mean absolute difference of a soft silhouette and a head mask.

Per-sample sums are averaged over the batch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from megafr.face3d.landmarks import PAIRS


def _check_landmarks(p_t: torch.Tensor, p_f: torch.Tensor) -> None:
    if p_t.shape != p_f.shape or p_t.ndim != 3 or p_t.shape[-1] not in (2, 3):
        raise ValueError(f"landmarks must both be [B, K, 2|3], got {tuple(p_t.shape)} and {tuple(p_f.shape)}")


def landmark_loss(p_t: torch.Tensor, p_f: torch.Tensor) -> torch.Tensor:
    """Eq. 4: per sample ``sum_i |p_t^i - p_f^i|_1`` over landmarks [B, K, 3], averaged over the batch."""
    _check_landmarks(p_t, p_f)
    return (p_t - p_f).abs().sum(dim=(1, 2)).mean()


def pair_gaps(p: torch.Tensor, pairs: Sequence[tuple[int, int]] = PAIRS) -> torch.Tensor:
    """Upper-minus-lower landmark vectors [B, J, 3] of the eyelid and lip pairs."""
    upper = torch.tensor([u for u, _ in pairs], device=p.device)
    lower = torch.tensor([v for _, v in pairs], device=p.device)
    return p[:, upper] - p[:, lower]


def pair_loss(p_t: torch.Tensor, p_f: torch.Tensor, pairs: Sequence[tuple[int, int]] = PAIRS) -> torch.Tensor:
    """Eq. 5: per sample ``sum_j |gap_t^j - gap_f^j|_1``, averaged over the batch."""
    _check_landmarks(p_t, p_f)
    return (pair_gaps(p_t, pairs) - pair_gaps(p_f, pairs)).abs().sum(dim=(1, 2)).mean()


def weighted_landmark_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i * mean_xy |p_i - t_i| / sum_i w_i, averaged over the batch. predicted/target [B, 68, 2], weights [68]."""
    if predicted.shape != target.shape or predicted.shape[-2] != weights.shape[0]:
        raise ValueError(f"landmarks {tuple(predicted.shape)} vs {tuple(target.shape)} vs weights {tuple(weights.shape)}")
    per_point = (predicted - target).abs().mean(dim=-1)  # [B, 68]
    return ((per_point * weights).sum(dim=-1) / weights.sum()).mean()


def silhouette_loss(soft: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between a soft silhouette [B, 1, H, W] and a target mask [B, 1, H, W] in [0, 1]."""
    if soft.shape != mask.shape:
        raise ValueError(f"silhouette {tuple(soft.shape)} and mask {tuple(mask.shape)} differ")
    return (soft - mask).abs().mean()
