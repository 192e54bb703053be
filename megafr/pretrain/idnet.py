"""The ``train_idnet`` stage: an IR-SE ArcFace identity network trained on the SynthHeads identity labels.

The paper world measures identity with the released ``model_ir_se50.pth``; the mini world trains
the same architecture (``megafr.nets.irse.ArcFace``, narrow and shallow) with ArcFace's additive
angular margin loss (Deng et al., "ArcFace", CVPR 2019, Eq. 3):

    L = -log( e^{s cos(theta_y + m)} / (e^{s cos(theta_y + m)} + sum_{j != y} e^{s cos theta_j}) )

where ``theta_j`` is the angle between the L2-normalised embedding and the normalised class centre
``W_j``. As in the reference implementation (insightface ``ArcMarginProduct``), when
``theta_y + m`` would pass pi the target logit falls back to ``cos theta_y - m sin m`` so that the
logit stays monotonic in ``theta_y``. The margin head is written here (``ArcMarginHead``) because
no installed library provides it; it is a dozen lines. At ``m = 0`` the loss is softmax cross
entropy on ``s cos theta`` (the test checks it).

The network sees exactly what ``megafr.nets.identity`` feeds it at evaluation: the pSp face crop
of the image, pooled to the network's input size.

**Blur augmentation** (``blur_sigma_max``). The released ArcFace still recognises a person in a
soft image, which is what the study's generators produce; a network trained on sharp renderings
only does not. So each training image is blurred (kornia's ``gaussian_blur2d``) with its own sigma
drawn uniformly from [0, ``blur_sigma_max``] pixels of the data set's images before the face crop;
0 turns it off.

**Training data.** As the released ArcFace learnt from MS1M, not from the faces the study later
reenacts, the mini network trains on the ``recognition`` split that the prepare stage renders for it
(identities disjoint from the train and test identities; ``megafr.datasets.prepare``), not on the
generator's train split. The measurements behind both choices and the step count:
``docs/experiments/train_idnet.md``.

Verification is measured on the sharp images of the *test identities* (never seen in training):
all genuine and impostor pairs of the test split, TAR at FAR 1e-3.

The paper profile does not train: ``run_idnet_stage`` validates that the user's official file loads
through ``megafr.nets.checkpoints.load_arcface``, copies it to the product ``arcface.pt`` (what later
stages read) and reports that nothing was trained. The mini profile (``mode: release``) does the same
with the file its release ships (``megafr.release``) and evaluates it as a trained run would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import kornia
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from megafr import training
from megafr.config import require, require_at_least, study_path, study_relative
from megafr.distributed import torch_threads
from megafr.errors import InputError, MissingFileError
from megafr.fileio import write_json
from megafr.metrics import identity_embeddings, tar_at_far, verification_pairs
from megafr.nets.checkpoints import load_arcface, save_arcface
from megafr.nets.identity import face_crop
from megafr.nets.irse import ArcFace, ArcFaceConfig
from megafr.pretrain import common
from megafr.progress import progress_bar

PRODUCT_FILE = "arcface.pt"
CURVE_COLUMNS = ["step", "lr", "loss", "accuracy"]  # the training curve
PRODUCTS_FILE = common.PRODUCTS_FILE
FARS = (1e-3, 1e-2)  # false accept rates at which TAR is reported
CURVE_POINTS = 100  # about this many rows in the training curve


@dataclass(frozen=True)
class IdNetConfig(common.StageFolders):
    """Parameters of the train_idnet stage (params.yaml block ``train_idnet`` plus shared keys)."""

    STAGE: ClassVar[str] = "train_idnet"
    UPSTREAM_SPLIT: ClassVar[str] = "recognition"  # the face-recognition set (identities of neither train nor test)

    profile: str  # profile that produced the run (labels figures and metrics)
    seed: int  # seeds the weights and the data order
    mode: str  # "train" (smoke, release runs), "release" (mini: load and evaluate its released file) or "official" (paper: check the user's model_ir_se50.pth)
    data_dir: str  # output folder of the prepare stage
    official_path: str  # official mode: path of model_ir_se50.pth; release mode: the released file
    input_size: int  # network input side (the face crop is pooled to it); multiple of 16
    embedding_dim: int  # identity embedding size
    width: int  # IR-SE base width (stages: width * (1, 2, 4, 8); stem: width)
    units: int  # bottleneck units per stage
    drop_ratio: float  # dropout before the embedding layer (training only)
    margin: float  # ArcFace additive angular margin m, radians
    scale: float  # ArcFace logit scale s
    steps: int  # optimisation steps
    batch_size: int  # images per step
    lr: float  # peak learning rate (Adam)
    weight_decay: float  # decoupled weight decay (AdamW)
    blur_sigma_max: float  # training images get a Gaussian blur of sigma ~ U(0, this) pixels (0: off)
    checkpoint_every: int  # write the resumable checkpoint every this many steps
    threads: int  # torch intra-op threads (0: torch's default)
    out_dir: str = "data/train_idnet"  # products and checkpoint
    run_dir: str = ""  # set by a sweep: write under <run_dir>/train_idnet instead

    def __post_init__(self):
        if common.official_mode(self, ("official_path",), "model_ir_se50.pth"):
            return
        require(self.input_size % 16 == 0 and self.input_size >= 16,
                f"train_idnet.input_size must be a multiple of 16, got {self.input_size}")
        require_at_least("train_idnet", self, (("width", 1), ("units", 1), ("embedding_dim", 1), ("steps", 1),
                                                      ("batch_size", 2), ("checkpoint_every", 1), ("threads", 0)))
        require(self.margin >= 0 and self.scale > 0,
                f"train_idnet.margin must be >= 0 and scale > 0, got {self.margin} and {self.scale}")
        require(self.lr > 0 and self.weight_decay >= 0,
                f"train_idnet.lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        require(self.blur_sigma_max >= 0, f"train_idnet.blur_sigma_max must be >= 0, got {self.blur_sigma_max}")
        require(0 <= self.drop_ratio < 1, f"train_idnet.drop_ratio must lie in [0, 1), got {self.drop_ratio}")


    def arcface_config(self) -> ArcFaceConfig:
        return ArcFaceConfig(input_size=self.input_size, embedding_dim=self.embedding_dim,
                             body=common.irse_body(self.width, self.units),
                             drop_ratio=self.drop_ratio)


class ArcMarginHead(torch.nn.Module):
    """ArcFace classification head: embeddings [B, E] + labels [B] -> margin logits [B, n_classes]."""

    def __init__(self, embedding_dim: int, n_classes: int, margin: float, scale: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(n_classes, embedding_dim))  # class centres [C, E]
        torch.nn.init.xavier_uniform_(self.weight)
        self.margin = margin  # additive angular margin m (radians)
        self.scale = scale  # logit scale s
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.threshold = math.cos(math.pi - margin)  # beyond it theta + m would pass pi
        self.fallback = math.sin(math.pi - margin) * margin  # = m sin m: linear continuation

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos theta between normalised embeddings and class centres. [B, C]"""
        return F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).t()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.weight.shape[1]:
            raise ValueError(f"ArcMarginHead expects [B, {self.weight.shape[1]}], got {tuple(embeddings.shape)}")
        cos = self.cosines(embeddings).clamp(-1.0, 1.0)  # [B, C]
        sin = torch.sqrt((1.0 - cos.square()).clamp_min(0.0))
        phi = cos * self.cos_m - sin * self.sin_m  # cos(theta + m)
        phi = torch.where(cos > self.threshold, phi, cos - self.fallback)
        target = F.one_hot(labels, cos.shape[1]).bool()
        return self.scale * torch.where(target, phi, cos)


