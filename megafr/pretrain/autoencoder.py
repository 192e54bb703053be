"""The ``train_generator`` stage: a StyleGAN2 generator and its e4e encoder, trained together on SynthHeads.

The paper starts from the released FFHQ StyleGAN2 and e4e (paper Sec. 4; ``docs/method.md``). The
mini world makes its own as a style-based autoencoder: the e4e encoder ``E`` (Encoder4Editing, Tov
et al. 2021: w0 plus per-entry deltas) maps an image to W+ (offsets + ``latent_avg``), the
generator's synthesis network ``G`` decodes it, and both learn together from

    L = lambda_l2 * |G(E(x)) - x|^2                              reconstruction (pixel L2)
      + lambda_lap * Lap1(G(E(x)), x) [+ the same for the swap targets]   Laplacian-pyramid L1
      + lambda_swap * |G(mix(E(x_B), E(x_A))) - r(B geom, A colour)|^2    layer semantics
      + lambda_latent * softplus(-D_latent(E(x)))                 codes stay in the mapping's distribution
      + lambda_delta * mean_i |w_i - w_0|_2                       e4e's delta regularisation
      + lambda_id * (1 - <R(G(E(x))), R(x)>)                      identity (R: the frozen train_idnet network)
      [+ lambda_lpips * LPIPS(G(E(x)), x) only when LPIPS's backbone weights are on the machine]
      [+ lambda_adv * softplus(-D_image(G(E(x))))   StyleGAN2's image discriminator, off in every profile;
                                                     finetune_adv in place of lambda_adv in the fine-tune phase]
      [+ finetune_face3d * P(G(E(x)), x)   in the fine-tune phase: P the perceptual distance of the frozen
                                           3D face network (megafr.losses.face_features)]
      [+ finetune_ssim * (1 - SSIM(G(E(x)), x))   in the fine-tune phase (``ssim_loss``)]

with the terms of :mod:`megafr.losses`. Why these terms and weights, and the recipes measured and
not kept: ``docs/experiments/train_generator.md``.

- **Layer semantics (swap term).** MegaFR edits coarse + medium W+ entries and relies on them
  carrying geometry while the fine entries carry colour (``docs/method.md``, layer groups). The
  synthetic world supervises exactly that: for pairs (A, B) of training images, the mixed code
  (coarse + medium entries of B, fine of A; ``latent_structure.mix_codes``) must decode to the
  *rendering* of B's shape, expression, pose and camera jitter with A's appearance, light and
  background, which ``HeadWorld.render`` produces from the ground-truth table
  (``table_to_params``, ``SceneParams.with_``). A pool of ``swap_pool`` such pairs is rendered once
  per run and cached beside the checkpoint. Legitimate in the mini world: this generator is the
  world's stand-in for a pretrained StyleGAN2, whose W+ hierarchy has this structure.
- **Latent discriminator.** As in e4e (Sec. 4.1), ``D_latent`` (the released 4-layer MLP) learns to
  tell ``w = mapping(z)`` from the encoder's per-entry codes (non-saturating logistic loss, R1
  penalty on real codes), and the encoder is trained to fool it. With ``lr_mapping > 0`` the mapping
  network also learns, against D_latent (``mapping_loss``: it chases the encoder's codes), so that
  samples ``G(mapping(z))`` decode to heads; with ``lr_mapping = 0`` it stays frozen. ``latent_avg``
  is the mean of the *initial* mapping, the encoders' anchor (their codes are offsets from it).
- **Fine-tune phase with an image discriminator.** ``finetune_steps > 0`` adds that many steps after
  ``steps``: StyleGAN2's residual image discriminator (non-saturating loss, R1 weight ``r1_image`` on
  real images) judges the reconstructions, at weight ``finetune_adv``, next to every autoencoder term.
  At its first step every optimizer's state is cleared and the learning rates of G, E and the mapping
  restart on a cosine of ``finetune_lr`` times their peaks (the discriminators keep ``lr_d``): the
  phase is a fine-tune of the networks the first phase made, the way a released generator would be
  fine-tuned. Pixel losses average what the encoder cannot place exactly (eyes, mouths, hair) into
  a blur, which a discriminator penalises; so does ``finetune_face3d``, the weight of a perceptual
  distance from the study's 3D face network (``face3d_path``) in the same phase, and ``finetune_ssim``,
  the weight of ``1 - SSIM`` (the structure the tables' SSIM scores, which pixel L2 weighs little). The
  mini profile's recipe is such a fine-tune of the release before it (``init_from``); the weights
  measured side by side: ``docs/mini_release.md``.
- **Optional, off in every profile** (measured side by side: ``docs/experiments/train_generator.md``).
  ``encoder_passes > 1``: ReStyle's iterative encoding (Alaluf et al. 2021), a 6-channel encoder that
  sees the image and the current reconstruction and refines the code in that many passes, each with
  its own losses (averaged). Its ``e4e.pt`` records ``encoder_passes`` in ``opts``; the later stages
  encode 3-channel images in one pass, which such an encoder refuses (its input-shape error).
  ``lambda_adv > 0``: the image discriminator from the first step on, at that weight.
- ``g_ema`` is an exponential moving average of the synthesis weights (decay ``ema_decay``); the
  e4e product decodes with ``g_ema`` and the metrics are computed with it.

Products in the official layouts (``megafr.nets.checkpoints``): ``stylegan2.pt`` (``g_ema``, ``g``,
``latent_avg`` [D]) and ``e4e.pt`` (``state_dict`` with ``encoder.``/``decoder.``, ``latent_avg``
[n_latent, D], ``opts``, ``discriminator_state_dict``). Resume: :mod:`megafr.training`.

The paper profile (``mode: official``) trains nothing: it loads the user's official files through
the official loaders and copies them to its products (``stylegan2.pt``, ``e4e.pt``), which later
stages read. The mini profile (``mode: release``) does the same with the files its release ships
(``megafr.release``) and then evaluates them as a trained run would (:func:`evaluate_generator`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from megafr import training
from megafr.config import require, require_at_least, study_files_digest, study_path, study_relative
from megafr.distributed import torch_threads
from megafr.errors import InputError
from megafr.fileio import atomic_path, write_json
from megafr.face3d.recon import load_face_model
from megafr.losses import (FaceFeatureDistance, LpipsLoss, delta_loss, discriminator_loss, id_loss, laplacian_l1,
                           latent_d_loss, latent_loss, mapping_loss)
from megafr.metrics import ssim as ssim_per_image
from megafr.nets.checkpoints import load_e4e, load_stylegan2, save_encoder, save_stylegan2
from megafr.nets.encoders import Encoder4Editing, EncoderConfig, InversionNet, LatentCodesDiscriminator
from megafr.nets.stylegan2 import Discriminator, Generator
from megafr.pretrain import common
from megafr.pretrain.latent_structure import mix_codes, render_swap_set, swap_pairs
from megafr.progress import progress_bar
from megafr.training import adam

STYLEGAN_FILE = "stylegan2.pt"
E4E_FILE = "e4e.pt"
PRODUCTS_FILE = common.PRODUCTS_FILE
SWAP_POOL_FILE = "swap_pool.npz"
MEAN_LATENT_SAMPLES = 4096  # z samples averaged into latent_avg
ADAM_BETAS_G = (0.0, 0.99)  # StyleGAN2's Adam betas (generator, discriminator)
ADAM_BETAS_E = (0.9, 0.999)  # encoder
CURVE_POINTS = 150  # about this many rows in the training curve
WPLUS_LR = 0.01  # Adam's learning rate of the W+ optimisation bound (evaluation only)
LAMBDA_TERMS = ("l2", "lap", "swap", "latent", "delta", "lpips", "id", "adv")  # the G + E loss's terms (lambda_<term>)
IMAGE_D_TERMS = ("d_image", "r1_image")  # the image discriminator's (logged when lambda_adv > 0)
PHASE_TERMS = ("adv", "face3d", "ssim")  # terms whose weight depends on the phase (``phase_weights``)
LOSS_TERMS = (*LAMBDA_TERMS, "d_latent", "r1", *IMAGE_D_TERMS, "mapping", "face3d", "ssim")


@dataclass(frozen=True)
class GeneratorStageConfig(common.StageFolders):
    """Parameters of the train_generator stage (params.yaml block ``train_generator`` plus shared keys)."""

    STAGE: ClassVar[str] = "train_generator"
    UPSTREAM_SPLIT: ClassVar[str] = "train"

    profile: str  # profile that produced the run
    seed: int  # seeds weights, data order, swap pairs
    mode: str  # "train" (smoke, release runs), "release" (mini: load and evaluate its released files) or "official" (paper: validate the user's files)
    data_dir: str  # output folder of the prepare stage
    model_path: str  # FLAME-format head model (renders the swap targets)
    landmark_path: str  # its landmark embedding
    official_stylegan2: str  # official mode: stylegan2-ffhq-config-f.pt; release mode: the released stylegan2.pt
    official_e4e: str  # official mode: e4e_ffhq_encode.pt; release mode: the released e4e.pt
    image_size: int  # generator output size = data set image size
    style_dim: int  # dimension of z and w
    n_mlp: int  # mapping-network depth
    max_channels: int  # generator channel cap (channel_multiplier 1)
    enc_width: int  # encoder IR-SE base width (stages: width * (1, 2, 4, 8); stem: width)
    enc_units: int  # encoder IR-SE units per stage
    encoder_passes: int  # encoder passes: 1 = e4e's single pass; N > 1 = ReStyle's iterative refinement (N passes)
    steps: int  # optimisation steps
    batch_size: int  # reconstruction images per step (besides the swap pairs)
    swap_batch: int  # swap pairs per step
    swap_pool: int  # swap pairs rendered once per run
    lr_g: float  # synthesis-network learning rate (Adam, StyleGAN2 betas)
    lr_e: float  # encoder learning rate
    lr_d: float  # latent-discriminator learning rate
    lr_mapping: float  # mapping-network learning rate, against the latent discriminator (0: frozen; needs lambda_latent)
    lambda_l2: float  # pixel L2 reconstruction weight
    lambda_swap: float  # layer-swap supervision weight
    lambda_lap: float  # Laplacian-pyramid L1 weight (reconstructions and swap targets; 0: off)
    lambda_latent: float  # encoder's adversarial latent loss weight
    lambda_delta: float  # e4e delta regularisation weight
    lambda_lpips: float  # LPIPS weight (used only when LPIPS's backbone weights are present)
    lambda_id: float  # identity weight, 1 - ID similarity of G(E(x)) and x (0: the identity network is not used)
    lambda_adv: float  # StyleGAN2 image discriminator's non-saturating loss on the reconstructions, first phase (0: off)
    r1_gamma: float  # R1 penalty weight on real codes of the latent discriminator
    r1_image: float  # R1 penalty weight on real images of the image discriminator (with lambda_adv > 0)
    ema_decay: float  # g_ema decay per step
    finetune_steps: int  # steps of the fine-tune phase after ``steps`` (0: none)
    finetune_adv: float  # the image discriminator's weight in the fine-tune phase
    finetune_lr: float  # the fine-tune phase's peak learning rates of G, E and the mapping, as a fraction of theirs
    finetune_face3d: float  # the 3D face network's perceptual distance in the fine-tune phase (needs face3d_path)
    finetune_ssim: float  # weight of 1 - SSIM of the reconstructions in the fine-tune phase (0: off)
    init_from: str  # folder of a released stylegan2.pt and e4e.pt whose weights start the run ("": random weights); steps may then be 0
    idnet_path: str  # identity network for ID similarity and FD-id (train_idnet product or official)
    face3d_path: str  # train_face3d checkpoint measuring pose in the layer-swap test ("" : pose not measured)
    n_eval: int  # test images for the inversion metrics
    n_fd_samples: int  # generated samples (and test images) for FD-id
    n_swap_eval: int  # test pairs for the layer-swap measurement
    n_wplus_eval: int  # test images whose W+ codes are optimised against the generator (the encoder's ceiling; 0: off)
    wplus_steps: int  # Adam steps of that optimisation
    checkpoint_every: int  # write the resumable checkpoint every this many steps
    threads: int  # torch intra-op threads (0: torch's default)
    out_dir: str = "data/train_generator"  # products and checkpoint
    run_dir: str = ""  # set by a sweep: write under <run_dir>/train_generator instead

    def __post_init__(self):
        if common.official_mode(self, ("official_stylegan2", "official_e4e"),
                                "stylegan2-ffhq-config-f.pt and e4e_ffhq_encode.pt"):
            return
        require(self.image_size >= 16 and self.image_size & (self.image_size - 1) == 0,
                f"train_generator.image_size must be a power of two >= 16, got {self.image_size}")
        require_at_least("train_generator", self, (
            ("enc_width", 1), ("enc_units", 1), ("encoder_passes", 1), ("steps", 0 if self.init_from else 1),
            ("batch_size", 1), ("swap_batch", 0),
            ("checkpoint_every", 1), ("lr_mapping", 0), ("n_wplus_eval", 0), ("wplus_steps", 1), ("r1_image", 0),
            ("finetune_steps", 0), ("finetune_adv", 0), ("finetune_face3d", 0), ("finetune_ssim", 0),
            *((f"lambda_{term}", 0) for term in LAMBDA_TERMS)))
        require(not self.uses_face3d or bool(self.face3d_path),
                f"train_generator.finetune_face3d={self.finetune_face3d} reads the 3D face network, but face3d_path "
                "is empty; name train_face3d's checkpoint in face3d_path or set finetune_face3d: 0")
        require(self.total_steps > 0, "train_generator: steps and finetune_steps are both 0; nothing would train")
        require(0 < self.finetune_lr <= 1, f"train_generator.finetune_lr must lie in (0, 1], got {self.finetune_lr}")
        require(self.lr_mapping == 0 or self.lambda_latent > 0,
                f"train_generator.lr_mapping={self.lr_mapping} trains the mapping against the latent discriminator, "
                "which lambda_latent=0 turns off; set lambda_latent > 0 or lr_mapping: 0")
        require(self.swap_batch == 0 or self.swap_pool >= self.swap_batch,
                f"swap_pool ({self.swap_pool}) must hold at least swap_batch ({self.swap_batch}) pairs")
        require(0 <= self.ema_decay < 1, f"train_generator.ema_decay must lie in [0, 1), got {self.ema_decay}")
        require(self.mode != "release" or self.encoder_passes == 1,
                "train_generator.encoder_passes > 1 (ReStyle) makes a 6-channel e4e.pt that the later stages cannot "
                "load; a release must use encoder_passes: 1")

    def upstream_digest(self) -> str:
        """Digest of the files the weights depend on besides the config (overrides ``UPSTREAM``): the
        training split, when ``lambda_id > 0`` the identity network, the 3D face network when its distance is
        trained with, and the files of ``init_from``; a checkpoint is resumed only over the same files."""
        face3d = [self.face3d_path] if self.uses_face3d else []  # listed only when trained with
        start = [f"{self.init_from}/{STYLEGAN_FILE}", f"{self.init_from}/{E4E_FILE}"] if self.init_from else []
        return study_files_digest([self.idnet_path if self.lambda_id else "", *face3d, *start,
                                   *common.split_files(self.data_dir, self.UPSTREAM_SPLIT)])

    def pool_digest(self) -> str:
        """Digest of what the swap pool is rendered from: the head model, its landmarks, the split's table and
        SynthHeads' samples per pixel."""
        from megafr.datasets.synthheads import SUPERSAMPLE

        table = f"{self.data_dir}/{self.UPSTREAM_SPLIT}/meta.parquet"
        return f"{study_files_digest((self.model_path, self.landmark_path, table))}:supersample={SUPERSAMPLE}"

    @property
    def total_steps(self) -> int:
        """Steps of the whole run: the autoencoder phase and the fine-tune phase."""
        return self.steps + self.finetune_steps

    @property
    def uses_image_d(self) -> bool:
        """An image discriminator is trained in some phase."""
        return self.lambda_adv > 0 or (self.finetune_steps > 0 and self.finetune_adv > 0)

    def phase_weights(self, step: int) -> dict[str, float]:
        """The weights at ``step`` of the terms that differ by phase (``PHASE_TERMS``): the image discriminator's
        (``lambda_adv``, then ``finetune_adv``), the 3D network's distance and 1 - SSIM (fine-tune phase only)."""
        if step >= self.steps:
            return {"adv": self.finetune_adv, "face3d": self.finetune_face3d, "ssim": self.finetune_ssim}
        return {"adv": self.lambda_adv, "face3d": 0.0, "ssim": 0.0}

    @property
    def uses_face3d(self) -> bool:
        """The 3D face network's perceptual distance is trained with in some step."""
        return self.finetune_steps > 0 and self.finetune_face3d > 0

    @property
    def uses_ssim(self) -> bool:
        """1 - SSIM is trained with in some step."""
        return self.finetune_steps > 0 and self.finetune_ssim > 0

    def learning_rate(self, peak: float, step: int, scaled: bool) -> float:
        """The learning rate at ``step`` of an optimizer with this ``peak``: a warm-up and cosine over the first
        phase, and again over the fine-tune phase from ``finetune_lr * peak`` when ``scaled``."""
        if step < self.steps:
            return common.cosine_lr(peak, step, self.steps)
        return common.cosine_lr(peak * (self.finetune_lr if scaled else 1.0), step - self.steps, self.finetune_steps)

    @property
    def trains_mapping(self) -> bool:
        """The mapping network learns (against D_latent) when it has a learning rate (the latent term is on)."""
        return self.lr_mapping > 0 and self.lambda_latent > 0

    @property
    def n_latent(self) -> int:
        return 2 * int(np.log2(self.image_size)) - 2

    def encoder_config(self) -> EncoderConfig:
        """e4e's encoder; a refining one (``encoder_passes > 1``) also sees the current reconstruction (6 channels)."""
        return EncoderConfig(input_nc=3 * (2 if self.encoder_passes > 1 else 1), input_size=self.image_size,
                             n_latent=self.n_latent, style_dim=self.style_dim,
                             body=common.irse_body(self.enc_width, self.enc_units))


