"""Linear latent directions (megafr.reenact.directions): recovery of a planted direction, edits, files."""

import pytest
import torch

from megafr.errors import CheckpointError, InputError
from megafr.reenact.directions import fit_direction, fit_directions, load_directions, save_directions


def planted(n=400, layers=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, layers, dim, generator=g)
    true = torch.zeros(layers, dim)
    true[1, 2], true[0, 5] = 3.0, -1.5
    return w, true, (w * true).flatten(1).sum(1) + 7.0


def test_fit_recovers_a_planted_linear_attribute():
    w, true, values = planted()
    d = fit_direction("yaw_deg", w, values.numpy(), ridge=1e-6)
    assert torch.allclose(d.coef, true, atol=1e-3)
    assert d.intercept == pytest.approx(7.0, abs=1e-3)
    assert d.r2 == pytest.approx(1.0, abs=1e-6)


def test_edit_reaches_the_requested_value_and_shift_adds():
    w, _, values = planted()
    d = fit_direction("yaw_deg", w, values.numpy(), ridge=1e-6)
    edited = d.edit(w[:5], torch.tensor([0.0, 10.0, -10.0, 3.0, 1.0]))
    assert torch.allclose(d.predict(edited), torch.tensor([0.0, 10.0, -10.0, 3.0, 1.0]), atol=1e-4)
    assert torch.allclose(d.predict(d.shift(w[:5], 2.5)), d.predict(w[:5]) + 2.5, atol=1e-4)
    # the move is along the direction only
    move = (edited - w[:5]).flatten(1)
    unit = d.coef.flatten() / d.coef.norm()
    assert torch.allclose(move, (move @ unit)[:, None] * unit, atol=1e-5)


def test_bad_inputs_are_named():
    w, _, values = planted()
    with pytest.raises(InputError, match="two different values"):
        fit_direction("smile", w, torch.zeros(len(w)).numpy())
    d = fit_direction("yaw_deg", w, values.numpy())
    with pytest.raises(InputError, match="W\\+ codes"):
        d.predict(torch.zeros(2, 3, 8))


def test_save_and_load_round_trip(tmp_path):
    w, _, values = planted()
    directions = fit_directions(w, {"yaw_deg": values.numpy(), "pitch_deg": (2 * values).numpy()})
    save_directions(directions, tmp_path / "d.pt")
    loaded = load_directions(tmp_path / "d.pt")
    assert set(loaded) == {"yaw_deg", "pitch_deg"}
    assert torch.equal(loaded["pitch_deg"].coef, directions["pitch_deg"].coef)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_directions(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_directions(tmp_path / "missing.pt")
