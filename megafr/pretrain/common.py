"""Pieces shared by the three pretraining stages: data order, schedules, checkpoints with resume, LPIPS detection.

Determinism and resume (the contract of every stage here):

- the rows of the batch at step ``k`` are a pure function of ``(seed, k)``
  (:func:`batch_rows`: one permutation per epoch seeded by ``(seed, epoch)``);
- at the start of step ``k`` the global torch RNG is seeded from ``(seed, k)``
  (:func:`seed_step`), so every random draw of the step (latent samples, noise, dropout) is too;
- the learning rate is a pure function of ``k`` (:func:`cosine_lr`);
- a checkpoint ``{"state_dict", "config", "step"}`` plus the optimizer states, the torch RNG state
  and the training curve so far is written atomically every ``checkpoint_every`` steps and at the
  end (:func:`save_training_state`).

A run that is killed and started again continues from its last checkpoint and ends with the
weights of an uninterrupted run (``tests/test_pretrain.py`` checks it bit for bit).

Hand-written: a loop of this size does not warrant a training framework (Lightning, Ignite), and
none of them makes resume exact without the same bookkeeping.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import ClassVar, Iterator, Optional

import numpy as np
import torch

from megafr.config import require, study_files_digest, study_path
from megafr.errors import CheckpointError
from megafr.fileio import atomic_path, write_json
from megafr.training import batch_rows  # noqa: F401  (re-exported: the stages' data order)
from megafr.training import run_log_path

WARMUP_FRACTION = 0.03  # share of the steps with a linear learning-rate warm-up (then cosine decay)
FINAL_LR_FRACTION = 0.05  # the cosine decays to this fraction of the peak learning rate
SEED_MIX = 1_000_003  # large prime mixing (seed, step) into one torch seed
CHECKPOINT_KEYS = ("state_dict", "config", "step")
# Config fields that may change between an interrupted run and its resumption.
RESUME_FREE_FIELDS = ("checkpoint_every", "threads", "out_dir", "run_dir", "profile", "idnet_path", "face3d_path",
                      "n_eval", "n_fd_samples", "n_swap_eval")
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt", "vgg": "vgg16-"}  # torchvision weight file prefixes in the hub cache


WIDTH_GROWTH = (1, 2, 4, 8)  # IR-SE stage widths as multiples of the base width (distinct, so shapes identify stages)


def irse_body(width: int, units: int):
    """IRSEConfig with stage widths ``width * WIDTH_GROWTH``, ``units`` units per stage and a ``width``-channel stem."""
    from megafr.nets.irse import IRSEConfig

    return IRSEConfig(widths=tuple(width * g for g in WIDTH_GROWTH), units=(units,) * len(WIDTH_GROWTH), stem_channels=width)


def seed_step(seed: int, step: int) -> None:
    """Seed torch's global RNG from ``(seed, step)``: every draw of the step is then reproducible."""
    torch.manual_seed((seed * SEED_MIX + step) % (2**63 - 1))


