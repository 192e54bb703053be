"""The rows of Tables 1 and 2, by registration: a method is one function registered under its row name.

A row builder takes the task (``"cross"``: Table 1, cross reenactment; ``"frontal"``: Table 2,
frontalization) and the :class:`MethodInputs` of the evaluate stage, and returns the method
``(sources, targets) -> outputs`` on [-1, 1] images [B, 3, S, S] (``targets`` is None for
frontalization), or None when the row cannot be built from these inputs (e.g. a train_reenact
variant that was not trained). Rows appear in the tables in ``rank`` order.

A new baseline is one module in :mod:`megafr.evaluate.rows` that registers its builder::

    @register_method("my baseline (e4e)", rank=40)
    def my_baseline(task: str, inputs: MethodInputs) -> Optional[Method]:
        ...

and one test; the package imports every module in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Optional

import torch

TASKS = ("cross", "frontal")

Method = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]  # (sources, targets) -> outputs


@dataclass(frozen=True)
class MethodInputs:
    """What the evaluate stage hands every row builder."""

    reenactors: Mapping[str, object]  # train_reenact variant (e4e_render, ...) -> its trained Reenactor
    linear: object  # the fitted linear-direction baseline (megafr.evaluate.linear.LinearBaseline)
    refine_steps: int  # MegaFR's refinement steps in the tables (paper: one extra step)
    frozen: object  # the e4e-side frozen networks (megafr.reenact.train.Frozen)
    psp_frontal: Optional[Method] = None  # the released pSp frontalization network as a method (Table 2), if given


RowBuilder = Callable[[str, MethodInputs], Optional[Method]]


class Row(NamedTuple):
    rank: int  # position in the tables (ascending)
    build: RowBuilder  # task, inputs -> method or None


_ROWS: dict[str, Row] = {}


def register_method(name: str, rank: int) -> Callable[[RowBuilder], RowBuilder]:
    """Register ``build`` as the table row ``name`` at position ``rank``."""

    def register(build: RowBuilder) -> RowBuilder:
        if name in _ROWS:
            raise ValueError(f"table row {name!r} is registered twice")
        _ROWS[name] = Row(rank, build)
        return build

    return register


def registered_rows() -> list[str]:
    """Row names in table order."""
    return [name for name, _ in sorted(_ROWS.items(), key=lambda item: item[1].rank)]


def build_methods(task: str, inputs: MethodInputs) -> dict[str, Method]:
    """Row name -> method for ``task``, in table order, leaving out rows that cannot be built from ``inputs``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    methods = {}
    for name in registered_rows():
        method = _ROWS[name].build(task, inputs)
        if method is not None:
            methods[name] = method
    return methods
