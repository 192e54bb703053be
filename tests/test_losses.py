"""megafr.losses: the shared terms give the values of the formulas the stages used inline before."""

import pytest
import torch
import torch.nn.functional as F

from megafr import losses
from megafr.nets.encoders import LatentCodesDiscriminator
from megafr.nets.identity import identity_features, identity_similarity
from megafr.nets.irse import ArcFace, ArcFaceConfig
from tests.conftest import TINY_BODY, TINY_SIZE


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    d = LatentCodesDiscriminator(16)
    idnet = ArcFace(ArcFaceConfig(input_size=TINY_SIZE, embedding_dim=16, body=TINY_BODY)).eval()
    x = torch.rand(2, 3, TINY_SIZE, TINY_SIZE) * 2 - 1
    y = torch.rand(2, 3, TINY_SIZE, TINY_SIZE) * 2 - 1
    return d, idnet, torch.randn(4, 8, 16), x, y


def test_latent_loss_is_e4e_encoder_term_on_unflattened_codes(inputs):
    d, _, codes, _, _ = inputs
    former = F.softplus(-d(codes)).mean()  # the mini e4e encoder's former inline term, codes [B, L, D]
    assert torch.equal(losses.latent_loss(d, codes), former)
    with pytest.raises(ValueError, match="W\\+ codes"):
        losses.latent_loss(d, codes[0])


def test_identity_loss_is_one_minus_similarity(inputs):
    _, idnet, _, x, y = inputs
    assert torch.equal(losses.id_loss(idnet, x, y), (1 - identity_similarity(idnet, x, y)).mean())
    assert float(losses.id_loss(idnet, x, x).detach()) == pytest.approx(0.0, abs=1e-6)


def test_identity_terms_take_the_reference_features_computed_once(inputs):
    """Given ``x``'s features, the identity and reconstruction terms are the same numbers without running the
    network on ``x`` (MegaFR's step compares three images with one source)."""
    _, idnet, _, x, y = inputs
    features = identity_features(idnet, x)
    assert torch.equal(losses.id_loss(idnet, x, y, features), losses.id_loss(idnet, x, y))
    rec = dict(idnet=idnet, lpips_fn=None, lambda_l2=1.0, lambda_lpips=0.0, lambda_rec_id=0.5)
    assert torch.equal(losses.reconstruction_loss(x, y, **rec, x_features=features),
                       losses.reconstruction_loss(x, y, **rec))
    calls = []
    hook = idnet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    try:
        losses.id_loss(idnet, x, y, features)
    finally:
        hook.remove()
    assert len(calls) == 1  # the network ran on y only


def test_code_regularisers(inputs):
    _, _, codes, _, _ = inputs
    assert torch.equal(losses.w_norm_loss(codes), codes.square().sum(2).mean())
    same = codes[:, :1].expand_as(codes)
    assert float(losses.delta_loss(same)) == 0.0


def test_lpips_loss_is_zero_when_off(tmp_path, monkeypatch, inputs):
    _, _, _, x, y = inputs
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    term = losses.LpipsLoss(0.8)
    assert term.net is None and term.message.startswith("LPIPS off")
    assert float(term(x, y)) == 0.0


def test_weighted_total_logs_every_term(inputs):
    terms = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    total, log = losses.weighted_total(terms, {"a": 0.5, "b": 0.0})
    assert float(total) == 1.0 and log == {"a": 2.0, "b": 3.0, "total": 1.0}
    with pytest.raises(KeyError):
        losses.weighted_total(terms, {"a": 1.0})


@pytest.mark.parametrize("eye_patch", [0, 4])
def test_face_feature_distance(eye_patch):
    """Zero for an image against itself, positive against another; gradients reach the image and never the
    frozen 3D network, whose batch-norm statistics stay put."""
    from megafr.face3d.recon import ReconConfig, FaceReconstructor

    torch.manual_seed(0)
    net = FaceReconstructor(ReconConfig(5, 4, TINY_SIZE, input_size=16, width=4, eye_patch=eye_patch))
    distance = losses.FaceFeatureDistance(net)
    distance.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    y = torch.rand(2, 3, TINY_SIZE, TINY_SIZE) * 2 - 1
    x = (torch.rand(2, 3, TINY_SIZE, TINY_SIZE) * 2 - 1).requires_grad_(True)
    assert float(distance(y, y)) == pytest.approx(0.0, abs=1e-6)
    value = distance(x, y)
    assert float(value.detach()) > 0
    value.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in net.parameters()) and not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    n_maps = len(net.stages) + 1 + (net.eyes is not None) * 4
    assert len(distance.feature_maps(net.resize(y), torch.zeros(2, 68, 2))) == n_maps
