"""Training E_FR (paper section 3.3): only the encoder learns; everything else is frozen.

One training step, for a batch of source photos ``x_real`` and target photos ``x_t``:

1. invert the sources with the frozen inversion encoder: ``w_s = E_inv(x_real)``, ``x_s = G(w_s)``;
2. measure FLAME parameters with the frozen 3D face network: ``beta_s, psi_s, theta_s`` on ``x_s``,
   ``psi_t, theta_t`` on ``x_t``;
3. render the target geometry ``r_t = R(FLAME(beta_s, psi_t, theta_t))`` and the source's own
   ``r_s = R(FLAME(beta_s, psi_s, theta_s))``, each framed like an FFHQ crop
   (:func:`megafr.face3d.framing.aligned_camera`);
4. ``x_f, w_f = F(x_s, r_t)``; the six losses of :mod:`megafr.losses` (paper eq. 2-8), where the target
   landmarks ``p_t`` are FLAME(beta_s, psi_t, theta_t)'s (what r_t shows) and ``p_f`` the 3D
   network's landmarks of ``x_f`` (gradients flow through the frozen 3D network into ``x_f``).

The parameter-fed baseline (``condition="params"``) replaces ``r_t`` by the raw target parameters
(expression and the non-neck pose) tiled as constant image channels; everything else is the same.

Checkpoints ``{"state_dict", "config", "step", "optimizer", "upstream", "code"}`` are written atomically every
``checkpoint_every`` steps; the data order is a function of (seed, step), so a resumed run ends
with the same weights as an uninterrupted one. Images are read through a ``DataLoader``
(:mod:`megafr.datasets.loader`: a memory-mapped array or a manifest of image files), on CUDA with
worker processes and pinned memory and the step under bf16 autocast (:mod:`megafr.devices`).
Under ``torchrun --nproc_per_node N`` (:mod:`megafr.distributed`) each process takes its share of
the step's global batch of ``N * batch_size`` pairs, ``DistributedDataParallel`` averages the
gradients, and rank 0 alone writes checkpoints and the curve: N ranks end with the weights of one
process at batch ``N * batch_size``; in one process nothing changes. ``upstream`` is an MD5 digest of the frozen
networks' files and the training images (:func:`upstream_digest`): a checkpoint is resumed only
when its configuration, that digest and the training code's digest (:func:`megafr.training.code_digest`,
blind to comments and docstrings) match, so E_FR is retrained, not reused, after an earlier stage
(generator, inversion encoder, 3D network, identity network) or its training code changed.
With ``input_cache`` set, steps 1-2 and the source's own rendering come from a per-image cache computed
once before the first step (:mod:`megafr.reenact.inputs`); only ``r_t`` is rendered in each step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
import torch

from megafr import distributed, losses, training
from megafr.config import comma_list, require, study_files_digest, study_path, torch_device
from megafr.datasets.loader import StepBatches, as_dataset, batch_loader, to_model_input
from megafr.devices import autocast, autocast_dtype, full_precision
from megafr.errors import CheckpointError, MissingFileError
from megafr.face3d.recon import FaceModel, load_face_model
from megafr.fileio import atomic_path
from megafr.nets import checkpoints
from megafr.nets.identity import identity_features
from megafr.progress import progress_bar
from megafr.reenact.inputs import (CONDITION_POSE, StepInputs, Targets, input_cache, invert, make_targets,  # noqa: F401
                                   step_inputs)  # (invert, Targets: imported from here by other modules)
from megafr.reenact.model import RENDER_CHANNELS, MegaFR, resolution_token
from megafr.training import adam, check_finite

CONDITIONS = ("render", "params")
ENCODERS = ("e4e", "psp")
LR_SCHEDULES = ("constant", "cosine")
LOSS_NAMES = ("id", "lmk", "pair", "cyc", "self", "latent")
LAYER_GROUP_NAMES = ("coarse", "medium", "fine")  # W+ groups of megafr.nets.encoders.layer_groups
TRAINING_CODE = ("reenact/train.py", "reenact/inputs.py", "reenact/model.py", "face3d", "nets", "losses", "training.py",
                 "imageio.py")  # the sources E_FR's weights depend on (resume key)
INPUT_CACHE_VERSION = 1  # bump when the input cache's arrays change meaning


@dataclass(frozen=True)
class ReenactConfig:
    profile: str  # world that produced the data (labels outputs)
    seed: int  # seed of the data order and initialisation
    steps: int  # optimisation steps
    batch_size: int  # source/target pairs per step
    lr: float  # Adam learning rate of E_FR (the peak, with lr_schedule "cosine")
    lr_schedule: str  # "constant", or "cosine": linear warm-up over 3 % of the steps, cosine decay to 5 % of lr
    encoder: str  # inversion encoder E_FR starts from: "e4e" or "psp"
    condition: str  # "render" (MegaFR: r_t) or "params" (baseline: raw FLAME parameters)
    edit_groups: str  # comma-separated W+ groups the residual edits ("coarse,medium" in the paper; "<N>px": the layers at N px)
    lambda_id: float  # L_ID weight (eq. 3)
    lambda_lmk: float  # L_lmk weight (eq. 4)
    lambda_pair: float  # L_pair weight (eq. 5)
    lambda_cyc: float  # L_cyc weight (eq. 6)
    lambda_self: float  # L_self weight (eq. 7)
    lambda_latent: float  # L_latent weight (eq. 8)
    lambda_l2: float  # pixel L2 inside L_rec
    lambda_lpips: float  # LPIPS inside L_rec (used only where its backbone weights exist)
    lambda_rec_id: float  # identity term inside L_rec
    checkpoint_every: int  # steps between checkpoints
    generator_path: str  # StyleGAN2 file (rosinality layout)
    e4e_path: str  # e4e file (official layout; also holds the latent discriminator)
    psp_path: str  # pSp file (official layout), used when encoder = "psp"
    face3d_path: str  # train_face3d checkpoint
    idnet_path: str  # ArcFace IR-SE file
    model_path: str  # FLAME-format model
    landmark_path: str  # its landmark embedding
    train_images: str  # uint8 [N, S, S, 3] .npy of training photos (SynthHeads train split)
    out_dir: str  # where checkpoints go
    # bfloat16 autocast of the training step on a CPU with native bf16 (megafr.devices.cpu_bf16_native;
    # float32 on other CPUs; CUDA trains in bf16 where it can either way). Keyword-only: a stage field
    # without a default that subclasses' fields may follow.
    cpu_bf16: bool = dataclasses.field(kw_only=True)
    # folder where each training image's no-gradient inputs are computed once and shared by every training
    # (megafr.reenact.inputs; small worlds only); "": each step computes its own
    input_cache: str = dataclasses.field(kw_only=True)

    def __post_init__(self):
        require(self.steps >= 0, f"train_reenact.steps must be >= 0, got {self.steps}")
        require(self.batch_size >= 1, f"train_reenact.batch_size must be >= 1, got {self.batch_size}")
        require(self.lr > 0, f"train_reenact.lr must be positive, got {self.lr}")
        require(self.lr_schedule in LR_SCHEDULES,
                f"train_reenact.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        require(self.encoder in ENCODERS, f"train_reenact.encoder must be one of {ENCODERS}, got {self.encoder!r}")
        require(self.condition in CONDITIONS, f"train_reenact.condition must be one of {CONDITIONS}, got {self.condition!r}")
        require(isinstance(self.cpu_bf16, bool), f"train_reenact.cpu_bf16 must be true or false, got {self.cpu_bf16!r}")
        require(isinstance(self.input_cache, str),
                f"train_reenact.input_cache must be a folder or \"\", got {self.input_cache!r}")
        require(self.checkpoint_every >= 1, f"train_reenact.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        unknown = [g for g in self.groups if g not in LAYER_GROUP_NAMES and not resolution_token(g)]
        require(bool(self.groups) and not unknown,
                f"train_reenact.edit_groups must be a comma-separated list of {LAYER_GROUP_NAMES} or layer sizes "
                f"such as 16px, got {self.edit_groups!r}")
        for name in LOSS_NAMES + ("l2", "lpips", "rec_id"):
            value = getattr(self, f"lambda_{name}")
            require(value >= 0, f"train_reenact.lambda_{name} must be >= 0, got {value}")

    @property
    def inversion_path(self) -> str:
        return self.e4e_path if self.encoder == "e4e" else self.psp_path

    @property
    def groups(self) -> tuple[str, ...]:
        return comma_list(self.edit_groups)

    @property
    def weights(self) -> dict[str, float]:
        return {name: getattr(self, f"lambda_{name}") for name in LOSS_NAMES}


class Frozen(NamedTuple):
    """The networks MegaFR trains against; none of them learns."""

    generator: torch.nn.Module
    inversion: torch.nn.Module
    face: FaceModel
    idnet: torch.nn.Module
    latent_d: Optional[torch.nn.Module]
    lpips: Optional[torch.nn.Module]


def _freeze(module: Optional[torch.nn.Module], device: Optional[torch.device] = None):
    if module is None:
        return None
    return module.to(device or torch.device("cpu")).requires_grad_(False).eval()


def frozen_device(frozen: Frozen) -> torch.device:
    """The device the frozen networks (and so E_FR and every batch) live on."""
    return next(frozen.generator.parameters()).device


def load_frozen(cfg: ReenactConfig, lpips: bool = True) -> Frozen:
    """Load every frozen network named by ``cfg`` (official file layouts, mini or paper). ``lpips=False``:
    leave LPIPS out (inference never uses it), so its status is neither checked nor printed."""
    generator, _ = checkpoints.load_stylegan2(study_path(cfg.generator_path))
    loader = checkpoints.load_e4e if cfg.encoder == "e4e" else checkpoints.load_psp
    inversion = loader(study_path(cfg.inversion_path))
    latent_d = checkpoints.load_latent_discriminator(study_path(cfg.e4e_path)) if cfg.lambda_latent > 0 else None
    face = load_face_model(study_path(cfg.face3d_path), study_path(cfg.model_path), study_path(cfg.landmark_path))
    idnet = checkpoints.load_arcface(study_path(cfg.idnet_path))
    device = torch_device()
    return Frozen(*(_freeze(m, device) for m in (generator, inversion, face, idnet, latent_d)),
                  lpips=_freeze(load_lpips(cfg.lambda_lpips if lpips else 0.0), device))


_LPIPS_SAID: set[str] = set()  # LPIPS status lines already printed by this process


def load_lpips(weight: float) -> Optional[torch.nn.Module]:
    """LPIPS (AlexNet) when its weight is non-zero and its backbone weights are on the machine; the log says which."""
    if weight <= 0:
        return None
    net, message = losses.load_lpips()
    if message not in _LPIPS_SAID:  # once per process (evaluate loads the networks once per encoder)
        print(message)
        _LPIPS_SAID.add(message)
    return net


def build_model(cfg: ReenactConfig, frozen: Frozen) -> MegaFR:
    """E_FR initialised from the inversion encoder, over the frozen generator."""
    torch.manual_seed(cfg.seed)
    channels = RENDER_CHANNELS if cfg.condition == "render" else condition_width(frozen.face)
    model = MegaFR(frozen.inversion, frozen.generator, cfg.groups, condition_channels=channels)
    return model.to(frozen_device(frozen))


def condition_width(face: FaceModel) -> int:
    """Channels of the params baseline's condition: expression + the 4 predicted rotations."""
    return face.config.n_expr + 3 * len(CONDITION_POSE)


