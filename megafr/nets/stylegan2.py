"""StyleGAN2 generator and discriminator in plain PyTorch, with the official checkpoint layout.

Implements the StyleGAN2 networks of Karras et al., "Analyzing and Improving the Image
Quality of StyleGAN" (CVPR 2020): the mapping network (Sec. 2 of StyleGAN, 8 equalised-lr
linear layers after pixel norm), weight modulation and demodulation (Eq. 1-3 of the
StyleGAN2 paper), noise injection, skip-connected ToRGB outputs and the residual
discriminator with the minibatch-stddev layer.

Module tree and state-dict keys are those of rosinality/stylegan2-pytorch ``model.py``,
the layout that the e4e / pSp releases and ``stylegan2-ffhq-config-f.pt`` use
(``style.N.weight``, ``input.input``, ``conv1.conv.weight`` [1, out, in, k, k],
``convs.N.conv.blur.kernel``, ``to_rgbs.N.upsample.kernel``, ``noises.noise_N``, ...), so
those files load with ``strict=True``.

Why hand-written instead of importing a library: the reference code compiles two custom
CUDA/C++ ops (``upfirdn2d`` and ``fused_leaky_relu``) at import time and is not a package;
no pip package provides modules with these key names. The two ops are re-derived here
from their definitions:

- ``fused_leaky_relu(x, b) = leaky_relu(x + b, 0.2) * sqrt(2)``;
- ``upfirdn2d(x, k, up, down, pad)``: insert ``up - 1`` zeros after every sample, pad
  (negative pads crop), correlate with the flipped FIR kernel ``k``, keep every
  ``down``-th sample. The blur kernel is ``[1, 3, 3, 1]`` (outer product, normalised to
  sum 1), multiplied by ``factor ** 2`` when it follows an upsampling by ``factor``.

Two implementations of the same maths are selectable per module (``impl``):

- ``"reference"``: the computation as the reference CPU path does it: the modulated
  convolution as a grouped convolution with one group per sample (per-sample weights),
  and the FIR filter as zero insertion + padding + a reshape to ``[B*C, 1, H, W]`` and a
  single-channel convolution (``upfirdn2d_native``);
- ``"fast"`` (default): modulation applied to the input activations with one shared
  weight, demodulation as an output scale (the algebraically equal form, Eq. 3 of the
  paper applied to activations instead of weights), the FIR filter as a depthwise
  convolution, and the skip upsampling as a depthwise transposed convolution.

Both paths give the same result to float32 rounding (``tests/test_stylegan2.py`` checks
1e-5). ``set_impl(module, impl)`` switches a whole network.

Channel widths follow the reference table (512 up to 32 px, then ``16384 * multiplier /
res``) capped at ``max_channels``, so small configurations for the mini world keep the
same key names: ``channels(res) = min(max_channels, CHANNEL_BASE * channel_multiplier // res)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

LRELU_SLOPE = 0.2  # negative slope of every leaky ReLU in StyleGAN2
LRELU_GAIN = math.sqrt(2.0)  # gain that keeps the activation variance (fused_leaky_relu "scale")
BLUR_KERNEL = (1, 3, 3, 1)  # 1-D FIR taps of the resampling filter (binomial)
DEMOD_EPS = 1e-8  # epsilon inside the demodulation rsqrt (Eq. 3)
PIXELNORM_EPS = 1e-8  # epsilon of the pixel norm before the mapping network
CHANNEL_BASE = 16384  # channels(res) = CHANNEL_BASE * channel_multiplier / res, before the cap
LR_MLP = 0.01  # learning-rate multiplier of the mapping network (equalised lr)
STDDEV_GROUP = 4  # minibatch-stddev group size of the discriminator
STDDEV_FEAT = 1  # number of stddev feature maps appended by the discriminator
STDDEV_EPS = 1e-8  # epsilon inside the stddev sqrt
CPU_CHUNK = 8  # images per chunk when synthesising without gradients on CPU (see Generator.synthesis)
RESAMPLE_FACTOR = 2  # every up/down sampling in StyleGAN2 is by 2
MIN_SIZE = 8  # smallest supported image size (one upsampling block after the 4x4 constant)
IMPLS = ("fast", "reference")


# --------------------------------------------------------------------------- configs
def stylegan2_channels(size: int, channel_multiplier: int, max_channels: int) -> dict[int, int]:
    """Feature channels per resolution ``4 .. size`` (the reference table, capped)."""
    return {
        2**i: min(max_channels, CHANNEL_BASE * channel_multiplier // 2**i)
        for i in range(2, int(math.log2(size)) + 1)
    }


def _check_size(size: int) -> int:
    if size < MIN_SIZE or size & (size - 1):
        raise ValueError(f"StyleGAN2 size must be a power of two >= {MIN_SIZE}, got {size}")
    return int(math.log2(size))


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters that fix the generator's state-dict shapes."""

    size: int = 1024  # output resolution (power of two); 1024 for FFHQ config-f
    style_dim: int = 512  # dimension of z and w
    n_mlp: int = 8  # depth of the mapping network
    channel_multiplier: int = 2  # config-f uses 2 (wider high-resolution layers)
    max_channels: int = 512  # cap on feature channels at any resolution (512 in the reference)
    lr_mlp: float = LR_MLP  # equalised-lr multiplier of the mapping network

    def __post_init__(self) -> None:
        _check_size(self.size)
        for name in ("style_dim", "n_mlp", "channel_multiplier", "max_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"GeneratorConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def n_latent(self) -> int:
        """Number of W+ layers: 2 * log2(size) - 2 (18 at 1024)."""
        return 2 * int(math.log2(self.size)) - 2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Hyper-parameters that fix the discriminator's state-dict shapes."""

    size: int = 1024  # input resolution (power of two)
    channel_multiplier: int = 2  # as the generator's
    max_channels: int = 512  # cap on feature channels

    def __post_init__(self) -> None:
        _check_size(self.size)

    def to_dict(self) -> dict:
        return asdict(self)


def set_impl(module: nn.Module, impl: str) -> nn.Module:
    """Switch every StyleGAN2 op inside ``module`` to ``"fast"`` or ``"reference"``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    for m in module.modules():
        if hasattr(m, "impl"):
            m.impl = impl
    return module


# --------------------------------------------------------------------------- ops
def fused_leaky_relu(
    x: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = LRELU_SLOPE, scale: float = LRELU_GAIN
) -> torch.Tensor:
    """``leaky_relu(x + bias, 0.2) * sqrt(2)``, bias broadcast over dim 1 (channels)."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """2-D FIR kernel from 1-D taps (outer product), normalised to sum 1. [K, K]"""
    k = torch.tensor(list(taps), dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d_reference(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """upfirdn2d computed as the reference CPU path: zero insertion, pad, [B*C,1,H,W] conv."""
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    p0, p1 = pad
    out = x.reshape(b * c, h, 1, w, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1])  # zeros after every sample
    out = out.reshape(b * c, 1, h * up, w * up)
    out = F.pad(out, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    out = out[:, :, max(-p0, 0) : out.shape[2] - max(-p1, 0), max(-p0, 0) : out.shape[3] - max(-p1, 0)]
    out = F.conv2d(out, torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(out))
    out = out[:, :, ::down, ::down]
    return out.reshape(b, c, out.shape[2], out.shape[3])


def upfirdn2d_fast(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """upfirdn2d as one depthwise (transposed) convolution; same result as the reference."""
    c = x.shape[1]
    kh, kw = kernel.shape
    p0, p1 = pad
    if up == 1:
        x = F.pad(x, [p0, p1, p0, p1])  # negative pads crop
        weight = torch.flip(kernel, [0, 1]).to(x).expand(c, 1, kh, kw)
        return F.conv2d(x, weight, stride=down, groups=c)
    # Transposed conv with stride `up` is zero insertion followed by a full convolution with the
    # unflipped kernel; padding P = K - 1 - p0 and output_padding p1 - p0 + up - 1 reproduce pad.
    tpad = kh - 1 - p0
    out_pad = p1 - p0 + up - 1
    if kh != kw or tpad < 0 or not 0 <= out_pad < up:
        return upfirdn2d_reference(x, kernel, up, down, pad)
    weight = kernel.to(x).expand(c, 1, kh, kw)
    out = F.conv_transpose2d(x, weight, stride=up, padding=tpad, output_padding=out_pad, groups=c)
    return out[:, :, ::down, ::down] if down > 1 else out


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0), impl: str = "fast"
) -> torch.Tensor:
    """Upsample by zero insertion, FIR-filter, downsample (``[B, C, H, W]`` in and out)."""
    if impl == "reference":
        return upfirdn2d_reference(x, kernel, up, down, pad)
    return upfirdn2d_fast(x, kernel, up, down, pad)


# --------------------------------------------------------------------------- layers
class PixelNorm(nn.Module):
    """Normalise each latent vector to unit root-mean-square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + PIXELNORM_EPS)


