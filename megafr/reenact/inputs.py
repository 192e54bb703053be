"""What an E_FR training step computes without gradients, and a per-image cache of it.

Each step first derives its inputs from the source photos ``x_real`` and target photos ``x_t`` with frozen
networks only (steps 1-3 of :mod:`megafr.reenact.train`): the inversion ``w_s = E_inv(x_real)``,
``x_s = G(w_s)``, the 3D network's parameters of ``x_s`` and of ``x_t``, and the rendering ``r_s`` of the
source's own geometry. :func:`step_inputs` is that computation; :func:`make_targets` renders (or, for the
parameter-fed baseline, tiles) a condition.

All of it but the target rendering ``r_t`` (the source's identity with the target's expression and pose:
one per pair) is a function of one training image. When a world's training set is small (the mini world:
8000 images at 64 px), ``train_reenact.input_cache`` names a folder where :func:`input_cache` computes it
once per image and encoder, and every training that follows (train_reenact's variants and the evaluate
stage's ablations, several at a time in worker processes) reads its rows from memory-mapped arrays instead
of recomputing them (about a sixth of a mini step: ``docs/experiments/training.md``). The paper world's
70,000 photos would need hundreds of gigabytes, so there the key stays empty and each step computes its
inputs; :func:`input_cache` refuses a cache larger than ``MAX_CACHE_GIB``. Computing an image's entry costs
about what reading it saves a step, so a missing cache is computed only for trainings that draw more pairs
than there are images (:func:`pays`; :func:`megafr.reenact.parallel.caches_to_build` adds up the trainings
of a worker pool).

A cache folder is named after the encoder and a digest of everything its values depend on (the frozen
networks' and training images' files, the autocast precision, the training code), is written under a
temporary name and renamed when complete, and replaces the encoder's older caches (but not a cache another
running process is still writing). The images ``x_s`` and
renderings ``r_s`` are stored in float16 (the step runs its networks in bfloat16 on the mini world's CPUs
anyway), codes and parameters in float32. No library keeps such a cache of a network's outputs across
processes, hence this module.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import psutil
import torch

from megafr.config import study_path
from megafr.datasets.loader import as_dataset, ordered_batches
from megafr.devices import autocast, full_precision
from megafr.errors import InputError
from megafr.face3d.framing import aligned_camera
from megafr.face3d.pose import GLOBAL, JAW, LEFT_EYE, RIGHT_EYE
from megafr.face3d.recon import FaceModel
from megafr.progress import progress_bar

# The functions below take megafr.reenact.train's ReenactConfig (``cfg``) and Frozen networks (``frozen``);
# that module imports this one, so they are not named in annotations here.
CONDITION_POSE = (GLOBAL, JAW, LEFT_EYE, RIGHT_EYE)  # pose parts fed to the params baseline (neck is zero)
MAX_CACHE_GIB = 16.0  # larger caches are refused: compute the inputs in each step instead
BUILD_BATCH = 64  # images per batch while the cache is computed
DONE_FILE = "cache.json"
TEMP_MARKER = ".tmp"  # a cache being written: <folder name>.tmp<pid of the writer>
TEMP_MAX_AGE_S = 24 * 3600  # an unfinished cache older than this is another run's leftover, whatever its pid
SOURCE_FIELDS = ("x_s", "w_s", "shape", "expression", "pose", "render")  # indexed by the source rows
TARGET_FIELDS = ("target_expression", "target_pose")  # indexed by the target rows
HALF = ("x_s", "render")  # stored in float16


class StepInputs(NamedTuple):
    """A step's inputs computed without gradients, for B source/target pairs."""

    x_s: torch.Tensor  # [B, 3, S, S] G(w_s), in [-1, 1]
    w_s: torch.Tensor  # [B, n_latent, D] the sources' inversions
    shape: torch.Tensor  # [B, n_shape] beta_s, measured on x_s
    expression: torch.Tensor  # [B, n_expr] psi_s
    pose: torch.Tensor  # [B, 15] theta_s
    target_expression: torch.Tensor  # [B, n_expr] psi_t, measured on x_t
    target_pose: torch.Tensor  # [B, 15] theta_t
    render: Optional[torch.Tensor] = None  # [B, 3, S, S] r_s when it was cached (render condition), else None