@dataclass
class Networks:
    generator: Generator  # trained synthesis network (mapping frozen unless cfg.trains_mapping)
    g_ema: Generator  # moving average of the generator
    encoder: Encoder4Editing  # e4e encoder (returns offsets)
    latent_d: LatentCodesDiscriminator  # e4e's latent discriminator
    latent_avg: torch.Tensor  # mean of the initial mapping(z) [D]: the encoders' anchor, saved as latent_avg
    encoder_passes: int = 1  # encoder passes (1: e4e; > 1: ReStyle's refinement, see refine)
    image_d: Optional[Discriminator] = None  # StyleGAN2's image discriminator (only with lambda_adv > 0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] -> W+ codes [B, n_latent, D] (latent_avg added); a refining encoder
        decodes its intermediate codes with ``g_ema``."""
        if self.encoder_passes == 1:
            return self.encoder(x) + self.latent_avg
        noise = self.g_ema.stored_noise()
        codes = None
        for codes in refine(self, x, self.g_ema, noise):
            pass
        return codes

    def start_image(self, generator: Generator, batch: int) -> torch.Tensor:
        """ReStyle's first "reconstruction": the image of ``latent_avg`` [batch, 3, S, S] (no gradient)."""
        w = self.latent_avg.expand(1, generator.n_latent, -1)
        with torch.no_grad():
            return generator.synthesis(w, generator.stored_noise()).expand(batch, -1, -1, -1)


