"""pSp and e4e image encoders into StyleGAN2's W+, and e4e's latent-code discriminator.

- ``GradualStyleEncoder``: pixel2style2pixel (Richardson et al., "Encoding in Style",
  CVPR 2021, Sec. 3 / Fig. 2): an IR-SE50 body whose three feature maps c1, c2, c3 form a
  feature pyramid (``latlayer1``/``latlayer2`` 1x1 convs, bilinear upsample-and-add with
  ``align_corners=True``), and one ``GradualStyleBlock`` (stride-2 convs down to 1x1, then
  an equalised-lr linear layer) per W+ entry: coarse entries read c3, medium entries read
  p2, fine entries read p1.
- ``Encoder4Editing``: e4e (Tov et al., "Designing an Encoder for StyleGAN Image
  Manipulation", SIGGRAPH 2021, Sec. 4.1): the same modules, but W+ is w0 (from the first,
  coarsest style block) repeated over all entries plus a delta per entry ``i >= 1``;
  ``progressive_stage`` (0 .. n_latent - 1) says how many deltas are used (training adds
  them progressively; the release uses all, ``ProgressiveStage.Inference = 18``).
- ``LatentCodesDiscriminator``: e4e's ``models/discriminator.py``: ``n_mlp - 1`` plain
  ``nn.Linear(style_dim, style_dim)`` + LeakyReLU(0.2), then ``nn.Linear(style_dim, 1)``;
  the release uses ``n_mlp = 4`` (keys ``mlp.0``, ``mlp.2``, ``mlp.4``, ``mlp.6``).

State-dict keys are those of the encoder4editing / pixel2style2pixel releases
(``input_layer.0.weight`` [64, 3, 3, 3], ``body.N.res_layer...``, ``styles.N.convs.M``,
``styles.N.linear``, ``latlayer1``, ``latlayer2``). Written here because these are research
repositories, not packages, and because the encoder must be configurable (input channels,
input size, narrower and shallower bodies for the mini world) without changing key names.

Output convention: both encoders return W+ *offsets* [B, n_latent, style_dim], i.e. before
adding the generator's ``latent_avg`` (as the released encoders do); ``InversionNet`` adds
``latent_avg`` as the pSp / e4e wrappers do with ``start_from_latent_avg``.

Layer groups: each W+ index is mapped to the resolution of the generator layer that reads
it (index 0: the 4x4 conv; index j >= 1: the StyledConv at 2 ** ((j + 1) // 2 + 2); the
last index feeds only the final ToRGB, at the output size). Coarse = resolutions 4-8,
medium = 16-32, fine = 64 and above. At 1024 px (18 entries) this gives coarse 0-2, medium
3-6, fine 7-17, the official ``coarse_ind = 3``, ``middle_ind = 7``; at 64 px (10 entries)
coarse 0-2, medium 3-6, fine 7-9; at 32 px (8 entries) fine is empty and index 7 (the 32 px
ToRGB) is medium.

Feature taps: c1, c2, c3 are the outputs of the last unit of stages 2, 3 and 4 of the body
(``body`` indices 6, 20 and 23 for IR-50, i.e. ``IRSEConfig.stage_ends[1:]``) at strides 4,
8 and 16 of the input: 64/32/16 px for a 256 px input, 16/8/4 px for a 64 px input. The
style blocks halve their input down to 1x1, so a block reading a map of side s has
log2(s) convs (4/5/6 at 256 px input, 2/3/4 at 64 px).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from megafr.errors import InputError
from megafr.nets.irse import TOTAL_STRIDE, IRSEConfig, make_body, make_input_layer
from megafr.nets.stylegan2 import EqualLinear

ENCODER_INPUT = 256  # input size of the released pSp / e4e encoders
STYLE_DIM = 512  # w dimension of the released encoders
N_LATENT_1024 = 18  # W+ entries of a 1024 px generator
COARSE_MAX_RES = 8  # W+ entries of layers at <= 8 px are "coarse"
MEDIUM_MAX_RES = 32  # ... at 16-32 px "medium", above "fine"
FIRST_RES = 4  # resolution of the constant input
C1_STRIDE, C2_STRIDE, C3_STRIDE = 4, 8, 16  # strides of the three feature taps
STYLE_BLOCK_SLOPE = 0.01  # nn.LeakyReLU() default slope in GradualStyleBlock
LATENT_D_SLOPE = 0.2  # leaky slope of the latent discriminator
LATENT_D_MLP = 4  # n_mlp of e4e's latent discriminator
ENCODER_TYPES = ("Encoder4Editing", "GradualStyleEncoder")


# --------------------------------------------------------------------------- W+ layout
def n_latent_for_size(size: int) -> int:
    """W+ entries of a generator of this output size: 2 * log2(size) - 2."""
    if size < 8 or size & (size - 1):
        raise ValueError(f"generator size must be a power of two >= 8, got {size}")
    return 2 * int(math.log2(size)) - 2


def latent_resolution(index: int, n_latent: int) -> int:
    """Resolution of the generator layer that reads W+ entry ``index``."""
    if not 0 <= index < n_latent:
        raise ValueError(f"W+ index {index} outside 0..{n_latent - 1}")
    size = 2 ** ((n_latent + 2) // 2)
    if index == 0:
        return FIRST_RES
    return min(size, 2 ** ((index + 1) // 2 + 2))


def layer_groups(n_latent: int) -> dict[str, range]:
    """``{"coarse", "medium", "fine"}`` -> ranges of W+ indices (see the module docstring)."""
    if n_latent < 4 or n_latent % 2:
        raise ValueError(f"n_latent must be even and >= 4 (2 * log2(size) - 2), got {n_latent}")
    res = [latent_resolution(i, n_latent) for i in range(n_latent)]
    n_coarse = sum(r <= COARSE_MAX_RES for r in res)
    n_medium = sum(COARSE_MAX_RES < r <= MEDIUM_MAX_RES for r in res)
    return {
        "coarse": range(0, n_coarse),
        "medium": range(n_coarse, n_coarse + n_medium),
        "fine": range(n_coarse + n_medium, n_latent),
    }


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class EncoderConfig:
    """Shape of a pSp / e4e encoder."""

    input_nc: int = 3  # input channels (6 for MegaFR's E_FR: image + rendering)
    input_size: int = ENCODER_INPUT  # square input size
    n_latent: int = N_LATENT_1024  # W+ entries, from the generator size
    style_dim: int = STYLE_DIM  # w dimension
    body: IRSEConfig = field(default_factory=IRSEConfig)  # IR-SE50 for the releases

    def __post_init__(self) -> None:
        if self.input_size % TOTAL_STRIDE or self.input_size < 2 * TOTAL_STRIDE:
            raise ValueError(f"encoder input size must be a multiple of {TOTAL_STRIDE} and >= {2 * TOTAL_STRIDE}, got {self.input_size}")
        if self.input_nc < 1:
            raise ValueError(f"input_nc must be >= 1, got {self.input_nc}")
        layer_groups(self.n_latent)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        d = dict(d)
        body = d.pop("body", {})
        body = IRSEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in body.items()})
        return cls(body=body, **d)

    def tap_spatial(self, group: str) -> int:
        """Side of the feature map that style blocks of ``group`` read."""
        stride = {"coarse": C3_STRIDE, "medium": C2_STRIDE, "fine": C1_STRIDE}[group]
        return self.input_size // stride


MINI_ENCODER = EncoderConfig(input_size=64, n_latent=10, style_dim=128, body=IRSEConfig(widths=(32, 64, 96, 128), units=(1, 2, 2, 1), stem_channels=32))


# --------------------------------------------------------------------------- modules
class GradualStyleBlock(nn.Module):
    """Stride-2 convs from ``spatial`` x ``spatial`` down to 1x1, then an EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        self.out_c = out_c  # output (style) dimension
        self.spatial = spatial  # side of the input feature map
        num_pools = int(math.log2(spatial))
        layers: list[nn.Module] = [nn.Conv2d(in_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(STYLE_BLOCK_SLOPE)]
        for _ in range(num_pools - 1):
            layers += [nn.Conv2d(out_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(STYLE_BLOCK_SLOPE)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)  # [B, out_c, 1, 1]
        return self.linear(x.reshape(-1, self.out_c))  # [B, out_c]


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class _PyramidEncoder(nn.Module):
    """Shared body, taps and style blocks of pSp's GradualStyleEncoder and e4e."""

    def __init__(self, config: EncoderConfig = EncoderConfig()):
        super().__init__()
        self.config = config
        body = config.body
        self.input_layer = make_input_layer(config.input_nc, body.stem_channels)
        self.body = make_body(body)
        self.style_count = config.n_latent
        self.groups = layer_groups(config.n_latent)
        top = body.widths[3]  # pyramid width (512 in the release)
        self.styles = nn.ModuleList()
        for i in range(config.n_latent):
            group = next(name for name, r in self.groups.items() if i in r)
            self.styles.append(GradualStyleBlock(top, config.style_dim, config.tap_spatial(group)))
        self.latlayer1 = nn.Conv2d(body.widths[2], top, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(body.widths[1], top, kernel_size=1, stride=1, padding=0)
        _, self._tap1, self._tap2, self._tap3 = body.stage_ends

    def _fit_input(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input and area-pool a larger square image down to the encoder's size.

        The released encoders see 256 px; the paper's generator makes 1024 px images, which pSp and
        e4e average-pool to 256 (their ``face_pool``) before encoding them again. Smaller inputs are
        refused rather than upsampled.
        """
        c, s = self.config.input_nc, self.config.input_size
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] != x.shape[3] or x.shape[-1] < s:
            raise InputError(f"{type(self).__name__} expects square [B, {c}, S, S] images in [-1, 1] with S >= {s} "
                             f"(larger ones are pooled to {s} px), got {tuple(x.shape)}")
        return F.adaptive_avg_pool2d(x, (s, s)) if x.shape[-1] != s else x

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Body taps c1 [B, w1, S/4, S/4], c2 [B, w2, S/8, S/8], c3 [B, w3, S/16, S/16]."""
        x = self._fit_input(x)
        x = self.input_layer(x)
        c1 = c2 = None
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == self._tap1:
                c1 = x
            elif i == self._tap2:
                c2 = x
        return c1, c2, x


class GradualStyleEncoder(_PyramidEncoder):
    """pSp encoder: image [B, input_nc, S, S] -> W+ offsets [B, n_latent, style_dim]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.features(x)
        g = self.groups
        latents = [self.styles[j](c3) for j in g["coarse"]]
        p2 = _upsample_add(c3, self.latlayer1(c2))
        latents += [self.styles[j](p2) for j in g["medium"]]
        if len(g["fine"]):
            p1 = _upsample_add(p2, self.latlayer2(c1))
            latents += [self.styles[j](p1) for j in g["fine"]]
        return torch.stack(latents, dim=1)


class Encoder4Editing(_PyramidEncoder):
    """e4e encoder: W+ = w0 repeated + deltas for entries 1..progressive_stage. [B, n_latent, D]"""

    def __init__(self, config: EncoderConfig = EncoderConfig(), progressive_stage: int | None = None):
        super().__init__(config)
        # number of deltas in use (0: only w0); None = all of them (the release's Inference stage)
        self.progressive_stage = config.n_latent - 1 if progressive_stage is None else progressive_stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.features(x)
        w0 = self.styles[0](c3)  # [B, D]
        n_deltas = min(self.progressive_stage, self.style_count - 1)
        deltas = [torch.zeros_like(w0)]
        p2 = p1 = None
        for i in range(1, n_deltas + 1):
            if i in self.groups["coarse"]:
                feat = c3
            else:
                if p2 is None:
                    p2 = _upsample_add(c3, self.latlayer1(c2))
                if i in self.groups["medium"]:
                    feat = p2
                else:
                    if p1 is None:
                        p1 = _upsample_add(p2, self.latlayer2(c1))
                    feat = p1
            deltas.append(self.styles[i](feat))
        deltas += [torch.zeros_like(w0)] * (self.style_count - 1 - n_deltas)
        return w0.unsqueeze(1) + torch.stack(deltas, dim=1)  # [B, n_latent, D]


class LatentCodesDiscriminator(nn.Module):
    """e4e latent discriminator: w [..., style_dim] -> realness logit [..., 1]."""

    def __init__(self, style_dim: int = STYLE_DIM, n_mlp: int = LATENT_D_MLP):
        super().__init__()
        self.style_dim = style_dim  # w dimension
        layers: list[nn.Module] = []
        for _ in range(n_mlp - 1):
            layers += [nn.Linear(style_dim, style_dim), nn.LeakyReLU(LATENT_D_SLOPE)]
        layers.append(nn.Linear(style_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.shape[-1] != self.style_dim:
            raise ValueError(f"LatentCodesDiscriminator expects [..., {self.style_dim}], got {tuple(w.shape)}")
        return self.mlp(w)


class InversionNet(nn.Module):
    """pSp / e4e wrapper: encoder (+ frozen decoder) with ``latent_avg`` added to the codes.

    ``state_dict()`` has exactly the release's keys (``encoder.*``, ``decoder.*``);
    ``latent_avg`` [n_latent, style_dim] is a non-persistent buffer, saved separately as in
    the release files.
    """

    def __init__(self, encoder: _PyramidEncoder, latent_avg: torch.Tensor, decoder: nn.Module | None = None, opts: dict | None = None):
        super().__init__()
        self.opts = dict(opts or {})  # training options of the release (``opts`` entry), informative only
        n, d = encoder.config.n_latent, encoder.config.style_dim
        if latent_avg.ndim == 1:
            latent_avg = latent_avg.unsqueeze(0).repeat(n, 1)
        if latent_avg.shape != (n, d):
            raise ValueError(f"latent_avg must be [{n}, {d}] or [{d}], got {tuple(latent_avg.shape)}")
        self.encoder = encoder
        if decoder is not None:
            self.decoder = decoder
        self.register_buffer("latent_avg", latent_avg.clone(), persistent=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image [B, C, S, S] in [-1, 1] -> W+ codes [B, n_latent, D] (latent_avg added)."""
        return self.encoder(x) + self.latent_avg.unsqueeze(0)

    def forward(self, x: torch.Tensor, randomize_noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Image -> (reconstruction [B, 3, size, size], W+ codes)."""
        if not hasattr(self, "decoder"):
            raise InputError("this InversionNet has no decoder; call encode() or build it with a Generator")
        w = self.encode(x)
        image, _ = self.decoder([w], input_is_latent=True, randomize_noise=randomize_noise)
        return image, w


def expand_input_channels(state_dict: dict[str, torch.Tensor], input_nc: int, key: str = "input_layer.0.weight") -> dict[str, torch.Tensor]:
    """Copy of ``state_dict`` whose first conv takes ``input_nc`` channels.

    The pretrained channels are copied and the new ones start at zero, so the widened
    encoder computes exactly what the pretrained one did on the first channels (MegaFR's
    E_FR initialised from e4e / pSp, ``docs/method.md`` section 1).
    """
    if key not in state_dict:
        raise KeyError(f"state dict has no {key!r}; keys start with {sorted(state_dict)[:3]}")
    w = state_dict[key]  # [64, C_old, 3, 3]
    if input_nc < w.shape[1]:
        raise ValueError(f"cannot shrink {key} from {w.shape[1]} to {input_nc} input channels")
    out = dict(state_dict)
    new = w.new_zeros(w.shape[0], input_nc, *w.shape[2:])
    new[:, : w.shape[1]] = w
    out[key] = new
    return out
