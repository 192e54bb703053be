"""Pieces every training stage shares: the data order, the optimiser, and checkpoints that resume exactly.

``batch_rows`` makes the data order a pure function of (seed, step), which is what lets an
interrupted stage resume and end with exactly the weights of an uninterrupted run.

``adam`` is torch's Adam with its fused kernel, which updates every parameter in one pass instead of
looping over tensors in Python (same rule and state layout as the default; timings in
``docs/experiments/training.md``).

Resume (every training stage: train_face3d, train_idnet, train_generator, train_inversion,
train_reenact). A stage writes its checkpoint atomically (:func:`write_checkpoint`) every
``checkpoint_every`` steps; a new run continues from it only when :func:`resume_mismatch` finds
nothing that differs:

- the configuration, except the fields a stage declares free (thread count, checkpoint interval,
  output folders: they do not change the weights);
- the digest of the input files (``upstream``), taken once at the start of the run;
- the digest of the training code (:func:`code_digest`), which ignores comments, docstrings and
  formatting: it hashes the syntax tree, not the bytes;
- the checkpoint's step lies in ``(0, steps]``.

The pretraining stages keep ``{"state_dict", "config", "step"}`` plus the optimizer states, the
torch RNG state and the curve so far (:func:`save_training_state`, :func:`resume_or_start`); the
train_face3d and train_reenact checkpoints are also their products and keep their own layouts
(``megafr.face3d.train``, ``megafr.reenact.train``) with the same ``"code"`` and ``"upstream"``
entries, checked by the same :func:`resume_mismatch`.

``check_finite`` is called by every training loop after the forward pass and before the
optimiser step: a loss that is NaN or infinite (a diverged run, an absurd learning rate) stops the
run with :class:`NonFiniteLossError` naming the loss term and the step, before the weights are
updated. :func:`write_checkpoint` checks the weights the same way (``check_finite_weights``) before
it writes, so a diverged update never replaces the last good checkpoint. It saves through
:func:`megafr.fileio.atomic_path`, under the target's own name, so the same payload gives the same
bytes on every run and machine.

``run_log_path`` says where a stage keeps the facts of one run that differ between runs and
machines (wall time, steps run, resume point): outside the stage's DVC-tracked outputs, which
must be the same bytes for the same inputs.

Hand-written: a loop of this size does not warrant a training framework (Lightning, Ignite), and
none of them makes resume exact without the same bookkeeping.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import numpy as np
import torch

from megafr.errors import CheckpointError, MegaFRError
from megafr.fileio import atomic_path

PACKAGE_ROOT = Path(__file__).resolve().parent  # the megafr package, whose sources code_digest reads
CHECKPOINT_KEYS = ("state_dict", "config", "step")
LOGS_FOLDER = "logs"  # beside the stages' output folders: data/logs/<stage>.json (ignored by git and DVC)


class NonFiniteLossError(MegaFRError):
    """A training loss became NaN or infinite; the run stopped before updating weights or checkpoints."""

    def __init__(self, message: str, stage: str, term: str, step: int):
        super().__init__(message)
        self.stage = stage  # the training that stopped
        self.term = term  # the first non-finite loss term ("total" when only the sum is)
        self.step = step  # the step whose loss was not finite, 1-based as the training curves count


def check_finite(stage: str, step: int, total, terms: Mapping[str, object] | None = None,
                 checkpoint: str | Path | None = None) -> None:
    """Raise :class:`NonFiniteLossError` if the loss of ``step`` (the loop's 0-based index) is NaN or infinite.

    ``total`` is the loss that is back-propagated (a tensor or a float); ``terms`` its named parts
    (tensors or floats), searched when the total is not finite so that the message names the term
    that went wrong. ``checkpoint``: the run's checkpoint path, named in the message when a file is
    there (it is left untouched). One host synchronisation per call (``torch.isfinite`` of a scalar).
    """
    if _finite(total):
        return
    bad = next((name for name, value in (terms or {}).items() if not _finite(value)), "total")
    value = terms[bad] if bad != "total" else total
    number = float(value.detach().float().reshape(-1)[0]) if isinstance(value, torch.Tensor) else float(value)
    raise NonFiniteLossError(
        f"{stage}: the loss term '{bad}' is {number} at step {step + 1}, so training stopped before updating "
        f"the weights{_kept(checkpoint)}. Lower the learning rate or the weight of '{bad}' in params.yaml "
        f"(a diverging run), then run the stage again", stage, bad, step + 1)


def check_finite_weights(stage: str, step: int, modules: Mapping[str, torch.nn.Module],
                         checkpoint: str | Path | None = None) -> None:
    """Raise :class:`NonFiniteLossError` if an update left NaN or infinite weights (called before a checkpoint
    is written, so that a diverged update is never saved over the last good checkpoint). ``step``: the loop's
    0-based index of the update just made."""
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise NonFiniteLossError(
                    f"{stage}: the update of step {step + 1} made the weights of {name} ({key}) NaN or infinite, "
                    f"so training stopped before writing them{_kept(checkpoint)}. Lower the learning rate in "
                    "params.yaml (a diverging run), then run the stage again", stage, "weights", step + 1)


def _kept(checkpoint: str | Path | None) -> str:
    """The message's note on the checkpoint left in place (empty when there is none yet)."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return ""
    return f"; the last good checkpoint {checkpoint} is kept as it was"


def _finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(float(value))


def run_log_path(products: str | Path, name: str = "") -> Path:
    """Where the run facts of a stage's outputs go: ``<base>/logs/<stage>[_<name>].json`` for the output
    folder ``<base>/<stage>`` (``data/train_idnet`` -> ``data/logs/train_idnet.json``; a sweep run's
    ``<run_dir>/<stage>`` -> ``<run_dir>/logs/<stage>.json``). Outside every DVC-tracked output."""
    products = Path(products)
    return products.parent / LOGS_FOLDER / f"{products.name}{'_' + name if name else ''}.json"


def batch_rows(seed: int, step: int, n_items: int, batch_size: int) -> np.ndarray:
    """Rows of the batch at ``step``: positions ``step*B .. step*B+B-1`` of a stream of per-epoch
    permutations, each seeded by ``(seed, epoch)``."""
    if n_items < 1 or batch_size < 1:
        raise ValueError(f"batch_rows needs n_items >= 1 and batch_size >= 1, got {n_items}, {batch_size}")
    positions = step * batch_size + np.arange(batch_size)
    epochs, offsets = positions // n_items, positions % n_items
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(n_items)
        chosen = epochs == epoch
        out[chosen] = order[offsets[chosen]]
    return out


WARMUP_FRACTION = 0.03  # share of the steps with a linear learning-rate warm-up (then cosine decay)
FINAL_LR_FRACTION = 0.05  # the cosine decays to this fraction of the peak learning rate


def cosine_lr(peak: float, step: int, steps: int, warmup_fraction: float = WARMUP_FRACTION,
              final_fraction: float = FINAL_LR_FRACTION) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``final_fraction * peak``."""
    warmup = max(1, int(warmup_fraction * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    floor = final_fraction * peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused update (same rule and state layout as ``torch.optim.Adam``, one kernel per step)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


# ------------------------------------------------------------------------------ code digest
def _strip_strings(tree: ast.AST) -> ast.AST:
    """Remove every statement that is a bare string constant (docstrings, stray strings): they do nothing."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            node.body = [stmt for stmt in body if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
                                                       and isinstance(stmt.value.value, str))]
    return tree


