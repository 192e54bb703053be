"""Metrics of the pretraining stages: PSNR, SSIM, verification TAR at a FAR, and FD-id.

- PSNR on images mapped to [0, 1]: ``10 log10(1 / MSE)``, per image, then averaged.
- SSIM: ``kornia.metrics.ssim`` (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) on [0, 1] images.
- TAR at FAR (face verification, e.g. the IJB / LFW BLUFR protocol): the threshold is the score that
  a fraction ``far`` of impostor pairs exceed; TAR is the fraction of genuine pairs above it.
- FD-id: the Frechet distance (Dowson & Landau 1982; the formula of FID, Heusel et al. 2017) between
  two image sets' features in the *identity network's* embedding space, not Inception's, so it is
  labelled FD-id and never FID. ``frechet_distance`` is the closed form
  ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``. clean-fid provides the same function
  (``cleanfid.fid.frechet_distance``), but importing ``cleanfid`` imports torchvision, which fails
  with this environment's torch build (``operator torchvision::nms does not exist``); the formula is
  therefore written here with ``scipy.linalg.sqrtm`` following the same steps (an epsilon on the
  diagonal when the product is singular, real part kept), and the test compares it with clean-fid's
  whenever clean-fid imports.
"""

from __future__ import annotations

import numpy as np
import torch
from kornia.metrics import ssim as kornia_ssim
from scipy import linalg

from megafr.nets.identity import identity_features

SSIM_WINDOW = 11  # Gaussian window of SSIM (Wang et al. 2004)
FD_EPS = 1e-6  # diagonal offset when the covariance product is singular (as clean-fid)
PSNR_MAX = 100.0  # PSNR reported for identical images (MSE = 0), in dB
FEATURE_BATCH = 128  # images per identity-network forward pass


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) / 2).float()


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of [-1, 1] images [B, 3, H, W] (mapped to [0, 1]). [B]"""
    if x.shape != y.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (_to_unit(x) - _to_unit(y)).square().flatten(1).mean(1)
    return torch.where(mse > 0, -10 * torch.log10(mse.clamp_min(1e-20)), torch.full_like(mse, PSNR_MAX))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image of [-1, 1] images [B, 3, H, W]. [B]"""
    if x.shape != y.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    return kornia_ssim(_to_unit(x), _to_unit(y), SSIM_WINDOW).flatten(1).mean(1)


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
