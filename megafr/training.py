"""Pieces every training stage shares.

``batch_rows`` makes the data order a pure function of (seed, step), which is what lets an
interrupted stage resume and end with exactly the weights of an uninterrupted run.

``adam`` is torch's Adam with its fused kernel, which updates every parameter in one pass instead of
looping over tensors in Python. Measured (``python -m benchmarks --sections optimizer``, one thread):
one step over the mini e4e encoder's 4.9 M parameters takes 3.1 ms fused against 8.1 ms for the
default; with the generator's and the latent discriminator's steps this is a few per cent of a
train_generator step (the pipeline's step went from 325 to 300 ms between two runs, which also
differ in the mapping network's training). Used by the stages whose optimiser step showed in their profiles
(train_generator, train_inversion, train_reenact); the fused kernel exists for CPU and CUDA tensors.

``check_finite`` is called by every training loop after the forward pass and before the
optimiser step: a loss that is NaN or infinite (a diverged run, an absurd learning rate) stops the
run with :class:`NonFiniteLossError` naming the loss term and the step, before the weights are
updated and before any checkpoint is written, so the last good checkpoint stays as it was.

``run_log_path`` says where a stage keeps the facts of one run that differ between runs and
machines (wall time, steps run, resume point): outside the stage's DVC-tracked outputs, which
must be the same bytes for the same inputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from megafr.errors import MegaFRError

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


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused update (same rule and state layout as ``torch.optim.Adam``, one kernel per step)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