def refine(nets: Networks, x: torch.Tensor, generator: Generator, noise: list[torch.Tensor]):
    """ReStyle's iterative encoding (Alaluf et al. 2021, Sec. 3): yield the W+ codes [B, n_latent, D]
    of each of ``nets.encoder_passes`` passes. Pass t encodes ``[x, y_{t-1}]`` (6 channels) into an offset
    added to the previous code ``w_{t-1}``; ``w_0 = latent_avg`` and ``y_0`` its image. As in ReStyle, the
    previous code and image are detached, so each pass learns from its own losses; after a pass its
    codes are decoded by ``generator`` (the trained one in training, ``g_ema`` at inference)."""
    y = nets.start_image(generator, len(x))
    codes = nets.latent_avg.expand(len(x), generator.n_latent, -1)
    for t in range(nets.encoder_passes):
        codes = refine_pass(nets, x, codes, y)
        yield codes
        if t + 1 < nets.encoder_passes:
            with torch.no_grad():
                y = generator.synthesis(codes, noise)


def build_networks(cfg: GeneratorStageConfig) -> Networks:
    """Fresh networks, seeded from ``cfg.seed``; with ``cfg.init_from``, G, g_ema, latent_avg, the encoder and
    the latent discriminator take the weights of the released files there (the image discriminator stays fresh)."""
    torch.manual_seed(cfg.seed)
    generator = Generator(cfg.image_size, cfg.style_dim, cfg.n_mlp, channel_multiplier=1, max_channels=cfg.max_channels)
    encoder = Encoder4Editing(cfg.encoder_config())
    latent_d = LatentCodesDiscriminator(cfg.style_dim)
    generator.style.requires_grad_(cfg.trains_mapping)
    latent_avg = generator.mean_latent(MEAN_LATENT_SAMPLES)[0]  # [D]
    g_ema = copy.deepcopy(generator).eval().requires_grad_(False)
    image_d = Discriminator(cfg.image_size, channel_multiplier=1, max_channels=cfg.max_channels) if cfg.uses_image_d else None
    nets = Networks(generator, g_ema, encoder, latent_d, latent_avg, cfg.encoder_passes, image_d)
    if cfg.init_from:
        start_from_release(nets, study_path(cfg.init_from))
    return nets


