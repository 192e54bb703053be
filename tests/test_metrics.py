"""Pinned metric definitions: known values."""

import math

import torch

from megafr import metrics
from megafr.face3d.pose import euler_to_axis_angle


def test_image_metrics_known_values():
    x = torch.zeros(2, 3, 8, 8)  # 0.5 grey on the [0, 1] scale
    y = x + 0.2  # 0.6 grey
    assert torch.allclose(metrics.l1(x, y), torch.full((2,), 0.1))
    assert torch.allclose(metrics.psnr(x, y), torch.full((2,), 20.0))
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2))
    assert (metrics.ssim(x, torch.rand_like(x)) < 0.5).all()


def test_aed_apd_known_values():
    a, b = torch.zeros(1, 4), torch.tensor([[0.4, 0.0, -0.4, 0.0]])
    assert torch.allclose(metrics.aed(a, b), torch.tensor([0.2]))
    pose_a, pose_b = torch.zeros(1, 15), torch.zeros(1, 15)
    pose_b[:, :3] = euler_to_axis_angle(torch.tensor([math.radians(30.0)]), torch.tensor([0.0]), torch.tensor([0.0]))
    assert torch.allclose(metrics.apd(pose_a, pose_b), torch.tensor([10.0]), atol=1e-3)  # (30 + 0 + 0) / 3
