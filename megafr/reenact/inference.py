"""Reenactment at inference: by target images, by explicit FLAME parameters, with optional PTI.

``Reenactor`` bundles the trained E_FR with the frozen networks:

- :meth:`Reenactor.reenact` takes source and target images and applies F, then ``refine_steps``
  more times (paper eq. 9; default 1, "one extra step usually enough"); :meth:`Reenactor.reenact_steps`
  returns the outputs after several numbers of steps from one chain (what scoring refine 0, 1, 2 needs);
- :meth:`Reenactor.reenact_params` takes explicit FLAME expression and pose instead of a target
  image (yaw/pitch control, frontalization, eye opening): the source's own parameters, edited;
- :meth:`Reenactor.encode_source` and :meth:`Reenactor.reenact_code` split :meth:`reenact` in two, so
  that a video inverts its source once and reenacts it by many driving frames;
- :func:`pivotal_tuning` (PTI, Roich et al.) fine-tunes a copy of the generator around ``w_s`` so
  that ``G(w_s)`` matches an out-of-domain photo before editing.

The params-fed baseline (``condition="params"``) goes through the same methods.
"""

from __future__ import annotations

import copy
import math
from typing import Iterable, Mapping, NamedTuple, Optional

import torch

from megafr.devices import autocast, to_cpu
from megafr.errors import InputError
from megafr.face3d import pose as posemod
from megafr.face3d.recon import FaceParams
from megafr.reenact.model import MegaFR
from megafr.reenact.train import (Frozen, ReenactConfig, build_model, checkpoint_path, frozen_device, invert, load_frozen,
                                  make_targets, read_checkpoint)

PTI_STEPS = 50  # optimisation steps of pivotal tuning
PTI_LR = 3e-4  # its Adam learning rate (PTI's default)


class ReenactOutput(NamedTuple):
    image: torch.Tensor  # [B, 3, S, S] x_f in [-1, 1]
    latent: torch.Tensor  # [B, L, D] w_f
    inverted: torch.Tensor  # [B, 3, S, S] x_s, the inverted source
    condition: torch.Tensor  # [B, C, S, S] r_t (or the baseline's tiled parameters)
    target_params: FaceParams  # source identity with the target's expression and pose


class SourceCode(NamedTuple):
    """One source inverted once, ready to be reenacted by any number of targets (on the networks' device)."""

    inverted: torch.Tensor  # [1, 3, S, S] x_s = G(w_s)
    latent: torch.Tensor  # [1, L, D] w_s
    params: FaceParams  # FLAME parameters of x_s measured by the 3D network, batch 1
    model: MegaFR  # the MegaFR that reenacts it (with the PTI-tuned generator when asked)


