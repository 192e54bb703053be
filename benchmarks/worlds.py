"""The networks the benchmarks time, built at a profile's sizes with the stages' own builders.

Sizes come from ``profiles/<name>.yaml`` (``mini`` for the full suite, ``smoke`` for ``--quick``),
and every network is built by the function its pipeline stage uses
(``megafr.face3d.train.build_model``, ``megafr.pretrain.autoencoder.build_networks``, ...), so a
change of architecture or profile shows up here without editing the benchmarks. Weights are
random (seeded): the cost of a forward or training step does not depend on their values, and the
suite runs from a fresh clone without the trained checkpoints. The FLAME-format model is the
synthetic head model that the prepare stage writes (``megafr.face3d.headmodel``), written once
per suite run into a temporary folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megafr.config import build_config, load_params, profile_file, study_root
from megafr.face3d import headmodel
from megafr.face3d import train as face3d_train
from megafr.nets.irse import ArcFace
from megafr.pretrain import autoencoder, idnet, inversion
from megafr.reenact import train as reenact_train

FULL_PROFILE = "mini"  # sizes of the full suite
QUICK_PROFILE = "smoke"  # sizes of --quick (what the tests run)
DATA_DIR = "data/prepare"  # recorded in the stage configs; the benchmarks read no data from it
N_IDENTITIES = 40  # identities of the random training data (the ArcFace head has one row per identity)
SEED = 0  # data and weights


@dataclass(frozen=True)
class Settings:
    """What one suite run measures with; passed to every case (also across processes)."""

    quick: bool  # tiny sizes and one repeat (the tests)
    repeats: int  # timed repeats per measurement (median reported)
    threads: int  # torch intra-op threads of every case (0: torch's default)
    head_dir: str  # folder holding the synthetic FLAME-format head model
    work_dir: str  # scratch folder (checkpoints of the training cases)

    @property
    def profile(self) -> str:
        return QUICK_PROFILE if self.quick else FULL_PROFILE


def write_head_model(folder: Path) -> Path:
    """Write the synthetic FLAME-format head model into ``folder``; return the folder."""
    headmodel.write_head_model(folder)
    return folder


def head_files(settings: Settings) -> headmodel.HeadModelFiles:
    folder = Path(settings.head_dir)
    return headmodel.HeadModelFiles(folder / headmodel.MODEL_FILE, folder / headmodel.LANDMARK_FILE,
                                    folder / headmodel.APPEARANCE_FILE)


def profile_params(settings: Settings) -> dict[str, Any]:
    return load_params(profile_file(settings.profile, study_root()))


def stage_config(cls: type, settings: Settings, stage: str, **overrides):
    """``cls`` built from the profile's ``stage`` block plus the shared keys, with ``overrides``.

    Keys of the block that ``cls`` does not have (notebook-only ones) are left out; outputs go to
    the scratch folder.
    """
    params = profile_params(settings)
    files = head_files(settings)
    shared = {"profile": params["profile"], "seed": params["seed"], "model_path": str(files.model_path),
              "landmark_path": str(files.landmark_path), "data_dir": DATA_DIR, "source": "synthetic",
              "image_size": params["prepare"]["image_size"], "out_dir": str(Path(settings.work_dir) / stage)}
    names = {f.name for f in dataclasses.fields(cls)}
    values = {key: value for key, value in {**params[stage], **shared, **overrides}.items() if key in names}
    return build_config(cls, values)


def image_size(settings: Settings) -> int:
    return int(profile_params(settings)["prepare"]["image_size"])


def random_images(n: int, size: int, seed: int = SEED) -> np.ndarray:
    """uint8 images [n, size, size, 3], as the prepare stage stores them."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def random_batch(n: int, size: int, seed: int = SEED) -> torch.Tensor:
    """Float images [n, 3, size, size] in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator) * 2 - 1


# --------------------------------------------------------------------------- configs of the stages
def face3d_config(settings: Settings, **overrides) -> face3d_train.TrainConfig:
    return stage_config(face3d_train.TrainConfig, settings, "train_face3d", **overrides)


def idnet_config(settings: Settings, **overrides) -> idnet.IdNetConfig:
    return stage_config(idnet.IdNetConfig, settings, "train_idnet", **overrides)


def generator_config(settings: Settings, **overrides) -> autoencoder.GeneratorStageConfig:
    """The profile's generator config with its networks started from seeded random weights (``init_from: ""``:
    a profile whose stage fine-tunes a release names a folder that only a study run has). A profile that
    only fine-tunes (``steps: 0``) is timed as a plain run of ``finetune_steps`` steps: the autoencoder
    terms without the fine-tune's extra ones (3D-network distance, SSIM), which need the study's files."""
    block = profile_params(settings)["train_generator"]
    defaults = {"init_from": ""}
    if block["steps"] == 0:
        defaults.update(steps=max(block["finetune_steps"], 1), finetune_steps=0)
    return stage_config(autoencoder.GeneratorStageConfig, settings, "train_generator", **{**defaults, **overrides})


def inversion_config(settings: Settings, **overrides) -> inversion.InversionStageConfig:
    return stage_config(inversion.InversionStageConfig, settings, "train_inversion", **overrides)


def reenact_config(settings: Settings, **overrides) -> reenact_train.ReenactConfig:
    return stage_config(reenact_train.ReenactConfig, settings, "train_reenact", **overrides)


# --------------------------------------------------------------------------- networks
def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    return module.requires_grad_(False).eval()


def frozen_networks(settings: Settings) -> reenact_train.Frozen:
    """Generator, e4e, 3D face network, identity network and latent D of the profile's sizes, frozen.

    Built as the stages build them (weights seeded, untrained). LPIPS is left out, as on any
    machine without its backbone weights (the train_reenact log says which).
    """
    nets = autoencoder.build_networks(generator_config(settings))
    face = face3d_train.build_model(face3d_config(settings))
    identity = ArcFace(idnet_config(settings).arcface_config())
    e4e = autoencoder.e4e_net(nets)
    return reenact_train.Frozen(_frozen(nets.g_ema), _frozen(e4e), _frozen(face), _frozen(identity),
                                _frozen(nets.latent_d), lpips=None)


def sizes(settings: Settings) -> dict[str, Any]:
    """The profile's network sizes, for the JSON (what the numbers belong to)."""
    params = profile_params(settings)
    gen, face, ident, reen = (params[k] for k in ("train_generator", "train_face3d", "train_idnet", "train_reenact"))
    return {
        "profile": params["profile"],
        "image_size": params["prepare"]["image_size"],
        "generator": {k: gen[k] for k in ("style_dim", "n_mlp", "max_channels")} | {"channel_multiplier": 1},
        "e4e": {"enc_width": gen["enc_width"], "enc_units": gen["enc_units"]},
        "face3d": {k: face[k] for k in ("input_size", "n_shape", "n_expr", "width")},
        "idnet": {k: ident[k] for k in ("input_size", "embedding_dim", "width", "units")},
        "reenact_train_batch": reen["batch_size"],
        "weights": "random (seeded); cost does not depend on the values",
    }
