"""The study's metrics, defined once (definitions pinned in ``docs/metrics.md``).

Image metrics take float images [B, 3, S, S] in [-1, 1] and return per-image values [B]:

- ``l1``: mean absolute error on the [0, 1] scale;
- ``psnr``: 10 log10(1 / MSE) on the [0, 1] scale, dB (MSE floored, so identical images give ``PSNR_MAX``);
- ``ssim``: kornia's SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) on the [0, 1] scale,
  averaged over pixels;
- ``csim``: cosine similarity of identity features, computed by
  :func:`megafr.nets.identity.identity_similarity` (pSp's crop and pooling; the ID net is ArcFace
  IR-SE50 on the paper profile, the study's trained IR-SE on mini), the function the ID loss uses.

Motion metrics compare FLAME parameters that the 3D face network measures on two images:

- ``aed`` (average expression distance): mean absolute difference of the expression
  coefficients psi (all regressed components) -- FLAME coefficients, not landmarks;
- ``apd`` (average pose distance): mean absolute difference of head yaw, pitch and roll in
  degrees (global rotation only; jaw and gaze belong to expression here as in the paper's FLAME use).

Other papers define AED/APD on landmarks or on different 3DMMs; numbers are comparable only
within this study.

Identity-network metrics of the pretraining stages:

- TAR at FAR (face verification, as in the IJB / LFW BLUFR protocols): the threshold is the score
  that a fraction ``far`` of impostor pairs exceed; TAR is the fraction of genuine pairs above it.
- FD-id: the Frechet distance (Dowson & Landau 1982; the formula of FID, Heusel et al. 2017) between
  two image sets' features in the *identity network's* embedding space, not Inception's, so it is
  labelled FD-id and never FID. ``frechet_distance`` is the closed form
  ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``. clean-fid provides the same function
  (``cleanfid.fid.frechet_distance``), but importing ``cleanfid`` imports torchvision, which fails
  on CPU-only machines with PyPI's torchvision; the formula is therefore written here with
  ``scipy.linalg.sqrtm`` following the same steps (an epsilon on the diagonal when the product is
  singular, real part kept), and the test compares it with clean-fid's whenever clean-fid imports.
"""

from __future__ import annotations

import numpy as np
import torch
from kornia.metrics import ssim as kornia_ssim
from scipy import linalg

from megafr.face3d.pose import head_pose_degrees
from megafr.nets.identity import identity_features, identity_similarity

SSIM_WINDOW = 11  # Gaussian window of SSIM, pixels
PSNR_FLOOR_MSE = 1e-10  # keeps PSNR finite for identical images
PSNR_MAX = 100.0  # PSNR of identical images, dB: 10 log10(1 / PSNR_FLOOR_MSE)
FD_EPS = 1e-6  # diagonal offset when the covariance product is singular (as clean-fid)
FEATURE_BATCH = 128  # images per identity-network forward pass


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(-1, 1) + 1) / 2


def _same_shape(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{name} needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")


# ------------------------------------------------------------------------------ image metrics
def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image on the [0, 1] scale -> [B]."""
    return (_unit(x) - _unit(y)).abs().mean(dim=(1, 2, 3))


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR per image in dB on the [0, 1] scale -> [B]."""
    _same_shape("psnr", x, y)
    mse = (_unit(x) - _unit(y)).square().mean(dim=(1, 2, 3)).clamp_min(PSNR_FLOOR_MSE)
    return 10.0 * torch.log10(1.0 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """SSIM per image (kornia, 11x11 Gaussian window) on the [0, 1] scale -> [B]; ``clamp=False`` leaves values
    outside [-1, 1] as they are, so that a training loss built on it keeps their gradient."""
    _same_shape("ssim", x, y)
    unit = _unit if clamp else (lambda t: (t + 1) / 2)
    return kornia_ssim(unit(x), unit(y), SSIM_WINDOW).mean(dim=(1, 2, 3))


def csim(idnet: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Identity cosine similarity per image pair -> [B] (the same function as the ID loss), on ``x``'s device."""
    device = next(idnet.parameters()).device
    return identity_similarity(idnet, x.to(device), y.to(device)).to(x.device)


# ------------------------------------------------------------------------------ motion metrics
def aed(expression_a: torch.Tensor, expression_b: torch.Tensor) -> torch.Tensor:
    """Average expression distance per pair: mean |psi_a - psi_b| over components -> [B]."""
    return (expression_a - expression_b).abs().mean(dim=1)


def apd(pose_a: torch.Tensor, pose_b: torch.Tensor) -> torch.Tensor:
    """Average pose distance per pair: mean |yaw, pitch, roll difference| in degrees -> [B]."""
    return (head_pose_degrees(pose_a) - head_pose_degrees(pose_b)).abs().mean(dim=1)


# ------------------------------------------------------------------------------ identity network
def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold): genuine pairs accepted when impostor pairs are accepted at rate ``far``."""
    genuine, impostor = np.asarray(genuine, np.float64), np.sort(np.asarray(impostor, np.float64))
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("tar_at_far needs genuine and impostor scores")
    if not 0 < far < 1:
        raise ValueError(f"far must lie in (0, 1), got {far}")
    n_accept = int(np.floor(far * len(impostor)))  # impostors allowed above the threshold
    threshold = impostor[len(impostor) - n_accept - 1]  # accept scores strictly above it
    return float(np.mean(genuine > threshold)), float(threshold)


def verification_pairs(embeddings: torch.Tensor, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of all genuine and all impostor pairs (i < j) of L2-normalised embeddings [N, E]."""
    scores = (embeddings @ embeddings.t()).cpu().numpy()
    labels = np.asarray(labels)
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    return scores[i[same], j[same]], scores[i[~same], j[~same]]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = FD_EPS) -> float:
    """Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"frechet_distance: shapes differ {mu1.shape}/{mu2.shape}, {sigma1.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [E] and covariance [E, E] of features [N, E]."""
    features = np.asarray(features, np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


@torch.no_grad()
def identity_embeddings(idnet: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised identity features [N, E] of [-1, 1] images [N, 3, S, S], in batches."""
    return torch.cat([identity_features(idnet, images[i:i + FEATURE_BATCH])
                      for i in range(0, len(images), FEATURE_BATCH)])


def fd_id(idnet: torch.nn.Module, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """FD-id: Frechet distance of two image sets [N, 3, S, S] in the identity network's feature space."""
    fa = identity_embeddings(idnet, images_a).numpy()
    fb = identity_embeddings(idnet, images_b).numpy()
    return frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
