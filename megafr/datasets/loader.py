"""Reading training and evaluation images through ``torch.utils.data``, so memory does not grow with the data.

Two kinds of image sets, opened by :func:`open_images` from one path:

- ``*.npy``: a uint8 array [N, S, S, 3] (the synthetic worlds' splits), memory-mapped, so only the
  rows a batch asks for are read;
- ``*.csv``: a manifest of image files (:mod:`megafr.datasets.manifest`, e.g. an already-aligned
  FFHQ or CelebA-HQ folder), each file decoded when a batch asks for it.

:class:`StepBatches` yields, for each training step, the rows the step's batch is made of (a pure
function of seed and step, as :func:`megafr.training.batch_rows` or a stage's own order decides),
cut to this process's share when training runs on several processes (:mod:`megafr.distributed`).
:func:`batch_loader` wraps both in a ``DataLoader``: worker processes decode the next batches while
the GPU works, into pinned memory on CUDA; on the CPU the main process reads (workers would only
compete with the training for the same cores). ``$MEGAFR_LOADER_WORKERS`` sets the worker count.

Batches arrive as uint8 [B, S, S, 3]; :func:`to_model_input` turns them into the networks' float
[B, 3, S, S] in [-1, 1] on the device, with exactly :func:`megafr.imageio.images_to_tensor`'s values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from megafr.errors import InputError, MissingFileError
from megafr.imageio import HALF_RANGE, load_image

WORKERS_VARIABLE = "MEGAFR_LOADER_WORKERS"  # environment variable: DataLoader worker processes
CUDA_WORKERS = 4  # worker processes on CUDA unless set (at most the CPU count minus one)
PREFETCH = 2  # batches each worker prepares ahead


class ImageArray(Dataset):
    """Rows of a uint8 .npy array [N, S, S, 3], memory-mapped (opened lazily in each worker process)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"image array {self.path} not found; run the prepare stage")
        self._array: Optional[np.ndarray] = None
        shape = np.load(self.path, mmap_mode="r").shape
        if len(shape) != 4 or shape[-1] != 3:
            raise InputError(f"{self.path}: expected uint8 images [N, S, S, 3], got shape {shape}")
        self.shape = shape

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array(self._rows()[index])  # a copy: the batch must not pin the mapped pages

    def __getstate__(self):  # workers re-open the map instead of pickling it
        return {**self.__dict__, "_array": None}


class ImageFiles(Dataset):
    """Image files listed by a manifest (paths relative to the manifest's folder), decoded on demand."""

    def __init__(self, manifest: str | os.PathLike):
        from megafr.datasets.manifest import read_manifest

        self.manifest = Path(manifest)
        table = read_manifest(self.manifest)
        self.root = Path(table.attrs["root"])
        self.paths = list(table["path"])
        self.size = int(table.attrs.get("image_size", 0)) or None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        image = load_image(self.root / self.paths[index])
        if self.size is not None and image.shape[:2] != (self.size, self.size):
            raise InputError(f"{self.root / self.paths[index]} is {image.shape[1]}x{image.shape[0]} px, but the "
                             f"manifest {self.manifest} lists {self.size} px aligned images; re-run prepare")
        return image


def open_images(path: str | os.PathLike) -> Dataset:
    """The image set at ``path``: a memory-mapped ``.npy`` array or a ``.csv`` manifest of files."""
    path = Path(path)
    if path.suffix == ".npy":
        return ImageArray(path)
    if path.suffix == ".csv":
        return ImageFiles(path)
    raise InputError(f"{path}: an image set is a .npy array or a .csv manifest of files (prepare writes both)")


