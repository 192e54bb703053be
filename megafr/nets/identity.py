"""Identity similarity between two face images, as pixel2style2pixel's ``IDLoss`` computes it.

pSp (Richardson et al., CVPR 2021, Eq. 3) and e4e measure identity with the ArcFace
IR-SE50 recogniser: the 256 px image (a 1024 px output is first average-pooled to 256) is
cropped to the face region ``[35:223, 32:220]`` (rows, columns), average-pooled to the
recogniser's 112 x 112 input, embedded, L2-normalised, and compared by the dot product
(cosine). MegaFR uses the same function for its L_ID loss (``1 - similarity``) and for
the ID-similarity metric of its tables, so both are computed here, once.

For images smaller than 256 px (the mini world) the crop box is scaled to the image size
(rounded to whole pixels) instead of upsampling the image, and the crop is pooled to the
recogniser's own input size (``net.config.input_size``).

Written here because it is a four-line recipe tied to the pSp crop constants; no package
provides it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

ID_REFERENCE_SIZE = 256  # image side the pSp crop box is defined on
ID_CROP_TOP = 35  # first row of the face crop at 256 px
ID_CROP_BOTTOM = 223  # end row (exclusive) at 256 px
ID_CROP_LEFT = 32  # first column at 256 px
ID_CROP_RIGHT = 220  # end column (exclusive) at 256 px


def crop_box(size: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the face crop for an image of side ``size`` (<= 256)."""
    scale = size / ID_REFERENCE_SIZE
    return tuple(int(round(v * scale)) for v in (ID_CROP_TOP, ID_CROP_BOTTOM, ID_CROP_LEFT, ID_CROP_RIGHT))  # type: ignore[return-value]


def face_crop(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """[B, 3, H, H] in [-1, 1] -> the pSp face crop pooled to [B, 3, out_size, out_size]."""
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise ValueError(f"identity crop expects square RGB images [B, 3, H, H], got {tuple(x.shape)}")
    if x.shape[-1] > ID_REFERENCE_SIZE:
        x = F.adaptive_avg_pool2d(x, (ID_REFERENCE_SIZE, ID_REFERENCE_SIZE))  # pSp's face_pool
    top, bottom, left, right = crop_box(x.shape[-1])
    x = x[:, :, top:bottom, left:right]
    return F.adaptive_avg_pool2d(x, (out_size, out_size))


def identity_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised ArcFace features of the face crop. [B, E]"""
    return F.normalize(net(face_crop(x, net.config.input_size)), dim=1)


def identity_similarity(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        x_features: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cosine similarity of the ArcFace identities of ``x`` and ``y``. [B]

    ``net`` is an ``megafr.nets.irse.ArcFace`` in eval mode (the loaders return it so);
    gradients flow to both inputs, so the loss ``1 - identity_similarity`` can detach the
    reference itself where pSp does (``y.detach()``). ``x_features``: ``identity_features(net, x)``
    computed by the caller (``net`` then does not run on ``x``).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"identity_similarity needs equal batch sizes, got {x.shape[0]} and {y.shape[0]}")
    first = identity_features(net, x) if x_features is None else x_features
    return (first * identity_features(net, y)).sum(dim=1)
