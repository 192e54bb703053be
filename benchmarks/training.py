"""Training-step cases: one per training stage, at the profile's sizes and batch sizes.

The four pretraining stages (face3d, idnet, generator + e4e autoencoder, pSp inversion) are timed
through their own training functions (``train_face3d``, ``train_idnet``, ``train_generator``,
``train_psp``), which take ``stop_after``: a first call runs the warm-up steps and writes a
checkpoint, a second call resumes from it and runs the timed steps. Their loop time includes the
one checkpoint written at its end; that write is timed separately (by wrapping the stage's
checkpoint function for the duration of the call) and subtracted, since the pipeline amortises
it over ``checkpoint_every`` steps. E_FR (train_reenact) has no ``stop_after``, so its step is
timed as its loop body: ``step_losses``, backward, Adam.

Training data are random uint8 images of the prepare stage's size (the cost of a step does not
depend on pixel values); the face3d case also gets random landmarks and head masks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch

from benchmarks.cases import pick, thread_comparison
from benchmarks.timing import rate, side_by_side, timed
from benchmarks.worlds import (Settings, face3d_config, frozen_networks, generator_config, idnet_config, image_size,
                               inversion_config, profile_params, random_images, reenact_config)
from megafr.devices import autocast, cpu_bf16_native
from megafr.face3d import train as face3d_train
from megafr.imageio import images_to_tensor
from megafr.nets.irse import ArcFace
from megafr.pretrain import autoencoder, idnet, inversion
from megafr.reenact import train as reenact_train
from megafr.reenact.inputs import InputCache, input_cache
from megafr import training as megafr_training
from megafr.training import adam

WARMUP_STEPS = 1  # untimed steps (first allocation) before the timed ones
TIMED_STEPS = {  # (full, quick) timed steps per stage; face3d's is a multiple of its silhouette interval
    "face3d": (10, 5),
    "idnet": (10, 1),
    "generator_autoencoder": (6, 1),
    "inversion_psp": (6, 1),
    "reenact_efr": (3, 1),
}
DATA_BATCHES = 4  # random training images: this many batches' worth (indexing cost only)
LANDMARK_RANGE = 0.8  # random landmarks lie in [-0.8, 0.8] NDC
NO_CHECKPOINT = 10**9  # checkpoint_every for the timed calls: only the final write of each call happens


@contextlib.contextmanager
def timing_calls(module: ModuleType, name: str) -> Iterator[list[float]]:
    """Replace ``module.name`` by a wrapper recording each call's duration, for the block's length."""
    original = getattr(module, name)
    record: list[float] = []

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            record.append(time.perf_counter() - start)

    setattr(module, name, wrapper)
    try:
        yield record
    finally:
        setattr(module, name, original)


def _stage_timing(run: Callable[[int], object], module: ModuleType, save_name: str, steps: int,
                  images_per_step: int) -> dict:
    """Warm-up call, then a timed call of ``steps`` steps; ``run(n)`` returns a result with ``.seconds``."""
    run(WARMUP_STEPS)
    with timing_calls(module, save_name) as saves:
        result = run(steps)
    checkpoint_s = sum(saves)
    step_s = (result.seconds - checkpoint_s) / steps
    return {"timed_steps": steps, "seconds_per_step": step_s, "images_per_step": images_per_step,
            "images_per_s": rate(images_per_step, step_s), "checkpoint_write_s": checkpoint_s,
            "method": "the stage's training function, resumed after a warm-up step; checkpoint write subtracted"}


def _data_size(batch: int) -> int:
    return DATA_BATCHES * batch


def face3d(settings: Settings) -> dict:
    """train_face3d: the 3D network on landmarks (+ the silhouette term every ``sil_every`` steps)."""
    cfg = face3d_config(settings, checkpoint_every=NO_CHECKPOINT, threads=0)
    rng = np.random.default_rng(0)
    n, s = _data_size(cfg.batch_size), cfg.input_size
    data = face3d_train.LandmarkSet(
        images=random_images(n, s),
        landmarks=rng.uniform(-LANDMARK_RANGE, LANDMARK_RANGE, (n, 68, 2)).astype(np.float32),
        masks=rng.integers(0, 2, (n, s, s), dtype=np.uint8), table=pd.DataFrame(index=range(n)))
    flame = face3d_train.build_model(cfg).flame
    steps = pick(TIMED_STEPS["face3d"], settings)

    def run(k):
        return face3d_train.train_face3d(cfg, data, flame, progress=False, stop_after=k)

    out = _stage_timing(run, megafr_training, "write_checkpoint", steps, cfg.batch_size)
    return {**out, "batch_size": cfg.batch_size, "silhouette_every": cfg.sil_every, "input_size": cfg.input_size}


def _face3d_step(settings: Settings, layout: torch.memory_format,
                 cpu_bf16: bool | None = None) -> tuple[Callable[[], None], face3d_train.TrainConfig]:
    """One train_face3d step as the loop body runs it (loss, backward, Adam; no silhouette term, as on 9 steps
    in 10) on a fixed random batch, with the network and batch in ``layout``, in the profile's precision
    (``cpu_bf16``: the profile's ``train_face3d.cpu_bf16`` unless given)."""
    cfg = face3d_config(settings, checkpoint_every=NO_CHECKPOINT, threads=0)
    if cpu_bf16 is not None:
        cfg = dataclasses.replace(cfg, cpu_bf16=cpu_bf16)
    rng = np.random.default_rng(0)
    batch = images_to_tensor(random_images(cfg.batch_size, cfg.input_size)).contiguous(memory_format=layout)
    target = torch.from_numpy(rng.uniform(-LANDMARK_RANGE, LANDMARK_RANGE, (cfg.batch_size, 68, 2)).astype(np.float32))
    loss_fn = face3d_train.Face3dLoss(cfg)
    model = face3d_train.build_model(cfg)
    model.net.train().to(memory_format=layout)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=cfg.lr)

    def step():
        total, _ = loss_fn(model, batch, target, None)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step, cfg


