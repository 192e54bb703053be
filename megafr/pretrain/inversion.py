"""The ``train_inversion`` stage: a pSp encoder (GradualStyleEncoder) inverting the frozen mini generator.

pSp (Richardson et al., "Encoding in Style", CVPR 2021, Sec. 3.3) trains its encoder on a frozen
StyleGAN2 with ``L = lambda_l2 L2 + lambda_lpips LPIPS + lambda_id (1 - <R(x), R(G(E(x)))>) +
lambda_wnorm |E(x)|^2`` (the last term, pSp's ``w_norm``, keeps the codes near ``latent_avg``).
The mini world uses the same terms with the study's identity network as ``R``
(``megafr.nets.identity.identity_similarity``); LPIPS only where its backbone weights are present
(``megafr.losses.perceptual``).

pSp initialises its IR-SE50 body from a face-recognition network trained on real faces; here the
body, input layer and pyramid lateral convolutions start from the e4e encoder of the
``train_generator`` stage (same architecture and key names), the per-entry style blocks from
scratch (in pSp each block outputs a full code, in e4e a delta, so their weights do not transfer).

Product: ``psp.pt`` in the pSp release layout (``state_dict`` with ``encoder.``/``decoder.``,
``latent_avg`` [n_latent, D], ``opts``), loaded by ``megafr.nets.checkpoints.load_psp``. The paper
profile (``mode: official``) loads the user's ``psp_ffhq_encode.pt``, copies it to ``psp.pt`` (what
later stages read) and trains nothing. The mini profile (``mode: release``) loads the pSp its release
ships (``megafr.release``) the same way and evaluates it as a trained run would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from megafr import training
from megafr.config import require, require_at_least, study_path, study_relative
from megafr.distributed import torch_threads
from megafr.errors import InputError
from megafr.fileio import write_json
from megafr.losses import LpipsLoss, id_loss, w_norm_loss
from megafr.nets.checkpoints import load_arcface, load_e4e, load_psp, load_stylegan2, save_encoder
from megafr.nets.encoders import GradualStyleEncoder, InversionNet
from megafr.pretrain import common
from megafr.progress import progress_bar
from megafr.training import adam

PSP_FILE = "psp.pt"
PRODUCTS_FILE = common.PRODUCTS_FILE
BACKBONE_PREFIXES = ("input_layer.", "body.", "latlayer1.", "latlayer2.")  # weights taken over from e4e
ADAM_BETAS = (0.9, 0.999)
CURVE_POINTS = 100
LOSS_TERMS = ("l2", "id", "wnorm", "lpips")
CURVE_COLUMNS = ["step", "lr", "total", *LOSS_TERMS]  # the training curve


@dataclass(frozen=True)
class InversionStageConfig(common.StageFolders):
    """Parameters of the train_inversion stage (params.yaml block ``train_inversion`` plus shared keys)."""

    STAGE: ClassVar[str] = "train_inversion"
    UPSTREAM: ClassVar[tuple[str, ...]] = ("stylegan2_path", "e4e_path", "idnet_path")  # a retrained generator restarts pSp
    UPSTREAM_SPLIT: ClassVar[str] = "train"

    profile: str  # profile that produced the run
    seed: int  # seeds weights and data order
    mode: str  # "train" (smoke, release runs), "release" (mini: load and evaluate its released file) or "official" (paper: validate psp_ffhq_encode.pt)
    data_dir: str  # output folder of the prepare stage
    stylegan2_path: str  # the frozen generator (train_generator product)
    e4e_path: str  # e4e product whose backbone initialises pSp
    idnet_path: str  # identity network (ID loss and ID-similarity metric)
    official_psp: str  # official mode: psp_ffhq_encode.pt; release mode: the released psp.pt
    steps: int  # optimisation steps
    batch_size: int  # images per step
    lr: float  # peak learning rate (Adam)
    lambda_l2: float  # pixel L2 weight
    lambda_id: float  # identity loss weight (1 - ID similarity)
    lambda_wnorm: float  # pSp's w_norm weight (|E(x)|^2 per entry, offsets from latent_avg)
    lambda_lpips: float  # LPIPS weight, used only when LPIPS's backbone weights are present
    n_eval: int  # test images for the metrics
    checkpoint_every: int  # write the resumable checkpoint every this many steps
    threads: int  # torch intra-op threads (0: torch's default)
    out_dir: str = "data/train_inversion"  # product and checkpoint
    run_dir: str = ""  # set by a sweep: write under <run_dir>/train_inversion instead

    def __post_init__(self):
        if common.official_mode(self, ("official_psp",), "psp_ffhq_encode.pt"):
            return
        require_at_least("train_inversion", self, (("steps", 1), ("batch_size", 1), ("checkpoint_every", 1),
                                                   ("n_eval", 1), ("threads", 0), ("lambda_l2", 0), ("lambda_id", 0),
                                                   ("lambda_wnorm", 0), ("lambda_lpips", 0)))
        require(self.lr > 0, f"train_inversion.lr must be positive, got {self.lr}")



def build_psp(e4e: InversionNet, decoder, latent_avg: torch.Tensor, seed: int) -> InversionNet:
    """pSp encoder of e4e's configuration, backbone copied from e4e, style blocks fresh; decoder frozen."""
    torch.manual_seed(seed)
    encoder = GradualStyleEncoder(e4e.encoder.config)
    source = e4e.encoder.state_dict()
    backbone = {k: v for k, v in source.items() if k.startswith(BACKBONE_PREFIXES)}
    missing, unexpected = encoder.load_state_dict(backbone, strict=False)
    if unexpected or any(k.startswith(BACKBONE_PREFIXES) for k in missing):
        raise InputError(f"e4e backbone does not fit the pSp encoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
    decoder.eval().requires_grad_(False)
    return InversionNet(encoder, latent_avg, decoder=decoder)


@dataclass
class InversionResult:
    net: InversionNet  # trained pSp (eval mode)
    curve: pd.DataFrame  # step, lr, loss terms
    steps_run: int
    seconds: float
    resumed_from: int
    lpips_message: str


def train_psp(cfg: InversionStageConfig, net: InversionNet, images: np.ndarray, idnet: Optional[torch.nn.Module],
              progress: bool = True, stop_after: Optional[int] = None) -> InversionResult:
    """Train (or resume) ``net.encoder`` on uint8 images [N, S, S, 3]; the decoder stays frozen."""
    if cfg.lambda_id > 0 and idnet is None:
        raise InputError("train_inversion: lambda_id > 0 needs the identity network (idnet_path)")
    with torch_threads(cfg.threads):
        return _train(cfg, net, images, idnet, progress, stop_after)


def _train(cfg, net: InversionNet, images, idnet, progress, stop_after) -> InversionResult:
    optimizer = adam(net.encoder.parameters(), cfg.lr, ADAM_BETAS)
    modules, optimizers = {"encoder": net.encoder}, {"opt": optimizer}
    lpips_term = LpipsLoss(cfg.lambda_lpips)
    if idnet is not None:
        idnet.eval().requires_grad_(False)
    start, end, curve, upstream = training.resume_or_start(cfg, modules, optimizers, stop_after)
    log_every = max(1, cfg.steps // CURVE_POINTS)
    decoder = net.decoder
    noise = decoder.stored_noise()
    net.encoder.train()
    window: dict[str, list[float]] = {}
    began = time.perf_counter()
    for step in progress_bar(range(start, end), desc="train_inversion", initial=start, total=cfg.steps,
                             disable=not progress):
        common.seed_step(cfg.seed, step)
        x = common.images_to_tensor(images[common.batch_rows(cfg.seed, step, len(images), cfg.batch_size)])
        lr = common.cosine_lr(cfg.lr, step, cfg.steps)
        common.set_lr(optimizer, lr)
        offsets = net.encoder(x)  # [B, n_latent, D]
        recon = decoder.synthesis(offsets + net.latent_avg, noise)  # [B, 3, S, S]
        terms = {"l2": F.mse_loss(recon, x), "wnorm": w_norm_loss(offsets)}
        terms["id"] = id_loss(idnet, recon, x.detach()) if cfg.lambda_id else recon.new_zeros(())
        terms["lpips"] = lpips_term(recon, x) if cfg.lambda_lpips else recon.new_zeros(())
        total = sum(getattr(cfg, f"lambda_{k}") * v for k, v in terms.items())
        training.check_finite("train_inversion", step, total, terms, cfg.checkpoint_path)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        for k, v in {"total": total, **terms}.items():
            window.setdefault(k, []).append(float(v.detach()))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "lr": lr, **{k: float(np.mean(v)) for k, v in window.items()}})
            window = {}
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            training.save_training_state(cfg.checkpoint_path, cfg, step + 1, modules, optimizers, curve, upstream)
    seconds = time.perf_counter() - began
    net.eval()
    frame = pd.DataFrame(curve).reindex(columns=CURVE_COLUMNS).fillna(0.0)
    return InversionResult(net, frame, end - start, seconds, start, lpips_term.message)


