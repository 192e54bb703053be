"""Framing a face like an FFHQ-aligned crop, for orthographic renderings.

The mini world renders every SynthHeads image, and MegaFR every target rendering r_t, with
the camera that FFHQ's alignment (``megafr.datasets.align``) would give the face: the crop
is centred at ``eye_avg + FFHQ_CENTRE_SHIFT * eye_to_mouth`` and its half side is
``max(FFHQ_EYE_FACTOR * |eye_to_eye|, FFHQ_MOUTH_FACTOR * |eye_to_mouth|)``, measured on the
projected landmarks. Unlike FFHQ the crop is not rotated, so roll stays visible.
"""

from __future__ import annotations

import torch

from megafr.face3d import landmarks as lmk
from megafr.face3d.render import OrthoCamera

FFHQ_CENTRE_SHIFT = 0.1  # crop centre = eye midpoint + this fraction of the eye-to-mouth vector
FFHQ_EYE_FACTOR = 2.0  # half side >= this times the eye-to-eye distance
FFHQ_MOUTH_FACTOR = 1.8  # half side >= this times the eye-to-mouth distance


def aligned_camera(landmarks: torch.Tensor, zoom: torch.Tensor | None = None,
                   shift: torch.Tensor | None = None) -> OrthoCamera:
    """The orthographic camera that frames landmarks [B, 68, 3] like an FFHQ-aligned crop, with jitter.

    ``x_ndc = s * (x + t_x)``: the crop centre c maps to ``shift`` [B, 2] (NDC, default 0) and the
    half side to ``1 / zoom`` [B] (default 1).
    """
    batch = landmarks.shape[0]
    zoom = landmarks.new_ones(batch) if zoom is None else zoom
    shift = landmarks.new_zeros(batch, 2) if shift is None else shift
    xy = landmarks[..., :2]
    eye_right = xy[:, list(lmk.RIGHT_EYE)].mean(1)
    eye_left = xy[:, list(lmk.LEFT_EYE)].mean(1)
    eye_avg = (eye_left + eye_right) / 2
    mouth_avg = (xy[:, lmk.MOUTH_CORNERS[0]] + xy[:, lmk.MOUTH_CORNERS[1]]) / 2
    eye_to_eye = eye_left - eye_right
    eye_to_mouth = mouth_avg - eye_avg
    centre = eye_avg + FFHQ_CENTRE_SHIFT * eye_to_mouth
    half_side = torch.maximum(FFHQ_EYE_FACTOR * eye_to_eye.norm(dim=1), FFHQ_MOUTH_FACTOR * eye_to_mouth.norm(dim=1))
    scale = zoom / half_side
    return OrthoCamera(scale, shift / scale[:, None] - centre)
