"""Training and evaluation of the 3D face reconstruction network (the ``train_face3d`` stage).

Recipe (paper section 3.1; ``docs/method.md`` section 3): the network sees an image and is supervised only
by that image's 2D landmarks (SynthHeads' rendered landmarks in the mini world, dlib's 68 points
on aligned photos in the paper profile), so the same code runs on real photos:

    L = lambda_lmk * L_lmk + lambda_kp * L_kp + lambda_pair * L_pair + lambda_sil * L_sil + lambda_shape * |beta|^2
        + lambda_expr * |psi|^2 + lambda_pose * |theta_jaw, theta_eyes|^2

- ``L_lmk``: weighted mean of the L1 distance (NDC units, averaged over x and y) between the
  projected FLAME landmarks and the image's landmarks; eye landmarks weigh ``lambda_eye`` and mouth
  landmarks ``lambda_mouth`` (larger than the others' 1, as the paper asks, because L_pair of the
  reenactment encoder reads eyelid and lip gaps from exactly these points);
- ``L_pair``: the reenactment loss's gap term (:func:`megafr.losses.pair_loss`) on the 2D eyelid pairs:
  the L1 difference of their upper-minus-lower vectors. An open eyelid is about a pixel at 64 px, so
  the landmark term alone barely rewards reading it (without L_pair the mini network's eyelid gaps
  were no better than a constant guess); the gap term rewards the opening itself, whatever the eye's
  position error. It trains the expression coefficients only (identity, pose and camera are detached
  in it): gaps also grow with the camera scale and the head's shape, and a gap term that could move
  those doubled the landmark NME. The lip pairs are left out: with them the same term pushed the
  mouth coefficients and the expression error grew sixfold (``docs/experiments/train_face3d.md``);
- ``L_kp``: the same weighted term on the network's intermediate 2D keypoints (its soft-argmax heatmaps,
  see ``FaceReconstructor``); same supervision, it only helps the CNN localise quickly;
- ``L_sil``: mean absolute difference between the soft silhouette of the predicted mesh
  (``Renderer.soft_silhouette``) and the head mask, at ``sil_size`` pixels on ``sil_batch`` images
  every ``sil_every`` steps (rasterizing the full mesh is the costly part of a step). Data without
  masks (aligned photos) must set ``lambda_sil = 0``;
- priors: L2 on identity and expression coefficients (FLAME's coefficients are unit-variance) and
  on the jaw and eye rotations (the global rotation is free). Eye rotations are not observable from
  the 68 landmarks (they sit on the eyelids), so the prior holds them at zero.

Ground-truth parameters of SynthHeads are read only by :func:`evaluate`.

Data: images stay on disk (SynthHeads' memory-mapped ``images.npy``, or the aligned photo files) and
are read through a ``torch.utils.data`` DataLoader (:mod:`megafr.datasets.loader`), each area-resized
to ``input_size`` when read; landmarks and masks are small arrays in memory. Under ``torchrun``
(:mod:`megafr.face3d.multigpu`, :mod:`megafr.distributed`) each process trains on its share of the
global batch, and :func:`silhouette_share` says which images get the silhouette term.

Determinism and resume: the batch at step ``k`` is a pure function of ``(seed, k)`` (one
permutation per epoch seeded by ``(seed, epoch)``), the learning rate a pure function of ``k``, and
the checkpoint (written atomically every ``checkpoint_every`` steps and at the end) holds the
weights, the optimizer state, the torch RNG state and the curve so far. A run that is killed and
started again continues from its last checkpoint and ends with the weights of an uninterrupted run.
It resumes only over the same settings, inputs and code: the checkpoint records a digest of the
training data and of the head-model files, and one of the training code (blind to comments and
docstrings, :func:`megafr.training.code_digest`); a run over other data (e.g. a re-made prepare
split) or other code starts afresh instead of continuing weights trained on something else.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset

from megafr import distributed, training
from megafr.config import comma_list, require, study_files_digest, study_path, study_relative, torch_device
from megafr.datasets.loader import ImageArray, ImageRows, InMemory, StepBatches, batch_loader, to_model_input
from megafr.devices import autocast, module_device, to_cpu
from megafr.errors import InputError, MissingFileError
from megafr.face3d import landmarks as lmk
from megafr.face3d.flame import FLAME, POSE_DIM
from megafr.face3d.pose import JAW, LEFT_EYE, RIGHT_EYE, head_pose_degrees
from megafr.face3d.recon import (
    FaceModel, FaceParams, ReconConfig, read_checkpoint, save_checkpoint_dict,
)
from megafr.face3d.render import Renderer, project
from megafr.imageio import images_to_tensor
from megafr.losses import pair_loss, silhouette_loss, weighted_landmark_loss
from megafr.progress import progress_bar
from megafr.training import batch_rows as batch_indices  # the data order: a function of (seed, step)

SOURCES = ("synthetic", "photos")
CHECKPOINT_FILE = "checkpoint.pt"
WARMUP_FRACTION = 0.05  # share of the steps with a linear learning-rate warm-up (then cosine decay to 0)
ADAM_BETAS = (0.9, 0.999)
MEMORY_FORMAT = torch.channels_last  # the network's weights and batches while training: NHWC convolutions, faster on
# the CPU (oneDNN) and on GPUs alike (benchmarks/: training, face3d_memory_format); the weights saved are the same
CURVE_POINTS = 200  # about this many rows in the training curve CSV
METRES_TO_MM = 1000.0
PERCENT = 100.0
EVAL_BATCH = 100  # images per evaluation batch
PHOTO_TEST_EVERY = 10  # photos source: every 10th aligned photo is held out for evaluation
EXTRA_SPLITS = ("recognition",)  # SynthHeads splits extra_splits may add to the training images (never test)
DIGEST_CHUNK = 256  # images hashed at a time by LandmarkSet.digest
PHOTO_PIXEL_CENTRE = 0.5  # align.py writes landmarks with pixel centres at integers; SynthHeads at j + 0.5
LOSS_TERMS = ("lmk", "kp", "sil", "shape", "expr", "pose")
# Config fields that may change between an interrupted run and its resumption.
RESUME_FREE_FIELDS = ("checkpoint_every", "threads", "out_dir", "run_dir", "profile")
# sources the weights depend on (resume key)
TRAINING_CODE = ("face3d", "losses", "training.py", "imageio.py", "distributed.py", "datasets/loader.py")


@dataclass(frozen=True)
class TrainConfig:
    """Parameters of the train_face3d stage (params.yaml block ``train_face3d`` plus shared keys)."""

    profile: str  # profile that produced the run (labels figures and metrics)
    seed: int  # seeds the weights and the data order
    model_path: str  # FLAME-format model file
    landmark_path: str  # DECA-layout landmark embedding
    data_dir: str  # output folder of the prepare stage
    source: str  # "synthetic" (SynthHeads splits) or "photos" (aligned photos + dlib landmarks)
    image_size: int  # side of the data set's images (and of the images callers pass to the model)
    input_size: int  # side the CNN sees (images are area-resized to it)
    n_shape: int  # identity coefficients regressed
    n_expr: int  # expression coefficients regressed
    width: int  # stem channels of the CNN
    eye_patch: int  # side (input pixels) of the eye crops the network's eye branch reads (0: no branch)
    extra_splits: str  # comma-separated SynthHeads splits trained on besides ``train`` (EXTRA_SPLITS; "": none)
    cam_scale_init: float  # camera scale predicted before training: rough framing of the crops (NDC units / m)
    cam_ty_init: float  # vertical camera translation before training (metres)
    steps: int  # optimisation steps
    batch_size: int  # images per step
    lr: float  # peak Adam learning rate
    lambda_lmk: float  # weight of the 2D landmark term
    lambda_kp: float  # weight of the same landmark term on the network's intermediate 2D keypoints
    lambda_eye: float  # per-landmark weight of the 12 eye landmarks (others 1)
    lambda_mouth: float  # per-landmark weight of the 20 mouth landmarks
    lambda_pair: float  # weight of the 2D eyelid-gap term (L_pair on the eyelid pairs, NDC units)
    lambda_sil: float  # weight of the silhouette term (0 when the data has no masks)
    sil_every: int  # the silhouette term runs every this many steps
    sil_size: int  # silhouette render size, pixels
    sil_batch: int  # images of the batch that get the silhouette term
    sil_sigma: float  # softness of the silhouette, pixels at sil_size
    lambda_shape: float  # L2 prior on identity coefficients
    lambda_expr: float  # L2 prior on expression coefficients
    lambda_pose: float  # L2 prior on jaw and eye rotations
    checkpoint_every: int  # write a checkpoint every this many steps (and at the end)
    threads: int  # torch CPU threads during training (0: leave torch's setting alone)
    # bfloat16 autocast of the CNN on a CPU with native bf16 (megafr.devices.cpu_bf16_native; float32 on other
    # CPUs); FLAME, landmarks and losses stay float32. On CUDA the CNN runs in bf16 where supported either way.
    cpu_bf16: bool = field(kw_only=True)  # keyword-only: a stage field without a default before the defaults
    out_dir: str = "data/train_face3d"  # checkpoint folder
    run_dir: str = ""  # set by a sweep: write under <run_dir>/train_face3d instead

    def __post_init__(self):
        require(self.source in SOURCES, f"train_face3d.source must be one of {SOURCES}, got {self.source!r}")
        for name in ("steps", "batch_size", "sil_every", "sil_size", "sil_batch", "checkpoint_every"):
            require(getattr(self, name) >= 1, f"train_face3d.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lambda_lmk", "lambda_kp", "lambda_eye", "lambda_mouth", "lambda_pair", "lambda_sil", "lambda_shape", "lambda_expr",
                     "lambda_pose"):
            require(getattr(self, name) >= 0, f"train_face3d.{name} must be >= 0, got {getattr(self, name)}")
        require(self.lr > 0, f"train_face3d.lr must be positive, got {self.lr}")
        require(self.sil_sigma > 0, f"train_face3d.sil_sigma must be positive, got {self.sil_sigma}")
        require(self.threads >= 0, f"train_face3d.threads must be >= 0, got {self.threads}")
        require(isinstance(self.cpu_bf16, bool), f"train_face3d.cpu_bf16 must be true or false, got {self.cpu_bf16!r}")
        for split in self.extra_split_names:
            require(split in EXTRA_SPLITS, f"train_face3d.extra_splits may name {', '.join(EXTRA_SPLITS)} (comma-separated) "
                                           f"or be empty, got {split!r}")
        require(self.source == "synthetic" or not self.extra_split_names,
                "train_face3d.extra_splits must be empty for the photos source: it names SynthHeads splits")
        require(self.source == "synthetic" or self.lambda_sil == 0,
                "train_face3d.lambda_sil must be 0 for the photos source: aligned photos have no head masks "
                "(the silhouette term needs them); set lambda_sil: 0 in params.yaml")
        self.recon_config()  # validates sizes

    @property
    def extra_split_names(self) -> list[str]:
        return list(comma_list(self.extra_splits))

    def recon_config(self) -> ReconConfig:
        return ReconConfig(n_shape=self.n_shape, n_expr=self.n_expr, image_size=self.image_size,
                           input_size=self.input_size, width=self.width, cam_scale_init=self.cam_scale_init,
                           cam_ty_init=self.cam_ty_init, eye_patch=self.eye_patch)

    @property
    def checkpoint_path(self) -> Path:
        folder = study_path(self.run_dir) / "train_face3d" if self.run_dir else study_path(self.out_dir)
        return folder / CHECKPOINT_FILE


# ---------------------------------------------------------------------------------------- data
class ResizedImages(Dataset):
    """Images of another image dataset (uint8 [S, S, 3] per row) area-resized to ``size`` when read, one at a time."""

    def __init__(self, images: Dataset, size: int):
        self.images = images  # the stored images (a memory-mapped array or image files)
        self.size = size  # side the CNN sees

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        return _resize_uint8(np.asarray(self.images[index])[None], self.size)[0]


class PhotoFiles(Dataset):
    """The aligned photos named by the landmark table, ``<folder>/images/<stem>.png``, decoded on demand."""

    def __init__(self, folder: Path, names: Sequence[str]):
        self.paths = [folder / "images" / f"{Path(name).stem}.png" for name in names]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        from megafr.imageio import load_image

        return load_image(self.paths[index])

    def list_digest(self) -> str:
        """MD5 of the files' names and sizes (no pixel is read), as image manifests identify a folder."""
        from megafr.datasets.manifest import list_digest

        missing = [path for path in self.paths if not path.is_file()]
        if missing:
            raise MissingFileError(f"{missing[0]} (and {len(missing) - 1} more) not found: the landmark table lists "
                                   "photos its images/ folder lacks; re-run the prepare stage")
        return list_digest([path.name for path in self.paths], [path.stat().st_size for path in self.paths])


