"""E_FR and the six MegaFR losses on tiny random networks: shapes, known values, frozen parts."""

import pytest
import torch

from megafr import losses
from megafr.errors import InputError
from megafr.face3d.landmarks import PAIRS
from megafr.nets.encoders import EncoderConfig, Encoder4Editing, GradualStyleEncoder, InversionNet, LatentCodesDiscriminator
from megafr.nets.irse import ArcFace, ArcFaceConfig, IRSEConfig
from megafr.nets.stylegan2 import Generator
from megafr.reenact.model import MegaFR, edit_layers

SIZE, STYLE = 32, 32
BODY = IRSEConfig(widths=(8, 12, 16, 24), units=(1, 1, 1, 1), stem_channels=8)


def _parts(encoder_cls=Encoder4Editing):
    torch.manual_seed(0)
    generator = Generator(SIZE, STYLE, n_mlp=2, channel_multiplier=1, max_channels=32)
    config = EncoderConfig(input_size=SIZE, n_latent=generator.n_latent, style_dim=STYLE, body=BODY)
    inversion = InversionNet(encoder_cls(config), torch.randn(generator.n_latent, STYLE) * 0.1)
    return generator, inversion


def test_edit_layers_follow_the_paper_groups():
    assert edit_layers(18) == tuple(range(7))
    assert edit_layers(18, ("coarse",)) == (0, 1, 2)
    assert edit_layers(18, ("coarse", "medium", "fine")) == tuple(range(18))
    with pytest.raises(InputError):
        edit_layers(18, ("eyes",))


def test_edit_layers_named_by_size_pick_the_generator_layers_at_that_size():
    assert edit_layers(10, ("16px",)) == (3, 4)  # the 64 px generator's 16 px convolutions
    assert edit_layers(10, ("coarse", "16px")) == (0, 1, 2, 3, 4)
    assert edit_layers(10, ("coarse", "medium")) == edit_layers(10, ("coarse", "16px", "32px"))
    assert edit_layers(18, ("coarse", "16px")) == (0, 1, 2, 3, 4)
    assert edit_layers(10, ("64px",)) == (7, 8, 9)  # the last index feeds the final ToRGB, at the output size
    for wrong in (("128px",), ("12px",), ()):  # no layer of that size on a 64 px generator; nothing named
        with pytest.raises(InputError, match="edit groups"):
            edit_layers(10, wrong)


@pytest.mark.parametrize("encoder_cls", [Encoder4Editing, GradualStyleEncoder])
def test_efr_starts_as_the_inversion_encoder_and_edits_only_chosen_layers(encoder_cls):
    generator, inversion = _parts(encoder_cls)
    model = MegaFR(inversion, generator, groups=("coarse",))
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    r = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    w_s = inversion.encode(x).detach()
    # new input channels start at zero: the rendering has no effect yet, and the residual is zero
    out = model(x, r, w_s)
    assert torch.allclose(out.latent, w_s, atol=1e-5)
    with torch.no_grad():
        model.encoder.input_layer[0].weight[:, 3:].normal_()
    out = model(x, r, w_s + 0.3)
    changed = (out.latent - (w_s + 0.3)).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [i in edit_layers(generator.n_latent, ("coarse",)) for i in range(generator.n_latent)]
    assert out.image.shape == (2, 3, SIZE, SIZE)


def test_only_the_encoder_learns():
    generator, inversion = _parts()
    model = MegaFR(inversion, generator)
    frozen = {k: v.clone() for k, v in model.generator.state_dict().items()}
    optimizer = torch.optim.Adam(model.encoder.parameters(), lr=1e-2)
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    w_s = inversion.encode(x).detach() + 0.1
    loss = model(x, torch.rand_like(x), w_s).image.square().mean()
    loss.backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    optimizer.step()
    assert all(torch.equal(frozen[k], v) for k, v in model.generator.state_dict().items())


def test_refinement_applies_f_again():
    generator, inversion = _parts()
    model = MegaFR(inversion, generator)
    with torch.no_grad():
        model.encoder.input_layer[0].weight[:, 3:].normal_()
    x, r = torch.rand(1, 3, SIZE, SIZE) * 2 - 1, torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    w = inversion.encode(x).detach()
    once = model.refine(x, r, w, refine_steps=0)
    twice = model.refine(x, r, w, refine_steps=1)
    again = model(once.image, r, once.latent)
    assert torch.allclose(twice.image, again.image) and not torch.allclose(twice.image, once.image)
    with pytest.raises(InputError):
        model.refine(x, r, w, refine_steps=-1)


def test_landmark_and_pair_losses_known_values():
    p = torch.randn(2, 68, 3)
    assert losses.landmark_loss(p, p) == 0 and losses.pair_loss(p, p) == 0
    shifted = p + torch.tensor([0.01, -0.02, 0.0])
    assert torch.isclose(losses.landmark_loss(p, shifted), torch.tensor(68 * 0.03))
    assert torch.isclose(losses.pair_loss(p, shifted), torch.tensor(0.0), atol=1e-6)  # gaps unchanged by a shift
    opened = p.clone()
    lower = [v for _, v in PAIRS]
    opened[:, lower, 1] -= 0.005  # every lower landmark 5 mm lower
    assert torch.isclose(losses.pair_loss(p, opened), torch.tensor(len(PAIRS) * 0.005), atol=1e-6)


def test_id_reconstruction_latent_and_total():
    torch.manual_seed(0)
    idnet = ArcFace(ArcFaceConfig(input_size=SIZE, embedding_dim=16, body=BODY)).eval()
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    assert losses.id_loss(idnet, x, x).abs() < 1e-5
    assert losses.reconstruction_loss(x, x, idnet, None, 1.0, 1.0, 1.0).abs() < 1e-5
    y = x + 0.1
    assert torch.isclose(losses.reconstruction_loss(x, y, idnet, None, 1.0, 0.0, 0.0), torch.tensor(0.01))
    disc = LatentCodesDiscriminator(style_dim=STYLE)
    w = torch.randn(2, 8, STYLE)
    expected = torch.nn.functional.softplus(-disc(w.reshape(-1, STYLE))).mean()
    assert torch.isclose(losses.latent_loss(disc, w), expected)
    total, log = losses.weighted_total({"a": torch.tensor(2.0), "b": torch.tensor(3.0)}, {"a": 0.5, "b": 0.0})
    assert float(total) == 1.0 and log == {"a": 2.0, "b": 3.0, "total": 1.0}
