"""Pinned metric definitions of the study (docs: README, "Metrics").

Image metrics take float images [B, 3, S, S] in [-1, 1] and return per-image values [B]:

- ``l1``: mean absolute error on the [0, 1] scale;
- ``psnr``: 10 log10(1 / MSE) on the [0, 1] scale, dB;
- ``ssim``: kornia's SSIM (11x11 Gaussian window, sigma 1.5) on the [0, 1] scale, averaged over pixels;
- ``csim``: cosine similarity of identity features, computed by
  :func:`megafr.nets.identity.identity_similarity` (pSp's crop and pooling; the ID net is ArcFace
  IR-SE50 on the paper profile, the study's trained IR-SE on mini).

Motion metrics compare FLAME parameters that the 3D face network measures on two images:

- ``aed`` (average expression distance): mean absolute difference of the expression
  coefficients psi (all regressed components) -- FLAME coefficients, not landmarks;
- ``apd`` (average pose distance): mean absolute difference of head yaw, pitch and roll in
  degrees (global rotation only; jaw and gaze belong to expression here as in the paper's FLAME use).

Other papers define AED/APD on landmarks or on different 3DMMs; numbers are comparable only
within this study.
"""

from __future__ import annotations

import torch
from kornia.metrics import ssim as kornia_ssim

from megafr.face3d.pose import head_pose_degrees
from megafr.nets.identity import identity_similarity

SSIM_WINDOW = 11  # Gaussian window of SSIM, pixels
PSNR_FLOOR_MSE = 1e-10  # keeps PSNR finite for identical images


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(-1, 1) + 1) / 2


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image on the [0, 1] scale -> [B]."""
    return (_unit(x) - _unit(y)).abs().mean(dim=(1, 2, 3))


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR per image in dB on the [0, 1] scale -> [B]."""
    mse = (_unit(x) - _unit(y)).square().mean(dim=(1, 2, 3)).clamp_min(PSNR_FLOOR_MSE)
    return 10.0 * torch.log10(1.0 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM per image (kornia, 11x11 Gaussian window) on the [0, 1] scale -> [B]."""
    return kornia_ssim(_unit(x), _unit(y), SSIM_WINDOW).mean(dim=(1, 2, 3))


def csim(idnet: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Identity cosine similarity per image pair -> [B] (the same function as the ID loss), on ``x``'s device."""
    device = next(idnet.parameters()).device
    return identity_similarity(idnet, x.to(device), y.to(device)).to(x.device)


def aed(expression_a: torch.Tensor, expression_b: torch.Tensor) -> torch.Tensor:
    """Average expression distance per pair: mean |psi_a - psi_b| over components -> [B]."""
    return (expression_a - expression_b).abs().mean(dim=1)


def apd(pose_a: torch.Tensor, pose_b: torch.Tensor) -> torch.Tensor:
    """Average pose distance per pair: mean |yaw, pitch, roll difference| in degrees -> [B]."""
    return (head_pose_degrees(pose_a) - head_pose_degrees(pose_b)).abs().mean(dim=1)