@dataclass(frozen=True)
class LandmarkSet:
    """Images with their 68 landmarks (and head masks when known); images at the CNN's input size.

    ``images`` is a uint8 array [N, s, s, 3] or an :class:`~megafr.datasets.loader.ImageRows` view that
    reads (and resizes) only the rows asked for: a training set of photos never sits in memory whole.
    """

    images: Union[np.ndarray, ImageRows]  # uint8 [N, s, s, 3] (indexable by rows; read lazily when a view)
    landmarks: np.ndarray  # float32 [N, 68, 2], NDC (x right, y up, [-1, 1] across the image)
    masks: Optional[np.ndarray]  # uint8 [N, s, s] (1 = head) or None
    table: pd.DataFrame  # one row per image: SynthHeads ground truth, or the photo landmark table
    images_digest: str = ""  # identifies the images without reading them (photos: names and sizes); "": hash pixels

    def __len__(self) -> int:
        return len(self.images)

    def digest(self) -> str:
        """MD5 of what the network learns from (images, landmarks, masks): a checkpoint resumes only over the same.

        The pixels are hashed in chunks of DIGEST_CHUNK images (the same digest as hashing the whole array at
        once), unless ``images_digest`` identifies them already (photos: the list of file names and sizes).
        """
        digest = hashlib.md5()
        if self.images_digest:
            digest.update(f"<files>{self.images_digest}".encode())
        else:
            digest.update(f"{tuple(self.images.shape)}{np.dtype(self.images.dtype).str}".encode())
            for start in range(0, len(self.images), DIGEST_CHUNK):
                digest.update(np.ascontiguousarray(self.images[start:start + DIGEST_CHUNK]).tobytes())
        for array in (self.landmarks, self.masks):
            if array is None:
                digest.update(b"<none>")
                continue
            digest.update(f"{array.shape}{array.dtype.str}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def image_dataset(self) -> Dataset:
        """The images as a dataset of uint8 [s, s, 3] rows (what the training DataLoader reads)."""
        return InMemory(self.images) if isinstance(self.images, np.ndarray) else self.images


def pixels_to_ndc(points: np.ndarray, image_size: int) -> np.ndarray:
    """Pixel coordinates [..., 2] (x right, y down, centres at j + 0.5) -> NDC (y up); inverse of ndc_to_pixels."""
    half = image_size / 2.0
    return np.stack([points[..., 0] / half - 1.0, 1.0 - points[..., 1] / half], axis=-1).astype(np.float32)


def _resize_uint8(images: np.ndarray, size: int, chunk: int = 256) -> np.ndarray:
    """Area-resize uint8 images [N, S, S(, 3)] to ``size`` (no-op when already that size)."""
    if images.shape[1] == size:
        return images
    out = []
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk])).float()
        x = x.unsqueeze(-1) if x.ndim == 3 else x
        y = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="area").permute(0, 2, 3, 1)
        out.append(y.round().clamp(0, 255).to(torch.uint8).squeeze(-1).numpy())
    return np.concatenate(out)