def require_release_files(folder: Path, extra: Sequence[str] = ()) -> None:
    """Raise InputError naming what ``folder`` (a ``train_generator.init_from``) lacks of a release's
    ``stylegan2.pt``, ``e4e.pt`` and the ``extra`` file names."""
    missing = [name for name in (STYLEGAN_FILE, E4E_FILE, *extra) if not (folder / name).is_file()]
    if missing:
        raise InputError(f"train_generator.init_from: {folder} lacks {', '.join(missing)}; name a folder "
                         "holding a release (a copy of release/<profile> made before retraining, or the earlier run "
                         "of a chain of releases: `make release-mini`) or set init_from: \"\"")


def start_from_release(nets: Networks, folder: Path) -> None:
    """Copy the weights of ``folder``'s ``stylegan2.pt`` (``g``, ``g_ema``, ``latent_avg``) and ``e4e.pt``
    (encoder, latent discriminator) into ``nets``, which must have their shapes (float16 files load as float32)."""
    from megafr.nets.checkpoints import load_latent_discriminator

    require_release_files(folder)
    g_file, e_file = folder / STYLEGAN_FILE, folder / E4E_FILE
    sources = {"g": load_stylegan2(g_file, "g")[0], "g_ema": load_stylegan2(g_file, "g_ema")[0],
               "encoder": load_e4e(e_file).encoder, "latent_d": load_latent_discriminator(e_file)}
    for name, source in sources.items():
        target = getattr(nets, "generator" if name == "g" else name)
        try:
            target.load_state_dict(source.state_dict())
        except RuntimeError as error:
            raise InputError(f"train_generator.init_from: {folder}'s {name} does not fit this config's networks "
                             f"(image_size, style_dim, n_mlp, max_channels, enc_width, enc_units, encoder_passes "
                             f"must be the release's): {str(error).splitlines()[0]} ...") from None
    nets.latent_avg.copy_(load_stylegan2(g_file)[1])


