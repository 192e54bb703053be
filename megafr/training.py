"""Pieces every training stage shares.

``batch_rows`` makes the data order a pure function of (seed, step), which is what lets an
interrupted stage resume and end with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import numpy as np


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