def _synthetic_split(cfg: TrainConfig, folder: Path) -> tuple[ImageArray, pd.DataFrame, np.ndarray, Optional[np.ndarray]]:
    """One SynthHeads split folder: (images, meta table, 2D landmarks [N, 68, 2] in pixels, masks or None)."""
    for name in ("images.npy", "meta.parquet"):
        if not (folder / name).is_file():
            raise MissingFileError(f"{folder / name} not found; run the prepare stage first (`dvc repro prepare`)")
    stored = ImageArray(folder / "images.npy")
    table = pd.read_parquet(folder / "meta.parquet")
    points = np.stack([table[[f"lmk2d_{axis}_{i}" for i in range(lmk.N_LANDMARKS)]].to_numpy(np.float64)
                       for axis in "xy"], axis=-1)  # [N, 68, 2] pixels
    masks = np.load(folder / "masks.npy") if (folder / "masks.npy").is_file() else None
    if masks is None and cfg.lambda_sil > 0:
        raise MissingFileError(f"{folder / 'masks.npy'} not found but lambda_sil={cfg.lambda_sil}; rebuild the data "
                               "set with the current prepare stage, or set train_face3d.lambda_sil: 0")
    if stored.shape[1] != cfg.image_size:
        raise InputError(f"{folder}: images are {stored.shape[1:]} but train_face3d.image_size={cfg.image_size}; "
                         "set image_size to the prepare stage's size")
    return stored, table, points, masks


