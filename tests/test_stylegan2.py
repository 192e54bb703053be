"""StyleGAN2: official layout (keys, shapes, parameter counts) and fast == reference maths."""

import math

import numpy as np
import pytest
import torch

from megafr.nets.stylegan2 import (
    BLUR_KERNEL,
    CPU_CHUNK,
    Blur,
    Discriminator,
    Generator,
    Upsample,
    fused_leaky_relu,
    make_kernel,
    set_impl,
    upfirdn2d_fast,
    upfirdn2d_reference,
)

# g_ema of stylegan2-ffhq-config-f.pt (rosinality conversion); measured by building the
# official configuration: Generator(1024, 512, 8, channel_multiplier=2).
CONFIG_F_G_PARAMS = 30_370_060
CONFIG_F_D_PARAMS = 29_012_513
TOL = 1e-5


def official_generator_shapes(size=1024, style_dim=512, n_mlp=8, cm=2, cap=512):
    """Keys and shapes of a rosinality Generator state dict, written from the reference layout."""
    ch = {r: min(cap, 512 if r <= 32 else 16384 * cm // r) for r in [2**i for i in range(2, int(math.log2(size)) + 1)]}
    shapes = {}
    for i in range(1, n_mlp + 1):
        shapes[f"style.{i}.weight"] = (style_dim, style_dim)
        shapes[f"style.{i}.bias"] = (style_dim,)

    def styled(prefix, cin, cout, up):
        shapes[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        shapes[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        shapes[f"{prefix}.conv.modulation.bias"] = (cin,)
        if up:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)
        shapes[f"{prefix}.noise.weight"] = (1,)
        shapes[f"{prefix}.activate.bias"] = (cout,)

    def to_rgb(prefix, cin, up):
        if up:
            shapes[f"{prefix}.upsample.kernel"] = (4, 4)
        shapes[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        shapes[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        shapes[f"{prefix}.conv.modulation.bias"] = (cin,)
        shapes[f"{prefix}.bias"] = (1, 3, 1, 1)

    shapes["input.input"] = (1, ch[4], 4, 4)
    styled("conv1", ch[4], ch[4], False)
    to_rgb("to_rgb1", ch[4], False)
    log_size = int(math.log2(size))
    for n in range((log_size - 2) * 2 + 1):
        r = 2 ** ((n + 5) // 2)
        shapes[f"noises.noise_{n}"] = (1, 1, r, r)
    cin = ch[4]
    for k, i in enumerate(range(3, log_size + 1)):
        cout = ch[2**i]
        styled(f"convs.{2 * k}", cin, cout, True)
        styled(f"convs.{2 * k + 1}", cout, cout, False)
        to_rgb(f"to_rgbs.{k}", cout, True)
        cin = cout
    return shapes


def official_discriminator_shapes(size=1024, cm=2, cap=512):
    ch = {r: min(cap, 512 if r <= 32 else 16384 * cm // r) for r in [2**i for i in range(2, int(math.log2(size)) + 1)]}
    shapes = {"convs.0.0.weight": (ch[size], 3, 1, 1), "convs.0.1.bias": (ch[size],)}
    cin = ch[size]
    for n, i in enumerate(range(int(math.log2(size)), 2, -1), start=1):
        cout = ch[2 ** (i - 1)]
        p = f"convs.{n}"
        shapes.update({
            f"{p}.conv1.0.weight": (cin, cin, 3, 3), f"{p}.conv1.1.bias": (cin,),
            f"{p}.conv2.0.kernel": (4, 4), f"{p}.conv2.1.weight": (cout, cin, 3, 3), f"{p}.conv2.2.bias": (cout,),
            f"{p}.skip.0.kernel": (4, 4), f"{p}.skip.1.weight": (cout, cin, 1, 1),
        })
        cin = cout
    shapes.update({
        "final_conv.0.weight": (ch[4], cin + 1, 3, 3), "final_conv.1.bias": (ch[4],),
        "final_linear.0.weight": (ch[4], ch[4] * 16), "final_linear.0.bias": (ch[4],),
        "final_linear.1.weight": (1, ch[4]), "final_linear.1.bias": (1,),
    })
    return shapes


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_config_f_generator_layout_and_parameter_count():
    torch.manual_seed(0)
    g = Generator(1024, 512, 8, channel_multiplier=2)
    assert g.n_latent == 18
    assert sum(p.numel() for p in g.parameters()) == CONFIG_F_G_PARAMS
    expected = official_generator_shapes()
    assert _shapes(g) == expected
    # a state dict written from the expected layout (random values) loads strictly
    state = {k: torch.randn(s) for k, s in expected.items()}
    g.load_state_dict(state, strict=True)
    assert torch.equal(g.to_rgbs[7].conv.weight, state["to_rgbs.7.conv.weight"])


def test_config_f_discriminator_layout():
    with torch.device("meta"):
        d = Discriminator(1024, channel_multiplier=2)
    assert sum(p.numel() for p in d.parameters()) == CONFIG_F_D_PARAMS
    assert _shapes(d) == official_discriminator_shapes()


@pytest.mark.parametrize("size,cap,n_latent", [(64, 128, 10), (32, 64, 8)])
def test_small_configs_keep_key_names(size, cap, n_latent):
    g = Generator(size, 128, 4, channel_multiplier=2, max_channels=cap)
    assert g.n_latent == n_latent
    assert _shapes(g) == official_generator_shapes(size, 128, 4, 2, cap)
    d = Discriminator(size, 2, max_channels=cap)
    assert _shapes(d) == official_discriminator_shapes(size, 2, cap)


def _naive_upfirdn(x, k, up, down, p0, p1):
    """upfirdn2d straight from its definition, with loops (one channel, numpy)."""
    h, w = x.shape
    u = np.zeros((h * up, w * up))
    u[::up, ::up] = x
    u = np.pad(u, ((max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0))))
    u = u[max(-p0, 0) : u.shape[0] - max(-p1, 0), max(-p0, 0) : u.shape[1] - max(-p1, 0)]
    kf = k[::-1, ::-1]
    kh, kw = k.shape
    out = np.array([[np.sum(u[i : i + kh, j : j + kw] * kf) for j in range(u.shape[1] - kw + 1)] for i in range(u.shape[0] - kh + 1)])
    return out[::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (2, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 1, (1, 1)), (1, 1, (-1, 2)), (2, 2, (1, 2))])
def test_upfirdn2d_matches_definition(up, down, pad):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    k = torch.tensor([[1.0, 2.0, 0.5, 0.0], [0.0, 1.0, 3.0, 1.0], [2.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 2.0]], dtype=torch.float64)
    want = _naive_upfirdn(x[1, 2].numpy(), k.numpy(), up, down, *pad)
    ref = upfirdn2d_reference(x, k, up, down, pad)
    fast = upfirdn2d_fast(x, k, up, down, pad)
    np.testing.assert_allclose(ref[1, 2].numpy(), want, atol=1e-12)
    np.testing.assert_allclose(fast.numpy(), ref.numpy(), atol=1e-12)


def test_fused_leaky_relu_and_kernels_known_values():
    x = torch.tensor([[-1.0, 2.0]])
    out = fused_leaky_relu(x.view(1, 2, 1, 1), torch.tensor([0.5, -1.0]))
    assert torch.allclose(out.flatten(), torch.tensor([-0.5 * 0.2, 1.0]) * math.sqrt(2))
    k = make_kernel(BLUR_KERNEL)
    assert k.shape == (4, 4) and torch.isclose(k.sum(), torch.tensor(1.0))
    assert torch.isclose(k[0, 0], torch.tensor(1 / 64))
    assert torch.isclose(Blur(BLUR_KERNEL, (1, 1), upsample_factor=2).kernel.sum(), torch.tensor(4.0))
    # upsampling a constant image keeps the constant away from the borders
    for impl in ("fast", "reference"):
        up = Upsample(BLUR_KERNEL)
        up.impl = impl
        y = up(torch.full((1, 2, 6, 6), 3.0))
        assert y.shape == (1, 2, 12, 12)
        assert torch.allclose(y[:, :, 2:-2, 2:-2], torch.tensor(3.0))


def _randomise(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("noise.weight"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def test_generator_fast_path_equals_reference_maths():
    torch.manual_seed(2)
    g = Generator(32, 64, 2, channel_multiplier=2, max_channels=64)
    _randomise(g, 0)
    z = torch.randn(3, 64)
    noise = g.make_noise()
    outs, grads = {}, {}
    for impl in ("reference", "fast"):
        set_impl(g, impl)
        g.zero_grad()
        img, _ = g([z], noise=noise)
        img.square().mean().backward()
        outs[impl] = img.detach()
        grads[impl] = torch.cat([p.grad.flatten() for p in g.parameters()])
    assert outs["fast"].abs().max() > 0.01
    assert torch.allclose(outs["fast"], outs["reference"], atol=TOL, rtol=TOL)
    assert torch.allclose(grads["fast"], grads["reference"], atol=TOL, rtol=1e-4)


def test_discriminator_fast_path_equals_reference_with_r1():
    torch.manual_seed(3)
    d = Discriminator(32, 2, max_channels=64)
    x = torch.randn(4, 3, 32, 32)
    res = {}
    for impl in ("reference", "fast"):
        set_impl(d, impl)
        xi = x.clone().requires_grad_(True)
        out = d(xi)
        (grad,) = torch.autograd.grad(out.sum(), xi, create_graph=True)  # R1 needs double backward
        d.zero_grad()
        grad.square().sum().backward()
        res[impl] = (out.detach(), grad.detach(), d.final_conv[0].weight.grad.clone())
    for a, b in zip(res["fast"], res["reference"]):
        assert torch.allclose(a, b, atol=TOL, rtol=1e-4)


def test_modulated_conv_upsample_fast_equals_grouped():
    torch.manual_seed(4)
    g = Generator(16, 32, 1, max_channels=32)
    conv = g.convs[0].conv  # upsampling modulated conv
    x = torch.randn(2, 32, 4, 4)
    s = torch.randn(2, 32)
    conv.impl = "reference"
    a = conv(x, s)
    set_impl(conv, "fast")
    b = conv(x, s)
    assert a.shape == b.shape == (2, 32, 8, 8)
    assert torch.allclose(a, b, atol=TOL, rtol=TOL)


def test_forward_signature_like_reference():
    torch.manual_seed(5)
    g = Generator(16, 32, 2, max_channels=32).eval()
    z = torch.randn(2, 32)
    w = g.get_latent(z)
    img_z, lat = g([z], return_latents=True, randomize_noise=False)
    img_w, _ = g([w], input_is_latent=True, randomize_noise=False)
    img_wp = g.synthesis(w.unsqueeze(1).repeat(1, g.n_latent, 1), g.stored_noise())
    assert lat.shape == (2, g.n_latent, 32)
    assert torch.allclose(img_z, img_w) and torch.allclose(img_w, img_wp)
    # style mixing: entries before inject_index from the first style, the rest from the second
    _, mixed = g([z, torch.randn(2, 32)], inject_index=2, return_latents=True)
    assert torch.allclose(mixed[:, 1], w) and not torch.allclose(mixed[:, 2], w)
    with pytest.raises(ValueError, match="W\\+"):
        g.synthesis(torch.randn(2, 3, 32))


def test_cpu_inference_in_chunks_equals_one_batch():
    torch.manual_seed(5)
    g = Generator(32, 16, 2, channel_multiplier=1, max_channels=16).eval()
    w = torch.randn(2 * CPU_CHUNK + 3, g.n_latent, 16)
    noise = g.stored_noise()
    with torch.no_grad():
        chunked = g.synthesis(w, noise=noise)
    whole = g.synthesis(w, noise=noise)  # with gradients enabled: one batch
    assert torch.allclose(chunked, whole.detach(), atol=1e-5)