class Reenactor:
    """A trained MegaFR ready to reenact images (all networks in eval mode, no gradients).

    The networks stay on the device they were loaded to (:func:`megafr.config.torch_device`);
    inputs may come from anywhere and every result is returned on the CPU in float32. On CUDA the
    networks run under autocast (:func:`megafr.devices.autocast`).
    """

    def __init__(self, model: MegaFR, frozen: Frozen, condition: str = "render"):
        self.model = model.eval()
        self.frozen = frozen
        self.condition = condition
        self.device = frozen_device(frozen)

    @classmethod
    def from_config(cls, cfg: ReenactConfig, checkpoint: Optional[dict] = None,
                    frozen: Optional[Frozen] = None) -> "Reenactor":
        """The trained E_FR named by a ``train_reenact`` config, with its frozen networks.

        ``checkpoint``: that E_FR checkpoint when the caller has read it already (it is read here
        otherwise); ``frozen``: networks already loaded for ``cfg`` (loaded here otherwise)."""
        frozen = load_frozen(cfg, lpips=False) if frozen is None else frozen  # LPIPS only trains
        model = build_model(cfg, frozen)
        checkpoint = read_checkpoint(checkpoint_path(cfg)) if checkpoint is None else checkpoint
        model.encoder.load_state_dict(checkpoint["state_dict"])
        return cls(model, frozen, cfg.condition)

    @torch.no_grad()
    def measure(self, images: torch.Tensor) -> FaceParams:
        """FLAME parameters of images [B, 3, S, S] by the 3D face network (on the CPU)."""
        return _cpu(self._measure(images.to(self.device)))

    def _measure(self, images: torch.Tensor) -> FaceParams:
        return self.frozen.face.net(images.clamp(-1, 1))

    @torch.no_grad()
    def _run(self, x_s, w_s, source: FaceParams, expression, pose, refine_steps: Iterable[int],
             model: MegaFR) -> dict[int, ReenactOutput]:
        """The outputs after each of ``refine_steps`` refinement steps, from one chain of F."""
        given = list(refine_steps)
        steps = sorted(set(given))
        if not steps or steps[0] < 0:
            raise InputError(f"refine_steps must be one or more numbers >= 0, got {given}")
        targets = make_targets(self.frozen.face, source.shape, expression, pose, self.condition)
        with autocast(self.device):
            chain = model.refinements(x_s, targets.condition, w_s, steps[-1])
        inverted, condition = to_cpu(x_s), to_cpu(targets.condition)
        params = _cpu(source._replace(expression=expression, pose=pose))
        return {k: ReenactOutput(to_cpu(chain[k].image.clamp(-1, 1)), to_cpu(chain[k].latent), inverted, condition,
                                 params) for k in steps}

    def invert_sources(self, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_s = G(w_s)`` and ``w_s = E_inv(sources)`` for sources [B, 3, S, S] in [-1, 1], on the networks'
        device and in float32 (computed under the device's autocast): the source E_FR edits."""
        with autocast(self.device):
            x_s, w_s = invert(self.frozen, sources.to(self.device))
        return x_s.float(), w_s.float()

    def _source(self, sources: torch.Tensor, pti_steps: int):
        x_s, w_s = self.invert_sources(sources)
        model = self.model
        if pti_steps > 0:
            tuned = pivotal_tuning(self.model.generator, w_s, sources, steps=pti_steps)
            model = self.model.with_generator(tuned)
            x_s = model.synthesize(w_s).clamp(-1, 1).detach()
        return x_s, w_s, model

    def reenact(self, sources: torch.Tensor, targets: torch.Tensor, refine_steps: int = 1,
                pti_steps: int = 0) -> ReenactOutput:
        """Sources take the targets' expression and pose; both [B, 3, S, S] in [-1, 1]."""
        return self.reenact_steps(sources, targets, (refine_steps,), pti_steps)[refine_steps]

    def reenact_steps(self, sources: torch.Tensor, targets: torch.Tensor, refine_steps: Iterable[int],
                      pti_steps: int = 0) -> dict[int, ReenactOutput]:
        """:meth:`reenact` at several refinement steps at once -> {k: the output after k steps}, each equal to
        ``reenact(sources, targets, refine_steps=k)``. The sources are inverted and measured, the targets
        measured and rendered, and F applied ``1 + max(k)`` times, once for all of them."""
        if sources.shape != targets.shape:
            raise InputError(f"sources and targets must have the same shape, got {tuple(sources.shape)} and {tuple(targets.shape)}")
        x_s, w_s, model = self._source(sources.to(self.device), pti_steps)
        source, target = self._measure(x_s), self._measure(targets.to(self.device))
        return self._run(x_s, w_s, source, target.expression, target.pose, refine_steps, model)

    @torch.no_grad()
    def encode_source(self, source: torch.Tensor, pti_steps: int = 0) -> SourceCode:
        """Invert one source [1, 3, S, S] in [-1, 1] and measure it (``pti_steps``: PTI first)."""
        if source.ndim != 4 or len(source) != 1:
            raise InputError(f"encode_source takes one image [1, 3, S, S], got {tuple(source.shape)}")
        x_s, w_s, model = self._source(source.to(self.device), pti_steps)
        return SourceCode(x_s, w_s, self._measure(x_s), model)

    @torch.no_grad()
    def reenact_code(self, code: SourceCode, expression: torch.Tensor, pose: torch.Tensor, refine_steps: int = 1,
                     half: bool = False) -> ReenactOutput:
        """The encoded source with FLAME ``expression`` [B, E] and ``pose`` [B, 15], one output per row.

        ``half``: E_FR and the generator under float16 autocast (CUDA only; ignored on the CPU)."""
        batch = len(expression)
        if pose.shape != (batch, code.params.pose.shape[1]) or expression.shape[1:] != code.params.expression.shape[1:]:
            raise InputError(f"expression must be [B, {code.params.expression.shape[1]}] and pose "
                             f"[B, {code.params.pose.shape[1]}], got {tuple(expression.shape)} and {tuple(pose.shape)}")
        x_s = code.inverted.expand(batch, -1, -1, -1)
        w_s = code.latent.expand(batch, -1, -1)
        source = FaceParams(*(t.expand(batch, *t.shape[1:]) for t in code.params))
        expression, pose = expression.to(self.device, source.expression.dtype), pose.to(self.device, source.pose.dtype)
        targets = make_targets(self.frozen.face, source.shape, expression, pose, self.condition)
        autocast = half and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=autocast):
            out = code.model.refine(x_s, targets.condition, w_s, refine_steps)
        params = source._replace(expression=expression, pose=pose)
        return ReenactOutput(out.image.float().clamp(-1, 1).cpu(), out.latent.float().cpu(), x_s.cpu(),
                             targets.condition.cpu(), _cpu(params))

    def reenact_params(self, sources: torch.Tensor, *, yaw_deg: Optional[torch.Tensor] = None,
                       pitch_deg: Optional[torch.Tensor] = None, roll_deg: Optional[torch.Tensor] = None,
                       jaw_deg: Optional[torch.Tensor] = None,
                       expression: Optional[Mapping[int, torch.Tensor]] = None,
                       refine_steps: int = 1, pti_steps: int = 0) -> ReenactOutput:
        """Reenact by explicit FLAME parameters: the source's own, with the given ones replaced.

        ``yaw_deg``/``pitch_deg``/``roll_deg`` set the head pose (degrees, [B]); ``jaw_deg`` the jaw
        opening; ``expression`` maps expression component index -> value [B] (e.g. blink = 0 opens
        the eyes: the eye-opening application). ``yaw=pitch=roll=0`` is frontalization.
        """
        x_s, w_s, model = self._source(sources.to(self.device), pti_steps)
        source = self._measure(x_s)
        expr = source.expression.clone()
        for index, value in (expression or {}).items():
            if not 0 <= index < expr.shape[1]:
                raise InputError(f"expression component {index} does not exist (0..{expr.shape[1] - 1})")
            expr[:, index] = torch.as_tensor(value, dtype=expr.dtype).to(expr.device)
        pose = edit_pose(source.pose, *(None if v is None else torch.as_tensor(v).to(self.device)
                                        for v in (yaw_deg, pitch_deg, roll_deg, jaw_deg)))
        return self._run(x_s, w_s, source, expr, pose, (refine_steps,), model)[refine_steps]


def _cpu(params: FaceParams) -> FaceParams:
    return FaceParams(*(to_cpu(t) for t in params))


def edit_pose(pose: torch.Tensor, yaw_deg=None, pitch_deg=None, roll_deg=None, jaw_deg=None) -> torch.Tensor:
    """A copy of FLAME poses [B, 15] with head yaw/pitch/roll and jaw opening (degrees) replaced where given."""
    pose = pose.clone()
    current = posemod.head_pose_degrees(pose)  # [B, 3]
    angles = [current[:, k] if value is None else torch.as_tensor(value, dtype=pose.dtype).expand(len(pose))
              for k, value in enumerate((yaw_deg, pitch_deg, roll_deg))]
    radians = [a * (math.pi / 180.0) for a in angles]
    pose[:, posemod.GLOBAL] = posemod.euler_to_axis_angle(*radians)
    if jaw_deg is not None:
        pose[:, posemod.JAW] = 0.0
        pose[:, posemod.JAW.start] = torch.as_tensor(jaw_deg, dtype=pose.dtype) * (math.pi / 180.0)
    return pose


def pivotal_tuning(generator: torch.nn.Module, w_s: torch.Tensor, x_real: torch.Tensor,
                   steps: int = PTI_STEPS, lr: float = PTI_LR) -> torch.nn.Module:
    """PTI: a copy of the generator fine-tuned so that ``G(w_s)`` reconstructs ``x_real`` (pixel L2).

    The pivot ``w_s`` stays fixed; only the copy's weights move. LPIPS is left out here because
    its backbone weights are not available offline; the pixel term alone is PTI's L2 part.
    """
    if steps < 0:
        raise InputError(f"PTI steps must be >= 0, got {steps}")
    tuned = copy.deepcopy(generator).train().requires_grad_(True)
    noise = tuned.stored_noise()
    optimizer = torch.optim.Adam(tuned.parameters(), lr=lr)
    target = x_real.detach()
    for _ in range(steps):
        loss = (tuned.synthesis(w_s.detach(), noise=noise) - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return tuned.requires_grad_(False).eval()