def step_losses(model: MegaFR, frozen: Frozen, cfg: ReenactConfig, x_real: Optional[torch.Tensor],
                x_t: Optional[torch.Tensor], given: Optional[StepInputs] = None) -> tuple[torch.Tensor, dict]:
    """The weighted MegaFR loss of one batch -> (total, {term: float}). ``given``: the batch's inputs read from
    the input cache (:mod:`megafr.reenact.inputs`); ``x_real`` and ``x_t`` are then not used."""
    found = given if given is not None else step_inputs(frozen, x_real, x_t)
    x_s, w_s = found.x_s, found.w_s
    to_t = make_targets(frozen.face, found.shape, found.target_expression, found.target_pose, cfg.condition)
    if found.render is not None and cfg.condition == "render":
        source_condition = found.render
    else:
        source_condition = make_targets(frozen.face, found.shape, found.expression, found.pose, cfg.condition).condition
    out = model(x_s, to_t.condition, w_s)
    terms: dict[str, torch.Tensor] = {}
    weights = cfg.weights
    compares_ids = weights["id"] or (cfg.lambda_rec_id > 0 and (weights["cyc"] or weights["self"]))
    x_id = identity_features(frozen.idnet, x_s) if compares_ids else None  # once for the three terms below
    rec = dict(idnet=frozen.idnet, lpips_fn=frozen.lpips, lambda_l2=cfg.lambda_l2,
               lambda_lpips=cfg.lambda_lpips, lambda_rec_id=cfg.lambda_rec_id, x_features=x_id)
    if weights["id"]:
        terms["id"] = losses.id_loss(frozen.idnet, x_s, out.image, x_id)
    if weights["lmk"] or weights["pair"]:
        measured = frozen.face.net(out.image.clamp(-1, 1))
        with full_precision(out.image.device):
            p_f, _ = frozen.face.landmarks(type(measured)(*(t.float() for t in measured)))
        terms["lmk"] = losses.landmark_loss(to_t.landmarks, p_f)
        terms["pair"] = losses.pair_loss(to_t.landmarks, p_f)
    if weights["cyc"]:
        back = model(out.image, source_condition, out.latent)
        terms["cyc"] = losses.reconstruction_loss(x_s, back.image, **rec)
    if weights["self"]:
        same = model(x_s, source_condition, w_s)
        terms["self"] = losses.reconstruction_loss(x_s, same.image, **rec)
    if weights["latent"] and frozen.latent_d is not None:
        terms["latent"] = losses.latent_loss(frozen.latent_d, out.latent)
    return losses.weighted_total(terms, weights)


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source and target rows of step ``step``: a function of (seed, step) only, so resuming is exact."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n, batch_size), rng.integers(0, n, batch_size)


