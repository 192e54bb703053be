"""Several E_FR trainings at once on a CPU: one worker process per training, the cores shared out.

The ablations (every loss, layer group and condition, each over several seeds) and train_reenact's
variants are independent trainings of small networks. On a CPU, torch's intra-op threads help such
small convolutions little: on 2 cores a mini E_FR step takes 0.32 s with 2 threads, while two
single-thread processes take 0.50 s each, 0.25 s per step together (``docs/experiments/training.md``).
:func:`train_many` therefore trains ``workers`` configurations at a time in spawned processes
(``concurrent.futures.ProcessPoolExecutor``), each with an equal share of this process's torch threads
(at least one; fewer trainings than ``workers`` start fewer processes), and leaves each
finished checkpoint where :func:`megafr.reenact.train.train` writes it. The caller then calls
``train`` itself, which finds the finished checkpoint and loads it without a step: the code that scores
the models is the same whether they were trained here or in-process. It can do so as each training
finishes (``on_trained``), scoring one model while the workers train the others: on 2 cores the
trainings' last minute otherwise leaves a core idle.

Each worker loads the frozen networks and the training images from the files the configuration names
(what the caller loaded too), so nothing large is sent between processes. An interrupted batch of
trainings resumes like a single one: every training continues from its own checkpoint.
Inputs cached per training image (``input_cache``, :mod:`megafr.reenact.inputs`) are computed here,
once, while the trainings that do not read them (train_reenact's pSp variant) already run, and before
the trainings that do. On a GPU there is one device to share: there the trainings run one at a time, in
the caller's process.
A worker whose caller dies without a word (a killed process, a restarted Jupyter kernel) exits too
(:func:`megafr.distributed.spawn_pool`), instead of training on beside the next run over the same
checkpoints.
"""

from __future__ import annotations

import time
from concurrent.futures import as_completed
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch

from megafr.config import require, study_path, torch_device
from megafr.datasets.loader import open_images
from megafr.distributed import spawn_pool, torch_threads, worker_threads
from megafr.progress import progress_bar
from megafr.reenact.inputs import DONE_FILE, cache_folder, check_room, input_cache, pays
from megafr.reenact.train import (ReenactConfig, checkpoint_path, input_cache_digest, load_frozen,
                                  resumable_checkpoint, train, upstream_digest)


