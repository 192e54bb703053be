"""Identity loss (MegaFR eq. 3; pSp Sec. 3.3 and e4e's ID loss): ``1 - cos(R(x), R(y))``.

``R`` is the identity network (ArcFace IR-SE50 on the paper profile, the study's trained IR-SE on
mini); the cosine is :func:`megafr.nets.identity.identity_similarity`, the same function the CSIM
and ID-similarity metrics use. Images are [B, 3, S, S] in [-1, 1].
"""

from __future__ import annotations

from typing import Optional

import torch

from megafr.nets.identity import identity_similarity


def id_loss(idnet: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            x_features: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over the batch of ``1 - cos`` of the identity features of ``x`` and ``y`` [B, 3, S, S].

    ``x_features``: ``identity_features(idnet, x)`` when the caller has it already (MegaFR compares three
    images with the same source in each step); the loss is then the same, without running ``idnet`` on ``x``."""
    return (1.0 - identity_similarity(idnet, x, y, x_features)).mean()