def input_cache_digest(cfg: ReenactConfig) -> str:
    """What the input cache of ``cfg.encoder`` depends on: the frozen networks' files and training images
    (:func:`upstream_digest`), the precision the step runs in, the training code."""
    precision = autocast_dtype(torch_device(), training=True, cpu_bf16=cfg.cpu_bf16)
    parts = [INPUT_CACHE_VERSION, cfg.encoder, upstream_digest(cfg), str(precision), training.code_digest(TRAINING_CODE)]
    return hashlib.md5(json.dumps(parts).encode()).hexdigest()[:16]


def checkpoint_path(cfg: ReenactConfig) -> Path:
    return study_path(cfg.out_dir) / f"megafr_{cfg.encoder}_{cfg.condition}.pt"


def upstream_digest(cfg: ReenactConfig) -> str:
    """Digest of what E_FR's weights depend on besides ``cfg``: the frozen networks and the training images."""
    return study_files_digest((cfg.generator_path, cfg.inversion_path, cfg.face3d_path, cfg.idnet_path,
                               cfg.train_images))


def save_checkpoint(path: Path, model: MegaFR, optimizer: torch.optim.Optimizer, cfg: ReenactConfig, step: int,
                    upstream: str = "") -> None:
    """Atomic ``{"state_dict", "config", "step", "optimizer", "upstream"}`` (state_dict = E_FR's weights), once
    E_FR's weights are finite."""
    payload = {"state_dict": model.encoder.state_dict(), "config": dataclasses.asdict(cfg), "step": step,
               "optimizer": optimizer.state_dict(), "groups": list(model.groups),
               "condition_channels": model.condition_channels, "upstream": upstream,
               "code": training.code_digest(TRAINING_CODE)}
    training.write_checkpoint(path, payload, "train_reenact", {"E_FR": model.encoder})