class InMemory(Dataset):
    """Rows of an array already in memory (or memory-mapped by the caller): uint8 [N, S, S, 3]."""

    def __init__(self, images: np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"expected uint8 images [N, S, S, 3], got shape {images.shape}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array(self.images[index])


def as_dataset(images) -> Dataset:
    """A dataset as is; an array wrapped in :class:`InMemory`; a path opened by :func:`open_images`."""
    if isinstance(images, Dataset):
        return images
    if isinstance(images, np.ndarray):
        return InMemory(images)
    return open_images(images)


def image_batch(dataset: Dataset, rows: Sequence[int]) -> np.ndarray:
    """uint8 images [len(rows), S, S, 3] read from ``dataset`` in the main process (evaluation, small sets)."""
    return np.stack([dataset[int(i)] for i in rows])


class ImageRows:
    """Chosen rows of an image dataset seen as a uint8 array [N, S, S, 3] that is read only where indexed
    (``len``, ``shape``, ``view[i]``, ``view[a:b]``): evaluation sets of photos never sit in memory whole."""

    def __init__(self, dataset: Dataset, rows: Sequence[int]):
        self.dataset, self.rows = dataset, np.asarray(rows, dtype=np.int64)
        first = dataset[int(self.rows[0])] if len(self.rows) else np.zeros((0, 0, 3), np.uint8)
        self.shape = (len(self.rows), *first.shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        chosen = self.rows[key]
        if np.ndim(chosen) == 0:
            return self.dataset[int(chosen)]
        if len(chosen) == 0:
            return np.zeros((0, *self.shape[1:]), np.uint8)
        return image_batch(self.dataset, chosen)


class StepBatches(Sampler):
    """Per step ``start .. end - 1``: ``rows(step)`` (a global batch of row indices), then this process's share."""

    def __init__(self, rows: Callable[[int], np.ndarray], start: int, end: int,
                 share: Callable[[np.ndarray], np.ndarray] = lambda r: r):
        self.rows, self.start, self.end, self.share = rows, start, end, share

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            yield [int(i) for i in self.share(np.asarray(self.rows(step)))]


def loader_workers(device: torch.device) -> int:
    """Worker processes: ``$MEGAFR_LOADER_WORKERS`` if set, else 0 on the CPU and up to ``CUDA_WORKERS`` on CUDA."""
    value = os.environ.get(WORKERS_VARIABLE, "").strip()
    if value:
        if not value.isdigit():
            raise InputError(f"{WORKERS_VARIABLE}={value!r} must be a whole number of worker processes")
        return int(value)
    if device.type != "cuda":
        return 0
    return max(0, min(CUDA_WORKERS, (os.cpu_count() or 1) - 1))


def _collate(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images))  # uint8 [B, S, S, 3]


def batch_loader(dataset: Dataset, batches: Sampler, device: torch.device) -> DataLoader:
    """A DataLoader yielding uint8 batches [B, S, S, 3] in ``batches``' order (pinned memory on CUDA)."""
    workers = loader_workers(device)
    # Its own generator: a DataLoader draws its workers' base seed at every iteration start, which would
    # otherwise take a number from torch's global stream and make a resumed run's stream differ from an
    # uninterrupted one's (the batches come from ``batches``, so this seed changes no data).
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                      pin_memory=device.type == "cuda", prefetch_factor=PREFETCH if workers else None,
                      persistent_workers=False, generator=torch.Generator().manual_seed(0))


def to_model_input(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float32 [B, 3, S, S] in [-1, 1] on ``device`` (``x / 127.5 - 1``)."""
    moved = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return (moved.to(torch.float32) / HALF_RANGE - 1.0).contiguous()


class ZippedRows(Dataset):
    """Row ``i`` of several image sets at once (a tuple of uint8 images; a set given as None is left out)."""

    def __init__(self, *sets):
        self.sets = [images for images in sets if images is not None]
        if not self.sets or len({len(images) for images in self.sets}) != 1:
            raise InputError("zipped image sets must be given and have the same length")

    def __len__(self) -> int:
        return len(self.sets[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        return tuple(np.asarray(images[index]) for images in self.sets)


def _collate_zipped(rows: list[tuple[np.ndarray, ...]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.stack(part)) for part in zip(*rows))  # uint8 [B, S, S, 3] per set


def ordered_batches(sets: Sequence, batch: int, device: torch.device) -> Iterator[tuple[Optional[torch.Tensor], ...]]:
    """Consecutive batches of rows of several image sets (None entries stay None), read through a DataLoader
    (workers and pinned memory on CUDA, as for training), as float [B, 3, S, S] in [-1, 1] on ``device``."""
    dataset = ZippedRows(*sets)
    starts = range(0, len(dataset), batch)
    sampler = [list(range(start, min(start + batch, len(dataset)))) for start in starts]
    workers = loader_workers(device)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=_collate_zipped,
                        pin_memory=device.type == "cuda", prefetch_factor=PREFETCH if workers else None)
    for parts in loader:
        moved = iter(to_model_input(part, device) for part in parts)
        yield tuple(None if images is None else next(moved) for images in sets)
