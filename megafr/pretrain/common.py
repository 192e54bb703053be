"""Pieces shared by the three pretraining stages: data order, schedules, stage folders, official mode.

Determinism (the contract of every stage here):

- the rows of the batch at step ``k`` are a pure function of ``(seed, k)``
  (:func:`megafr.training.batch_rows`: one permutation per epoch seeded by ``(seed, epoch)``);
- at the start of step ``k`` the global torch RNG is seeded from ``(seed, k)``
  (:func:`seed_step`), so every random draw of the step (latent samples, noise, dropout) is too;
- the learning rate is a pure function of ``k`` (:func:`cosine_lr`).

With the checkpoints of :mod:`megafr.training` (weights, optimizer states, torch RNG state and the
curve so far), a run that is killed and started again continues from its last checkpoint and ends
with the weights of an uninterrupted run (``tests/test_pretrain.py`` checks it bit for bit).
"""

from __future__ import annotations

import dataclasses
import filecmp
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from megafr.config import require, study_files_digest, study_path, study_relative
from megafr.errors import InputError
from megafr.fileio import atomic_path, write_json
from megafr.training import batch_rows  # noqa: F401  (re-exported: the stages' data order)
from megafr.training import run_log_path
from megafr.training import cosine_lr, set_lr  # noqa: F401  (re-exported: the stages' schedule)

SEED_MIX = 1_000_003  # large prime mixing (seed, step) into one torch seed


WIDTH_GROWTH = (1, 2, 4, 8)  # IR-SE stage widths as multiples of the base width (distinct, so shapes identify stages)


def irse_body(width: int, units: int):
    """IRSEConfig with stage widths ``width * WIDTH_GROWTH``, ``units`` units per stage and a ``width``-channel stem."""
    from megafr.nets.irse import IRSEConfig

    return IRSEConfig(widths=tuple(width * g for g in WIDTH_GROWTH), units=(units,) * len(WIDTH_GROWTH), stem_channels=width)


def seed_step(seed: int, step: int) -> None:
    """Seed torch's global RNG from ``(seed, step)``: every draw of the step is then reproducible."""
    torch.manual_seed((seed * SEED_MIX + step) % (2**63 - 1))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> float [N, 3, S, S] in [-1, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, S, S, 3], got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, S, S] in [-1, 1] -> uint8 [N, S, S, 3] (clamped, rounded)."""
    return ((x.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ------------------------------------------------------------------------------ checkpoints
def checkpoint_folder(out_dir: str, run_dir: str, stage: str) -> Path:
    """Where a stage keeps its resume checkpoint: ``<run_dir>/checkpoints/<stage>`` or ``<out_dir>/../checkpoints/<stage>``.

    Outside the stage's declared outputs on purpose: DVC deletes declared outputs before it runs a
    stage, which would delete the checkpoint an interrupted run should resume from. The stage
    removes the checkpoint once its products are written (:func:`finish`).
    """
    base = study_path(run_dir) / "checkpoints" if run_dir else study_path(out_dir).parent / "checkpoints"
    return base / stage


def finish(path: Path) -> None:
    """Remove a completed run's checkpoint (its products are written; nothing is left to resume)."""
    path.unlink(missing_ok=True)


CHECKPOINT_FILE = "checkpoint.pt"
PRODUCTS_FILE = "products.json"  # names the files later stages read (own products, or official / released copies)


MODES = ("train", "official", "release")
# train: the smoke world (and `python -m megafr release`) trains the network;
# official: the paper profile loads the user's released files and checks them;
# release: a synthetic world loads the files its release ships (``release/<profile>/``, written by
# ``python -m megafr release``) and evaluates them as a trained run would.


