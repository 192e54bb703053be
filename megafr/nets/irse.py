"""IR / IR-SE residual backbone and the ArcFace IR-SE50 recogniser, in the TreB1eN layout.

Implements the improved residual unit of ArcFace (Deng et al., "ArcFace: Additive Angular
Margin Loss for Deep Face Recognition", CVPR 2019, Sec. 3.2 / Fig. 7: BN-Conv-PReLU-Conv-BN)
with a squeeze-and-excitation gate (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018)
in the ``ir_se`` mode. The module tree and state-dict keys are those of TreB1eN's
InsightFace_Pytorch ``model.py`` as vendored by pixel2style2pixel / encoder4editing
(``models/encoders/helpers.py`` and ``model_irse.py``):

- ``input_layer.{0: Conv 3x3, 1: BN, 2: PReLU}``;
- ``body.N.shortcut_layer`` (``MaxPool2d(1, stride)`` when the width is kept, otherwise
  ``{0: Conv 1x1, 1: BN}``) and ``body.N.res_layer.{0: BN, 1: Conv, 2: PReLU, 3: Conv,
  4: BN, 5: SE{fc1, fc2}}``;
- ArcFace only: ``output_layer.{0: BN2d, 1: Dropout, 2: Flatten, 3: Linear, 4: BN1d}``,
  and the embedding is L2-normalised.

Written here because the weights exist only in this layout (``model_ir_se50.pth``) and no
package ships these modules with these key names; insightface's ONNX models are a
different network. Widths and unit counts are a config (``IRSEConfig``) so that the mini
world uses narrow, shallow versions with the same key names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

SE_REDUCTION = 16  # squeeze-and-excitation channel reduction of the reference
STEM_CHANNELS = 64  # output channels of the reference input layer
STAGE_STRIDE = 2  # every stage starts with a stride-2 unit
N_STAGES = 4  # the body always has four stages (total stride 16)
TOTAL_STRIDE = STAGE_STRIDE**N_STAGES
UNITS_BY_DEPTH = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}  # get_blocks(num_layers)
REFERENCE_WIDTHS = (64, 128, 256, 512)  # stage widths of IR-50/100/152
ARCFACE_INPUT = 112  # input size of the released ArcFace
ARCFACE_EMBEDDING = 512  # embedding size of the released ArcFace
ARCFACE_DROP = 0.6  # dropout ratio pSp's IDLoss builds the net with (inactive in eval mode)
MODES = ("ir", "ir_se")


@dataclass(frozen=True)
class IRSEConfig:
    """Shape of an IR / IR-SE body: four stages of bottleneck units."""

    widths: tuple[int, ...] = REFERENCE_WIDTHS  # output channels of the four stages
    units: tuple[int, ...] = UNITS_BY_DEPTH[50]  # bottleneck units per stage (IR-50)
    stem_channels: int = STEM_CHANNELS  # channels after the input layer
    mode: str = "ir_se"  # "ir" (no SE gate) or "ir_se"
    se_reduction: int = SE_REDUCTION  # SE channel reduction

    def __post_init__(self) -> None:
        if len(self.widths) != N_STAGES or len(self.units) != N_STAGES:
            raise ValueError(f"IRSEConfig needs {N_STAGES} widths and {N_STAGES} unit counts, got {self.widths}, {self.units}")
        if min(self.units) < 1:
            raise ValueError(f"every stage needs at least one unit, got {self.units}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @classmethod
    def from_num_layers(cls, num_layers: int = 50, mode: str = "ir_se") -> "IRSEConfig":
        if num_layers not in UNITS_BY_DEPTH:
            raise ValueError(f"num_layers must be one of {sorted(UNITS_BY_DEPTH)}, got {num_layers}")
        return cls(units=UNITS_BY_DEPTH[num_layers], mode=mode)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        """Index in ``body`` of the last unit of each stage (6, 20, 23 for IR-50)."""
        ends, total = [], 0
        for n in self.units:
            total += n
            ends.append(total - 1)
        return tuple(ends)

    def to_dict(self) -> dict:
        return asdict(self)


class SEModule(nn.Module):
    """Squeeze-and-excitation gate (keys ``fc1.weight``, ``fc2.weight``; no biases)."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))  # [B, C, 1, 1]
        return x * gate


class BottleneckIR(nn.Module):
    """Improved residual unit, optionally with an SE gate (TreB1eN ``bottleneck_IR(_SE)``)."""

    def __init__(self, in_channel: int, depth: int, stride: int, use_se: bool = True, se_reduction: int = SE_REDUCTION):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth))
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if use_se:
            layers.append(SEModule(depth, se_reduction))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def make_input_layer(in_channels: int, stem_channels: int) -> nn.Sequential:
    """Conv 3x3 (no bias) + BN + PReLU: keys ``input_layer.0.weight`` [stem, in, 3, 3], ..."""
    return nn.Sequential(nn.Conv2d(in_channels, stem_channels, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(stem_channels), nn.PReLU(stem_channels))


def make_body(config: IRSEConfig) -> nn.Sequential:
    """The four stages as one flat Sequential (keys ``body.0`` ... ``body.{sum(units)-1}``)."""
    units: list[nn.Module] = []
    in_channel = config.stem_channels
    for width, n in zip(config.widths, config.units):
        for j in range(n):
            stride = STAGE_STRIDE if j == 0 else 1
            units.append(BottleneckIR(in_channel, width, stride, use_se=config.mode == "ir_se", se_reduction=config.se_reduction))
            in_channel = width
    return nn.Sequential(*units)


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


@dataclass(frozen=True)
class ArcFaceConfig:
    """Shape of an ArcFace recogniser (Backbone of TreB1eN)."""

    input_size: int = ARCFACE_INPUT  # square input size (112 for the release)
    embedding_dim: int = ARCFACE_EMBEDDING  # size of the identity embedding
    body: IRSEConfig = field(default_factory=IRSEConfig)  # IR-SE50 for the release
    drop_ratio: float = ARCFACE_DROP  # dropout before the embedding layer (train mode only)
    affine: bool = True  # learnable affine in the final BatchNorm1d

    def __post_init__(self) -> None:
        if self.input_size % TOTAL_STRIDE:
            raise ValueError(f"ArcFace input size must be a multiple of {TOTAL_STRIDE}, got {self.input_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ArcFaceConfig":
        d = dict(d)
        body = d.pop("body", {})
        body = IRSEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in body.items()})
        return cls(body=body, **d)


MINI_ARCFACE = ArcFaceConfig(input_size=64, embedding_dim=128, body=IRSEConfig(widths=(32, 64, 128, 256), units=(1, 2, 2, 1), stem_channels=32))


class ArcFace(nn.Module):
    """TreB1eN ``Backbone``: image [B, 3, S, S] in [-1, 1] -> L2-normalised embedding [B, E]."""

    def __init__(self, config: ArcFaceConfig = ArcFaceConfig()):
        super().__init__()
        self.config = config
        feat = config.input_size // TOTAL_STRIDE  # 7 at 112 px
        width = config.body.widths[-1]
        self.input_layer = make_input_layer(3, config.body.stem_channels)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Dropout(config.drop_ratio),
            Flatten(),
            nn.Linear(width * feat * feat, config.embedding_dim),
            nn.BatchNorm1d(config.embedding_dim, affine=config.affine),
        )
        self.body = make_body(config.body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.config.input_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"ArcFace expects [B, 3, {s}, {s}] (crop and pool with megafr.nets.identity), got {tuple(x.shape)}")
        x = self.output_layer(self.body(self.input_layer(x)))  # [B, E]
        return F.normalize(x, dim=1)