@dataclass
class InversionStageOutput:
    metrics: dict  # numeric leaves
    curve: pd.DataFrame  # training curve
    net: Optional[InversionNet] = None  # trained pSp (None in official mode)
    test_x: Optional[torch.Tensor] = None  # test images of the metrics
    test_recon: Optional[torch.Tensor] = None  # their pSp inversions
    e4e_recon: Optional[torch.Tensor] = None  # their e4e inversions (for the comparison grid)
    log: str = ""


def run_inversion_stage(cfg: InversionStageConfig, progress: bool = True) -> InversionStageOutput:
    """Train pSp on the frozen generator, save ``psp.pt``, and evaluate pSp and e4e on the test identities."""
    from megafr.pretrain import evaluate as ev
    from megafr.pretrain.idnet import read_split

    if cfg.mode == "official":
        net = load_psp(study_path(cfg.official_psp))
        product = common.expose_official(cfg.official_psp, cfg.folder / PSP_FILE)  # what later stages read
        write_json(cfg.folder / PRODUCTS_FILE, {"psp": product})
        metrics = {"trained": 0, "official_files_loaded": 1, "n_latent": net.encoder.config.n_latent,
                   "encoder_parameters": sum(p.numel() for p in net.encoder.parameters())}
        return InversionStageOutput(metrics, pd.DataFrame(columns=CURVE_COLUMNS))
    decoder, _ = load_stylegan2(study_path(cfg.stylegan2_path))  # its latent_avg is e4e's (the mapping mean)
    e4e = load_e4e(study_path(cfg.e4e_path))
    idnet = load_arcface(study_path(cfg.idnet_path))
    test_images, _ = read_split(cfg.data_dir, "test")
    if test_images.shape[1] != decoder.size:
        raise InputError(f"train_inversion: images are {test_images.shape[1]} px, the generator makes {decoder.size} px")
    if cfg.mode == "release":  # the synthetic world's released pSp, scored as a trained one
        released = common.load_released(cfg, {"psp": ("official_psp", PSP_FILE)}, CURVE_COLUMNS)
        net, curve, message, metrics = load_psp(released.products["psp"]), released.curve, "", released.metrics
    else:
        images, _ = read_split(cfg.data_dir, cfg.UPSTREAM_SPLIT)
        result = train_psp(cfg, build_psp(e4e, decoder, e4e.latent_avg, cfg.seed), images, idnet, progress=progress)
        save_encoder(cfg.folder / PSP_FILE, result.net, opts={
            "dataset_type": "synthheads", "l2_lambda": cfg.lambda_l2, "id_lambda": cfg.lambda_id,
            "w_norm_lambda": cfg.lambda_wnorm, "lpips_lambda": cfg.lambda_lpips})
        write_json(cfg.folder / PRODUCTS_FILE, {"psp": study_relative(cfg.folder / PSP_FILE)})
        common.finish(cfg.checkpoint_path)
        common.write_run_record(cfg.folder, result.seconds, result.steps_run, result.resumed_from)
        net, curve, message = result.net, result.curve, result.lpips_message
        metrics = {"trained": 1, "steps": cfg.steps, "lpips_used": int(message.startswith("LPIPS on"))}
    rows = np.linspace(0, len(test_images) - 1, min(cfg.n_eval, len(test_images))).round().astype(int)
    x = common.images_to_tensor(test_images[rows])
    _, recon = ev.invert(net.encode, decoder, x)
    _, e4e_recon = ev.invert(e4e.encode, e4e.decoder, x)
    metrics.update(inversion_psp=ev.inversion_metrics(x, recon, idnet),
                   inversion_e4e=ev.inversion_metrics(x, e4e_recon, idnet))
    return InversionStageOutput(metrics, curve, net, x, recon, e4e_recon, message)