def _train_in_worker(cfg: ReenactConfig, threads: int) -> float:
    """Train ``cfg`` to its last step in this (worker) process with ``threads`` threads -> seconds taken."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    train(cfg, load_frozen(cfg), open_images(study_path(cfg.train_images)), progress=False)
    return time.perf_counter() - start


def _finished(cfg: ReenactConfig) -> bool:
    """Whether ``cfg``'s checkpoint already holds its last step and resumes ``cfg`` (the check :func:`train`
    makes: configuration, networks, training code; a checkpoint that does not is deleted here, as it would be
    there)."""
    data = resumable_checkpoint(checkpoint_path(cfg), cfg, upstream_digest(cfg))
    return data is not None and int(data["step"]) >= cfg.steps


def caches_to_build(cfgs: Iterable[ReenactConfig]) -> dict[Path, tuple[ReenactConfig, str, list[ReenactConfig]]]:
    """The input caches (:mod:`megafr.reenact.inputs`) that ``cfgs``' unfinished trainings will read, that do not
    exist yet and that pay for those trainings together (:func:`megafr.reenact.inputs.pays`) -> {cache folder:
    (a config reading it, its digest, every config reading it)}."""
    wanted: dict[Path, tuple[ReenactConfig, str, list[ReenactConfig]]] = {}
    for cfg in cfgs:
        if cfg.input_cache and cfg.steps > 0 and not _finished(cfg):
            digest = input_cache_digest(cfg)
            folder = cache_folder(cfg, digest)
            wanted.setdefault(folder, (cfg, digest, []))[2].append(cfg)
    builds = {}
    for folder, (cfg, digest, readers) in wanted.items():
        if not (folder / DONE_FILE).is_file():
            images = open_images(study_path(cfg.train_images))
            if pays(sum(c.steps * c.batch_size for c in readers), len(images)):
                builds[folder] = (cfg, digest, readers)
    return builds


def check_caches(builds: Mapping[Path, tuple[ReenactConfig, str, list[ReenactConfig]]]) -> list[tuple]:
    """Load what each cache :func:`caches_to_build` returned is computed from, and refuse one that would not fit
    (:func:`megafr.reenact.inputs.check_room`) -> [(config, digest, frozen networks, images)], for
    :func:`build_caches`."""
    checked = []
    for cfg, digest, _ in builds.values():
        frozen, images = load_frozen(cfg, lpips=False), open_images(study_path(cfg.train_images))
        check_room(cfg, frozen, images)
        checked.append((cfg, digest, frozen, images))
    return checked


def build_caches(checked: list[tuple], progress: bool = True) -> None:
    """Compute, in this process, the caches :func:`check_caches` returned."""
    for cfg, digest, frozen, images in checked:
        input_cache(cfg, frozen, images, digest, progress)


def effective_workers(workers: int, what: str) -> int:
    """The worker processes to use: ``workers`` on the CPU, 1 on a GPU (said once); ``what`` names the setting."""
    require(workers >= 1, f"{what} must be >= 1, got {workers}")
    device = torch_device()
    if workers > 1 and device.type != "cpu":
        print(f"{what} = {workers} applies on the CPU; on {device} the trainings run one at a time")
        return 1
    return workers


def train_many(cfgs: Mapping[str, ReenactConfig], workers: int, progress: bool = True,
               on_trained: Optional[Callable[[str], None]] = None) -> dict[str, float]:
    """Train every configuration of ``cfgs`` (name -> config) to its checkpoint, ``workers`` (>= 2) at a time
    in spawned processes -> {name: seconds} (each from its worker's start: loading included, overlapping).

    The workers load the frozen networks and images from the files each configuration names, not from any
    object the caller holds. Trainings that read no input cache still to be built start first; this process
    builds the caches meanwhile (on the threads those trainings leave free), then starts the trainings that
    read them; a cache that would not fit (:func:`megafr.reenact.inputs.check_room`) is refused before any
    training starts. ``on_trained(name)`` is called here as each training finishes (to load and score it while the
    others train), with the threads of one worker, so that it takes no more than a worker's share of the
    cores and every model is scored alike whatever order the trainings end in. A failed training or an
    interrupt cancels the queued trainings; the error is raised here once the running ones have ended (an
    interrupt from a terminal or Jupyter reaches the workers too, so they stop at once, each resumable from
    its last checkpoint)."""
    require(workers >= 2, f"train_many runs >= 2 worker processes, got {workers} (train in-process instead)")
    builds = caches_to_build(cfgs.values())  # computed once here, not once per worker
    checked = check_caches(builds)  # a cache that cannot be built is refused before any training starts
    readers = [c for _, _, cached in builds.values() for c in cached]
    waiting = {name for name, cfg in cfgs.items() if cfg in readers}  # start once their cache is built
    processes = min(workers, max(1, len(cfgs)))
    threads = worker_threads(processes)
    seconds: dict[str, float] = {}
    pool = spawn_pool(processes)
    try:
        futures = {pool.submit(_train_in_worker, cfg, threads): name
                   for name, cfg in cfgs.items() if name not in waiting}
        with torch_threads(max(1, torch.get_num_threads() - threads * min(len(futures), processes))):
            build_caches(checked, progress)
        futures.update({pool.submit(_train_in_worker, cfg, threads): name
                        for name, cfg in cfgs.items() if name in waiting})
        bar = progress_bar(as_completed(futures), total=len(futures), disable=not progress,
                           desc=f"train E_FR, {processes} processes x {threads} threads")
        for future in bar:
            seconds[futures[future]] = round(future.result(), 2)
            if on_trained is not None:
                with torch_threads(threads):  # a worker's share, whichever training ends last: the same rounding
                    on_trained(futures[future])
    except BaseException:  # a failed training or an interrupt: drop the queued trainings, let the running ones end
        pool.shutdown(wait=True, cancel_futures=True)  # (an interrupt reaches the workers too; they stop at once)
        raise
    pool.shutdown()
    return seconds
