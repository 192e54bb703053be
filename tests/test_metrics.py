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


def _fixed_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic [4, 3, 16, 16] images in [-1, 1] and a copy with four levels of structured noise."""
    grid = torch.arange(4 * 3 * 16 * 16, dtype=torch.float32).reshape(4, 3, 16, 16)
    x = torch.sin(grid * 0.37)
    y = (x + 0.05 * (1 + torch.arange(4.0))[:, None, None, None] * torch.cos(grid * 1.91)).clamp(-1, 1)
    return x, y


def test_psnr_ssim_match_the_two_former_implementations():
    """The study had two PSNR/SSIM implementations (evaluation tables and pretraining stages); both gave
    these numbers on the fixed pair, and the single one left must give them too."""
    x, y = _fixed_pair()
    former_psnr = torch.tensor([35.368492126464844, 29.520198822021484, 26.115245819091797, 23.693378448486328])
    former_ssim = torch.tensor([0.9962923526763916, 0.9854919910430908, 0.9700243473052979, 0.9465225338935852])
    torch.testing.assert_close(metrics.psnr(x, y), former_psnr, rtol=0, atol=1e-5)
    torch.testing.assert_close(metrics.ssim(x, y), former_ssim, rtol=0, atol=1e-6)
    assert torch.equal(metrics.psnr(x, x), torch.full((4,), metrics.PSNR_MAX))


def test_ssim_clamp_switch_changes_only_values_outside_the_range():
    """``clamp=False`` (the generator's SSIM loss) equals the tables' SSIM inside [-1, 1] and differs outside."""
    x, y = _fixed_pair()
    torch.testing.assert_close(metrics.ssim(x, y, clamp=False), metrics.ssim(x, y), rtol=0, atol=0)
    over = x * 1.5
    assert not torch.allclose(metrics.ssim(over, y, clamp=False), metrics.ssim(over, y))


def test_one_psnr_and_one_ssim_in_the_package():
    """PSNR and SSIM are defined once (megafr.metrics); every other module imports them."""
    import ast
    from pathlib import Path

    package = Path(metrics.__file__).parent
    defined = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.lower() in ("psnr", "ssim"):
                defined.append(f"{path.relative_to(package.parent)}:{node.name}")
    assert defined == ["megafr/metrics.py:psnr", "megafr/metrics.py:ssim"]
