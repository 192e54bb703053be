"""Image reconstruction losses: the Laplacian-pyramid L1 and MegaFR's L_rec (eq. 6-7).

- ``laplacian_l1`` (Bojanowski et al. 2018, GLO): the sum over pyramid levels of the mean absolute
  difference of the bands, a sharper substitute for pixel L2 where no perceptual network is available.
- ``reconstruction_loss``: ``lambda_l2 * L2 + lambda_lpips * LPIPS + lambda_rec_id * L_ID``, the
  L_rec that MegaFR's cycle (eq. 6) and self-reconstruction (eq. 7) terms apply.

Images are [B, C, H, W] in [-1, 1].
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from kornia.geometry.transform import build_laplacian_pyramid

from megafr.losses.identity import id_loss

LAP_LEVELS = 4  # Laplacian-pyramid levels (64 px: bands at 64, 32, 16 and the 8 px residual)


def laplacian_l1(x: torch.Tensor, y: torch.Tensor, levels: int = LAP_LEVELS) -> torch.Tensor:
    """Laplacian-pyramid L1: sum over levels of the mean |band(x) - band(y)|.

    kornia builds the pyramids (``levels`` levels, the last one the low-pass residual). Each level is
    averaged over its own pixels, so an error counts once at each scale where it lives: fine detail
    is not hidden under a coarse colour error, as it partly is in a plain pixel loss. x, y [B, C, H, W]
    """
    bands_x, bands_y = build_laplacian_pyramid(x, levels), build_laplacian_pyramid(y, levels)
    return sum((bx - by).abs().mean() for bx, by in zip(bands_x, bands_y))


def reconstruction_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    idnet: torch.nn.Module,
    lpips_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
    lambda_l2: float,
    lambda_lpips: float,
    lambda_rec_id: float,
    x_features: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """L_rec of ``y`` against ``x``: weighted pixel L2 + LPIPS (skipped when ``lpips_fn`` is None) + identity loss
    (``x_features``: ``x``'s identity features, when the caller has them: :func:`megafr.losses.identity.id_loss`)."""
    total = lambda_l2 * F.mse_loss(y, x)
    if lpips_fn is not None and lambda_lpips > 0:
        total = total + lambda_lpips * lpips_fn(y, x).mean()
    if lambda_rec_id > 0:
        total = total + lambda_rec_id * id_loss(idnet, x, y, x_features)
    return total
