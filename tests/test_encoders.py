"""pSp / e4e encoders, latent discriminator, ArcFace and identity similarity."""

import pytest
import torch

from megafr.errors import InputError
from megafr.nets.encoders import (
    MINI_ENCODER,
    EncoderConfig,
    Encoder4Editing,
    GradualStyleEncoder,
    InversionNet,
    LatentCodesDiscriminator,
    expand_input_channels,
    latent_resolution,
    layer_groups,
)
from megafr.nets.identity import ID_CROP_BOTTOM, ID_CROP_LEFT, ID_CROP_RIGHT, ID_CROP_TOP, crop_box, identity_similarity
from megafr.nets.irse import MINI_ARCFACE, ArcFace, ArcFaceConfig, IRSEConfig
from megafr.nets.stylegan2 import Generator

# Measured by building the release configurations (IR-SE50 body, 18 style blocks of 512).
E4E_1024_PARAMS = 267_136_704
ARCFACE_IRSE50_PARAMS = 43_797_696


def official_body_shapes(prefix, widths=(64, 128, 256, 512), units=(3, 4, 14, 3), stem=64, in_nc=3, se=16):
    """Keys/shapes of a TreB1eN IR-SE body, written from the reference layout."""
    s = {}

    def bn(p, c):
        s.update({f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,), f"{p}.running_var": (c,), f"{p}.num_batches_tracked": ()})

    s[f"{prefix}input_layer.0.weight"] = (stem, in_nc, 3, 3)
    bn(f"{prefix}input_layer.1", stem)
    s[f"{prefix}input_layer.2.weight"] = (stem,)
    cin, n = stem, 0
    for w, u in zip(widths, units):
        for _ in range(u):
            p = f"{prefix}body.{n}"
            if cin != w:
                s[f"{p}.shortcut_layer.0.weight"] = (w, cin, 1, 1)
                bn(f"{p}.shortcut_layer.1", w)
            bn(f"{p}.res_layer.0", cin)
            s[f"{p}.res_layer.1.weight"] = (w, cin, 3, 3)
            s[f"{p}.res_layer.2.weight"] = (w,)
            s[f"{p}.res_layer.3.weight"] = (w, w, 3, 3)
            bn(f"{p}.res_layer.4", w)
            s[f"{p}.res_layer.5.fc1.weight"] = (w // se, w, 1, 1)
            s[f"{p}.res_layer.5.fc2.weight"] = (w, w // se, 1, 1)
            cin, n = w, n + 1
    return s


def official_encoder_shapes(n_latent=18, style_dim=512, spatials=(16, 32, 64), **body):
    s = official_body_shapes("", **body)
    widths = body.get("widths", (64, 128, 256, 512))
    groups = [spatials[0]] * 3 + [spatials[1]] * 4 + [spatials[2]] * (n_latent - 7)
    for i, sp in enumerate(groups):
        cin = widths[3]
        for j in range(sp.bit_length() - 1):
            s[f"styles.{i}.convs.{2 * j}.weight"] = (style_dim, cin, 3, 3)
            s[f"styles.{i}.convs.{2 * j}.bias"] = (style_dim,)
            cin = style_dim
        s[f"styles.{i}.linear.weight"] = (style_dim, style_dim)
        s[f"styles.{i}.linear.bias"] = (style_dim,)
    s["latlayer1.weight"] = (widths[3], widths[2], 1, 1)
    s["latlayer1.bias"] = (widths[3],)
    s["latlayer2.weight"] = (widths[3], widths[1], 1, 1)
    s["latlayer2.bias"] = (widths[3],)
    return s


def _shapes(m):
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def test_layer_groups_1024_64_32():
    assert layer_groups(18) == {"coarse": range(0, 3), "medium": range(3, 7), "fine": range(7, 18)}
    assert layer_groups(10) == {"coarse": range(0, 3), "medium": range(3, 7), "fine": range(7, 10)}
    assert layer_groups(8) == {"coarse": range(0, 3), "medium": range(3, 8), "fine": range(8, 8)}
    assert [latent_resolution(i, 18) for i in (0, 1, 2, 3, 6, 7, 16, 17)] == [4, 8, 8, 16, 32, 64, 1024, 1024]
    with pytest.raises(ValueError):
        layer_groups(9)


def test_latent_resolution_matches_generator_layers():
    """W+ entry j feeds a StyledConv of resolution latent_resolution(j) (the last entry: the final ToRGB)."""
    torch.manual_seed(0)
    g = Generator(64, 16, 1, max_channels=16).eval()
    layers = [g.conv1, g.to_rgb1] + [m for pair in zip(g.convs[::2], g.convs[1::2], g.to_rgbs) for m in pair]
    order = {id(m): i for i, m in enumerate(layers)}
    outs = {}
    hooks = [m.register_forward_hook(lambda m, i, o: outs.__setitem__(id(m), o.detach().clone())) for m in layers]
    noise = g.make_noise()
    w = torch.randn(1, g.n_latent, 16)
    g.synthesis(w, noise)
    base = dict(outs)
    for j in range(g.n_latent):
        w2 = w.clone()
        w2[:, j] += 1.0
        g.synthesis(w2, noise)
        changed = sorted((order[k] for k in outs if not torch.equal(outs[k], base[k])))
        convs = [i for i in changed if type(layers[i]).__name__ == "StyledConv"]
        first = layers[(convs or changed)[0]]
        assert base[id(first)].shape[-1] == latent_resolution(j, g.n_latent), j
    for h in hooks:
        h.remove()


def test_release_encoder_layout_and_parameter_count():
    with torch.device("meta"):
        enc = Encoder4Editing(EncoderConfig())
        psp = GradualStyleEncoder(EncoderConfig())
    assert sum(p.numel() for p in enc.parameters()) == E4E_1024_PARAMS
    expected = official_encoder_shapes()
    assert expected["input_layer.0.weight"] == (64, 3, 3, 3)
    assert _shapes(enc) == expected == _shapes(psp)
    assert enc.body._modules.keys() == {str(i) for i in range(24)}


def test_mini_encoder_loads_state_dict_written_from_layout():
    cfg = MINI_ENCODER
    body = dict(widths=cfg.body.widths, units=cfg.body.units, stem=cfg.body.stem_channels)
    expected = official_encoder_shapes(cfg.n_latent, cfg.style_dim, (4, 8, 16), **body)
    enc = GradualStyleEncoder(cfg)
    assert _shapes(enc) == expected
    state = {k: (torch.randn(s) if s else torch.tensor(0)) for k, s in expected.items()}
    enc.load_state_dict(state, strict=True)
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 10, 128)


def test_six_channel_init_from_three_channel_state():
    torch.manual_seed(1)
    enc3 = Encoder4Editing(MINI_ENCODER).eval()
    state6 = expand_input_channels(enc3.state_dict(), 6)
    enc6 = Encoder4Editing(EncoderConfig(**{**MINI_ENCODER.__dict__, "input_nc": 6})).eval()
    enc6.load_state_dict(state6, strict=True)
    w6 = enc6.input_layer[0].weight
    assert w6.shape == (32, 6, 3, 3)
    assert torch.equal(w6[:, :3], enc3.input_layer[0].weight)
    assert torch.count_nonzero(w6[:, 3:]) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(enc6(torch.cat([x, torch.randn_like(x)], 1)), enc3(x), atol=1e-6)
    with pytest.raises(InputError, match="6, S, S"):
        enc6(x)


def test_larger_inputs_are_pooled_to_the_encoder_size_smaller_refused():
    """pSp/e4e see 256 px and pool the 1024 px generator output down (face_pool); so do ours."""
    torch.manual_seed(2)
    enc = Encoder4Editing(MINI_ENCODER).eval()
    x = torch.randn(2, 3, 64, 64)
    big = x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # [2, 3, 256, 256], each pixel 4x4
    with torch.no_grad():
        assert torch.allclose(enc(big), enc(x), atol=1e-5)
    with pytest.raises(InputError, match="S >= 64"):
        enc(torch.randn(2, 3, 32, 32))
    with pytest.raises(InputError, match="square"):
        enc(torch.randn(2, 3, 64, 128))


def test_e4e_progressive_stage():
    torch.manual_seed(2)
    enc = Encoder4Editing(MINI_ENCODER).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = enc(x)
        c1, c2, c3 = enc.features(x)
        w0 = enc.styles[0](c3)
        assert torch.allclose(full[:, 0], w0, atol=1e-6)
        for stage in (0, 4):
            enc.progressive_stage = stage
            w = enc(x)
            assert torch.allclose(w[:, stage + 1 :], w0.unsqueeze(1).expand_as(w[:, stage + 1 :]), atol=1e-6)
            assert torch.allclose(w[:, : stage + 1], full[:, : stage + 1], atol=1e-6)
    assert not torch.allclose(full[:, 5], w0)


def test_psp_reads_pyramid_levels():
    torch.manual_seed(3)
    enc = GradualStyleEncoder(MINI_ENCODER).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = enc(x)
        c1, c2, c3 = enc.features(x)
        assert (c1.shape[-1], c2.shape[-1], c3.shape[-1]) == (16, 8, 4)
        assert torch.allclose(out[:, 1], enc.styles[1](c3), atol=1e-6)
        p2 = torch.nn.functional.interpolate(c3, size=(8, 8), mode="bilinear", align_corners=True) + enc.latlayer1(c2)
        assert torch.allclose(out[:, 4], enc.styles[4](p2), atol=1e-5)


def test_latent_discriminator_layout():
    d = LatentCodesDiscriminator(512, 4)
    assert _shapes(d) == {
        "mlp.0.weight": (512, 512), "mlp.0.bias": (512,), "mlp.2.weight": (512, 512), "mlp.2.bias": (512,),
        "mlp.4.weight": (512, 512), "mlp.4.bias": (512,), "mlp.6.weight": (1, 512), "mlp.6.bias": (1,),
    }
    assert d(torch.randn(3, 18, 512)).shape == (3, 18, 1)


def test_inversion_net_adds_latent_avg_and_keeps_release_keys():
    torch.manual_seed(4)
    enc = Encoder4Editing(MINI_ENCODER).eval()
    g = Generator(64, 128, 2, max_channels=32).eval()
    avg = torch.randn(128)
    net = InversionNet(enc, avg, g)
    assert {k.split(".")[0] for k in net.state_dict()} == {"encoder", "decoder"}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.encode(x), enc(x) + avg, atol=1e-6)
        img, w = net(x)
    assert img.shape == (2, 3, 64, 64) and w.shape == (2, 10, 128)


