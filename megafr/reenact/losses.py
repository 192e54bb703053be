"""The six MegaFR losses (paper eq. 2-8), each a small pure function, and their weighted sum.

Units: 3D landmarks are FLAME model-space coordinates in metres; images are in [-1, 1].

- ``id_loss`` (eq. 3): ``1 - cos(R(x_s), R(x_f))`` with R the identity network, computed by
  :func:`megafr.nets.identity.identity_similarity`, the same function the ID metric uses.
- ``landmark_loss`` (eq. 4): ``sum_i |p_t^i - p_f^i|_1``.
- ``pair_loss`` (eq. 5): ``sum_j |(p_t^jU - p_t^jL) - (p_f^jU - p_f^jL)|_1`` over the eyelid and lip
  pairs of :mod:`megafr.face3d.landmarks`.
- ``reconstruction_loss`` (L_rec of eq. 6-7): ``lambda_l2 * L2 + lambda_lpips * LPIPS + lambda_rec_id * L_ID``.
- ``latent_loss`` (eq. 8): the paper writes ``-D_latent(w_f)``; we use its non-saturating form
  ``softplus(-D_latent(w_f))``, the form e4e trains its encoder with: same gradient direction, bounded below.

Per-sample sums are averaged over the batch. :func:`weighted_total` returns ``(total, {name: float})``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from megafr.face3d.landmarks import PAIRS
from megafr.nets.identity import identity_similarity


def _check_landmarks(p_t: torch.Tensor, p_f: torch.Tensor) -> None:
    if p_t.shape != p_f.shape or p_t.ndim != 3 or p_t.shape[-1] not in (2, 3):
        raise ValueError(f"landmarks must both be [B, K, 2|3], got {tuple(p_t.shape)} and {tuple(p_f.shape)}")


def id_loss(idnet: torch.nn.Module, x_s: torch.Tensor, x_f: torch.Tensor) -> torch.Tensor:
    """Eq. 3: mean over the batch of ``1 - cos`` of identity features."""
    return (1.0 - identity_similarity(idnet, x_s, x_f)).mean()


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


def reconstruction_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    idnet: torch.nn.Module,
    lpips_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
    lambda_l2: float,
    lambda_lpips: float,
    lambda_rec_id: float,
) -> torch.Tensor:
    """L_rec: weighted pixel L2 + LPIPS (skipped when ``lpips_fn`` is None) + identity loss."""
    total = lambda_l2 * F.mse_loss(y, x)
    if lpips_fn is not None and lambda_lpips > 0:
        total = total + lambda_lpips * lpips_fn(y, x).mean()
    if lambda_rec_id > 0:
        total = total + lambda_rec_id * id_loss(idnet, x, y)
    return total


def latent_loss(discriminator: torch.nn.Module, w_f: torch.Tensor) -> torch.Tensor:
    """Eq. 8 in non-saturating form: ``softplus(-D_latent(w))`` over every W+ entry [B, L, D], averaged."""
    if w_f.ndim != 3:
        raise ValueError(f"w_f must be W+ codes [B, L, D], got {tuple(w_f.shape)}")
    scores = discriminator(w_f.reshape(-1, w_f.shape[-1]))
    return F.softplus(-scores).mean()


def weighted_total(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> tuple[torch.Tensor, dict]:
    """``sum_k lambda_k * L_k`` over the terms with non-zero weight -> (total, {name: float} incl. 'total')."""
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise KeyError(f"no weight for loss term(s) {missing}")
    total = sum(weights[name] * value for name, value in terms.items() if weights[name] != 0)
    if not torch.is_tensor(total):
        total = next(iter(terms.values())).new_zeros(())
    log = {name: float(value.detach()) for name, value in terms.items()}
    log["total"] = float(total.detach())
    return total, log
