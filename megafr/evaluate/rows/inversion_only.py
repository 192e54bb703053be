"""The "inversion only (e4e)" row: ``x_s = G(E_e4e(x))`` returned unchanged, the floor every method must beat
on motion (AED, APD)."""

from __future__ import annotations

from megafr.evaluate.registry import Method, MethodInputs, register_method
from megafr.reenact.train import invert

INVERSION_ROW = "inversion only (e4e)"


@register_method(INVERSION_ROW, rank=20)
def inversion_only(task: str, inputs: MethodInputs) -> Method:
    return lambda sources, targets: invert(inputs.frozen, sources)[0]