def _face3d_workload(cfg: face3d_train.TrainConfig) -> str:
    return f"one train_face3d step, batch {cfg.batch_size}, {cfg.input_size} px, without the silhouette term"


def face3d_memory_format(settings: Settings) -> dict:
    """:func:`_face3d_step` in torch's default layout vs channels_last (what the stage uses), side by side in
    one process, with 1 and with 2 torch threads."""
    steps = {}
    for name, layout in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        steps[name], cfg = _face3d_step(settings, layout)
    out = {"workload": _face3d_workload(cfg)}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows = side_by_side(steps, max(settings.repeats, 3) * 10)
        out[f"threads_{threads}"] = {**rows, "time_ratio_contiguous_over_channels_last":
                                     rows["contiguous"]["median_s"] / rows["channels_last"]["median_s"]}
    return out


def face3d_step_precision(settings: Settings) -> dict:
    """:func:`_face3d_step` (channels_last) in float32 and under ``train_face3d.cpu_bf16``'s bfloat16 autocast,
    side by side in one process with two torch threads (as the stage trains on 2 cores)."""
    torch.set_num_threads(2)
    steps = {name: _face3d_step(settings, torch.channels_last, cpu_bf16=half)[0]
             for name, half in (("float32", False), ("cpu_bf16", True))}
    rows = side_by_side(steps, max(settings.repeats, 3) * 10)
    _, cfg = _face3d_step(settings, torch.channels_last)
    return {"workload": _face3d_workload(cfg) + ", 2 threads", "native_bf16": cpu_bf16_native(), **rows,
            "time_ratio_float32_over_cpu_bf16": rows["float32"]["median_s"] / rows["cpu_bf16"]["median_s"]}


def face3d_step_threads(settings: Settings) -> dict:
    """:func:`_face3d_step` (channels_last, as the stage) with 1 vs 2 torch threads, side by side in one process:
    the stage trains in one process with every core, so its speed is how well the two threads share a step."""
    step, cfg = _face3d_step(settings, torch.channels_last)
    return {"workload": _face3d_workload(cfg), "batch": cfg.batch_size,
            **thread_comparison(step, max(settings.repeats, 3) * 10)}


def identity_net(settings: Settings) -> dict:
    """train_idnet: IR-SE ArcFace with the additive angular margin head."""
    cfg = idnet_config(settings, checkpoint_every=NO_CHECKPOINT, threads=0)
    n_classes = int(profile_params(settings)["prepare"]["n_idnet_identities"])
    n = max(_data_size(cfg.batch_size), n_classes)
    images = random_images(n, image_size(settings))
    identity = np.arange(n) % n_classes
    steps = pick(TIMED_STEPS["idnet"], settings)

    def run(k):
        return idnet.train_idnet(cfg, images, identity, progress=False, stop_after=k)

    out = _stage_timing(run, megafr_training, "save_training_state", steps, cfg.batch_size)
    return {**out, "batch_size": cfg.batch_size, "classes": n_classes}


