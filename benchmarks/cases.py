"""Forward-pass and inference cases: renderer, FLAME layer, generator, e4e, one full reenactment.

Each case is a function ``case(settings) -> dict`` that the suite runs in a fresh process
(:mod:`benchmarks.runner`), so that its peak memory is its own. Everything runs under
``torch.no_grad()`` in eval mode, as at inference.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

import numpy as np
import torch

from benchmarks import bench_render
from benchmarks.timing import rate, side_by_side, timed
from benchmarks.worlds import (Settings, frozen_networks, generator_config, head_files, image_size, profile_params,
                               random_batch, reenact_config)
from megafr.config import load_params, profile_file, study_root
from megafr.face3d.flame import FILE_SHAPE_COMPONENTS, FLAME, POSE_DIM, FlameAssets
from megafr.face3d.framing import aligned_camera
from megafr.nets.encoders import Encoder4Editing, EncoderConfig
from megafr.nets.stylegan2 import Generator
from megafr.pretrain import autoencoder
from megafr.reenact.evaluate import EVAL_BATCH
from megafr.reenact.evaluate import outputs as scored_outputs
from megafr.reenact.inference import Reenactor
from megafr.reenact.stage import parse_steps
from megafr.reenact.train import build_model, invert, make_targets

# Batches (full suite, --quick)
RENDER_BATCH = (16, 2)  # renderer calls
SYNTHHEADS_SCENES = (1024, 64)  # scenes rendered per timing of the prepare stage's renderer
SYNTHHEADS_WORKERS = 2  # worker processes compared with one process
FLAME_BATCH = (16, 2)  # FLAME layer forward (batch 16, the target's)
GENERATOR_BATCH = (16, 2)  # batched generator rows at the profile's size
LARGE_GENERATOR_BATCH = (4, 2)  # batched rows at the larger size (activations of [4, 48, 256, 256] already 50 MB)
ENCODER_BATCH = (32, 4)  # batched e4e rows
REENACT_BATCHES = ((1, 8, 32), (1, 4))  # batch scaling of the full reenactment; the last is "batched"
REENACT_CHUNK = (16, 2)  # the largest batch also run as consecutive calls of this many images
SYNTHESIS_CHUNK = (8, 2)  # ... and with the generator synthesising this many images per call
PAPER_RENDER_SIZE = (256, 64)  # a larger size (the released encoders see 256 px); --quick: 64
CONFIG_F_SIZE = (1024, 32)  # StyleGAN2 config-f output size; --quick uses its widths at 32 px

SCORING_BATCH = (EVAL_BATCH, 4)  # pairs per batch of train_reenact's scoring; --quick: 4
REFINE_STEPS = 1  # refinement steps of a reenactment (paper eq. 9: "one extra step usually enough")
TARGET_IMAGES_PER_S = 20.0  # the suite's target: at least 20 images/s at 64 px on CPU, batched
CONFIG_F = dict(style_dim=512, n_mlp=8, channel_multiplier=2, max_channels=512)  # StyleGAN2 config-f (docs/method.md 7)
FLAME_FILE_EXPRESSION = 100  # expression columns of FLAME 2020's shapedirs
FLAME_JOINT_PARENTS = (-1, 0, 1, 1, 1)  # global, neck, jaw, left eye, right eye
N_LANDMARKS = 68
RANDOM_BLEND_SCALE = 1e-3  # blend shapes of the FLAME-sized stand-in (metres per unit coefficient)
THREAD_VARIANTS = (1, 2)  # torch thread counts compared side by side


def pick(pair: tuple, settings: Settings):
    """The full-suite or the --quick value of a (full, quick) pair."""
    return pair[1] if settings.quick else pair[0]


def no_grad_call(fn: Callable[[], object]) -> Callable[[], object]:
    def call():
        with torch.no_grad():
            return fn()
    return call


# --------------------------------------------------------------------------- renderer
def rendering(settings: Settings, device: str = "cpu") -> dict:
    """bench_render's rows: the head mesh at the profile's size (photo, geometry, forward+backward)
    and at a larger size, and a FLAME-sized mesh."""
    batch, repeats = pick(RENDER_BATCH, settings), settings.repeats
    size, large = image_size(settings), pick(PAPER_RENDER_SIZE, settings)
    verts, faces, source = bench_render.head_mesh()
    flame_verts, flame_faces = bench_render.flame_sized_mesh()
    row = bench_render.time_row
    rows = {
        f"head_{size}_geometry": row(verts, faces, size, batch, repeats, mode="geometry", device=device),
        f"head_{size}_photo": row(verts, faces, size, batch, repeats, device=device),
        f"head_{size}_photo_forward_backward": row(verts, faces, size, batch, repeats, backward=True, device=device),
        f"head_{large}_geometry": row(verts, faces, large, batch, repeats, mode="geometry", device=device),
        f"flame_sized_{large}_photo": row(flame_verts, flame_faces, large, batch, repeats, device=device),
    }
    return {"head_mesh": source, "batch": batch, "rows": rows}


def synthheads_workers(settings: Settings) -> dict:
    """The prepare stage's SynthHeads rendering (``HeadWorld.render``) in this process with SYNTHHEADS_WORKERS
    torch threads vs in SYNTHHEADS_WORKERS single-thread worker processes (``render_pool``): the same cores, side
    by side on the same scenes, the pool started beforehand (its first task, start-up included, is timed
    apart); the images are checked equal."""
    from megafr.datasets import synthheads as sh

    files = head_files(settings)
    world = sh.HeadWorld(files.model_path, files.landmark_path, image_size(settings))
    n = pick(SYNTHHEADS_SCENES, settings)
    params = sh.sample_split(world, np.random.default_rng(0), np.arange(n), 1, (60.0, 30.0, 15.0))
    threads = SYNTHHEADS_WORKERS
    torch.set_num_threads(threads)  # the pool's workers get threads // workers = 1 each
    with sh.render_pool(world, SYNTHHEADS_WORKERS) as pool:
        began = time.perf_counter()
        pool.render(params.take(np.arange(SYNTHHEADS_WORKERS)))  # the workers start on their first task
        started = time.perf_counter() - began
        identical = bool(np.array_equal(world.render(params)["images"], pool.render(params)["images"]))

        variants = {"one_process": lambda: world.render(params), "worker_processes": lambda: pool.render(params)}
        rows = side_by_side(variants, settings.repeats)
    return {"workload": f"SynthHeads rendering, {n} scenes at {image_size(settings)} px", "scenes": n,
            "threads": threads, "workers": SYNTHHEADS_WORKERS, "pool_start_s": started,
            "identical_images": identical, **rows,
            "workers_speedup": rows["one_process"]["median_s"] / rows["worker_processes"]["median_s"]}


# --------------------------------------------------------------------------- FLAME layer
def flame_sized_assets(n_shape: int, n_expr: int, seed: int = 0) -> FlameAssets:
    """Random arrays of FLAME 2020's sizes (5023 vertices, 9976 faces, 400 blend shapes): a stand-in for the
    licensed file with the same cost."""
    rng = np.random.default_rng(seed)
    verts, faces = bench_render.flame_sized_mesh()
    n = verts.shape[0]
    weights = rng.random((n, len(FLAME_JOINT_PARENTS)))
    regressor = rng.random((len(FLAME_JOINT_PARENTS), n))
    bary = rng.random((N_LANDMARKS, 3))
    n_columns = FILE_SHAPE_COMPONENTS + max(FLAME_FILE_EXPRESSION, n_expr)
    return FlameAssets(
        v_template=verts.numpy().astype(np.float32),
        faces=faces.numpy().astype(np.int64),
        shapedirs=(rng.standard_normal((n, 3, n_columns)) * RANDOM_BLEND_SCALE).astype(np.float32),
        posedirs=(rng.standard_normal((n, 3, 9 * (len(FLAME_JOINT_PARENTS) - 1))) * RANDOM_BLEND_SCALE).astype(np.float32),
        j_regressor=(regressor / regressor.sum(1, keepdims=True)).astype(np.float32),
        parents=np.array(FLAME_JOINT_PARENTS, dtype=np.int64),
        lbs_weights=(weights / weights.sum(1, keepdims=True)).astype(np.float32),
        lmk_faces_idx=rng.integers(0, len(faces), N_LANDMARKS).astype(np.int64),
        lmk_bary_coords=(bary / bary.sum(1, keepdims=True)).astype(np.float32),
    )


def flame_row(flame: FLAME, batch: int, repeats: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    shape = (torch.randn(batch, flame.n_shape, generator=generator) * 0.5).to(device)
    expression = (torch.randn(batch, flame.n_expr, generator=generator) * 0.5).to(device)
    pose = (torch.randn(batch, POSE_DIM, generator=generator) * 0.1).to(device)
    flame = flame.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    t = timed(no_grad_call(lambda: flame(shape, expression, pose)), repeats, sync=sync)
    return {"batch": batch, "vertices": int(flame.v_template.shape[0]), "n_shape": flame.n_shape,
            "n_expr": flame.n_expr, **t, "meshes_per_s": rate(batch, t["median_s"])}


def flame_layer(settings: Settings, device: str = "cpu") -> dict:
    """FLAME forward (vertices + 68 landmarks) at batch 16: the synthetic head model at the profile's
    sizes, and a FLAME 2020-sized model at the paper profile's coefficient counts."""
    device = torch.device(device)
    batch = pick(FLAME_BATCH, settings)
    files = head_files(settings)
    face = load_params(profile_file(settings.profile, study_root()))["train_face3d"]
    paper = load_params(profile_file("paper", study_root()))["train_face3d"]
    head = FLAME.from_files(files.model_path, files.landmark_path, face["n_shape"], face["n_expr"])
    sized = FLAME(flame_sized_assets(paper["n_shape"], paper["n_expr"]), paper["n_shape"], paper["n_expr"])
    return {
        "synthetic_head": flame_row(head, batch, settings.repeats, device),
        "flame_sized_paper_coefficients": flame_row(sized, batch, settings.repeats, device),
    }