class Targets(NamedTuple):
    condition: torch.Tensor  # [B, C, S, S] r_t (or the tiled parameters of the baseline)
    landmarks: torch.Tensor  # [B, 68, 3] p_t
    expression: torch.Tensor  # [B, n_expr] psi_t
    pose: torch.Tensor  # [B, 15] theta_t


@torch.no_grad()
def make_targets(face: FaceModel, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
                 condition: str) -> Targets:
    """Target condition and landmarks for FLAME(shape, expression, pose), framed like an FFHQ crop (float32,
    also inside an autocast region)."""
    with full_precision(shape.device):
        shape, expression, pose = shape.float(), expression.float(), pose.float()
        points = face.landmark_flame(shape, expression, pose)  # [B, 68, 3]
        if condition == "render":
            cond = face.render_geometry(shape, expression, pose, aligned_camera(points))
        else:
            flat = torch.cat([expression] + [pose[:, part] for part in CONDITION_POSE], dim=1)  # [B, C]
            size = face.config.image_size
            cond = flat[:, :, None, None].expand(-1, -1, size, size).contiguous()
    return Targets(cond, points, expression, pose)


@torch.no_grad()
def invert(frozen, x_real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w_s = E_inv(x_real)`` and ``x_s = G(w_s)`` (fixed noise, clamped to the image range)."""
    w_s = frozen.inversion.encode(x_real)
    noise = frozen.generator.stored_noise()
    return frozen.generator.synthesis(w_s, noise=noise).clamp(-1, 1), w_s


@torch.no_grad()
def step_inputs(frozen, x_real: torch.Tensor, x_t: torch.Tensor) -> StepInputs:
    """The inversion of the sources and the 3D network's parameters of ``x_s`` and ``x_t`` (``render`` None)."""
    x_s, w_s = invert(frozen, x_real)
    source = frozen.face.net(x_s)
    target = frozen.face.net(x_t)
    return StepInputs(x_s, w_s, source.shape, source.expression, source.pose, target.expression, target.pose)


class InputCache:
    """Memory-mapped per-image inputs of one encoder; :meth:`batch` gathers a step's rows."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in SOURCE_FIELDS + TARGET_FIELDS}

    def __len__(self) -> int:
        return len(self.arrays["w_s"])

    def batch(self, sources: np.ndarray, targets: np.ndarray, device: torch.device, render: bool) -> StepInputs:
        """The inputs of the pairs ``(sources[i], targets[i])`` as float32 tensors on ``device``; ``render``:
        include the sources' renderings r_s (the render condition's)."""

        def rows(name: str, index: np.ndarray) -> torch.Tensor:
            values = np.ascontiguousarray(self.arrays[name][np.asarray(index)])
            return torch.from_numpy(values).to(device=device, dtype=torch.float32)

        fields = {name: rows(name, sources) for name in SOURCE_FIELDS if name != "render" or render}
        fields.update({name: rows(name, targets) for name in TARGET_FIELDS})
        return StepInputs(**fields)


def cache_bytes(n_images: int, image_size: int, n_latent: int, style_dim: int) -> int:
    """Bytes of a cache of ``n_images`` (float16 x_s and r_s, float32 codes; parameters are small)."""
    return n_images * (2 * 3 * image_size * image_size * 2 + n_latent * style_dim * 4 + 4 * 64)


def cache_folder(cfg, digest: str) -> Path:
    """The folder of ``cfg.encoder``'s cache whose values depend on what ``digest`` identifies (the frozen
    networks' and training images' files, the step's precision, the training code:
    :func:`megafr.reenact.train.input_cache_digest`)."""
    return study_path(cfg.input_cache) / f"{cfg.encoder}-{digest}"


def pays(pairs: int, n_images: int) -> bool:
    """Whether computing a cache of ``n_images`` saves time for trainings that draw ``pairs`` source/target pairs
    in all: computing an image's entry costs about what reading it saves a step 1.25 times (mini world, one
    thread: 16 against 13 ms), so the pairs must outnumber the images."""
    return pairs >= n_images


def input_cache(cfg, frozen, images, digest: str, progress: bool = True,
                pairs: Optional[int] = None) -> Optional[InputCache]:
    """The cache of ``cfg.encoder``'s inputs under ``cfg.input_cache``, computed first when it is missing or
    stale, unless ``pairs`` (the pairs the caller's trainings will draw; None: compute regardless) is too few
    for it to pay (:func:`pays`). None when the key is empty or the cache is not worth computing. ``frozen``
    must hold ``cfg``'s networks (its encoder's inversion)."""
    if not cfg.input_cache:
        return None
    images = as_dataset(images)
    folder = cache_folder(cfg, digest)
    root = folder.parent
    if (folder / DONE_FILE).is_file():
        return InputCache(folder)
    if pairs is not None and not pays(pairs, len(images)):
        return None
    check_room(cfg, frozen, images)
    for old in root.glob(f"{cfg.encoder}-*"):  # an encoder keeps one cache: the current networks'
        if not _built_elsewhere(old):
            shutil.rmtree(old, ignore_errors=True)
    _build(cfg, frozen, images, folder, progress)
    return InputCache(folder)


def check_room(cfg, frozen, images) -> None:
    """Refuse (``InputError``) a cache of ``images`` that would exceed :data:`MAX_CACHE_GIB` or the free disk
    under ``cfg.input_cache`` (the folder is created to measure it). Callers that start trainings beside the
    build (:func:`megafr.reenact.parallel.train_many`) check first, so that a refusal comes before any of
    them starts rather than after they end."""
    images = as_dataset(images)
    first = np.asarray(images[0])
    generator = frozen.generator
    need = cache_bytes(len(images), first.shape[0], generator.n_latent, generator.style_dim)
    if need > MAX_CACHE_GIB * 2 ** 30:
        raise InputError(f"train_reenact.input_cache: caching {len(images)} images of {first.shape[0]} px would take "
                         f"{need / 2 ** 30:.1f} GiB (limit {MAX_CACHE_GIB:g}); set input_cache: \"\" so that each step "
                         "computes its inputs")
    root = study_path(cfg.input_cache)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if need > free:
        raise InputError(f"train_reenact.input_cache: {need / 2 ** 30:.2f} GiB needed in {root}, {free / 2 ** 30:.2f} "
                         "GiB free; free some space or set input_cache: \"\"")


def _built_elsewhere(path: Path) -> bool:
    """Whether ``path`` is a cache another running process is writing (``<name>.tmp<pid>``, that pid alive,
    the folder younger than :data:`TEMP_MAX_AGE_S`): it is left alone. The temporary folders of processes that
    died, or older ones (whose pid may have been reused), are removed with the old caches."""
    _, marker, pid = path.name.rpartition(TEMP_MARKER)
    if not marker or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return psutil.pid_exists(int(pid)) and time.time() - path.stat().st_mtime < TEMP_MAX_AGE_S


def _build(cfg, frozen, images, folder: Path, progress: bool) -> None:
    """Compute every image's inputs into ``folder`` (written under a temporary name, then renamed)."""
    device = next(frozen.generator.parameters()).device
    temp = folder.with_name(f"{folder.name}{TEMP_MARKER}{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    began, arrays, n = time.perf_counter(), {}, len(images)
    batches = ordered_batches([images], BUILD_BATCH, device)
    bar = progress_bar(batches, total=-(-n // BUILD_BATCH), desc=f"E_FR inputs, {cfg.encoder} ({n} images)",
                       disable=not progress)
    start = 0
    for (x_real,) in bar:
        with autocast(device, training=True, cpu_bf16=cfg.cpu_bf16):
            found = step_inputs(frozen, x_real, x_real)  # targets: each image's own parameters
            render = make_targets(frozen.face, found.shape, found.expression, found.pose, "render").condition
        values = {**found._asdict(), "render": render}
        for name in SOURCE_FIELDS + TARGET_FIELDS:
            value = values[name].detach().float().cpu().numpy()
            if name not in arrays:
                dtype = np.float16 if name in HALF else np.float32
                arrays[name] = np.lib.format.open_memmap(temp / f"{name}.npy", mode="w+", dtype=dtype,
                                                         shape=(n, *value.shape[1:]))
            arrays[name][start:start + len(value)] = value
        start += len(x_real)
    for array in arrays.values():
        array.flush()
    del arrays
    (temp / DONE_FILE).write_text(json.dumps({"images": n, "encoder": cfg.encoder, "seconds": round(time.perf_counter() - began, 1),
                                              "digest": folder.name}))
    try:
        os.replace(temp, folder)
    except OSError:  # another process finished the same cache first: keep its copy
        shutil.rmtree(temp, ignore_errors=True)
        if not (folder / DONE_FILE).is_file():
            raise

