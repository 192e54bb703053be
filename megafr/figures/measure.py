"""Measurements the figures print and plot, all made by the frozen 3D face network on output images.

Angles in degrees (yaw, pitch, roll in :mod:`megafr.face3d.pose`'s convention, jaw opening about x),
eyelid gaps in millimetres between FLAME's eyelid landmarks, 2D landmarks in pixels.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from megafr.devices import to_cpu
from megafr.face3d.pose import GLOBAL, JAW, head_pose_degrees
from megafr.face3d.recon import FaceParams
from megafr.figures.inputs import eyelid_gap_mm
from megafr.imageio import images_to_tensor, tensors_to_images
from megafr.reenact.inference import Reenactor

BATCH = 32  # images per forward pass


def batched(run: Callable[[slice], torch.Tensor], n: int, batch: int = BATCH) -> torch.Tensor:
    """``run`` over consecutive slices of ``range(n)``, outputs concatenated along the batch."""
    return torch.cat([run(slice(start, start + batch)) for start in range(0, n, batch)])


def as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float [B, 3, S, S] in [-1, 1]; tensors pass through."""
    return images if isinstance(images, torch.Tensor) else images_to_tensor(images)


def as_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """float [B, 3, S, S] -> uint8 [B, S, S, 3]; uint8 arrays pass through."""
    return images if isinstance(images, np.ndarray) else tensors_to_images(images)


@torch.no_grad()
def pose_degrees(reenactor: Reenactor, images) -> np.ndarray:
    """Measured yaw, pitch, roll and jaw opening [B, 4] in degrees."""
    params = reenactor.measure(as_tensor(images))
    jaw = params.pose[:, JAW.start] * (180.0 / math.pi)
    return torch.cat([head_pose_degrees(params.pose), jaw[:, None]], dim=1).numpy()


@torch.no_grad()
def eyelid_gaps(reenactor: Reenactor, images) -> np.ndarray:
    """Measured signed eyelid gap [B] in mm (:func:`eyelid_gap_mm` of the measured FLAME parameters)."""
    params = reenactor.measure(as_tensor(images))
    points, _ = reenactor.frozen.face.landmarks(FaceParams(*(t.to(reenactor.device) for t in params)))
    return eyelid_gap_mm(to_cpu(points), params.pose[:, GLOBAL])


@torch.no_grad()
def inversions(reenactor: Reenactor, images) -> torch.Tensor:
    """``x_s = G(E_inv(x))`` of ``images`` (:meth:`Reenactor.invert_sources`; the images come back on the CPU):
    what the frozen encoder and generator keep of a photo before E_FR edits it."""
    images = as_tensor(images)
    return batched(lambda part: to_cpu(reenactor.invert_sources(images[part])[0]), len(images))


@torch.no_grad()
def landmarks_px(reenactor: Reenactor, images) -> np.ndarray:
    """Measured 2D landmarks [B, 68, 2] in pixels (x right, y down)."""
    images = as_tensor(images)
    face, device = reenactor.frozen.face, reenactor.device
    return batched(lambda part: to_cpu(face.reconstruct(images[part].to(device).clamp(-1, 1),
                                                        with_vertices=False).landmarks_2d), len(images)).numpy()


@torch.no_grad()
def latent_edit(reenactor: Reenactor, sources, direction, values) -> torch.Tensor:
    """The linear-latent-direction baseline: invert (as MegaFR's source is, :meth:`Reenactor.invert_sources`),
    move ``w_s`` along ``direction`` to ``values`` [B], synthesize (on the networks' device; the images come back on
    the CPU)."""
    _, w_s = reenactor.invert_sources(as_tensor(sources))
    w = direction.edit(w_s, torch.as_tensor(values, dtype=w_s.dtype, device=w_s.device))
    return to_cpu(reenactor.model.synthesize(w).clamp(-1, 1))