def curve_columns(cfg: GeneratorStageConfig) -> list[str]:
    """Columns of the training curve (the mapping's, the image discriminator's, the 3D network's and SSIM's terms
    only when they are trained with)."""
    off = {*(() if cfg.trains_mapping else ("mapping",)), *(() if cfg.uses_image_d else ("adv", *IMAGE_D_TERMS)),
           *(() if cfg.uses_face3d else ("face3d",)), *(() if cfg.uses_ssim else ("ssim",))}
    return ["step", "lr_g", "total", *(t for t in LOSS_TERMS if t not in off)]


def synthesis_parameters(generator: Generator) -> list[torch.nn.Parameter]:
    """Every generator parameter except the mapping network's (frozen, or trained by its own optimizer)."""
    return [p for name, p in generator.named_parameters() if not name.startswith("style.")]


def refine_pass(nets: Networks, x: torch.Tensor, codes: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One ReStyle pass: images x and current reconstructions y [B, 3, S, S], current codes [B, n_latent, D]
    -> refined codes (the inputs detached)."""
    return codes.detach() + nets.encoder(torch.cat([x, y.detach()], dim=1))


# ------------------------------------------------------------------------------ swap pool
def load_or_render_pool(cfg: GeneratorStageConfig, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The run's swap pool (rows a, b and truth images), from the cache file when it matches."""
    path = cfg.checkpoint_path.parent / SWAP_POOL_FILE  # a cache beside the checkpoint
    a, b = swap_pairs(cfg.seed, table["identity"].to_numpy(), cfg.swap_pool)
    source = cfg.pool_digest()
    if path.is_file():
        with np.load(path) as cached:
            if "source" in cached and str(cached["source"]) == source and np.array_equal(cached["a"], a) and \
                    np.array_equal(cached["b"], b) and cached["truth"].shape[1] == cfg.image_size:
                return {"a": a, "b": b, "truth": cached["truth"]}
    from megafr.datasets.synthheads import HeadWorld

    world = HeadWorld(study_path(cfg.model_path), study_path(cfg.landmark_path), cfg.image_size)
    truth = render_swap_set(world, table, a, b, progress="render swap pool")
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, a=a, b=b, truth=truth, source=np.array(source))
    return {"a": a, "b": b, "truth": truth}


# ------------------------------------------------------------------------------ training
@dataclass
class GeneratorResult:
    nets: Networks  # trained networks (eval mode)
    curve: pd.DataFrame  # step, lr, loss terms
    steps_run: int  # steps run in this call
    seconds: float  # wall time of those steps
    resumed_from: int  # checkpoint step resumed from (0: fresh start)
    lpips_message: str  # "LPIPS on/off: ..." (logged by the notebook)


@dataclass
class Batch:
    x: torch.Tensor  # reconstruction images, then the swap pairs' A and B images [B + 2P, 3, S, S]
    n_rec: int  # B
    n_swap: int  # P
    truth: Optional[torch.Tensor]  # renderings of the mixed pairs [P, 3, S, S] (None when P = 0)

    @property
    def n_a(self) -> int:
        """Images whose reconstructions are compared with the input: the B images and the A images."""
        return self.n_rec + self.n_swap


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - SSIM(x, y)`` averaged over images (x, y [B, 3, S, S] in [-1, 1]; 0 for equal images): the tables'
    SSIM (:func:`megafr.metrics.ssim`) without its clamp, so that values outside [-1, 1] keep a gradient. Kept
    here, not in :mod:`megafr.losses`, whose code the 3D face network's checkpoints are keyed on: only this
    stage trains with it."""
    return 1 - ssim_per_image(x, y, clamp=False).mean()


def autoencoder_loss(cfg: GeneratorStageConfig, nets: Networks, generator: Generator, noise: list, batch: Batch,
                     codes: torch.Tensor, lpips_term: LpipsLoss, idnet, phase: dict[str, float],
                     decode_all: bool = False, face_distance: Optional[FaceFeatureDistance] = None,
                     ) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The G + E loss of one batch's codes [B + 2P, n_latent, D] -> (weighted total, terms, decoded images);
    ``phase``: this step's weights of the image discriminator, the 3D network's perceptual distance
    (``face_distance``) and 1 - SSIM (``GeneratorStageConfig.phase_weights``); a term weighted 0 is not computed.

    Decoded: the first B + P codes (all B + 2P with ``decode_all``: ReStyle's next input), then the P
    mixed codes (coarse + medium entries of B, fine of A).
    """
    x, n_a = batch.x, batch.n_a
    decode = codes if decode_all else codes[:n_a]
    if batch.n_swap:
        decode = torch.cat([decode, mix_codes(codes[n_a:], codes[batch.n_rec:n_a])])  # + mixed [P]
    out = generator.synthesis(decode, noise)  # [len(decode), 3, S, S]
    mixed = out[len(decode) - batch.n_swap:]  # [P, 3, S, S]
    zero = out.new_zeros(())
    terms = {"l2": F.mse_loss(out[:n_a], x[:n_a])}
    terms["swap"] = F.mse_loss(mixed, batch.truth) if batch.n_swap else zero
    terms["lap"] = (laplacian_l1(out[:n_a], x[:n_a]) + (laplacian_l1(mixed, batch.truth) if batch.n_swap else 0)
                    if cfg.lambda_lap else zero)
    terms["latent"] = latent_loss(nets.latent_d, codes) if cfg.lambda_latent else zero
    terms["delta"] = delta_loss(codes)
    terms["lpips"] = lpips_term(out[:n_a], x[:n_a]) if cfg.lambda_lpips else zero
    terms["id"] = id_loss(idnet, out[:n_a], x[:n_a]) if cfg.lambda_id else zero
    terms["adv"] = F.softplus(-nets.image_d(out[:batch.n_rec])).mean() if phase["adv"] else zero
    terms["face3d"] = face_distance(out[:n_a], x[:n_a]) if phase["face3d"] else zero
    terms["ssim"] = ssim_loss(out[:n_a], x[:n_a]) if phase["ssim"] else zero
    weights = {k: getattr(cfg, f"lambda_{k}") for k in terms if k not in PHASE_TERMS} | phase
    total = sum(weights[k] * v for k, v in terms.items())
    return total, terms, out