def cosine_lr(peak: float, step: int, steps: int) -> float:
    """Linear warm-up over WARMUP_FRACTION of the steps, then cosine decay to FINAL_LR_FRACTION * peak."""
    warmup = max(1, int(WARMUP_FRACTION * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    floor = FINAL_LR_FRACTION * peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


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


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> float [N, 3, S, S] in [-1, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, S, S, 3], got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float [N, 3, S, S] in [-1, 1] -> uint8 [N, S, S, 3] (clamped, rounded)."""
    return ((x.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ------------------------------------------------------------------------------ checkpoints
def code_digest() -> str:
    """SHA-256 of the source of ``megafr.pretrain`` and ``megafr.nets``: a checkpoint of other code is not resumed."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*(root / "pretrain").glob("*.py"), *(root / "nets").glob("*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


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


def resume_key(cfg) -> dict:
    """The config fields that must match for a checkpoint to be resumed."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in RESUME_FREE_FIELDS}


def save_training_state(path: Path, cfg, step: int, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], curve: list[dict], upstream: str,
                        extra: Optional[dict] = None) -> None:
    """Write ``{"state_dict": {name: weights}, "config", "step", "optimizers", "rng", "curve", "code",
    "upstream"}`` (+ ``extra``) atomically."""
    data = {
        "state_dict": {name: module.state_dict() for name, module in modules.items()},
        "config": asdict(cfg),
        "step": int(step),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "rng": torch.get_rng_state(),
        "curve": list(curve),
        "code": code_digest(),
        "upstream": upstream,  # digest of the run's input files, taken once at its start (resume_or_start)
        **(extra or {}),
    }
    with atomic_path(path) as temp:
        torch.save(data, temp)


def read_training_state(path: Path) -> dict:
    """Load a training checkpoint written by :func:`save_training_state` (CheckpointError if it is not one)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated or foreign file
        raise CheckpointError(f"{path}: not a readable training checkpoint ({type(error).__name__}: {error}); "
                              "delete it to start the stage afresh") from error
    if not isinstance(data, dict) or any(k not in data for k in CHECKPOINT_KEYS + ("optimizers", "curve")):
        raise CheckpointError(f"{path}: expected a training checkpoint with keys {list(CHECKPOINT_KEYS)}, "
                              f"'optimizers', 'curve'; delete it to start the stage afresh")
    return data


def try_resume(path: Path, cfg, steps: int, upstream: Optional[str] = None) -> Optional[dict]:
    """The checkpoint at ``path`` if it was written by a run with the same configuration, code and
    input files (``cfg.upstream_digest()``, by default the ``UPSTREAM`` fields; ``upstream``: their digest
    when the caller has taken it already), else None."""
    if not path.is_file():
        return None
    try:
        data = read_training_state(path)
    except CheckpointError:
        return None  # a damaged leftover of a killed run: start again rather than fail
    saved = {k: v for k, v in data["config"].items() if k not in RESUME_FREE_FIELDS}
    wanted = resume_key(cfg)
    same = saved == {k: (list(v) if isinstance(v, tuple) else v) for k, v in wanted.items()} or saved == wanted
    upstream = cfg.upstream_digest() if upstream is None else upstream
    same = same and data.get("code") == code_digest() and data.get("upstream", "") == upstream
    return data if same and 0 < int(data["step"]) <= steps else None


def restore(data: dict, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> int:
    """Load weights, optimizer states and the RNG state from a checkpoint; return its step."""
    for name, module in modules.items():
        module.load_state_dict(data["state_dict"][name])
    for name, opt in optimizers.items():
        opt.load_state_dict(data["optimizers"][name])
    torch.set_rng_state(data["rng"])
    return int(data["step"])


def resume_or_start(cfg, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    stop_after: Optional[int]) -> tuple[int, int, list, str]:
    """Resume from ``cfg.checkpoint_path`` when it matches ``cfg`` -> (first step, end step, curve so far,
    digest of the input files to record in every checkpoint of the run).

    The end is ``cfg.steps``, or ``stop_after`` steps after the start (an interruption, for tests).
    """
    start, curve = 0, []
    upstream = cfg.upstream_digest()  # the input files are hashed once per run, not at every checkpoint
    saved = try_resume(cfg.checkpoint_path, cfg, cfg.steps, upstream)
    if saved is not None:
        start = restore(saved, modules, optimizers)
        curve = list(saved["curve"])
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    return start, end, curve, upstream


CHECKPOINT_FILE = "checkpoint.pt"


MODES = ("train", "official")  # train: the mini and smoke worlds; official: validate the paper's released files


def official_mode(cfg, official_fields: tuple[str, ...], released: str) -> bool:
    """Check ``cfg.mode`` of a pretraining stage config; True in official mode (the paper profile), once
    the ``official_fields`` name the released files (``released``: their names, for the message)."""
    require(cfg.mode in MODES, f"{cfg.STAGE}.mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.mode != "official":
        return False
    names = " and ".join(f"{cfg.STAGE}.{name}" for name in official_fields)
    require(all(getattr(cfg, name) for name in official_fields), f"{names} must name {released} in the paper profile")
    return True


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


def lpips_status() -> tuple[bool, str]:
    """Whether LPIPS can run offline here: its torchvision backbone weights must already be in the hub cache.

    Never downloads. Returns ``(available, message)``; the message is what the stage logs.
    """
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(p.name for p in folder.glob("*.pth")) if folder.is_dir() else []
    have = [net for net, prefix in LPIPS_BACKBONE_FILES.items() if any(f.startswith(prefix) for f in found)]
    if not have:
        return False, (f"LPIPS off: no AlexNet/VGG16 ImageNet weights in {folder} (lpips needs torchvision's "
                       "pretrained backbone; nothing is downloaded); the pixel L2 term carries the reconstruction")
    try:
        import lpips  # noqa: F401  (imports torchvision)
    except Exception as error:  # a broken torchvision install raises RuntimeError on import
        return False, f"LPIPS off: the lpips package does not import ({type(error).__name__}: {error})"
    return True, f"LPIPS on: {have[0]} backbone found in {folder}"
