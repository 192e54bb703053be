"""Training on several processes (one per GPU) with ``torch.distributed``.

A stage started by ``torchrun --nproc_per_node N`` finds ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``
in its environment; :func:`setup` then joins the process group (NCCL on CUDA, gloo on the CPU)
and pins each process to its GPU. Started the ordinary way (a notebook, ``dvc repro``) it is one
process of rank 0 in a world of 1, and nothing changes.

How the training loops use it (:mod:`megafr.reenact.train`): every rank draws the same global
batch of the step (a function of seed and step), takes its own contiguous share of it
(:func:`shard`), and ``DistributedDataParallel`` averages the gradients. With per-sample-mean
losses this is the single-process step at the global batch, so N ranks at batch B end with the
weights of one process at batch N * B. Only rank 0 writes checkpoints and curves; the others wait
at a barrier and then read the same files when resuming.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

TIMEOUT_MINUTES = 30  # how long a rank waits for the others at a collective before failing


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int  # 0 .. size - 1
    size: int  # number of processes (1: not distributed)
    local_rank: int  # index of this process's GPU on its machine

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, curves and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def world() -> World:
    """The world as the process group (if joined) or torchrun's environment says; rank 0 of 1 otherwise."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))
    return World(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def setup() -> World:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1); a no-op otherwise.

    On CUDA each process uses GPU ``LOCAL_RANK`` (set as the current device, so
    :func:`megafr.config.torch_device`'s ``cuda`` means that GPU) and the NCCL backend; on the CPU, gloo.
    """
    here = world()
    if not here.distributed or dist.is_initialized():
        return here
    if torch.cuda.is_available():
        torch.cuda.set_device(here.local_rank)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    return world()


def shutdown() -> None:
    """Leave the process group (if joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(indices, here: World):
    """This rank's contiguous share of a global batch's indices (all of them in one process)."""
    if len(indices) % here.size:
        raise ValueError(f"a global batch of {len(indices)} does not split over {here.size} processes")
    share = len(indices) // here.size
    return indices[here.rank * share:(here.rank + 1) * share]


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the ranks (the global batch's loss terms, for the curve); unchanged in one process."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    names = list(values)  # the same order on every rank (the same code built the dict)
    packed = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    packed /= dist.get_world_size()
    return dict(zip(names, packed.tolist()))