def load_landmark_set(cfg: TrainConfig, split: str) -> LandmarkSet:
    """The ``train`` split of SynthHeads (with the ``extra_splits`` after it) or its ``test`` split; for the
    photos source, every PHOTO_TEST_EVERY-th aligned photo is ``test`` and the others ``train``. Images stay
    on disk (a memory-mapped ``images.npy``, or the aligned photo files) and are read and resized to
    ``input_size`` per batch; landmarks and masks (small) are loaded."""
    root = study_path(cfg.data_dir)
    if cfg.source == "synthetic":
        parts = [_synthetic_split(cfg, root / name)
                 for name in [split, *(cfg.extra_split_names if split == "train" else [])]]
        stored = parts[0][0] if len(parts) == 1 else ConcatDataset([part[0] for part in parts])
        table = pd.concat([part[1] for part in parts], ignore_index=True)
        points = np.concatenate([part[2] for part in parts])
        masks = None if any(part[3] is None for part in parts) else np.concatenate([part[3] for part in parts])
        files_digest = ""  # SynthHeads splits are small: their pixels are hashed, as before
    else:
        from megafr.datasets.align import read_landmark_table

        folder = root / "photos"
        if not (folder / "landmarks.parquet").is_file():
            raise MissingFileError(f"{folder / 'landmarks.parquet'} not found; run the prepare stage on photos first")
        table, points = read_landmark_table(folder / "landmarks.parquet")
        held_out = np.arange(len(table)) % PHOTO_TEST_EVERY == 0
        keep = held_out if split == "test" else ~held_out
        table, points = table[keep].reset_index(drop=True), points[keep] + PHOTO_PIXEL_CENTRE
        stored = PhotoFiles(folder, list(table["file"]))
        files_digest = stored.list_digest()
        masks = None
    landmarks = pixels_to_ndc(points, cfg.image_size)  # aligned photos are written at prepare.image_size too
    images = ImageRows(ResizedImages(stored, cfg.input_size), np.arange(len(stored)))
    return LandmarkSet(images, landmarks, None if masks is None else _resize_uint8(masks, cfg.input_size), table,
                       files_digest)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over WARMUP_FRACTION of the steps, then cosine decay to zero."""
    return training.cosine_lr(cfg.lr, step, cfg.steps, WARMUP_FRACTION, final_fraction=0.0)


# -------------------------------------------------------------------------------------- losses
def prior_losses(params: FaceParams) -> dict[str, torch.Tensor]:
    """L2 priors: mean square of identity, expression, and jaw + eye rotations."""
    rotations = torch.cat([params.pose[:, JAW], params.pose[:, LEFT_EYE], params.pose[:, RIGHT_EYE]], dim=1)
    zero = params.pose.new_zeros(())
    return {
        "shape": params.shape.pow(2).mean() if params.shape.numel() else zero,
        "expr": params.expression.pow(2).mean() if params.expression.numel() else zero,
        "pose": rotations.pow(2).mean(),
    }


class Face3dLoss(torch.nn.Module):
    """The weighted sum of the training terms; returns (total, {term: float})."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg  # the lambdas and silhouette settings
        self.register_buffer("weights", torch.tensor(lmk.landmark_weights(cfg.lambda_eye, cfg.lambda_mouth)))  # [68]
        self.sil_renderer: Optional[Renderer] = None

    def forward(self, model: FaceModel, small_images: torch.Tensor, target_ndc: torch.Tensor,
                masks: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        with autocast(small_images.device, training=True, cpu_bf16=cfg.cpu_bf16):  # the CNN only; FLAME and losses in float32
            params, keypoints = model.net.regress_with_keypoints(small_images)
        params, keypoints = FaceParams(*(t.float() for t in params)), keypoints.float()
        _, predicted = model.landmarks(params)  # [B, 68, 2] NDC
        terms = {"lmk": weighted_landmark_loss(predicted, target_ndc, self.weights),
                 "kp": weighted_landmark_loss(keypoints, target_ndc, self.weights)}
        if cfg.lambda_pair > 0:  # the gaps train the expression only (see the module docstring)
            only_expression = FaceParams(*(t if name == "expression" else t.detach()
                                           for name, t in zip(FaceParams._fields, params)))
            terms["pair"] = pair_loss(target_ndc, model.landmarks(only_expression)[1], lmk.EYELID_PAIRS)
        terms.update(prior_losses(params))
        lambdas = {"lmk": cfg.lambda_lmk, "kp": cfg.lambda_kp, "pair": cfg.lambda_pair, "shape": cfg.lambda_shape,
                   "expr": cfg.lambda_expr, "pose": cfg.lambda_pose}
        if masks is not None and cfg.lambda_sil > 0:
            terms["sil"] = self.silhouette(model, params, masks)
            lambdas["sil"] = cfg.lambda_sil
        total = sum(lambdas[name] * value for name, value in terms.items())
        return total, {name: float(value.detach()) for name, value in terms.items()}

    def silhouette(self, model: FaceModel, params: FaceParams, masks: torch.Tensor) -> torch.Tensor:
        """L_sil on the first ``sil_batch`` images: soft silhouette at sil_size vs the area-resized mask."""
        cfg = self.cfg
        if self.sil_renderer is None:
            self.sil_renderer = Renderer(model.flame.faces, cfg.sil_size).to(masks.device)
        k = min(cfg.sil_batch, masks.shape[0])
        part = FaceParams(*(value[:k] for value in params))
        vertices = model.flame(part.shape, part.expression, part.pose).vertices  # [k, N, 3]
        soft = self.sil_renderer.soft_silhouette(project(vertices, part.camera), cfg.sil_sigma)  # [k, 1, s, s]
        target = F.interpolate(masks[:k].float().unsqueeze(1), size=(cfg.sil_size, cfg.sil_size), mode="area")
        return silhouette_loss(soft, target)


# ------------------------------------------------------------------------------------ training
@dataclass
class TrainResult:
    model: FaceModel
    curve: pd.DataFrame  # step, lr, total and each loss term (window means)
    steps_run: int  # steps run by this call (0 when the checkpoint was already complete)
    seconds: float  # wall time of this call's training loop
    resumed_from: int  # step of the checkpoint this call resumed from (0: fresh start)


def build_model(cfg: TrainConfig, flame: Optional[FLAME] = None) -> FaceModel:
    """A fresh model with weights seeded by ``cfg.seed``."""
    if flame is None:
        flame = FLAME.from_files(study_path(cfg.model_path), study_path(cfg.landmark_path), cfg.n_shape, cfg.n_expr)
    torch.manual_seed(cfg.seed)
    return FaceModel(cfg.recon_config(), flame)


def _upstream_digest(cfg: TrainConfig, data: LandmarkSet) -> str:
    """Digest of a run's inputs beyond its config: the training data and the head-model files."""
    return data.digest() + study_files_digest((cfg.model_path, cfg.landmark_path))


def checkpoint_payload(model: FaceModel, optimizer, step: int, cfg: TrainConfig, curve: list, window: dict,
                       upstream: str) -> dict:
    """The checkpoint: the product's ``{"state_dict", "config", "step", "flame"}`` plus what resuming needs."""
    extra = {
        "upstream": upstream,  # _upstream_digest of the run, taken once at its start
        "code": training.code_digest(TRAINING_CODE),  # a checkpoint of other training code is not resumed
        "window": window,  # loss values of the unfinished curve row
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "train_config": asdict(cfg),
        "curve": curve,
        # relative to the study root when inside it (load_face_model resolves them): no checkout path in the product
        "flame": {"model_path": study_relative(study_path(cfg.model_path)),
                  "landmark_path": study_relative(study_path(cfg.landmark_path))},
    }
    return save_checkpoint_dict(model, step, extra)


def train_face3d(cfg: TrainConfig, data: LandmarkSet, flame: Optional[FLAME] = None, progress: bool = True,
                 stop_after: Optional[int] = None) -> TrainResult:
    """Train (or resume training) the network; checkpoints go to ``cfg.checkpoint_path``.

    Under ``torchrun`` (:mod:`megafr.distributed`) each of the N processes takes its share of the step's
    global batch of ``N * batch_size`` images; see :func:`silhouette_share` for the silhouette term.
    ``stop_after``: return after that many steps of this call, as an interruption would (tests use it).
    """
    here = distributed.setup()
    if len(data) < cfg.batch_size * here.size:
        raise InputError(f"train_face3d: {len(data)} training images but a global batch of {cfg.batch_size * here.size} "
                         f"(batch_size={cfg.batch_size} on {here.size} processes); lower batch_size or build a larger "
                         "data set")
    if cfg.lambda_sil > 0 and data.masks is None:
        raise InputError("train_face3d: lambda_sil > 0 but the data has no head masks; set lambda_sil: 0")
    silhouette_share(cfg, here)  # refuses a silhouette batch the processes cannot share evenly
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, data, flame, progress, stop_after, here)
    finally:
        torch.set_num_threads(previous_threads)