def arcface_loss(head: ArcMarginHead, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Additive angular margin loss (cross entropy on the margin logits)."""
    return F.cross_entropy(head(embeddings, labels), labels)


# ------------------------------------------------------------------------------------ data
def read_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Images uint8 [N, S, S, 3] and the table of a SynthHeads split written by the prepare stage."""
    folder = study_path(data_dir) / split
    if not (folder / "images.npy").is_file():
        raise MissingFileError(f"{folder}/images.npy not found; run the prepare stage first (`dvc repro prepare`)")
    return np.load(folder / "images.npy"), pd.read_parquet(folder / "meta.parquet")


def random_blur(x: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """Each image of ``x`` [B, C, H, W] blurred with its own Gaussian sigma ~ U(0, sigma_max) pixels (torch's RNG)."""
    if sigma_max <= 0:
        return x
    sigma = torch.rand(len(x)) * sigma_max
    sigma = sigma.clamp_min(1e-3)[:, None].expand(-1, 2)  # [B, 2]: same sigma along y and x
    kernel = 2 * math.ceil(3 * sigma_max) + 1  # covers +-3 sigma of the widest blur
    return kornia.filters.gaussian_blur2d(x, kernel, sigma, border_type="replicate")


def label_indices(identity: np.ndarray) -> np.ndarray:
    """Identity labels -> class indices 0..C-1 (sorted by label)."""
    _, index = np.unique(identity, return_inverse=True)
    return index.astype(np.int64)


# -------------------------------------------------------------------------------- training
@dataclass
class IdNetResult:
    net: ArcFace  # trained network (eval mode)
    curve: pd.DataFrame  # step, lr, loss, accuracy
    steps_run: int  # steps run in this call (0 when the checkpoint was complete)
    seconds: float  # wall time of those steps
    resumed_from: int  # step of the checkpoint resumed from (0: fresh start)


def train_idnet(cfg: IdNetConfig, images: np.ndarray, identity: np.ndarray, progress: bool = True,
                stop_after: Optional[int] = None) -> IdNetResult:
    """Train (or resume) the identity network. ``stop_after``: return after that many steps (tests)."""
    if len(images) < cfg.batch_size:
        raise InputError(f"train_idnet: {len(images)} images but batch_size={cfg.batch_size}; lower batch_size")
    with torch_threads(cfg.threads):
        return _train(cfg, images, label_indices(identity), progress, stop_after)


def _train(cfg: IdNetConfig, images: np.ndarray, labels: np.ndarray, progress: bool, stop_after) -> IdNetResult:
    torch.manual_seed(cfg.seed)
    net = ArcFace(cfg.arcface_config())
    head = ArcMarginHead(cfg.embedding_dim, int(labels.max()) + 1, cfg.margin, cfg.scale)
    params = list(net.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    modules, optimizers = {"net": net, "head": head}, {"opt": optimizer}
    start, end, curve, upstream = training.resume_or_start(cfg, modules, optimizers, stop_after)
    log_every = max(1, cfg.steps // CURVE_POINTS)
    window: dict[str, list[float]] = {}
    net.train()
    began = time.perf_counter()
    for step in progress_bar(range(start, end), desc="train_idnet", initial=start, total=cfg.steps,
                             disable=not progress):
        common.seed_step(cfg.seed, step)
        rows = common.batch_rows(cfg.seed, step, len(images), cfg.batch_size)
        x = common.images_to_tensor(images[rows])  # [B, 3, S, S]
        x = random_blur(x, cfg.blur_sigma_max)  # RNG seeded by seed_step
        x = face_crop(x, cfg.input_size)  # [B, 3, s, s]
        y = torch.from_numpy(labels[rows])
        lr = common.cosine_lr(cfg.lr, step, cfg.steps)
        common.set_lr(optimizer, lr)
        logits = head(net(x), y)
        loss = F.cross_entropy(logits, y)
        training.check_finite("train_idnet", step, loss, {"arcface": loss}, cfg.checkpoint_path)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.setdefault("loss", []).append(float(loss.detach()))
        window.setdefault("accuracy", []).append(float((logits.argmax(1) == y).float().mean()))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "lr": lr, **{k: float(np.mean(v)) for k, v in window.items()}})
            window = {}
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            training.save_training_state(cfg.checkpoint_path, cfg, step + 1, modules, optimizers, curve, upstream)
    seconds = time.perf_counter() - began
    net.eval()
    return IdNetResult(net, pd.DataFrame(curve, columns=CURVE_COLUMNS), end - start, seconds,
                       start)


def save_idnet(cfg: IdNetConfig, net: ArcFace) -> Path:
    """Write the product ``arcface.pt`` in the TreB1eN layout (+ config) and return its path."""
    path = cfg.folder / PRODUCT_FILE
    save_arcface(path, net)
    return path


@torch.no_grad()
def evaluate_idnet(net: ArcFace, images: np.ndarray, identity: np.ndarray) -> dict:
    """Verification on every pair of a held-out split: TAR at each FAR of FARS, mean genuine/impostor cosine."""
    emb = identity_embeddings(net.eval(), common.images_to_tensor(images))
    genuine, impostor = verification_pairs(emb, identity)
    out = {"genuine_pairs": int(len(genuine)), "impostor_pairs": int(len(impostor)),
           "genuine_cos_mean": float(genuine.mean()), "impostor_cos_mean": float(impostor.mean())}
    for far in FARS:
        tar, threshold = tar_at_far(genuine, impostor, far)
        out[f"tar_at_far_{far:g}"] = tar
        out[f"threshold_at_far_{far:g}"] = threshold
    return out


def run_idnet_stage(cfg: IdNetConfig, progress: bool = True) -> tuple[ArcFace, dict, pd.DataFrame]:
    """The whole stage: train + save + evaluate (train mode), load + evaluate (release mode), or load +
    report (official mode)."""
    if cfg.mode == "official":
        net = load_arcface(study_path(cfg.official_path))
        product = common.expose_official(cfg.official_path, cfg.folder / PRODUCT_FILE)  # what later stages read
        write_json(cfg.folder / PRODUCTS_FILE, {"arcface": product})
        n_params = sum(p.numel() for p in net.parameters())
        return net, {"trained": 0, "official_file_loaded": 1, "parameters": n_params}, pd.DataFrame(
            columns=CURVE_COLUMNS)
    test_images, test_table = read_split(cfg.data_dir, "test")
    if cfg.mode == "release":  # the synthetic world's released network, scored as a trained one
        released = common.load_released(cfg, {"arcface": ("official_path", PRODUCT_FILE)}, CURVE_COLUMNS)
        net, curve, metrics = load_arcface(released.products["arcface"]), released.curve, released.metrics
    else:
        images, table = read_split(cfg.data_dir, cfg.UPSTREAM_SPLIT)
        result = train_idnet(cfg, images, table["identity"].to_numpy(), progress=progress)
        write_json(cfg.folder / PRODUCTS_FILE, {"arcface": study_relative(save_idnet(cfg, result.net))})
        common.finish(cfg.checkpoint_path)
        common.write_run_record(cfg.folder, result.seconds, result.steps_run, result.resumed_from)
        net, curve = result.net, result.curve
        metrics = {"trained": 1, "steps": cfg.steps}
    metrics.update(parameters=sum(p.numel() for p in net.parameters()),
                   test=evaluate_idnet(net, test_images, test_table["identity"].to_numpy()))
    if len(curve):
        metrics["final_train_accuracy"] = float(curve["accuracy"].iloc[-1])
    return net, metrics, curve