def read_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise MissingFileError(f"MegaFR checkpoint not found: {path}; run the train_reenact stage")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable MegaFR checkpoint ({type(error).__name__}); re-run train_reenact") from error
    if not isinstance(data, dict) or not {"state_dict", "config", "step"} <= set(data):
        raise CheckpointError(f"{path}: expected keys state_dict, config, step; it is not a MegaFR checkpoint")
    if isinstance(data["config"], dict):
        data["config"].setdefault("lr_schedule", "constant")  # written before the field existed: a constant rate
        data["config"].setdefault("cpu_bf16", False)  # likewise: float32 on the CPU
        data["config"].setdefault("input_cache", "")  # likewise: each step computed its inputs
    return data


def resumable_checkpoint(path: Path, cfg: ReenactConfig, upstream: str,
                         here: Optional[distributed.World] = None) -> Optional[dict]:
    """The checkpoint at ``path`` when it resumes ``cfg`` (every config field equal, the same frozen networks and
    training images: ``upstream``, the same training code); otherwise it is deleted (by rank 0 when several
    processes train), with a warning saying why, and None is returned."""

    def start_afresh(reason: str) -> None:
        warnings.warn(f"{path}: {reason}; starting train_reenact afresh")
        if here is None or here.main:
            path.unlink(missing_ok=True)  # start over rather than mix runs

    return training.resumable(path, read_checkpoint, cfg, on_reject=start_afresh, upstream=upstream,
                              code=training.code_digest(TRAINING_CODE),
                              upstream_what="frozen networks or training images")


