"""Inference: refinement steps, explicit-parameter edits, PTI."""

import math

import pytest
import torch

from megafr.errors import InputError
from megafr.face3d.pose import head_pose_degrees
from megafr.reenact import train as rt
from megafr.reenact.inference import Reenactor, edit_pose, pivotal_tuning
from megafr.reenact.model import MegaFR
from tests.conftest import TINY_SIZE as SIZE


@pytest.fixture(scope="module")
def reenactor(tiny_frozen):
    torch.manual_seed(1)
    model = MegaFR(tiny_frozen.inversion, tiny_frozen.generator)
    with torch.no_grad():
        model.encoder.input_layer[0].weight[:, 3:].normal_(std=0.1)  # make the rendering matter
    return Reenactor(model, tiny_frozen)


def _images(n=2, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_reenact_shapes_and_refinement(reenactor):
    sources, targets = _images(), _images(seed=1)
    zero = reenactor.reenact(sources, targets, refine_steps=0)
    one = reenactor.reenact(sources, targets, refine_steps=1)
    assert zero.image.shape == (2, 3, SIZE, SIZE) and zero.condition.shape == (2, 3, SIZE, SIZE)
    assert not torch.allclose(zero.image, one.image)
    assert torch.equal(zero.inverted, one.inverted)
    with pytest.raises(InputError):
        reenactor.reenact(sources, _images(n=3))


def test_edit_pose_sets_the_requested_angles():
    pose = torch.zeros(2, 15)
    edited = edit_pose(pose, yaw_deg=torch.tensor([30.0, -20.0]), jaw_deg=10.0)
    angles = head_pose_degrees(edited)
    assert torch.allclose(angles[:, 0], torch.tensor([30.0, -20.0]), atol=1e-4)
    assert torch.allclose(angles[:, 1:], torch.zeros(2, 2), atol=1e-4)
    assert torch.allclose(edited[:, 6], torch.full((2,), math.radians(10.0)))


def test_reenact_params_uses_the_given_parameters(reenactor):
    out = reenactor.reenact_params(_images(), yaw_deg=torch.tensor([25.0, 25.0]), expression={1: 0.0})
    assert torch.allclose(head_pose_degrees(out.target_params.pose)[:, 0], torch.full((2,), 25.0), atol=1e-4)
    assert torch.all(out.target_params.expression[:, 1] == 0)
    with pytest.raises(InputError, match="component"):
        reenactor.reenact_params(_images(), expression={999: 1.0})


def test_pivotal_tuning_fits_the_photo_and_leaves_the_original(tiny_frozen):
    generator = tiny_frozen.generator
    photo = _images(n=1)
    w = tiny_frozen.inversion.encode(photo).detach()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    noise = generator.stored_noise()
    error = lambda g: float((g.synthesis(w, noise=noise) - photo).square().mean())  # noqa: E731
    tuned = pivotal_tuning(generator, w, photo, steps=15, lr=3e-3)
    assert error(tuned) < 0.8 * error(generator)
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())


def test_reenact_steps_equal_one_reenactment_per_step(reenactor):
    """One chain gives, bit for bit, what a separate reenactment at each number of steps gives."""
    s, t = torch.rand(2, 3, SIZE, SIZE) * 2 - 1, torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    runs = reenactor.reenact_steps(s, t, (2, 0, 1))
    assert sorted(runs) == [0, 1, 2]
    for k, run in runs.items():
        alone = reenactor.reenact(s, t, refine_steps=k)
        assert all(torch.equal(a, b) for a, b in zip(run[:4], alone[:4]))
        assert all(torch.equal(a, b) for a, b in zip(run.target_params, alone.target_params))
    assert not torch.equal(runs[0].image, runs[2].image)
    for wrong in ((), (-1, 1)):
        with pytest.raises(InputError, match="refine_steps"):
            reenactor.reenact_steps(s, t, wrong)


def test_evaluate_pairs_scores_every_method(reenactor):
    import numpy as np

    from megafr.reenact.evaluate import evaluate_pairs

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8) for _ in range(3)]
    table = evaluate_pairs(reenactor, *images, refine_steps=(0, 1), progress=False)
    assert list(table["method"]) == ["inversion only", "refine 0", "refine 1"]
    assert {"aed", "apd", "csim", "l1", "psnr", "ssim"} <= set(table.columns)
    assert np.isfinite(table[["aed", "apd", "csim", "l1", "psnr", "ssim"]].to_numpy()).all()
    # without right answers only the measured metrics are reported
    only = evaluate_pairs(reenactor, images[0], images[1], None, refine_steps=(), progress=False)
    assert list(only["method"]) == ["inversion only"] and "psnr" not in only.columns