def official_mode(cfg, official_fields: tuple[str, ...], released: str) -> bool:
    """Check ``cfg.mode`` of a pretraining stage config; True in official mode (the paper profile: the
    rest of the config is unused). In official and release mode the ``official_fields`` must name the
    files (``released``: their names in the paper world, for the message); a release-mode config is
    still its release's recipe, so the caller goes on validating it."""
    require(cfg.mode in MODES, f"{cfg.STAGE}.mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.mode == "train":
        return False
    names = " and ".join(f"{cfg.STAGE}.{name}" for name in official_fields)
    what = (f"{released} in the paper profile" if cfg.mode == "official"
            else "the released files in release mode (`python -m megafr release` writes them)")
    require(all(getattr(cfg, name) for name in official_fields), f"{names} must name {what}")
    return cfg.mode == "official"


RELEASE_RECORD = "release.json"  # written by ``python -m megafr release`` next to the released files


def curve_file(stage: str) -> str:
    """Name of a stage's training curve in a release folder."""
    return f"{stage}_curve.csv"


def released_record(folder: Path, stage: str) -> dict:
    """The ``release.json`` entry of ``stage`` in a release folder (``{}`` when there is none)."""
    import json

    path = folder / RELEASE_RECORD
    return json.loads(path.read_text()).get("stages", {}).get(stage, {}) if path.is_file() else {}


INIT_FIELD = "init_from"  # a generator run that started from a release's files instead of random weights


def effective_recipe(entry: dict) -> dict:
    """The recipe a released stage's files amount to. A run that started from an earlier release's files
    (its ``init_from``, recorded by the export as ``started_from``) with no first phase of its own
    (``steps`` 0), from a release without a fine-tune, and with that release's values in every other
    training field, amounts to that release's recipe plus the run's ``finetune_*`` fields (up to the order
    of its batches and random draws). Any other chain is left as it is, so that its differences are named."""
    from megafr.training import PRETRAIN_FREE_FIELDS

    recipe = entry.get("recipe", {})
    base = entry.get("started_from")
    if not base:
        return recipe
    first = effective_recipe(base)
    skip = {*PRETRAIN_FREE_FIELDS, "steps", INIT_FIELD}
    same = all(first.get(k) == v for k, v in recipe.items() if k not in skip and not k.startswith("finetune_"))
    if recipe.get("steps") != 0 or first.get("finetune_steps", 0) != 0 or not same:
        return recipe
    return {**first, **{k: v for k, v in recipe.items() if k.startswith("finetune_")}, INIT_FIELD: ""}


def recipe_differences(cfg, recipe: dict) -> list[str]:
    """``field: profile value vs released value`` for every training field where ``cfg`` differs from the
    recipe a release was trained with (paths, modes and evaluation-only fields aside)."""
    from megafr.training import PRETRAIN_FREE_FIELDS

    ignored = {*PRETRAIN_FREE_FIELDS, "data_dir", "model_path", "landmark_path",
               "stylegan2_path", "e4e_path"}  # where the upstream products lay, not how they were trained on
    differ = [f"{name}: {getattr(cfg, name)!r} vs {value!r}" for name, value in recipe.items()
              if name not in ignored and hasattr(cfg, name) and getattr(cfg, name) != value]
    fields = [f.name for f in dataclasses.fields(cfg)] if dataclasses.is_dataclass(cfg) else []
    unknown = [f"{name}: {getattr(cfg, name)!r} vs not recorded" for name in fields  # fields added since the release
               if recipe and name not in recipe and name not in ignored]
    return differ + unknown


@dataclass
class Released:
    """What release mode hands a stage: its products (copies of the released files), the release's
    training curve, and the metrics that say so."""

    products: dict[str, Path]  # products.json key ("stylegan2") -> the product the stage reads next
    curve: "pd.DataFrame"  # training curve recorded by the release (empty frame when it has none)
    metrics: dict  # {"trained": 0, "released": 1, "steps": <the release's steps>}


def load_released(cfg, files: dict[str, tuple[str, str]], curve_columns: list[str]) -> Released:
    """Release mode: check the released files named by ``files`` (``{key: (config field, product file
    name)}``), copy them to the stage's products, write ``products.json``, read the release's curve and
    steps, and warn when the profile's recipe differs from the release's."""
    import pandas as pd

    paths = {key: getattr(cfg, field) for key, (field, _) in files.items()}
    missing = [p for p in paths.values() if not study_path(p).is_file()]
    if missing:
        raise InputError(f"released file(s) missing: {', '.join(missing)}; `python -m megafr release` writes "
                         f"them (hours on a CPU), or set {cfg.STAGE}.mode: train to train this stage in the pipeline")
    products = {key: study_path(expose_official(paths[key], cfg.folder / name)) for key, (_, name) in files.items()}
    write_json(cfg.folder / PRODUCTS_FILE, {key: study_relative(path) for key, path in products.items()})
    folder = study_path(next(iter(paths.values()))).parent
    record = released_record(folder, cfg.STAGE)
    recipe = effective_recipe(record)
    differences = recipe_differences(cfg, recipe)
    if differences:
        warnings.warn(f"{cfg.STAGE}: the profile's recipe differs from the one {study_relative(folder)} was trained "
                      f"with ({'; '.join(differences)}); the metrics are the released networks'. "
                      "`python -m megafr release` retrains them with the profile's values.")
    curve = folder / curve_file(cfg.STAGE)
    steps = {k: recipe[k] for k in ("steps", "finetune_steps") if k in recipe}
    return Released(products, pd.read_csv(curve) if curve.is_file() else pd.DataFrame(columns=curve_columns),
                    {"trained": 0, "released": 1, **steps})


def expose_official(released: str, product: Path) -> str:
    """Official and release mode: copy the released file to the path of the product the stage makes in train mode (an
    atomic copy, replaced only when its bytes differ), so that later stages and ``dvc.yaml`` read the same
    paths on every profile; returns the product's study-relative path."""
    source = study_path(released)
    if not (product.is_file() and filecmp.cmp(source, product, shallow=False)):
        with atomic_path(product) as tmp:
            shutil.copyfile(source, tmp)
    return study_relative(product)


def split_files(data_dir: str, split: str) -> list[str]:
    """The files of a prepare split that a training run reads (images and their table)."""
    return [f"{data_dir}/{split}/images.npy", f"{data_dir}/{split}/meta.parquet"]


class StageFolders:
    """Mixin of the stage configs (which have ``out_dir`` and ``run_dir``): where a stage's products
    and its resume checkpoint go. Subclasses name their stage in ``STAGE``."""

    STAGE: ClassVar[str]
    UPSTREAM: ClassVar[tuple[str, ...]] = ()  # fields naming the input files a run's weights depend on
    UPSTREAM_SPLIT: ClassVar[str] = ""  # the prepare split (under ``data_dir``) a run trains on ("": none)

    def upstream_digest(self) -> str:
        """Digest of the files named by the ``UPSTREAM`` fields and of the ``UPSTREAM_SPLIT`` training
        split ("" when there are none): a checkpoint is resumed only by a run whose input files are the
        same (:func:`try_resume`)."""
        files = [getattr(self, f) for f in self.UPSTREAM]
        if self.UPSTREAM_SPLIT:
            files += split_files(getattr(self, "data_dir"), self.UPSTREAM_SPLIT)
        return study_files_digest(files) if files else ""

    @property
    def checkpoint_path(self) -> Path:
        """Resume checkpoint (outside the DVC outputs, see :func:`checkpoint_folder`)."""
        return checkpoint_folder(self.out_dir, self.run_dir, self.STAGE) / CHECKPOINT_FILE

    @property
    def folder(self) -> Path:
        """The products' folder: ``out_dir``, or ``<run_dir>/<stage>`` for a sweep run."""
        return study_path(self.run_dir) / self.STAGE if self.run_dir else study_path(self.out_dir)


def write_run_record(folder: Path, seconds: float, steps_run: int, resumed_from: int) -> None:
    """Wall time and resume point of the run whose products are in ``folder``, kept outside the DVC-tracked
    outputs (``megafr.training.run_log_path``: ``data/logs/<stage>.json``): products and metrics must be the
    same bytes for every run over the same inputs, interrupted-and-resumed or not, on any machine."""
    write_json(run_log_path(folder), {"train_seconds": round(seconds, 2), "steps_run": steps_run,
                                      "seconds_per_step": round(seconds / max(1, steps_run), 4),
                                      "resumed_from": resumed_from})