# --------------------------------------------------------------------------- generator and e4e
def _w_plus(generator: Generator, batch: int, device: torch.device) -> torch.Tensor:
    z = torch.randn(batch, generator.style_dim, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        w = generator.style(z)  # [B, D]
    return w[:, None].repeat(1, generator.n_latent, 1)  # [B, n_latent, D]


def synthesis_row(generator: Generator, batch: int, repeats: int, warmup: int = 1) -> dict:
    device = generator.input.input.device
    w = _w_plus(generator, batch, device)
    noise = generator.stored_noise()
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    t = timed(no_grad_call(lambda: generator.synthesis(w, noise)), repeats, warmup=warmup, sync=sync)
    return {"batch": batch, **t, "s_per_image": t["median_s"] / batch, "images_per_s": rate(batch, t["median_s"])}


def batched_synthesis_rows(generator: Generator, batch: int, repeats: int) -> dict:
    """``batch`` codes in one synthesis call vs one call per code, side by side.

    ``ModulatedConv2d`` takes a shared-weight path for batches and a per-sample weight path for one
    image; this row shows which is faster per image on this machine.
    """
    w = _w_plus(generator, batch, generator.input.input.device)
    noise = generator.stored_noise()
    calls = {f"batch_{batch}": no_grad_call(lambda: generator.synthesis(w, noise)),
             f"batch_{batch}_one_call_per_image": no_grad_call(
                 lambda: [generator.synthesis(w[i:i + 1], noise) for i in range(batch)])}
    timings = side_by_side(calls, repeats)
    return {name: {"batch": batch, **t, "s_per_image": t["median_s"] / batch, "images_per_s": rate(batch, t["median_s"])}
            for name, t in timings.items()}


def config_f_generator(size: int) -> Generator:
    torch.manual_seed(0)
    return Generator(size, **CONFIG_F).eval()


def generator_forward(settings: Settings) -> dict:
    """Synthesis from W+ (fixed noise, as in reenactment): the mini channel config at the profile's size and
    at 256 px (batch 1 and batched), and config-f at 1024 px (one image, timed once after a warm-up)."""
    size, repeats = image_size(settings), settings.repeats
    out = {}
    for px, batch in ((size, pick(GENERATOR_BATCH, settings)),
                      (pick(PAPER_RENDER_SIZE, settings), pick(LARGE_GENERATOR_BATCH, settings))):
        nets = autoencoder.build_networks(generator_config(settings, image_size=px))
        g = nets.g_ema.eval()
        out[f"mini_{px}"] = {"config": g.config.to_dict(), "params": sum(p.numel() for p in g.parameters()),
                             "batch_1": synthesis_row(g, 1, repeats), **batched_synthesis_rows(g, batch, repeats)}
    f_size = pick(CONFIG_F_SIZE, settings)
    g = config_f_generator(f_size)
    out[f"config_f_{f_size}"] = {"config": g.config.to_dict(), "params": sum(p.numel() for p in g.parameters()),
                                 "batch_1": synthesis_row(g, 1, repeats=1),
                                 "note": "one image, timed once after one warm-up call"}
    return out


def encoder_row(encoder: torch.nn.Module, batch: int, size: int, repeats: int, device: torch.device) -> dict:
    x = random_batch(batch, size).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    t = timed(no_grad_call(lambda: encoder(x)), repeats, sync=sync)
    return {"batch": batch, **t, "s_per_image": t["median_s"] / batch, "images_per_s": rate(batch, t["median_s"])}


def e4e_forward(settings: Settings) -> dict:
    """e4e encoder forward: the mini encoder at the profile's size, and the released configuration
    (IR-SE50 body, 18 x 512 codes) at its 256 px input, one image (skipped by --quick: building its
    267M parameters alone takes seconds)."""
    size, batch, repeats = image_size(settings), pick(ENCODER_BATCH, settings), settings.repeats
    cpu = torch.device("cpu")
    encoder = autoencoder.build_networks(generator_config(settings)).encoder.eval()
    out = {f"mini_{size}": {"params": sum(p.numel() for p in encoder.parameters()),
                            "batch_1": encoder_row(encoder, 1, size, repeats, cpu),
                            f"batch_{batch}": encoder_row(encoder, batch, size, repeats, cpu)}}
    if settings.quick:
        out["paper_256"] = {"skipped": "--quick"}
        return out
    torch.manual_seed(0)
    paper = Encoder4Editing(EncoderConfig()).eval()
    out["paper_256"] = {"params": sum(p.numel() for p in paper.parameters()),
                        "batch_1": encoder_row(paper, 1, paper.config.input_size, 1, cpu),
                        "note": "one image, timed once after one warm-up call"}
    return out


# --------------------------------------------------------------------------- reenactment
def build_reenactor(settings: Settings, device: str = "cpu") -> Reenactor:
    """A Reenactor over the profile-sized frozen networks, E_FR initialised from e4e as train_reenact does."""
    frozen = frozen_networks(settings)
    cfg = reenact_config(settings)
    model = build_model(cfg, frozen).to(device)
    frozen = type(frozen)(*(None if m is None else m.to(device) for m in frozen))
    return Reenactor(model, frozen, cfg.condition)


def reenact_call(reenactor: Reenactor, batch: int, size: int, device, chunk: int = 0) -> Callable[[], object]:
    """One ``Reenactor.reenact`` of ``batch`` random pairs, or consecutive calls of ``chunk`` pairs each."""
    sources, targets = random_batch(batch, size, seed=1).to(device), random_batch(batch, size, seed=2).to(device)
    step = chunk or batch

    def call():
        return [reenactor.reenact(sources[i:i + step], targets[i:i + step], refine_steps=REFINE_STEPS)
                for i in range(0, batch, step)]

    return call


@contextlib.contextmanager
def chunked_synthesis(generator: Generator, chunk: int) -> Iterator[None]:
    """For the block, ``generator.synthesis`` runs ``chunk`` codes at a time (a variant measured, not a change
    of megafr: the instance attribute shadows the method and is removed afterwards)."""
    plain = generator.synthesis

    def synthesis(latent, noise=None):
        return torch.cat([plain(latent[i:i + chunk], noise) for i in range(0, latent.shape[0], chunk)])

    generator.synthesis = synthesis
    try:
        yield
    finally:
        del generator.synthesis


def reenactment_phases(reenactor: Reenactor, batch: int, size: int, repeats: int) -> dict:
    """Median time of each part of one reenactment, called as ``Reenactor.reenact`` calls them."""
    frozen, model = reenactor.frozen, reenactor.model
    sources, targets = random_batch(batch, size, seed=1), random_batch(batch, size, seed=2)
    with torch.no_grad():
        w_s = frozen.inversion.encode(sources)
        x_s, _ = invert(frozen, sources)
        source, target = reenactor.measure(x_s), reenactor.measure(targets)
        cond = make_targets(frozen.face, source.shape, target.expression, target.pose, reenactor.condition)
        points = frozen.face.landmark_flame(source.shape, target.expression, target.pose)
        vertices = frozen.face.flame(source.shape, target.expression, target.pose).vertices
        camera = aligned_camera(points)
        w_f = w_s + model.residual(x_s, cond.condition, w_s)
    noise = model.noise()
    calls = {
        "inversion_encoder": lambda: frozen.inversion.encode(sources),
        "inversion_generator": lambda: frozen.generator.synthesis(w_s, noise=noise),
        "face3d_net_x2": lambda: (reenactor.measure(x_s), reenactor.measure(targets)),
        "targets_flame_and_render": lambda: make_targets(frozen.face, source.shape, target.expression, target.pose,
                                                         reenactor.condition),
        "of_which_renderer": lambda: frozen.face.renderer(vertices, camera, mode="geometry"),
        "e_fr_encoder_per_pass": lambda: model.residual(x_s, cond.condition, w_s),
        "generator_per_pass": lambda: model.synthesize(w_f),
    }
    times = {name: timed(no_grad_call(fn), repeats)["median_s"] for name, fn in calls.items()}
    passes = 1 + REFINE_STEPS  # F is applied once, then once per refinement step
    parts = {
        "inversion_encoder": times["inversion_encoder"],
        "inversion_generator": times["inversion_generator"],
        "face3d_net_x2": times["face3d_net_x2"],
        "targets_flame_and_render": times["targets_flame_and_render"],
        "e_fr_encoder": passes * times["e_fr_encoder_per_pass"],
        "generator": passes * times["generator_per_pass"],
    }
    total = sum(parts.values())
    return {"batch": batch, "passes_of_F": passes, "seconds": parts, "sum_s": total,
            "share": {name: value / total for name, value in parts.items()},
            "renderer_s": times["of_which_renderer"]}


def reenactment(settings: Settings) -> dict:
    """One full reenactment per image (inversion, 3D net on source and target, FLAME + rendering, E_FR and
    the generator, one refinement step) at the profile's size; batch sizes run side by side; the phases
    at the largest batch."""
    size, batches, repeats = image_size(settings), pick(REENACT_BATCHES, settings), settings.repeats
    reenactor = build_reenactor(settings)
    largest, chunk = batches[-1], pick(REENACT_CHUNK, settings)
    calls = {f"batch_{b}": no_grad_call(reenact_call(reenactor, b, size, "cpu")) for b in batches}
    chunked = f"batch_{largest}_in_chunks_of_{chunk}"
    calls[chunked] = no_grad_call(reenact_call(reenactor, largest, size, "cpu", chunk=chunk))
    g_chunk = pick(SYNTHESIS_CHUNK, settings)
    g_chunked = f"batch_{largest}_generator_chunks_of_{g_chunk}"
    whole = calls[f"batch_{largest}"]

    def with_generator_chunks():
        with chunked_synthesis(reenactor.frozen.generator, g_chunk):
            return whole()

    calls[g_chunked] = with_generator_chunks
    timings = side_by_side(calls, repeats)
    rows = {name: {"batch": b, **timings[name], "images_per_s": rate(b, timings[name]["median_s"])}
            for name, b in zip(calls, (*batches, largest, largest))}
    rows[chunked]["chunk"] = chunk
    rows[g_chunked]["generator_chunk"] = g_chunk
    best = rows[f"batch_{largest}"]["images_per_s"]
    return {
        "image_size": size, "refine_steps": REFINE_STEPS, "rows": rows,
        "target_images_per_s": TARGET_IMAGES_PER_S, "target_batch": largest,
        "target_met": bool(best >= TARGET_IMAGES_PER_S),
        "target_met_in_chunks": bool(rows[chunked]["images_per_s"] >= TARGET_IMAGES_PER_S),
        "chunk_speedup": rows[chunked]["images_per_s"] / best,
        "generator_chunk_speedup": rows[g_chunked]["images_per_s"] / best,
        "phases": reenactment_phases(reenactor, largest, size, repeats),
    }


def scoring(settings: Settings) -> dict:
    """The outputs train_reenact scores per batch (inversion only, refine 0, 1 and 2), made one reenactment per
    refinement step as before (each inverts the sources, measures and renders again, and runs F from the
    start) and from one chain (``Reenactor.reenact_steps``), side by side on one thread."""
    size, batch = image_size(settings), pick(SCORING_BATCH, settings)
    reenactor = build_reenactor(settings)
    sources, targets = random_batch(batch, size, seed=1), random_batch(batch, size, seed=2)
    steps = parse_steps(profile_params(settings)["train_reenact"]["refine_steps"])  # what the stage scores

    def separately():
        return [reenactor.reenact(sources, targets, refine_steps=0).inverted,
                *(reenactor.reenact(sources, targets, refine_steps=k).image for k in steps)]

    def one_chain():  # what evaluate_pairs runs per batch
        return list(scored_outputs(reenactor, sources, targets, steps).values())

    first, second = separately(), one_chain()
    rows = side_by_side({"separately": no_grad_call(separately), "one_chain": no_grad_call(one_chain)},
                        settings.repeats)
    return {"workload": f"a batch of {batch} pairs at {size} px: inversion only and refine {', '.join(map(str, steps))}",
            "batch": batch, **rows, "same_outputs": all(torch.equal(a, b) for a, b in zip(first, second)),
            "time_ratio_separately_over_chain": rows["separately"]["median_s"] / rows["one_chain"]["median_s"]}


def reenactment_threads(settings: Settings) -> dict:
    """The batched reenactment with 1 vs 2 torch threads, side by side in one process."""
    size, batch = image_size(settings), pick(REENACT_BATCHES, settings)[-1]
    call = no_grad_call(reenact_call(build_reenactor(settings), batch, size, "cpu"))
    return {"workload": f"one reenactment, {size} px, batch {batch}", "batch": batch,
            **thread_comparison(call, settings.repeats)}


def thread_comparison(call: Callable[[], object], repeats: int) -> dict:
    """``call`` with each of THREAD_VARIANTS torch threads, side by side; ratio = time(1) / time(2)."""
    previous = torch.get_num_threads()

    def with_threads(n: int) -> Callable[[], object]:
        def run():
            torch.set_num_threads(n)
            return call()
        return run

    try:
        rows = side_by_side({f"threads_{n}": with_threads(n) for n in THREAD_VARIANTS}, repeats)
    finally:
        torch.set_num_threads(previous)
    one, two = (rows[f"threads_{n}"]["median_s"] for n in THREAD_VARIANTS)
    return {**rows, "time_ratio_1_over_2": one / two}