def test_arcface_release_layout_and_parameter_count():
    with torch.device("meta"):
        net = ArcFace(ArcFaceConfig())
    assert sum(p.numel() for p in net.parameters()) == ARCFACE_IRSE50_PARAMS
    expected = official_body_shapes("")
    expected.update({
        "output_layer.0.weight": (512,), "output_layer.0.bias": (512,), "output_layer.0.running_mean": (512,),
        "output_layer.0.running_var": (512,), "output_layer.0.num_batches_tracked": (),
        "output_layer.3.weight": (512, 512 * 7 * 7), "output_layer.3.bias": (512,),
        "output_layer.4.weight": (512,), "output_layer.4.bias": (512,), "output_layer.4.running_mean": (512,),
        "output_layer.4.running_var": (512,), "output_layer.4.num_batches_tracked": (),
    })
    assert _shapes(net) == expected


def test_identity_similarity_crop_and_values():
    assert crop_box(256) == (ID_CROP_TOP, ID_CROP_BOTTOM, ID_CROP_LEFT, ID_CROP_RIGHT) == (35, 223, 32, 220)
    assert crop_box(64) == (9, 56, 8, 55)
    torch.manual_seed(5)
    net = ArcFace(MINI_ARCFACE).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = x.clone()
    y[:, :, :8] = -1.0  # rows above the crop box: invisible to the identity
    y[:, :, :, 56:] = 1.0
    assert torch.allclose(identity_similarity(net, x, y), torch.ones(2), atol=1e-6)
    z = torch.rand(2, 3, 64, 64) * 2 - 1
    s = identity_similarity(net, x, z)
    assert s.shape == (2,) and (s < 0.999).all() and (s >= -1).all()
    assert torch.allclose(s, identity_similarity(net, z, x), atol=1e-6)
    # a larger image is pooled to 256 first, as pSp's face_pool does
    big = torch.nn.functional.interpolate(x, size=(512, 512), mode="nearest")
    ref = ArcFace(ArcFaceConfig(input_size=64, embedding_dim=128, body=MINI_ARCFACE.body)).eval()
    ref.load_state_dict(net.state_dict())
    assert identity_similarity(ref, big, big).shape == (2,)
    xg = x.clone().requires_grad_(True)
    (1 - identity_similarity(net, xg, z)).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_irse_config_validation():
    with pytest.raises(ValueError):
        IRSEConfig(widths=(64, 128, 256))
    with pytest.raises(ValueError):
        EncoderConfig(input_size=40)
