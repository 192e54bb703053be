"""E_FR, the MegaFR reenactment encoder, and F(x_s, r_t) (paper section 3.2, Fig. 2).

E_FR is the pSp / e4e encoder with 6 input channels (``x_s`` concatenated with the target
rendering ``r_t``), initialised from the inversion encoder: the 3 pretrained channels are
copied and the 3 new ones start at zero (:func:`megafr.nets.encoders.expand_input_channels`).

The residual latent. E_FR predicts W+ codes like the inversion encoder it starts from;
the residual is ``delta = E_FR([x_s, r_t]) + latent_avg - w_s``, applied only on the edited
layers (coarse + medium by default, paper section 3.2), fine layers untouched:

    w_f = w_s + mask * delta,    x_f = G(w_f)

Written this way, at initialisation (new channels zero, ``x_s = G(w_s)``) E_FR reproduces the
inversion of ``x_s``, so the residual starts near zero instead of at an arbitrary code.
Iterative refinement (eq. 9, inference only) feeds ``(x_f, w_f)`` back as the new source.

Which layers. The paper edits the coarse and medium groups (StyleGAN2's layers at 4-32 px) because,
on its 1024 px generator, they hold pose and expression while the fine ones hold colour and detail.
A smaller generator draws the face's details at lower resolutions, so the edited layers can also be
named by size: ``"coarse,16px"`` is the coarse group and the medium group's 16 px layers (what the
mini world edits: ``docs/method.md``, "Layer groups of a smaller generator").
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from megafr.errors import InputError
from megafr.nets.encoders import InversionNet, expand_input_channels, latent_resolution, layer_groups

EDIT_GROUPS = ("coarse", "medium")  # the paper's choice; "fine" adds colour layers (ablation)
IMAGE_CHANNELS = 3  # x_s
RENDER_CHANNELS = 3  # r_t, the shaded geometry image (the paper's input: 3 + 3 = 6 channels)


def resolution_token(token: str) -> Optional[int]:
    """``"16px"`` -> 16 (the W+ entries of the generator's layers at 16 px); None for anything else."""
    match = re.fullmatch(r"(\d+)px", token)
    return int(match.group(1)) if match else None


def edit_layers(n_latent: int, groups: Sequence[str] = EDIT_GROUPS) -> tuple[int, ...]:
    """W+ indices edited for the named layer groups (e.g. coarse + medium = 0..6 at 1024 px). An entry
    ``"<N>px"`` names the entries of the generator's layers at N px (``"coarse,16px"``: coarse, and of the
    medium group only its 16 px layers)."""
    table = layer_groups(n_latent)
    sizes = [latent_resolution(i, n_latent) for i in range(n_latent)]  # the layer size each W+ entry feeds
    chosen: set[int] = set()
    for group in groups:
        size = resolution_token(group)
        if group in table:
            chosen.update(table[group])
        elif size in sizes:
            chosen.update(i for i, entry_size in enumerate(sizes) if entry_size == size)
        else:
            raise InputError(f"edit groups must be a non-empty list of {tuple(table)} or layer sizes "
                             f"{', '.join(f'{r}px' for r in sorted(set(sizes)))} of this generator, got {tuple(groups)}")
    if not chosen:
        raise InputError(f"edit groups must name at least one W+ entry, got {tuple(groups)}")
    return tuple(sorted(chosen))


class Reenactment(NamedTuple):
    image: torch.Tensor  # [B, 3, S, S] x_f in [-1, 1]
    latent: torch.Tensor  # [B, L, D] w_f


class MegaFR(nn.Module):
    """F(x_s, r_t): E_FR + the frozen generator. Only ``self.encoder`` has trainable parameters."""

    def __init__(
        self,
        inversion: InversionNet,  # pretrained e4e / pSp (3 channels); E_FR starts as its widened copy
        generator: nn.Module,  # pretrained StyleGAN2 (frozen)
        groups: Sequence[str] = EDIT_GROUPS,  # W+ layer groups the residual may change
        condition_channels: int = RENDER_CHANNELS,  # channels of the target condition (r_t; more for the params baseline)
    ):
        super().__init__()
        source = inversion.encoder
        channels = IMAGE_CHANNELS + condition_channels
        encoder = type(source)(dataclasses.replace(source.config, input_nc=channels))
        encoder.load_state_dict(expand_input_channels(source.state_dict(), channels))
        self.condition_channels = condition_channels
        self.encoder = encoder
        self.generator = generator.requires_grad_(False).eval()
        self.register_buffer("latent_avg", inversion.latent_avg.clone())
        n_latent = self.latent_avg.shape[0]
        mask = torch.zeros(n_latent, 1)
        mask[list(edit_layers(n_latent, groups))] = 1.0
        self.register_buffer("edit_mask", mask)  # [L, 1]
        self.groups = tuple(groups)

    def with_generator(self, generator: nn.Module) -> "MegaFR":
        """A MegaFR sharing this E_FR but synthesising with another generator (e.g. after PTI)."""
        clone = copy.copy(self)
        clone._modules = {**self._modules, "generator": generator}
        return clone

    def noise(self) -> list[torch.Tensor]:
        """The generator's fixed noise maps, so that reenactment is deterministic."""
        return self.generator.stored_noise()

    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        """W+ [B, L, D] -> image [B, 3, S, S] with the fixed noise."""
        return self.generator.synthesis(w, noise=self.noise())

    def residual(self, x_s: torch.Tensor, r_t: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
        """The masked residual ``mask * (E_FR([x_s, r_t]) + latent_avg - w_s)`` [B, L, D]."""
        if x_s.ndim != 4 or x_s.shape[1] != IMAGE_CHANNELS or r_t.shape != (x_s.shape[0], self.condition_channels, *x_s.shape[2:]):
            raise InputError(f"x_s must be [B, 3, S, S] and the condition [B, {self.condition_channels}, S, S], "
                             f"got {tuple(x_s.shape)} and {tuple(r_t.shape)}")
        if w_s.shape[1:] != self.latent_avg.shape:
            raise InputError(f"w_s must be [B, {self.latent_avg.shape[0]}, {self.latent_avg.shape[1]}], got {tuple(w_s.shape)}")
        predicted = self.encoder(torch.cat([x_s, r_t], dim=1)) + self.latent_avg  # [B, L, D]
        return self.edit_mask * (predicted - w_s)

    def forward(self, x_s: torch.Tensor, r_t: torch.Tensor, w_s: torch.Tensor) -> Reenactment:
        """One application of F: source image and its code, target rendering -> (x_f, w_f)."""
        w_f = w_s + self.residual(x_s, r_t, w_s)
        return Reenactment(self.synthesize(w_f), w_f)

    def refinements(self, x_s: torch.Tensor, r_t: torch.Tensor, w_s: torch.Tensor,
                    refine_steps: int = 1) -> list[Reenactment]:
        """F applied ``1 + refine_steps`` times, each output fed back as the source (eq. 9, inference only):
        every application's result, entry ``k`` after ``k`` refinement steps."""
        if refine_steps < 0:
            raise InputError(f"refine_steps must be >= 0, got {refine_steps}")
        outs = [self(x_s, r_t, w_s)]
        for _ in range(refine_steps):
            outs.append(self(outs[-1].image, r_t, outs[-1].latent))
        return outs

    def refine(self, x_s: torch.Tensor, r_t: torch.Tensor, w_s: torch.Tensor, refine_steps: int = 1) -> Reenactment:
        """The result after ``refine_steps`` refinement steps (the last of :meth:`refinements`)."""
        return self.refinements(x_s, r_t, w_s, refine_steps)[-1]
