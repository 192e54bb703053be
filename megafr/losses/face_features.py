"""A perceptual distance read from the study's own 3D face network (the mini world's LPIPS stand-in).

LPIPS (Zhang et al. 2018) compares unit-normalised deep features of two images; its backbones are
ImageNet classifiers, which the mini world does not ship and which never saw a SynthHead. This is
the same construction, without learned layer weights, on the trained 3D face network
(:class:`~megafr.face3d.recon.FaceReconstructor`): the feature maps of its trunk (stem and strided
stages) and, when it has one, of its eye branch's convolutions on crops centred on the *target's*
eyes (both images are cropped at the same place). Each map is normalised to unit length over its
channels; the distance is the squared difference summed over channels, averaged over positions and
the batch, and summed over the maps. Those features were trained to place landmarks, eyelids and
lips, so the distance weighs the facial features a pixel loss averages away. Written here because
no library computes a perceptual distance from a network of one's own. Used by ``train_generator``'s
fine-tune phase (``finetune_face3d``); measured in ``docs/mini_release.md``.
"""

from __future__ import annotations

import torch

from megafr.face3d.recon import FaceReconstructor

NORM_EPS = 1e-8  # keeps the channel normalisation finite on all-zero feature vectors


def _unit(features: torch.Tensor) -> torch.Tensor:
    """Feature maps [N, C, H, W] scaled to unit length over C."""
    return features / (features.pow(2).sum(dim=1, keepdim=True) + NORM_EPS).sqrt()


class FaceFeatureDistance(torch.nn.Module):
    """``distance(x, y)``: the mean perceptual distance of images x from targets y [B, 3, S, S] in [-1, 1]
    (a scalar); gradients reach ``x`` only, and the 3D network stays frozen in eval mode."""

    def __init__(self, net: FaceReconstructor):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "FaceFeatureDistance":
        return self  # the frozen network's batch-norm statistics are never updated

    def feature_maps(self, images: torch.Tensor, keypoints: torch.Tensor) -> list[torch.Tensor]:
        """The compared maps of ``images`` at ``input_size``: the trunk's, then the eye branch's on the crops
        around ``keypoints`` [B, 68, 2] (NDC) and the crops themselves."""
        maps = self.net.trunk(images)
        if self.net.eyes is not None:
            crops = self.net.eyes.crops(images, keypoints).flatten(0, 1)  # [2B, 3, n, n]
            maps += [*self.net.eyes.conv_maps(crops), crops]
        return maps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        small_x, small_y = self.net.resize(x), self.net.resize(y)
        with torch.no_grad():
            _, keypoints = self.net.regress_with_keypoints(small_y)
            targets = [_unit(f) for f in self.feature_maps(small_y, keypoints)]
        maps = [_unit(f) for f in self.feature_maps(small_x, keypoints)]
        return sum((a - b).pow(2).sum(dim=1).mean() for a, b in zip(maps, targets))