class FusedLeakyReLU(nn.Module):
    """Per-channel bias + leaky ReLU + sqrt(2) gain (reference ``FusedLeakyReLU``; key ``bias``)."""

    def __init__(self, channel: int, bias: bool = True):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None  # [C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    """FIR low-pass filter with padding (key ``kernel``: the normalised 2-D kernel)."""

    def __init__(self, taps: Sequence[int], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        kernel = make_kernel(taps)
        if upsample_factor > 1:
            kernel = kernel * upsample_factor**2  # keeps the mean after zero insertion
        self.register_buffer("kernel", kernel)  # [K, K]
        self.pad = pad  # (before, after) padding of both spatial dims
        self.impl = "fast"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad, impl=self.impl)


class Upsample(nn.Module):
    """Upsample by 2 with the FIR filter (used on the RGB skip path; key ``kernel``)."""

    def __init__(self, taps: Sequence[int], factor: int = RESAMPLE_FACTOR):
        super().__init__()
        self.factor = factor  # upsampling factor
        kernel = make_kernel(taps) * factor**2
        self.register_buffer("kernel", kernel)  # [K, K]
        p = kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)
        self.impl = "fast"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad, impl=self.impl)


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate: weight ~ N(0,1) scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)  # He constant
        self.stride = stride  # convolution stride
        self.padding = padding  # zero padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate and an lr multiplier (keys ``weight``, ``bias``)."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0, activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))  # [out, in]
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation  # None or "fused_lrelu"
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul  # learning-rate multiplier (0.01 in the mapping network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias=bias)