def image_d_loss(discriminator: Discriminator, real: torch.Tensor, fake: torch.Tensor,
                 r1_gamma: float) -> tuple[torch.Tensor, dict]:
    """StyleGAN2's discriminator loss (Karras et al. 2020): non-saturating logistic loss on real images vs
    reconstructions [B, 3, S, S], + R1 (Mescheder et al. 2018) on the real ones, summed over pixels."""
    loss, r1 = discriminator_loss(discriminator, real, fake, r1_gamma)
    return loss, {"d_image": float(loss.detach()), "r1_image": float(r1.detach())}


def _ema(target: Generator, source: Generator, decay: float) -> None:
    with torch.no_grad():
        for p_ema, p in zip(target.parameters(), source.parameters()):
            p_ema.lerp_(p, 1.0 - decay)


def train_generator(cfg: GeneratorStageConfig, images: np.ndarray, pool: Optional[dict] = None,
                    progress: bool = True, stop_after: Optional[int] = None,
                    idnet: Optional[torch.nn.Module] = None) -> GeneratorResult:
    """Train (or resume) G + e4e + D_latent on uint8 training images [N, S, S, 3] and the swap pool.

    ``idnet``: the frozen identity network, needed when ``cfg.lambda_id > 0``.
    """
    if images.shape[1] != cfg.image_size:
        raise InputError(f"train_generator: images are {images.shape[1]} px but image_size={cfg.image_size}; "
                         "set train_generator.image_size to prepare.image_size")
    if cfg.swap_batch and pool is None:
        raise InputError("train_generator: swap_batch > 0 needs the swap pool (load_or_render_pool)")
    if cfg.lambda_id > 0 and idnet is None:
        raise InputError("train_generator: lambda_id > 0 needs the identity network (train_generator.idnet_path)")
    with torch_threads(cfg.threads):
        return _train(cfg, images, pool, idnet, progress, stop_after)


