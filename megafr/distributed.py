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

Local worker pools (E_FR trainings side by side on a CPU, SynthHeads rendering, photo alignment) run
:func:`exit_with_parent` in each worker first: a worker whose caller died without a word (a killed
process, a restarted Jupyter kernel) then ends too, instead of working on beside the next run.
:func:`spawn_pool` makes such a pool of fresh interpreters, and :func:`worker_threads` shares this
process's torch threads out among its workers (:func:`torch_threads` sets them for a block).
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist

TIMEOUT_MINUTES = 30  # how long a rank waits for the others at a collective before failing


def exit_with_parent() -> None:
    """Worker-pool initializer: a daemon thread waits on the parent process's sentinel (``multiprocessing``'s
    own handle, ready when the parent has ended however it ended) and then ends this worker at once."""
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child
        return

    def watch() -> None:
        parent.join()
        os._exit(1)  # callers write their outputs atomically: stopping mid-task loses only that task

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (0: leave torch's setting alone)."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def worker_threads(workers: int, threads: int | None = None) -> int:
    """Threads each of ``workers`` processes gets out of ``threads`` (default: this process's torch threads)."""
    total = torch.get_num_threads() if threads is None else threads
    return max(1, total // workers)


def _start_worker(initializer: Optional[Callable[..., Any]], initargs: tuple) -> None:
    exit_with_parent()
    if initializer is not None:
        initializer(*initargs)


def spawn_pool(workers: int, initializer: Optional[Callable[..., Any]] = None,
               initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes (fresh interpreters: no forked torch thread pools) that end
    when this process ends (:func:`exit_with_parent`), each calling ``initializer(*initargs)`` first."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(initializer, tuple(initargs)))


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


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the global batch of every rank (what ``torch.nn.SyncBatchNorm`` does on
    GPUs, here on any device and backend, gloo included).

    In training with a process group, the per-channel sum and sum of squares are summed over the
    ranks with the differentiable ``all_reduce`` of ``torch.distributed.nn``, so the statistics, the
    running averages and the gradients are those of one process seeing the whole batch. Outside a
    process group, or in eval mode, it is the ordinary batch norm. Same parameters and buffers (and
    so the same checkpoint keys) as the module it replaces.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {input.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        count = x.numel() // x.shape[1] * dist.get_world_size()  # every rank has the same local batch
        sums = all_reduce(torch.stack([x.sum(dims), x.square().sum(dims)]))  # [2, C], summed over ranks
        mean = sums[0] / count
        var = sums[1] / count - mean.square()  # biased, as batch norm normalises with
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * count / max(count - 1, 1))
        shape = [1, -1] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(factor * mean)
        self.running_var.mul_(1 - factor).add_(factor * unbiased_var)


def sync_batch_norm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every batch norm layer replaced (in place) by a :class:`GlobalBatchNorm` holding the
    same parameters and buffers."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            synced = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            synced.weight, synced.bias = child.weight, child.bias
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(synced, buffer, getattr(child, buffer))
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            sync_batch_norm(child)
    return module


def data_parallel(step: torch.nn.Module, normed: torch.nn.Module, here: World, device: torch.device) -> torch.nn.Module:
    """``step`` (a module computing a training step's loss) as is in one process; on several, with the batch norm
    layers of ``normed`` (part of ``step``) using the global batch's statistics, wrapped in DistributedDataParallel.
    Unused parameters are allowed: e4e's fine pyramid level takes no part when its progressive stage ends before the
    fine W+ layers."""
    if not here.distributed:
        return step
    from torch.nn.parallel import DistributedDataParallel

    sync_batch_norm(normed)  # batch statistics of the global batch, as in one process
    ids = [device.index if device.index is not None else here.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)