class ModulatedConv2d(nn.Module):
    """Modulated (and demodulated) convolution, StyleGAN2 Eq. 1-3, optionally up/downsampling."""

    def __init__(
        self,
        in_channel: int,  # input feature channels
        out_channel: int,  # output feature channels
        kernel_size: int,  # square kernel size (3, or 1 for ToRGB)
        style_dim: int,  # dimension of w
        demodulate: bool = True,  # Eq. 3 weight demodulation (off for ToRGB)
        upsample: bool = False,  # stride-2 transposed conv followed by the blur
        downsample: bool = False,  # blur followed by a stride-2 conv
        blur_kernel: Sequence[int] = BLUR_KERNEL,  # FIR taps
        impl: str = "fast",  # "fast" (shared weight) or "reference" (grouped conv)
    ):
        super().__init__()
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        self.downsample = downsample
        self.demodulate = demodulate
        self.impl = impl
        factor = RESAMPLE_FACTOR
        if upsample:
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        if downsample:
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, in_channel, height, width = x.shape
        if in_channel != self.in_channel or style.shape[0] != batch:
            raise ValueError(
                f"ModulatedConv2d expects x [B, {self.in_channel}, H, W] and style [B, D]; "
                f"got {tuple(x.shape)} and {tuple(style.shape)}"
            )
        s = self.modulation(style)  # [B, in]
        if self.impl == "reference" or batch == 1:
            # with one sample the grouped conv is a plain conv on a modulated weight, the
            # cheapest form (no full-size multiplications of the activations)
            return self._forward_grouped(x, s)
        return self._forward_shared(x, s)

    def _forward_shared(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        weight = self.scale * self.weight.squeeze(0)  # [out, in, k, k]
        x = x * s.view(batch, -1, 1, 1)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=RESAMPLE_FACTOR)
            out = self.blur(out)
        elif self.downsample:
            out = F.conv2d(self.blur(x), weight, stride=RESAMPLE_FACTOR)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum_{i,k} (w[o,i,k] s[b,i])^2 = (s^2) @ (sum_k w^2)^T      [B, out]
            dcoefs = torch.rsqrt(s.square() @ weight.square().sum((2, 3)).t() + DEMOD_EPS)
            out = out * dcoefs.view(batch, -1, 1, 1)
        return out

    def _forward_grouped(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        batch, in_channel, height, width = x.shape
        k = self.kernel_size
        weight = self.scale * self.weight * s.view(batch, 1, in_channel, 1, 1)  # [B, out, in, k, k]
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + DEMOD_EPS)  # [B, out]
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        if self.upsample:
            x = x.reshape(1, batch * in_channel, height, width)
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, stride=RESAMPLE_FACTOR, groups=batch)
            out = out.reshape(batch, self.out_channel, out.shape[2], out.shape[3])
            return self.blur(out)
        weight = weight.reshape(batch * self.out_channel, in_channel, k, k)
        if self.downsample:
            x = self.blur(x)
            x = x.reshape(1, batch * in_channel, x.shape[2], x.shape[3])
            out = F.conv2d(x, weight, stride=RESAMPLE_FACTOR, groups=batch)
        else:
            x = x.reshape(1, batch * in_channel, height, width)
            out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.reshape(batch, self.out_channel, out.shape[2], out.shape[3])


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise scaled by a learned scalar (key ``weight`` [1])."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 constant the synthesis network starts from (key ``input``)."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.input.repeat(latent.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated conv + noise + fused leaky ReLU."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False, blur_kernel: Sequence[int] = BLUR_KERNEL, demodulate: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel, demodulate=demodulate)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style)  # [B, out, H, W]
        if self.conv.impl == "reference":
            return self.activate(self.noise(out, noise=noise))
        # Same maths in place: the conv output is a fresh tensor that no backward needs, so noise
        # and bias are added into it and the leaky ReLU overwrites it (its backward uses the
        # result, valid for a positive slope). Saves three full-size allocations per layer.
        if noise is None:
            noise = out.new_empty(out.shape[0], 1, out.shape[2], out.shape[3]).normal_()
        out = out.add_(self.noise.weight * noise).add_(self.activate.bias.view(1, -1, 1, 1))
        return F.leaky_relu(out, LRELU_SLOPE, inplace=True) * LRELU_GAIN


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation), plus the upsampled skip image."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True, blur_kernel: Sequence[int] = BLUR_KERNEL):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# --------------------------------------------------------------------------- generator
class Generator(nn.Module):
    """StyleGAN2 generator (rosinality layout). ``forward`` keeps the reference signature."""

    def __init__(
        self,
        size: int,  # output resolution (power of two >= 8)
        style_dim: int,  # dimension of z and w
        n_mlp: int,  # mapping-network depth
        channel_multiplier: int = 2,  # 2 for config-f
        max_channels: int = 512,  # channel cap (512 in the reference; smaller for the mini world)
        blur_kernel: Sequence[int] = BLUR_KERNEL,  # FIR taps of the resampling filter
        lr_mlp: float = LR_MLP,  # equalised-lr multiplier of the mapping network
        impl: str = "fast",  # "fast" or "reference" maths for the custom ops
    ):
        super().__init__()
        self.config = GeneratorConfig(size, style_dim, n_mlp, channel_multiplier, max_channels, lr_mlp)
        self.size = size
        self.style_dim = style_dim
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)])
        self.channels = stylegan2_channels(size, channel_multiplier, max_channels)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)
        self.log_size = _check_size(size)
        self.num_layers = (self.log_size - 2) * 2 + 1  # StyledConvs (and noise inputs)
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty, kept for layout parity with the reference
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))
        in_channel = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2**i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel
        self.n_latent = self.log_size * 2 - 2
        set_impl(self, impl)

    @classmethod
    def from_config(cls, config: GeneratorConfig, impl: str = "fast") -> "Generator":
        return cls(config.size, config.style_dim, config.n_mlp, config.channel_multiplier, config.max_channels, lr_mlp=config.lr_mlp, impl=impl)

    def stored_noise(self) -> list[torch.Tensor]:
        """The generator's fixed noise maps (buffers ``noises.noise_<i>``), one per layer: what
        ``randomize_noise=False`` decodes with."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def make_noise(self) -> list[torch.Tensor]:
        device = self.input.input.device
        noises = [torch.randn(1, 1, 4, 4, device=device)]
        for i in range(3, self.log_size + 1):
            noises += [torch.randn(1, 1, 2**i, 2**i, device=device) for _ in range(2)]
        return noises

    @torch.no_grad()
    def mean_latent(self, n_samples: int) -> torch.Tensor:
        """Mean of w over ``n_samples`` random z. [1, style_dim]"""
        z = torch.randn(n_samples, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.style(z)

    def synthesis(self, latent: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """W+ codes [B, n_latent, style_dim] -> image [B, 3, size, size]."""
        if latent.ndim != 3 or latent.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(f"Generator.synthesis expects W+ [B, {self.n_latent}, {self.style_dim}], got {tuple(latent.shape)}")
        if noise is None:
            noise = [None] * self.num_layers
        shared_noise = all(n is None or n.shape[0] == 1 for n in noise)
        if not torch.is_grad_enabled() and latent.device.type == "cpu" and len(latent) > CPU_CHUNK and shared_noise:
            # Inference on CPU: chunks run faster than one large batch (benchmarks: 1.4x at 32 x 64 px).
            return torch.cat([self._synthesis(part, noise) for part in latent.split(CPU_CHUNK)])
        return self._synthesis(latent, noise)

    def _synthesis(self, latent: torch.Tensor, noise: Sequence[torch.Tensor | None]) -> torch.Tensor:
        out = self.input(latent)  # [B, C4, 4, 4]
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs):
            out = conv1(out, latent[:, i], noise=noise1)  # [B, C, 2H, 2W]
            out = conv2(out, latent[:, i + 1], noise=noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip  # [B, 3, size, size]

    def forward(
        self,
        styles: Sequence[torch.Tensor],  # list of z (or w with input_is_latent) [B, D], or one W+ [B, n_latent, D]
        return_latents: bool = False,
        inject_index: int | None = None,  # style-mixing crossover layer (random if None and 2 styles)
        truncation: float = 1.0,
        truncation_latent: torch.Tensor | None = None,
        input_is_latent: bool = False,
        noise: Sequence[torch.Tensor | None] | None = None,
        randomize_noise: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else self.stored_noise()
        if truncation < 1:
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        if len(styles) < 2:
            latent = styles[0] if styles[0].ndim == 3 else styles[0].unsqueeze(1).repeat(1, self.n_latent, 1)
        else:
            if inject_index is None:
                inject_index = int(torch.randint(1, self.n_latent, ()).item())
            latent = torch.cat(
                [styles[0].unsqueeze(1).repeat(1, inject_index, 1), styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)], 1
            )
        image = self.synthesis(latent, noise)
        return image, (latent if return_latents else None)


# --------------------------------------------------------------------------- discriminator
class ConvLayer(nn.Sequential):
    """[Blur] + EqualConv2d + [FusedLeakyReLU] (keys ``0.kernel``/``N.weight``/``N.bias``)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False, blur_kernel: Sequence[int] = BLUR_KERNEL, bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - RESAMPLE_FACTOR) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = RESAMPLE_FACTOR, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding, stride=stride, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual downsampling block of the discriminator."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[int] = BLUR_KERNEL):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False, blur_kernel=blur_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with minibatch stddev (rosinality layout)."""

    def __init__(
        self,
        size: int,  # input resolution
        channel_multiplier: int = 2,  # as the generator's
        blur_kernel: Sequence[int] = BLUR_KERNEL,  # FIR taps
        max_channels: int = 512,  # channel cap
        impl: str = "fast",  # "fast" or "reference" FIR maths
    ):
        super().__init__()
        self.config = DiscriminatorConfig(size, channel_multiplier, max_channels)
        channels = stylegan2_channels(size, channel_multiplier, max_channels)
        self.size = size
        convs: list[nn.Module] = [ConvLayer(3, channels[size], 1)]
        log_size = _check_size(size)
        in_channel = channels[size]
        for i in range(log_size, 2, -1):
            out_channel = channels[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, blur_kernel))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)
        self.stddev_group = STDDEV_GROUP
        self.stddev_feat = STDDEV_FEAT
        self.final_conv = ConvLayer(in_channel + 1, channels[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(channels[4] * 4 * 4, channels[4], activation="fused_lrelu"), EqualLinear(channels[4], 1))
        set_impl(self, impl)

    @classmethod
    def from_config(cls, config: DiscriminatorConfig, impl: str = "fast") -> "Discriminator":
        return cls(config.size, config.channel_multiplier, max_channels=config.max_channels, impl=impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.size or x.shape[3] != self.size:
            raise ValueError(f"Discriminator expects [B, 3, {self.size}, {self.size}], got {tuple(x.shape)}")
        out = self.convs(x)  # [B, C, 4, 4]
        batch, channel, height, width = out.shape
        group = min(batch, self.stddev_group)
        if batch % group:
            raise ValueError(f"Discriminator batch ({batch}) must be a multiple of the stddev group ({group})")
        stddev = out.view(group, -1, self.stddev_feat, channel // self.stddev_feat, height, width)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + STDDEV_EPS)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2)  # [B/group, feat, 1, 1]
        stddev = stddev.repeat(group, 1, height, width)
        out = self.final_conv(torch.cat([out, stddev], 1))
        return self.final_linear(out.view(batch, -1))  # [B, 1]
