"""The weighted sum of loss terms that every trainer logs: ``sum_k lambda_k L_k`` and ``{name: float}``."""

from __future__ import annotations

from typing import Mapping

import torch


def weighted_total(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> tuple[torch.Tensor, dict]:
    """``sum_k lambda_k * L_k`` over the terms with non-zero weight -> (total, {name: float} incl. 'total')."""
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise KeyError(f"no weight for loss term(s) {missing}")
    total = sum(weights[name] * value for name, value in terms.items() if weights[name] != 0)
    if not torch.is_tensor(total):
        total = next(iter(terms.values())).new_zeros(())
    log = {name: float(value.detach()) for name, value in terms.items()}
    log["total"] = float(total.detach())
    return total, log
