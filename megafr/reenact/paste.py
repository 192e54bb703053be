"""Paste-back: a reenacted face crop warped into the source photo and blended with a soft face mask.

Real photos are reenacted as FFHQ-aligned crops (:mod:`megafr.datasets.align`): the crop of side
``S`` is the photo's oriented square ``quad`` resampled, the map being affine,

    p = q_0 + (u / S) [q_3 - q_0, q_1 - q_0]        (continuous coordinates, pixel centres at +0.5)

from crop coordinates ``u`` to photo coordinates ``p`` (``q_k``: the quad's corners). Paste-back runs
it backwards: every photo pixel inside the square reads the crop at
``u = S [q_3 - q_0, q_1 - q_0]^-1 (p - q_0)`` (bilinear), and the result is blended into the photo
with a soft elliptical face mask drawn in crop coordinates (so it turns and scales with the face),
its edge feathered by a Gaussian. An unchanged crop pasted back gives the photo again inside the
mask, up to the resampling blur of the two warps.

The synthetic worlds (mini, smoke) reenact SynthHeads images that are already framed: there the
crop is the whole image and paste-back is the identity (``quad=None``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from megafr.errors import InputError
from megafr.imageio import check_image_array

# The face mask in crop coordinates, as fractions of the side: an ellipse around the face of an
# FFHQ crop (eyes near 0.48 S, mouth near 0.7 S), wide enough for the cheeks and the forehead,
# short of the hair's outline and the neck, whose edges the generator redraws least faithfully.
FACE_MASK_CENTRE = (0.5, 0.56)  # (x, y)
FACE_MASK_RADII = (0.33, 0.40)  # (x, y)
FACE_MASK_FEATHER = 0.05  # Gaussian sigma of the edge, fraction of the side


def face_mask(size: int) -> np.ndarray:
    """The soft face mask of a crop of side ``size``: float32 [S, S] in [0, 1] (module docstring)."""
    if size < 1:
        raise InputError(f"mask size must be >= 1, got {size}")
    centres = (np.arange(size) + 0.5) / size  # pixel centres as fractions of the side
    x = (centres[None, :] - FACE_MASK_CENTRE[0]) / FACE_MASK_RADII[0]
    y = (centres[:, None] - FACE_MASK_CENTRE[1]) / FACE_MASK_RADII[1]
    hard = (x ** 2 + y ** 2 <= 1.0).astype(np.float32)
    return np.clip(gaussian_filter(hard, FACE_MASK_FEATHER * size, mode="constant"), 0.0, 1.0)


def photo_to_crop(quad: np.ndarray, size: int) -> np.ndarray:
    """The affine map [2, 3] from photo to crop coordinates (both with pixel centres at +0.5)."""
    quad = np.asarray(quad, dtype=np.float64)
    if quad.shape != (4, 2) or not np.isfinite(quad).all():
        raise InputError(f"quad must be 4 finite corners [4, 2], got {list(quad.shape)}")
    basis = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)  # [2, 2] crop axes in photo pixels
    linear = size * np.linalg.inv(basis)  # [2, 2]
    origin = quad[0] + 0.5  # the crop's corner (0, 0) in Pillow's photo coordinates
    return np.concatenate([linear, (-linear @ origin)[:, None]], axis=1)


def crop_to_photo_points(points: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Crop pixel coordinates [N, 2] (centres at integers) -> photo pixel coordinates [N, 2]."""
    quad = np.asarray(quad, dtype=np.float64)
    basis = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)
    fractions = (np.asarray(points, dtype=np.float64) + 0.5) / size  # [N, 2]
    return quad[0] + fractions @ basis.T


def face_box(quad: np.ndarray, photo_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The photo pixels the crop square covers: (left, top, right, bottom), clipped to ``(width, height)``."""
    quad = np.asarray(quad, dtype=np.float64)
    left, top = np.maximum(np.floor(quad.min(axis=0)).astype(int) - 1, 0)
    right, bottom = np.minimum(np.ceil(quad.max(axis=0)).astype(int) + 2, photo_size)
    return int(left), int(top), int(max(right, left)), int(max(bottom, top))


def warp_to_photo(crop: np.ndarray, quad: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A crop [S, S] (float32) or [S, S, 3] (uint8) resampled onto the photo pixels of ``box``
    ((left, top, right, bottom), e.g. :func:`face_box`); zero outside the square."""
    size = crop.shape[0]
    affine = photo_to_crop(quad, size)
    affine[:, 2] += affine[:, :2] @ np.array(box[:2], dtype=np.float64)  # the box's corner is (0, 0) of the output
    picture = Image.fromarray(crop if crop.ndim == 2 else np.ascontiguousarray(crop))
    warped = picture.transform((box[2] - box[0], box[3] - box[1]), Image.Transform.AFFINE, tuple(affine.flatten()),
                               Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(warped)


def paste_back(photo: np.ndarray, crop: np.ndarray, quad: Optional[np.ndarray],
               mask: Optional[np.ndarray] = None) -> np.ndarray:
    """The reenacted ``crop`` uint8 [S, S, 3] blended into ``photo`` uint8 [H, W, 3] -> uint8 [H, W, 3].

    ``quad``: the crop's square in the photo (``AlignedFace.quad``); None for an already framed image
    (mini, smoke), where the crop replaces the photo whole. ``mask``: float [S, S] in [0, 1]
    (default :func:`face_mask`).
    """
    photo, crop = check_image_array(photo, "photo"), check_image_array(crop, "crop")
    if crop.shape[0] != crop.shape[1]:
        raise InputError(f"the crop must be square, got {crop.shape[1]}x{crop.shape[0]}")
    if quad is None:
        if photo.shape != crop.shape:
            raise InputError(f"without a quad the crop replaces the photo, so sizes must match: photo "
                             f"{photo.shape[1]}x{photo.shape[0]}, crop {crop.shape[1]}x{crop.shape[0]}")
        return crop.copy()
    size = crop.shape[0]
    mask = face_mask(size) if mask is None else np.asarray(mask, dtype=np.float32)
    if mask.shape != (size, size):
        raise InputError(f"mask must be [{size}, {size}], got {list(mask.shape)}")
    box = face_box(quad, (photo.shape[1], photo.shape[0]))
    out = photo.copy()
    if box[2] == box[0] or box[3] == box[1]:
        return out  # the square lies outside the photo
    face = warp_to_photo(crop, quad, box).astype(np.float32)  # [h, w, 3] over the box
    weight = warp_to_photo(mask, quad, box)[:, :, None]  # [h, w, 1]
    region = out[box[1]:box[3], box[0]:box[2]]
    blended = weight * face + (1.0 - weight) * region.astype(np.float32)
    region[...] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
