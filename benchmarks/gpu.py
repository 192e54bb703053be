"""The paper-size cases on a CUDA device, when there is one (skipped cleanly otherwise).

Same measurements as the CPU sections, at the paper's sizes: StyleGAN2 config-f at 1024 px, the
released e4e configuration at 256 px, the FLAME-sized mesh rendered at 1024 px, the FLAME layer
at FLAME 2020's size, and the full mini-size reenactment batched on the device. Each row is
guarded: a row that fails records its error (and the suite reports it) without losing the others.
``paper_size_section(settings, "cpu")`` runs the same code on the CPU at --quick sizes (the tests).
"""

from __future__ import annotations

from typing import Callable

import torch

from benchmarks import bench_render
from benchmarks.cases import (CONFIG_F_SIZE, FLAME_BATCH, REENACT_BATCHES, encoder_row, flame_row, synthesis_row,
                              build_reenactor, config_f_generator, flame_sized_assets, no_grad_call, pick,
                              reenact_call)
from benchmarks.timing import rate, timed
from benchmarks.worlds import Settings, generator_config, image_size
from megafr.config import load_params, profile_file, study_root
from megafr.face3d.flame import FLAME
from megafr.nets.encoders import Encoder4Editing, EncoderConfig
from megafr.pretrain import autoencoder

DEVICE_BATCH = (8, 2)  # batched rows on the device (full, quick)
NOT_AVAILABLE = "torch.cuda.is_available() is False: no CUDA device on this machine"


def guarded(fn: Callable[[], dict]) -> dict:
    """``fn()``, or ``{"error": ...}`` when it raises (the suite lists every error at the end)."""
    try:
        return fn()
    except Exception as error:  # a failing device row must not hide the other rows
        return {"error": f"{type(error).__name__}: {error}"}


def paper_size_section(settings: Settings, device: str) -> dict:
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    batch = pick(DEVICE_BATCH, settings)
    out: dict = {"device": str(dev),
                 "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (code-path check)"}

    def generator_rows():
        g = config_f_generator(pick(CONFIG_F_SIZE, settings)).to(dev)
        return {"config": g.config.to_dict(), "batch_1": synthesis_row(g, 1, settings.repeats),
                f"batch_{batch}": synthesis_row(g, batch, settings.repeats)}

    def encoder_rows():
        if settings.quick:  # the released configuration takes seconds to build on a CPU
            encoder = autoencoder.build_networks(generator_config(settings)).encoder.eval().to(dev)
        else:
            torch.manual_seed(0)
            encoder = Encoder4Editing(EncoderConfig()).eval().to(dev)
        size = encoder.config.input_size
        return {"input_size": size, "batch_1": encoder_row(encoder, 1, size, settings.repeats, dev),
                f"batch_{batch}": encoder_row(encoder, batch, size, settings.repeats, dev)}

    def render_rows():
        verts, faces = bench_render.flame_sized_mesh()
        size = pick(CONFIG_F_SIZE, settings)
        return {f"flame_sized_{size}_{mode}": bench_render.time_row(verts, faces, size, batch, settings.repeats,
                                                                   mode=mode, device=dev)
                for mode in ("geometry", "photo")}

    def flame_rows():
        paper = load_params(profile_file("paper", study_root()))["train_face3d"]
        sized = FLAME(flame_sized_assets(paper["n_shape"], paper["n_expr"]), paper["n_shape"], paper["n_expr"])
        return flame_row(sized, pick(FLAME_BATCH, settings), settings.repeats, dev)

    def reenact_rows():
        b, size = pick(REENACT_BATCHES, settings)[-1], image_size(settings)
        t = timed(no_grad_call(reenact_call(build_reenactor(settings, device), b, size, dev)), settings.repeats,
                  sync=sync)
        return {"batch": b, "image_size": size, **t, "images_per_s": rate(b, t["median_s"])}

    for name, fn in (("generator_config_f", generator_rows), ("e4e", encoder_rows), ("rendering", render_rows),
                     ("flame_layer", flame_rows), ("reenactment_mini", reenact_rows)):
        out[name] = guarded(fn)
    return out


def gpu(settings: Settings) -> dict:
    """The paper-size section on the first CUDA device, or a skip record."""
    if not torch.cuda.is_available():
        return {"available": False, "skipped": NOT_AVAILABLE}
    return {"available": True, **paper_size_section(settings, "cuda")}