def generator_autoencoder(settings: Settings) -> dict:
    """train_generator: G + e4e + latent D; a step decodes batch_size reconstructions and swap pairs."""
    cfg = generator_config(settings, checkpoint_every=NO_CHECKPOINT, threads=0)
    size = image_size(settings)
    images = random_images(max(_data_size(cfg.batch_size), cfg.swap_pool), size)
    rng = np.random.default_rng(1)
    pool = {"a": rng.integers(0, len(images), cfg.swap_pool), "b": rng.integers(0, len(images), cfg.swap_pool),
            "truth": random_images(cfg.swap_pool, size, seed=2)}
    steps = pick(TIMED_STEPS["generator_autoencoder"], settings)

    extra = {}
    if getattr(cfg, "lambda_id", 0) > 0:  # the identity term, where the stage has one
        extra["idnet"] = ArcFace(idnet_config(settings).arcface_config()).eval().requires_grad_(False)

    def run(k):
        return autoencoder.train_generator(cfg, images, pool, progress=False, stop_after=k, **extra)

    per_step = cfg.batch_size + 2 * cfg.swap_batch  # encoded images per step (reconstructions + both of each pair)
    out = _stage_timing(run, megafr_training, "save_training_state", steps, per_step)
    return {**out, "batch_size": cfg.batch_size, "swap_batch": cfg.swap_batch,
            "note": "swap-pool rendering (once per run) not included"}


def inversion_psp(settings: Settings) -> dict:
    """train_inversion: pSp encoder on the frozen generator, with the identity loss."""
    cfg = inversion_config(settings, checkpoint_every=NO_CHECKPOINT, threads=0)
    nets = autoencoder.build_networks(generator_config(settings))
    e4e = autoencoder.e4e_net(nets)
    net = inversion.build_psp(e4e, nets.g_ema, e4e.latent_avg, cfg.seed)
    identity = ArcFace(idnet_config(settings).arcface_config())
    images = random_images(_data_size(cfg.batch_size), image_size(settings))
    steps = pick(TIMED_STEPS["inversion_psp"], settings)

    def run(k):
        return inversion.train_psp(cfg, net, images, identity, progress=False, stop_after=k)

    out = _stage_timing(run, megafr_training, "save_training_state", steps, cfg.batch_size)
    return {**out, "batch_size": cfg.batch_size}


def efr_step(settings: Settings, cpu_bf16: bool | None = None, cache: InputCache | None = None):
    """(one E_FR training step as a callable, its config): train_reenact's loop body, in the profile's
    precision (``cpu_bf16``: the profile's ``train_reenact.cpu_bf16`` unless given), computing its inputs, or
    reading them from ``cache`` (:func:`efr_input_cache`'s)."""
    frozen = frozen_networks(settings)
    cfg = reenact_config(settings)
    if cpu_bf16 is not None:
        cfg = dataclasses.replace(cfg, cpu_bf16=cpu_bf16)
    model = reenact_train.build_model(cfg, frozen)
    optimizer = adam(model.encoder.parameters(), cfg.lr)  # the stage's optimizer
    model.encoder.train()
    images = _efr_images(settings, cfg)
    counter = itertools.count()
    cpu = torch.device("cpu")

    def step():
        src, tgt = reenact_train.batch_indices(cfg.seed, next(counter), len(images), cfg.batch_size)
        with autocast(cpu, training=True, cpu_bf16=cfg.cpu_bf16):
            if cache is None:
                total, _ = reenact_train.step_losses(model, frozen, cfg, images_to_tensor(images[src]),
                                                     images_to_tensor(images[tgt]))
            else:
                given = cache.batch(src, tgt, cpu, render=cfg.condition == "render")
                total, _ = reenact_train.step_losses(model, frozen, cfg, None, None, given)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step, cfg


def _efr_images(settings: Settings, cfg: reenact_train.ReenactConfig) -> np.ndarray:
    return random_images(_data_size(cfg.batch_size), image_size(settings))


def efr_input_cache(settings: Settings) -> tuple[InputCache, float]:
    """The input cache of :func:`efr_step`'s images and frozen networks, computed in the scratch folder ->
    (cache, seconds it took)."""
    cfg = dataclasses.replace(reenact_config(settings), input_cache=str(Path(settings.work_dir) / "input_cache"))
    start = time.perf_counter()
    cache = input_cache(cfg, frozen_networks(settings), _efr_images(settings, cfg), "benchmark", progress=False)
    return cache, time.perf_counter() - start


def efr_step_input_cache(settings: Settings) -> dict:
    """One E_FR training step computing its no-gradient inputs vs reading them from ``train_reenact.input_cache``,
    side by side in one process with one torch thread (as each worker process runs), the same batches."""
    torch.set_num_threads(1)
    cache, build_s = efr_input_cache(settings)
    steps = {"computed": efr_step(settings)[0], "cached": efr_step(settings, cache=cache)[0]}
    rows = side_by_side(steps, max(settings.repeats, 3) * 2)
    return {"workload": "one E_FR training step, mini sizes, random weights, 1 thread", "images": len(cache),
            "cache_build_s": build_s, "cache_build_s_per_image": build_s / len(cache), **rows,
            "time_ratio_computed_over_cached": rows["computed"]["median_s"] / rows["cached"]["median_s"]}


