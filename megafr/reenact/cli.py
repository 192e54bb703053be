"""``python -m megafr reenact``: reenact one source photo by one target photo from the command line.

The networks are the ones the ``train_reenact`` stage uses, with the values ``dvc repro`` passes
it (read from ``dvc.yaml`` and ``params.yaml``). On the paper profile real photos are first
aligned the FFHQ way (dlib landmarks); on mini and smoke the inputs are SynthHeads images,
already framed, of the world's size.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from megafr.config import build_config
from megafr.errors import InputError
from megafr.imageio import image_to_tensor, load_image, save_image, tensor_to_image
from megafr.reenact.inference import Reenactor
from megafr.reenact.train import ReenactConfig
from megafr.sweep import stage_command

STAGE = "train_reenact"


def stage_config() -> ReenactConfig:
    """The ``train_reenact`` configuration exactly as ``dvc repro`` runs it."""
    _, _, values = stage_command(STAGE)
    names = {f.name for f in dataclasses.fields(ReenactConfig)}
    return build_config(ReenactConfig, {k: v for k, v in values.items() if k in names})


def _prepare(path: str, size: int, profile: str, aligner):
    image = load_image(path)
    if aligner is not None:
        image = aligner.align(image, source=str(path)).image
    elif image.shape[:2] != (size, size):
        raise InputError(f"{path} is {image.shape[1]}x{image.shape[0]} px; the {profile} world reenacts "
                         f"{size}x{size} SynthHeads images (data/prepare/...). For real photos use the paper "
                         "profile (`python -m megafr profile paper`), which aligns them first")
    return image_to_tensor(image).unsqueeze(0)


def reenact_files(source: str, target: str, out: str, refine_steps: int = 1, pti_steps: int = 0) -> Path:
    """Reenact ``source`` by ``target`` and write the result to ``out`` (PNG); return its path."""
    cfg = stage_config()
    reenactor = Reenactor.from_config(cfg)
    size = reenactor.model.generator.size
    aligner = None
    if cfg.profile == "paper":
        from megafr.datasets.align import FaceAligner

        aligner = FaceAligner(size)
    x_source = _prepare(source, size, cfg.profile, aligner)
    x_target = _prepare(target, size, cfg.profile, aligner)
    result = reenactor.reenact(x_source, x_target, refine_steps=refine_steps, pti_steps=pti_steps)
    return save_image(out, tensor_to_image(result.image[0]))