def source_digest(source: str) -> str:
    """SHA-256 of a module's syntax tree without docstrings: equal for sources that differ only in
    comments, docstrings, blank lines or line breaks inside brackets; different for any change to code."""
    tree = _strip_strings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, annotate_fields=True, include_attributes=False).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def code_digest(folders: tuple[str, ...]) -> str:
    """Digest of the ``megafr`` sources under ``folders`` (sub-packages such as ``"nets"`` or single modules such
    as ``"training.py"``), each file by :func:`source_digest`: a checkpoint written by other code is not resumed.

    Taken once per process (parsing the sources takes a fraction of a second): the code that runs is the
    code that was imported, even if the files are edited while a notebook kernel lives."""
    digest = hashlib.sha256()
    for folder in folders:
        target = PACKAGE_ROOT / folder
        for path in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
            digest.update(source_digest(path.read_text()).encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------ resume checks
def resume_key(cfg, free_fields: tuple[str, ...]) -> dict:
    """The config fields that must match for a checkpoint to be resumed (all but ``free_fields``)."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in free_fields}


def _as_saved(value):
    """A config value as it reads back from a checkpoint that stored it as a list."""
    return list(value) if isinstance(value, tuple) else value


def config_matches(saved, cfg, free_fields: tuple[str, ...]) -> bool:
    """Whether a checkpoint's stored config (a dict) equals ``cfg`` outside ``free_fields``."""
    if not isinstance(saved, dict):
        return False
    saved = {k: v for k, v in saved.items() if k not in free_fields}
    wanted = resume_key(cfg, free_fields)
    return saved == wanted or saved == {k: _as_saved(v) for k, v in wanted.items()}


def resume_mismatch(data: dict, cfg, *, upstream: str, free_fields: tuple[str, ...] = (),
                    config_entry: str = "config", code: Optional[str] = None, steps: Optional[int] = None,
                    upstream_what: str = "input files") -> str:
    """Why checkpoint ``data`` cannot resume a run of ``cfg`` ("" when it can).

    ``config_entry``: the key holding the training config; ``upstream``: the run's input-file digest;
    ``code``: the run's :func:`code_digest` (None: the stage does not record one); ``steps``: the run's
    length (None: any step); ``upstream_what``: what the upstream digest covers, for the reason.
    """
    if not config_matches(data.get(config_entry), cfg, free_fields):
        return "written with another configuration"
    if code is not None and data.get("code") != code:
        return "written by other training code"
    if data.get("upstream", "") != upstream:
        return f"trained on other {upstream_what} (their files changed)"
    if steps is not None and not 0 < int(data["step"]) <= steps:
        return f"its step {data['step']} is outside 1..{steps}"
    return ""


def resumable(path: Path, read: Callable[[Path], dict], cfg, on_reject: Optional[Callable[[str], None]] = None,
              **checks) -> Optional[dict]:
    """The checkpoint at ``path`` (loaded by ``read``) when it can resume a run of ``cfg`` (``checks``: the
    keyword arguments of :func:`resume_mismatch`), else None: no file, a damaged leftover of a killed run
    (started again rather than failing), or a mismatch; ``on_reject(reason)`` is called in the last two cases."""
    if not path.is_file():
        return None
    try:
        data = read(path)
    except CheckpointError as error:
        reason = str(error)
    else:
        reason = resume_mismatch(data, cfg, **checks)
        if not reason:
            return data
    if on_reject is not None:
        on_reject(reason)
    return None


def write_checkpoint(path: Path, payload: dict, stage: str, weights: Mapping[str, torch.nn.Module]) -> None:
    """``torch.save`` a checkpoint atomically: a killed run leaves the previous checkpoint, never half a file.

    First :func:`check_finite_weights` of ``weights`` (the modules whose state the payload holds; ``stage`` names
    the training in the message), so a diverged update never replaces the last good checkpoint. The payload's
    ``"step"`` is the number of updates made. Saved under the target's own name (:func:`megafr.fileio.atomic_path`),
    so the same payload gives the same bytes on every run and machine."""
    check_finite_weights(stage, int(payload["step"]) - 1, weights, path)
    with atomic_path(path) as temp:
        torch.save(payload, temp)


def load_checkpoint(path: Path, required: tuple[str, ...], what: str, fix: str) -> dict:
    """A checkpoint dict holding the ``required`` keys, else CheckpointError naming ``what`` it should be and the ``fix``."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated or foreign file
        raise CheckpointError(f"{path}: not a readable {what} ({type(error).__name__}: {error}); {fix}") from error
    if not isinstance(data, dict) or any(k not in data for k in required):
        raise CheckpointError(f"{path}: expected a {what} with keys {list(required)}; {fix}")
    return data


# ------------------------------------------------------------------------------ pretraining stages' layout
PRETRAIN_CODE = ("pretrain", "nets", "losses", "training.py")  # the sources a pretraining checkpoint depends on
# Config fields of the pretraining stages that may change between an interrupted run and its resumption.
PRETRAIN_FREE_FIELDS = ("checkpoint_every", "threads", "out_dir", "run_dir", "profile", "idnet_path", "face3d_path",
                        "n_eval", "n_fd_samples", "n_swap_eval", "n_wplus_eval", "wplus_steps", "mode",
                        "official_path", "official_stylegan2", "official_e4e", "official_psp")


def save_training_state(path: Path, cfg, step: int, modules: dict[str, torch.nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], curve: list[dict], upstream: str,
                        extra: Optional[dict] = None) -> None:
    """Write ``{"state_dict": {name: weights}, "config", "step", "optimizers", "rng", "curve", "code",
    "upstream"}`` (+ ``extra``) atomically, once the weights are finite (``cfg.STAGE`` names the stage)."""
    write_checkpoint(path, {
        "state_dict": {name: module.state_dict() for name, module in modules.items()},
        "config": asdict(cfg),
        "step": int(step),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "rng": torch.get_rng_state(),
        "curve": list(curve),
        "code": code_digest(PRETRAIN_CODE),
        "upstream": upstream,  # digest of the run's input files, taken once at its start (resume_or_start)
        **(extra or {}),
    }, cfg.STAGE, modules)


def read_training_state(path: Path) -> dict:
    """Load a training checkpoint written by :func:`save_training_state` (CheckpointError if it is not one)."""
    return load_checkpoint(path, CHECKPOINT_KEYS + ("optimizers", "curve"), "training checkpoint",
                           "delete it to start the stage afresh")


def try_resume(path: Path, cfg, steps: int, upstream: Optional[str] = None) -> Optional[dict]:
    """The checkpoint at ``path`` if it was written by a run with the same configuration, code and
    input files (``cfg.upstream_digest()``, by default the ``UPSTREAM`` fields; ``upstream``: their digest
    when the caller has taken it already), else None."""
    upstream = cfg.upstream_digest() if upstream is None else upstream
    return resumable(path, read_training_state, cfg, upstream=upstream, free_fields=PRETRAIN_FREE_FIELDS,
                     code=code_digest(PRETRAIN_CODE), steps=steps)


def restore(data: dict, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> int:
    """Load weights, optimizer states and the RNG state from a checkpoint; return its step."""
    for name, module in modules.items():
        module.load_state_dict(data["state_dict"][name])
    for name, opt in optimizers.items():
        opt.load_state_dict(data["optimizers"][name])
    torch.set_rng_state(data["rng"])
    return int(data["step"])


def resume_or_start(cfg, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    stop_after: Optional[int], steps: Optional[int] = None) -> tuple[int, int, list, str]:
    """Resume from ``cfg.checkpoint_path`` when it matches ``cfg`` -> (first step, end step, curve so far,
    digest of the input files to record in every checkpoint of the run).

    The end is ``steps`` (default ``cfg.steps``: a run whose phases add steps passes its total), or
    ``stop_after`` steps after the start (an interruption, for tests).
    """
    steps = cfg.steps if steps is None else steps
    start, curve = 0, []
    upstream = cfg.upstream_digest()  # the input files are hashed once per run, not at every checkpoint
    saved = try_resume(cfg.checkpoint_path, cfg, steps, upstream)
    if saved is not None:
        start = restore(saved, modules, optimizers)
        curve = list(saved["curve"])
    end = steps if stop_after is None else min(steps, start + stop_after)
    return start, end, curve, upstream