def silhouette_share(cfg: TrainConfig, here: distributed.World) -> int:
    """Images of this process's share of the batch that get the silhouette term on a silhouette step.

    The rule: the step's silhouette images are ``k = min(sil_batch, global batch)`` images of the global
    batch, ``k / N`` from the front of each process's share. In one process these are the batch's first
    ``sil_batch`` images; on N processes each renders ``k / N`` silhouettes, so the term costs the same per
    step whatever N is (and N processes match one process at the N-times batch when ``sil_batch`` covers
    the whole batch). ``k`` must split evenly over the processes.
    """
    total = min(cfg.sil_batch, cfg.batch_size * here.size)
    if total % here.size:
        raise InputError(f"train_face3d.sil_batch={cfg.sil_batch} silhouette images do not split over {here.size} "
                         f"processes; set sil_batch to a multiple of {here.size}")
    return total // here.size


class Face3dStep(torch.nn.Module):
    """One step's loss as a module (what ``DistributedDataParallel`` wraps): the model and its loss."""

    def __init__(self, model: FaceModel, loss_fn: Face3dLoss):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, images: torch.Tensor, target: torch.Tensor,
                masks: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.model, images, target, masks)


def _train(cfg: TrainConfig, data: LandmarkSet, flame, progress: bool, stop_after,
           here: distributed.World) -> TrainResult:
    device = torch_device()  # the GPU when there is one (this process's GPU under torchrun)
    model = build_model(cfg, flame).to(device)
    model.net.to(memory_format=MEMORY_FORMAT)
    # foreach: one call per operation for all the tensors, the same numbers as the per-tensor loop, a little faster
    optimizer = torch.optim.Adam(model.net.parameters(), lr=cfg.lr, betas=ADAM_BETAS, foreach=True)
    loss_fn = Face3dLoss(cfg).to(device)
    path = cfg.checkpoint_path
    start, curve, window = 0, [], {}
    upstream = _upstream_digest(cfg, data)
    saved = training.resumable(path, read_checkpoint, cfg, upstream=upstream, free_fields=RESUME_FREE_FIELDS,
                               config_entry="train_config", code=training.code_digest(TRAINING_CODE), steps=cfg.steps)
    if saved is not None:
        model.net.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        start, curve = int(saved["step"]), list(saved["curve"])
        window = {name: list(values) for name, values in saved.get("window", {}).items()}
    distributed.barrier()  # every rank has decided before rank 0 writes the next checkpoint
    engine = distributed.data_parallel(Face3dStep(model, loss_fn), model.net, here, device)
    log_every = max(cfg.sil_every, cfg.sil_every * (cfg.steps // (CURVE_POINTS * cfg.sil_every)))
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    sil_share = silhouette_share(cfg, here)

    def step_rows(step: int) -> np.ndarray:  # this process's share of the step's global batch
        return distributed.shard(batch_indices(cfg.seed, step, len(data), cfg.batch_size * here.size), here)

    batches = batch_loader(data.image_dataset(), StepBatches(step_rows, start, end), device)
    model.net.train()
    began = time.perf_counter()
    steps = progress_bar(range(start, end), desc="train_face3d", initial=start, total=cfg.steps,
                         disable=not (progress and here.main))
    for step, batch in zip(steps, batches):
        rows = step_rows(step)
        images = to_model_input(batch, device).contiguous(memory_format=MEMORY_FORMAT)  # [B, 3, s, s]
        target = torch.from_numpy(data.landmarks[rows]).to(device)  # [B, 68, 2]
        masks = None
        if data.masks is not None and cfg.lambda_sil > 0 and step % cfg.sil_every == 0:
            masks = torch.from_numpy(data.masks[rows[:sil_share]]).to(device)
        training.set_lr(optimizer, learning_rate(cfg, step))
        total, terms = engine(images, target, masks)
        training.check_finite("train_face3d", step, total, terms, path)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        for name, value in distributed.mean_over_ranks({"total": float(total.detach()), **terms}, device).items():
            window.setdefault(name, []).append(value)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "lr": learning_rate(cfg, step),
                          **{name: float(np.mean(values)) for name, values in window.items()}})
            window = {}
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            if here.main:
                payload = checkpoint_payload(model, optimizer, step + 1, cfg, curve, window, upstream)
                payload["processes"] = here.size  # the global batch was processes * batch_size images
                training.write_checkpoint(path, payload, "train_face3d", {"network": model.net})
            distributed.barrier()
    seconds = time.perf_counter() - began
    model.eval()
    return TrainResult(model, pd.DataFrame(curve).reindex(columns=["step", "lr", "total", *LOSS_TERMS]).fillna(0.0),
                       end - start, seconds, start)


