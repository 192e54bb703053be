"""The data pipeline at the paper's size: index a folder of aligned photos, then stream batches from it.

A synthetic folder of ``n`` 1024 px PNG files (``BASE_IMAGES`` distinct smooth random images,
each linked under many names, so that 10,000 files cost no disk) is indexed by
:func:`megafr.datasets.manifest.index_folder` and read through :func:`megafr.datasets.loader.batch_loader`
as training reads it: ``STREAMED`` images in batches of ``BATCH`` at rows drawn over the whole
folder, decoded and turned into model input. Reported per folder size: indexing time, images/s of
the stream, and (by the runner) the case process's peak memory; with 1,000 and 10,000 files the
peak memory should be the same, while one in-memory uint8 array of the folder (the former layout,
``array_equivalent_gb``, computed) grows with it. One process reads (no workers), so the peak
memory includes the decoding.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.worlds import Settings
from megafr.datasets.loader import ImageFiles, StepBatches, batch_loader, to_model_input
from megafr.datasets.manifest import index_folder

BASE_IMAGES = 8  # distinct images behind the links
BATCH = 8  # images per batch
SIZES = {False: (1024, 1000, 10000, 96), True: (64, 50, 500, 16)}  # quick -> (px, small n, large n, streamed)


def base_images(root: Path, size: int) -> list[Path]:
    """``BASE_IMAGES`` smooth random PNGs (low-frequency noise upsampled: photo-like file sizes), made once."""
    folder = root / f"base_{size}"
    if not folder.is_dir():
        staging = root / f"base_{size}.partial"
        staging.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for k in range(BASE_IMAGES):
            coarse = rng.integers(0, 256, (max(size // 32, 2), max(size // 32, 2), 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC).save(staging / f"base_{k}.png")
        staging.rename(folder)
    return sorted(folder.glob("*.png"))


def synthetic_folder(root: Path, n: int, size: int) -> Path:
    """A folder of ``n`` PNG names (links to the base images) of ``size`` px, made once per (n, size)."""
    folder = root / f"photos_{size}px_{n}"
    if not folder.is_dir():
        bases = base_images(root, size)
        staging = root / f"photos_{size}px_{n}.partial"
        staging.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            os.symlink(bases[i % len(bases)].resolve(), staging / f"{i:05d}.png")
        staging.rename(folder)
    return folder


def stream(settings: Settings, n: int) -> dict:
    """Index an ``n``-file folder, then stream images from it (module docstring)."""
    size, _, _, count = SIZES[settings.quick]
    root = Path(settings.work_dir) / "data_pipeline"
    root.mkdir(parents=True, exist_ok=True)
    folder = synthetic_folder(root, n, size)
    began = time.perf_counter()
    index_folder(folder, root / f"manifest_{n}.csv", size)
    index_s = time.perf_counter() - began
    photos = ImageFiles(root / f"manifest_{n}.csv")
    rng = np.random.default_rng(1)
    rows = rng.integers(0, n, count)
    batches = StepBatches(lambda step: rows[step * BATCH:(step + 1) * BATCH], 0, count // BATCH)
    began = time.perf_counter()
    streamed = 0
    for batch in batch_loader(photos, batches, torch.device("cpu")):
        x = to_model_input(batch, torch.device("cpu"))
        streamed += len(x)
    seconds = time.perf_counter() - began
    return {"files": n, "image_size": size, "index_s": round(index_s, 3), "images_streamed": streamed,
            "images_per_s": round(streamed / seconds, 2), "batch": BATCH, "loader_workers": 0,
            "manifest_kb": round((root / f"manifest_{n}.csv").stat().st_size / 1024, 1),
            "array_equivalent_gb": round(n * size * size * 3 / 1e9, 3)}


def small_folder(settings: Settings) -> dict:
    return stream(settings, SIZES[settings.quick][1])


def large_folder(settings: Settings) -> dict:
    return stream(settings, SIZES[settings.quick][2])