def _train(cfg: GeneratorStageConfig, images: np.ndarray, pool, idnet, progress: bool, stop_after) -> GeneratorResult:
    nets = build_networks(cfg)
    opt_g = adam(synthesis_parameters(nets.generator), cfg.lr_g, ADAM_BETAS_G)
    opt_e = adam(nets.encoder.parameters(), cfg.lr_e, ADAM_BETAS_E)
    opt_d = adam(nets.latent_d.parameters(), cfg.lr_d, ADAM_BETAS_G)
    modules = {"generator": nets.generator, "g_ema": nets.g_ema, "encoder": nets.encoder, "latent_d": nets.latent_d}
    optimizers = {"g": opt_g, "e": opt_e, "d": opt_d}
    if cfg.trains_mapping:
        optimizers["m"] = adam(nets.generator.style.parameters(), cfg.lr_mapping, ADAM_BETAS_G)
    if nets.image_d is not None:
        modules["image_d"] = nets.image_d
        optimizers["image_d"] = adam(nets.image_d.parameters(), cfg.lr_d, ADAM_BETAS_G)
    lpips_term = LpipsLoss(cfg.lambda_lpips)
    face_distance = (FaceFeatureDistance(load_face_model(study_path(cfg.face3d_path)).net)
                     if cfg.uses_face3d else None)
    if idnet is not None:
        idnet.eval().requires_grad_(False)
    start, end, curve, upstream = training.resume_or_start(cfg, modules, optimizers, stop_after, cfg.total_steps)
    log_every = max(1, cfg.total_steps // CURVE_POINTS)
    noise = nets.generator.stored_noise()
    nets.generator.train()
    nets.encoder.train()
    peaks = {"g": cfg.lr_g, "e": cfg.lr_e, "d": cfg.lr_d, "m": cfg.lr_mapping, "image_d": cfg.lr_d}  # learning rates by optimizer
    finetuned = {"g", "e", "m"}  # optimizers whose peak the fine-tune phase scales
    window: dict[str, list[float]] = {}
    began = time.perf_counter()
    for step in progress_bar(range(start, end), desc="train_generator", initial=start, total=cfg.total_steps,
                             disable=not progress):
        if step == cfg.steps:  # the fine-tune phase starts afresh: no moments carried over from the first phase
            for opt in optimizers.values():
                opt.state.clear()
        phase = cfg.phase_weights(step)
        common.seed_step(cfg.seed, step)
        rows = common.batch_rows(cfg.seed, step, len(images), cfg.batch_size)
        x = common.images_to_tensor(images[rows])  # [B, 3, S, S]
        n_rec = len(x)
        if cfg.swap_batch:
            pick = common.batch_rows(cfg.seed + 1, step, len(pool["a"]), cfg.swap_batch)
            xa = common.images_to_tensor(images[pool["a"][pick]])
            xb = common.images_to_tensor(images[pool["b"][pick]])
            truth = common.images_to_tensor(pool["truth"][pick])
            x = torch.cat([x, xa, xb])  # [B + 2P, 3, S, S]
        lrs = {name: cfg.learning_rate(peaks[name], step, name in finetuned) for name in optimizers}
        for name, opt in optimizers.items():
            common.set_lr(opt, lrs[name])

        # generator + encoder step (one pass; ReStyle: encoder_passes passes, their losses averaged)
        batch = Batch(x, n_rec, cfg.swap_batch, truth if cfg.swap_batch else None)
        if cfg.encoder_passes == 1:
            codes = nets.encode(x)  # [B + 2P, n_latent, D]
            total, terms, out = autoencoder_loss(cfg, nets, nets.generator, noise, batch, codes, lpips_term, idnet,
                                                 phase, face_distance=face_distance)
        else:
            codes, y, total = nets.latent_avg.expand(len(x), cfg.n_latent, -1), nets.start_image(nets.generator, len(x)), 0
            for _ in range(cfg.encoder_passes):
                codes = refine_pass(nets, x, codes, y)
                pass_total, terms, out = autoencoder_loss(cfg, nets, nets.generator, noise, batch, codes,
                                                          lpips_term, idnet, phase, decode_all=True,
                                                          face_distance=face_distance)
                total = total + pass_total / cfg.encoder_passes
                y = out[:len(x)]
        training.check_finite("train_generator", step, total, terms, cfg.checkpoint_path)
        opt_g.zero_grad(set_to_none=True)
        opt_e.zero_grad(set_to_none=True)
        total.backward()
        opt_g.step()
        opt_e.step()

        # image discriminator step (the B reconstructions against their inputs), latent discriminator step
        logged = {k: float(v.detach()) for k, v in terms.items()}
        if nets.image_d is not None and phase["adv"]:
            d_loss, d_terms = image_d_loss(nets.image_d, x[:n_rec], out[:n_rec], cfg.r1_image)
            training.check_finite("train_generator", step, d_loss, d_terms, cfg.checkpoint_path)
            optimizers["image_d"].zero_grad(set_to_none=True)
            d_loss.backward()
            optimizers["image_d"].step()
            logged.update(d_terms)
        if cfg.lambda_latent:
            z = torch.randn(codes.shape[0] * codes.shape[1], cfg.style_dim)
            with torch.no_grad():
                real_w = nets.generator.style(z)  # [N, D]
            d_loss, d_terms = latent_d_loss(nets.latent_d, real_w, codes.detach().reshape(-1, cfg.style_dim),
                                            cfg.r1_gamma)
            training.check_finite("train_generator", step, d_loss, d_terms, cfg.checkpoint_path)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            logged.update(d_terms)
        if cfg.trains_mapping:  # the mapping chases the encoder's codes, so that G(mapping(z)) decodes to heads
            w = nets.generator.style(torch.randn(codes.shape[0] * codes.shape[1], cfg.style_dim))
            m_loss = mapping_loss(nets.latent_d, w)
            training.check_finite("train_generator", step, m_loss, {"mapping": m_loss}, cfg.checkpoint_path)
            optimizers["m"].zero_grad(set_to_none=True)
            m_loss.backward()
            optimizers["m"].step()
            logged["mapping"] = float(m_loss.detach())
        _ema(nets.g_ema, nets.generator, cfg.ema_decay)  # after the mapping's step, so g_ema follows it too
        logged["total"] = float(total.detach())
        for k, v in logged.items():
            window.setdefault(k, []).append(v)
        if (step + 1) % log_every == 0 or step + 1 == cfg.total_steps:
            curve.append({"step": step + 1, "lr_g": lrs["g"], **{k: float(np.mean(v)) for k, v in window.items()}})
            window = {}
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            training.save_training_state(cfg.checkpoint_path, cfg, step + 1, modules, optimizers, curve, upstream)
    seconds = time.perf_counter() - began
    for module in modules.values():
        module.eval()
    columns = curve_columns(cfg)
    return GeneratorResult(nets, pd.DataFrame(curve).reindex(columns=columns).fillna(0.0), end - start, seconds, start,
                           lpips_term.message)


# ------------------------------------------------------------------------------ products
def e4e_net(nets: Networks) -> InversionNet:
    """The e4e product: encoder + g_ema decoder + latent_avg [n_latent, D]."""
    return InversionNet(nets.encoder, nets.latent_avg, decoder=nets.g_ema).eval()


def save_products(cfg: GeneratorStageConfig, nets: Networks) -> dict[str, str]:
    """Write ``stylegan2.pt`` and ``e4e.pt`` in the official layouts and ``products.json``; return the paths."""
    folder = cfg.folder
    save_stylegan2(folder / STYLEGAN_FILE, nets.g_ema, nets.latent_avg, g=nets.generator)
    opts = {"dataset_type": "synthheads", "lambda_l2": cfg.lambda_l2, "lambda_swap": cfg.lambda_swap,
            "lambda_lap": cfg.lambda_lap, "lambda_latent": cfg.lambda_latent, "lambda_delta": cfg.lambda_delta,
            "lambda_lpips": cfg.lambda_lpips, "lambda_id": cfg.lambda_id, "id_lambda": cfg.lambda_id,
            "w_discriminator_lambda": cfg.lambda_latent, "delta_norm_lambda": cfg.lambda_delta,
            "encoder_passes": cfg.encoder_passes}
    save_encoder(folder / E4E_FILE, e4e_net(nets), opts=opts, discriminator=nets.latent_d)
    products = {"stylegan2": study_relative(folder / STYLEGAN_FILE), "e4e": study_relative(folder / E4E_FILE)}
    write_json(folder / PRODUCTS_FILE, products)
    return products


def check_official(cfg: GeneratorStageConfig) -> tuple[dict, dict]:
    """Paper profile: load the user's official files through the official loaders and expose them as the
    stage's products (``stylegan2.pt``, ``e4e.pt``: what later stages read); ``(metrics, products)``."""
    generator, _ = load_stylegan2(study_path(cfg.official_stylegan2))
    e4e = load_e4e(study_path(cfg.official_e4e))
    products = {"stylegan2": common.expose_official(cfg.official_stylegan2, cfg.folder / STYLEGAN_FILE),
                "e4e": common.expose_official(cfg.official_e4e, cfg.folder / E4E_FILE)}
    write_json(cfg.folder / PRODUCTS_FILE, products)
    metrics = {"trained": 0, "official_files_loaded": 2, "generator_size": generator.size,
               "n_latent": generator.n_latent,
               "generator_parameters": sum(p.numel() for p in generator.parameters()),
               "encoder_parameters": sum(p.numel() for p in e4e.encoder.parameters())}
    return metrics, products


# ------------------------------------------------------------------------------ the stage
@dataclass
class GeneratorStageOutput:
    metrics: dict  # numeric leaves (data/metrics/train_generator.json)
    curve: pd.DataFrame  # training curve (data/plots/train_generator_curve.csv)
    g_ema: Optional[Generator]  # the generator evaluated (None in official mode)
    test_x: Optional[torch.Tensor] = None  # test images used for the inversion metrics [N, 3, S, S]
    test_recon: Optional[torch.Tensor] = None  # their e4e inversions
    swap: Optional[dict] = None  # xa, xb (uint8), mixed (tensor), truth (uint8) of the swap test pairs
    log: str = ""  # lines the notebook prints (LPIPS status, pose measurement)


def run_generator_stage(cfg: GeneratorStageConfig, progress: bool = True) -> GeneratorStageOutput:
    """Train (resuming if possible) or load the released files, save the products and evaluate on the
    test identities."""
    from megafr.nets.checkpoints import load_arcface
    from megafr.pretrain.idnet import read_split

    if cfg.mode == "official":
        metrics, _ = check_official(cfg)
        return GeneratorStageOutput(metrics, pd.DataFrame(columns=curve_columns(cfg)), None)
    idnet = load_arcface(study_path(cfg.idnet_path))
    if cfg.mode == "release":
        released = common.load_released(cfg, {"stylegan2": ("official_stylegan2", STYLEGAN_FILE),
                                              "e4e": ("official_e4e", E4E_FILE)}, curve_columns(cfg))
        generator, _ = load_stylegan2(released.products["stylegan2"])
        e4e = load_e4e(released.products["e4e"])
        head = {**released.metrics, "generator_parameters": sum(p.numel() for p in generator.parameters()),
                "encoder_parameters": sum(p.numel() for p in e4e.encoder.parameters())}
        log = [f"released files: {cfg.official_stylegan2}, {cfg.official_e4e}"]
        return evaluate_generator(cfg, e4e.encode, generator, idnet, head, released.curve, log)
    images, table = read_split(cfg.data_dir, cfg.UPSTREAM_SPLIT)
    pool = load_or_render_pool(cfg, table) if cfg.swap_batch else None
    result = train_generator(cfg, images, pool, progress=progress, idnet=idnet)
    save_products(cfg, result.nets)
    common.finish(cfg.checkpoint_path)
    nets = result.nets
    common.write_run_record(cfg.folder, result.seconds, result.steps_run, result.resumed_from)
    head = {"trained": 1, "steps": cfg.steps, "finetune_steps": cfg.finetune_steps, "lpips_used": int(result.lpips_message.startswith("LPIPS on")),
            "generator_parameters": sum(p.numel() for p in nets.generator.parameters()),
            "encoder_parameters": sum(p.numel() for p in nets.encoder.parameters())}
    return evaluate_generator(cfg, nets.encode, nets.g_ema, idnet, head, result.curve, [result.lpips_message])


def evaluate_generator(cfg: GeneratorStageConfig, encode, g_ema: Generator, idnet, metrics: dict,
                       curve: pd.DataFrame, log: list[str]) -> GeneratorStageOutput:
    """Score a generator and its encoder (``encode``: images -> W+ codes) on the test identities: e4e
    inversion PSNR / SSIM / ID similarity, FD-id of samples and inversions, and the layer swap;
    ``metrics`` holds the stage's other numbers, ``log`` its lines so far."""
    from megafr.datasets.synthheads import HeadWorld
    from megafr.pretrain import evaluate as ev
    from megafr.pretrain.idnet import read_split
    from megafr.pretrain.latent_structure import face3d_pose_measure

    test_images, test_table = read_split(cfg.data_dir, "test")
    rows = np.linspace(0, len(test_images) - 1, min(cfg.n_eval, len(test_images))).round().astype(int)
    x = common.images_to_tensor(test_images[rows])
    _, recon = ev.invert(encode, g_ema, x)
    metrics = {**metrics, "inversion_e4e": ev.inversion_metrics(x, recon, idnet)}
    all_test = common.images_to_tensor(test_images)
    metrics["fd_id_samples_vs_test"] = ev.sample_fd_id(g_ema, idnet, all_test, min(cfg.n_fd_samples, len(all_test)))
    metrics["fd_id_inversions_vs_test"] = ev.fd_id(idnet, recon, all_test[:len(recon)]) if len(recon) > 2 else 0.0
    a, b = ev.swap_eval_pairs(cfg.seed, test_table["identity"].to_numpy(), cfg.n_swap_eval)
    world = HeadWorld(study_path(cfg.model_path), study_path(cfg.landmark_path), cfg.image_size)
    truth = render_swap_set(world, test_table, a, b)
    measure, size = None, None
    if cfg.face3d_path:
        measure, size = face3d_pose_measure(study_path(cfg.face3d_path), study_path(cfg.model_path),
                                            study_path(cfg.landmark_path))
        log = [*log, f"layer swap: pose measured by the 3D network {cfg.face3d_path}"]
    else:
        log = [*log, "layer swap: pose NOT measured (train_generator.face3d_path is empty)"]
    report, mixed = ev.layer_swap_eval(encode, g_ema, test_images, test_table, a, b, truth, measure, size)
    metrics["layer_swap"] = report
    if cfg.n_wplus_eval:  # the generator's own ceiling: W+ optimised per image, beside the encoder
        metrics["wplus_optimised"] = ev.wplus_bound(g_ema, encode, x[:cfg.n_wplus_eval], idnet, cfg.wplus_steps,
                                                    WPLUS_LR)
    swap = {"xa": test_images[a], "xb": test_images[b], "mixed": mixed, "truth": truth}
    return GeneratorStageOutput(metrics, curve, g_ema, x, recon, swap, "\n".join(log))