class StepLoss(torch.nn.Module):
    """One step's weighted loss as a module (what ``DistributedDataParallel`` wraps): E_FR and the
    generator are its parameters, the other frozen networks plain attributes."""

    def __init__(self, model: MegaFR, frozen: Frozen, cfg: ReenactConfig):
        super().__init__()
        self.model = model
        self.frozen = frozen  # a NamedTuple: not registered, so DDP neither broadcasts nor reduces it
        self.cfg = cfg

    def forward(self, x_real: Optional[torch.Tensor], x_t: Optional[torch.Tensor],
                given: Optional[StepInputs] = None) -> tuple[torch.Tensor, dict]:
        return step_losses(self.model, self.frozen, self.cfg, x_real, x_t, given)


def train(cfg: ReenactConfig, frozen: Frozen, images, progress: bool = True) -> tuple[MegaFR, pd.DataFrame]:
    """Train (or resume) E_FR for ``cfg.steps`` steps on training images (uint8 [N, S, S, 3] array, or a
    dataset of :mod:`megafr.datasets.loader`); return the model and curve."""
    here = distributed.setup()
    images = as_dataset(images)
    model = build_model(cfg, frozen)
    optimizer = adam(model.encoder.parameters(), cfg.lr)
    path = checkpoint_path(cfg)
    curve_path = path.with_suffix(".curve.csv")
    start, rows = 0, []
    upstream = upstream_digest(cfg)
    data = resumable_checkpoint(path, cfg, upstream, here)
    if data is not None:
        model.encoder.load_state_dict(data["state_dict"])
        optimizer.load_state_dict(data["optimizer"])
        start = int(data["step"])
        rows = pd.read_csv(curve_path).to_dict("records") if curve_path.is_file() else []
    distributed.barrier()  # every rank has decided before rank 0 writes the first checkpoint
    model.encoder.train()
    device = frozen_device(frozen)
    engine = distributed.data_parallel(StepLoss(model, frozen, cfg), model.encoder, here, device)
    local = cfg.batch_size  # pairs of this process per step; the step's global batch is local * here.size

    def step_rows(step: int) -> np.ndarray:  # this rank's sources, then its targets
        src, tgt = batch_indices(cfg.seed, step, len(images), local * here.size)
        return np.concatenate([distributed.shard(src, here), distributed.shard(tgt, here)])

    cache = None
    if cfg.steps > start and cfg.input_cache:  # rank 0 computes a missing cache; the others then read it
        pairs = (cfg.steps - start) * local * here.size  # what the steps left draw: is a new cache worth it?
        if here.main:
            cache = input_cache(cfg, frozen, images, input_cache_digest(cfg), progress, pairs)
        distributed.barrier()
        if not here.main:
            cache = input_cache(cfg, frozen, images, input_cache_digest(cfg), False, pairs)
    if cache is None:
        batches = batch_loader(images, StepBatches(step_rows, start, cfg.steps), device)
    else:  # the inputs come from the cache: no images are read
        batches = (step_rows(step) for step in range(start, cfg.steps))
    steps = progress_bar(range(start, cfg.steps), desc=f"train E_FR {cfg.encoder}:{cfg.condition}", initial=start,
                         total=cfg.steps, disable=not (progress and here.main), leave=True)
    for step, batch in zip(steps, batches):
        if cfg.lr_schedule == "cosine":
            training.set_lr(optimizer, training.cosine_lr(cfg.lr, step, cfg.steps))
        with autocast(device, training=True, cpu_bf16=cfg.cpu_bf16):
            if cache is None:
                x = to_model_input(batch, device)
                total, log = engine(x[:local], x[local:])
            else:
                total, log = engine(None, None, cache.batch(batch[:local], batch[local:], device,
                                                            render=cfg.condition == "render"))
        check_finite("train_reenact", step, total, log, path)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        rows.append({"step": step + 1, **distributed.mean_over_ranks(log, device)})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            if here.main:
                save_checkpoint(path, model, optimizer, cfg, step + 1, upstream)
                with atomic_path(curve_path) as tmp:
                    pd.DataFrame(rows).to_csv(tmp, index=False)
            distributed.barrier()
    if cfg.steps == 0 and here.main:
        save_checkpoint(path, model, optimizer, cfg, 0, upstream)
    distributed.barrier()
    return model.eval(), pd.DataFrame(rows)