def reenact_efr(settings: Settings) -> dict:
    """train_reenact: E_FR with the six losses (inversion, 3D net, two renderings, F three times)."""
    step, cfg = efr_step(settings)
    steps = pick(TIMED_STEPS["reenact_efr"], settings)
    t = timed(step, steps, warmup=WARMUP_STEPS)
    return {"timed_steps": steps, "seconds_per_step": t["median_s"], "min_s": t["min_s"],
            "images_per_step": cfg.batch_size, "images_per_s": rate(cfg.batch_size, t["median_s"]),
            "batch_size": cfg.batch_size, "lpips": False,
            "method": "train_reenact's loop body (step_losses, backward, Adam), median of the timed steps"}


def efr_step_threads(settings: Settings) -> dict:
    """One E_FR training step with 1 vs 2 torch threads, side by side in one process."""
    step, cfg = efr_step(settings)
    return {"workload": f"one E_FR training step, batch {cfg.batch_size}", "batch": cfg.batch_size,
            **thread_comparison(step, settings.repeats)}


def _seconds_per_step(settings: Settings, steps: int, threads: int) -> float:
    """Median seconds of one E_FR training step in this process with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    step, _ = efr_step(settings)
    return timed(step, steps, warmup=WARMUP_STEPS)["median_s"]


def efr_step_processes(settings: Settings) -> dict:
    """E_FR training steps per second of the machine: one process with 2 threads, then two single-thread
    processes at once (what ``train_reenact.variant_workers`` and ``evaluate.ablation_workers`` do), one
    after the other in one run."""
    steps = pick(TIMED_STEPS["reenact_efr"], settings)
    alone = _seconds_per_step(settings, steps, 2)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pair = list(pool.map(_seconds_per_step, [settings] * 2, [steps] * 2, [1] * 2))
    one, two = 1.0 / alone, sum(1.0 / seconds for seconds in pair)
    return {"workload": "E_FR training steps, mini sizes, random weights", "timed_steps": steps,
            "one_process_2_threads_s_per_step": alone, "two_processes_1_thread_s_per_step": pair,
            "steps_per_s_one_process": one, "steps_per_s_two_processes": two, "two_over_one": two / one}


def efr_step_precision(settings: Settings) -> dict:
    """One E_FR training step in float32 and under ``train_reenact.cpu_bf16``'s bfloat16 autocast, side
    by side in one process with one torch thread (as each of the stage's worker processes runs)."""
    torch.set_num_threads(1)
    steps = {"float32": efr_step(settings, cpu_bf16=False)[0], "cpu_bf16": efr_step(settings, cpu_bf16=True)[0]}
    rows = side_by_side(steps, max(settings.repeats, 3))
    return {"workload": "one E_FR training step, mini sizes, random weights, 1 thread",
            "native_bf16": cpu_bf16_native(), **rows,
            "time_ratio_float32_over_cpu_bf16": rows["float32"]["median_s"] / rows["cpu_bf16"]["median_s"]}


def adam_step(settings: Settings) -> dict:
    """One Adam step over the e4e encoder of train_generator: torch's default update vs the fused one
    (``megafr.training.adam``), side by side in one process, on random gradients."""
    cfg = generator_config(settings)
    encoder = autoencoder.build_networks(cfg).encoder
    for p in encoder.parameters():
        p.grad = torch.randn_like(p)
    optimizers = {"default": torch.optim.Adam(encoder.parameters(), lr=cfg.lr_e),
                  "fused": adam(encoder.parameters(), cfg.lr_e)}
    rows = side_by_side({name: opt.step for name, opt in optimizers.items()}, max(settings.repeats, 3) * 10)
    return {"workload": "one Adam step over the train_generator e4e encoder",
            "parameters": sum(p.numel() for p in encoder.parameters()), **rows,
            "time_ratio_default_over_fused": rows["default"]["median_s"] / rows["fused"]["median_s"]}


STAGES = {  # JSON name -> case; the pipeline stage each belongs to
    "face3d": (face3d, "train_face3d"),
    "idnet": (identity_net, "train_idnet"),
    "generator_autoencoder": (generator_autoencoder, "train_generator"),
    "inversion_psp": (inversion_psp, "train_inversion"),
    "reenact_efr": (reenact_efr, "train_reenact"),
}