# ---------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model: FaceModel, data: LandmarkSet) -> dict[str, np.ndarray]:
    """Parameters, 2D landmarks (NDC) and 3D landmarks of every image of ``data`` (model in eval mode)."""
    model.eval()
    device = module_device(model)
    parts: dict[str, list] = {}
    for start in range(0, len(data), EVAL_BATCH):
        images = images_to_tensor(data.images[start:start + EVAL_BATCH]).to(device)
        params = model.net.regress(images)
        lmk3d, lmk_ndc = model.landmarks(params)
        for name, value in {**params._asdict(), "landmarks_3d": lmk3d, "landmarks_ndc": lmk_ndc}.items():
            parts.setdefault(name, []).append(to_cpu(value).numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def _gaps(points: np.ndarray, pairs) -> np.ndarray:
    """Distances [N, len(pairs)] between the (upper, lower) landmark pairs of points [N, 68, D]."""
    upper, lower = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    return np.linalg.norm(points[:, upper] - points[:, lower], axis=-1)


def landmark_nme(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image mean landmark distance over the outer-eye-corner distance (36-45), [N]."""
    interocular = np.linalg.norm(target[:, lmk.RIGHT_EYE_OUTER] - target[:, lmk.LEFT_EYE_OUTER], axis=-1)
    return np.linalg.norm(predicted - target, axis=-1).mean(axis=-1) / interocular


def evaluate(model: FaceModel, data: LandmarkSet) -> dict:
    """Metrics on held-out images (numeric leaves, listed below).

    Every source: ``nme_percent``. SynthHeads also: eye/mouth opening error (mean over EYELID_PAIRS /
    LIP_PAIRS of the absolute difference of 3D gaps, mm), yaw/pitch/roll mean absolute error (degrees),
    expression and identity coefficient mean absolute errors, and the neutral-shape vertex error (mm,
    mean over vertices of the Euclidean distance, FLAME(beta, 0, 0)) beside that of the mean shape.
    """
    pred = predict(model, data)
    nme = landmark_nme(pred["landmarks_ndc"], data.landmarks)
    metrics: dict = {"images": len(data), "nme_percent": float(nme.mean() * PERCENT),
                     "nme_percent_median": float(np.median(nme) * PERCENT)}
    table = data.table
    if "yaw_deg" not in table.columns:
        return metrics
    truth3d = np.stack([table[[f"lmk3d_{axis}_{i}" for i in range(lmk.N_LANDMARKS)]].to_numpy(np.float64)
                        for axis in "xyz"], axis=-1)  # [N, 68, 3]
    for name, pairs in (("eye", lmk.EYELID_PAIRS), ("mouth", lmk.LIP_PAIRS)):
        error = np.abs(_gaps(pred["landmarks_3d"], pairs) - _gaps(truth3d, pairs)).mean()
        metrics[f"{name}_opening_error_mm"] = float(error * METRES_TO_MM)
    angles = head_pose_degrees(torch.from_numpy(pred["pose"]).double()).numpy()
    for k, name in enumerate(("yaw", "pitch", "roll")):
        metrics[f"{name}_error_deg"] = float(np.abs(angles[:, k] - table[f"{name}_deg"].to_numpy()).mean())
    expr_cols = [c for c in table.columns if c.startswith("expr_")][:model.config.n_expr]
    shape_cols = [c for c in table.columns if c.startswith("shape_")][:model.config.n_shape]
    true_expr, true_shape = table[expr_cols].to_numpy(np.float32), table[shape_cols].to_numpy(np.float32)
    metrics["expression_error"] = float(np.abs(pred["expression"][:, :len(expr_cols)] - true_expr).mean())
    metrics["shape_error"] = float(np.abs(pred["shape"][:, :len(shape_cols)] - true_shape).mean())
    metrics["shape_vertex_error_mm"], metrics["shape_vertex_error_mm_mean_shape"] = _neutral_vertex_errors(
        model, pred["shape"], true_shape)
    return metrics


@torch.no_grad()
def _neutral_vertex_errors(model: FaceModel, predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean per-vertex distance (mm) of the neutral heads: predicted vs true, and the mean head vs true."""
    flame = model.flame
    device = module_device(flame)
    n = len(predicted)
    zeros_e = torch.zeros(n, flame.n_expr, device=device)
    zeros_p = torch.zeros(n, POSE_DIM, device=device)
    full_truth = np.zeros((n, flame.n_shape), np.float32)
    full_truth[:, :truth.shape[1]] = truth
    errors, baseline = [], []
    for start in range(0, n, EVAL_BATCH):
        part = slice(start, start + EVAL_BATCH)
        true_v = flame(torch.from_numpy(full_truth[part]).to(device), zeros_e[part], zeros_p[part]).vertices
        pred_v = flame(torch.from_numpy(predicted[part]).to(device), zeros_e[part], zeros_p[part]).vertices
        errors.append((pred_v - true_v).norm(dim=-1).mean(dim=-1))
        baseline.append((flame.v_template - true_v).norm(dim=-1).mean(dim=-1))
    return (float(torch.cat(errors).mean() * METRES_TO_MM), float(torch.cat(baseline).mean() * METRES_TO_MM))


# ------------------------------------------------------------------------------------- figures
def curve_figure(curve: pd.DataFrame, title: str):
    """Training curves: each loss term (log scale) against the step."""
    from megafr import plots

    return plots.loss_curves(curve, title, columns=("total", *LOSS_TERMS))


def figure_rows(table: pd.DataFrame, n: int) -> np.ndarray:
    """``n`` rows spread evenly over the table, one per identity first when there are enough identities."""
    firsts = table.drop_duplicates("identity").index.to_numpy() if "identity" in table else np.arange(len(table))
    pool = firsts if len(firsts) >= n else np.arange(len(table))
    return pool[np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int)]


def reconstruction_figure(model: FaceModel, data: LandmarkSet, n: int, title: str):
    """Per test image (columns, ``n`` of them spread over identities): the image with true (green) and predicted (red) landmarks, and the
    predicted geometry rendered with the predicted camera, with the predicted landmarks."""
    import matplotlib.pyplot as plt

    from megafr.face3d.render import ndc_to_pixels

    rows = figure_rows(data.table, n)
    model.eval()
    with torch.no_grad():
        device = module_device(model)
        images = images_to_tensor(data.images[rows]).to(device)
        params = model.net.regress(images)
        _, lmk_ndc = model.landmarks(params)
        renderer = Renderer(model.flame.faces, data.images.shape[1]).to(device)
        vertices = model.flame(params.shape, params.expression, params.pose).vertices
        geometry = to_cpu(renderer(vertices, params.camera, mode="geometry").image)
        lmk_ndc = to_cpu(lmk_ndc)
    size = data.images.shape[1]
    predicted = ndc_to_pixels(lmk_ndc, size).numpy()
    truth = ndc_to_pixels(torch.from_numpy(data.landmarks[rows]), size).numpy()
    geometry_u8 = ((geometry.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    n = len(rows)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3.0), squeeze=False)
    for j in range(n):
        for i, (picture, label) in enumerate(((data.images[rows[j]], "image + landmarks"), (geometry_u8[j], "geometry"))):
            ax = axes[i, j]
            ax.imshow(picture, interpolation="nearest", extent=(0, size, size, 0))
            if i == 0:
                ax.scatter(truth[j, :, 0], truth[j, :, 1], s=1.0, c="lime", linewidths=0)
            ax.scatter(predicted[j, :, 0], predicted[j, :, 1], s=1.0, c="red", linewidths=0)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
