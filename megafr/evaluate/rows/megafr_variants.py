"""Rows of the trained E_FR variants (paper Sec. 3): MegaFR with the e4e or pSp inversion encoder, and the
baseline fed raw FLAME parameters instead of the rendering r_t.

Table 1 reenacts with the target photo; Table 2 asks :meth:`Reenactor.reenact_params` for
yaw = pitch = roll = 0 with the source's own expression. Both apply ``refine_steps`` extra steps of F.
"""

from __future__ import annotations

from typing import Optional

from megafr.evaluate.registry import Method, MethodInputs, register_method

VARIANT_ROWS = {  # train_reenact variant -> (row name, rank)
    "e4e_render": ("MegaFR (e4e)", 10),
    "psp_render": ("MegaFR (pSp)", 11),
    "e4e_params": ("FLAME-params baseline (e4e)", 12),
    "psp_params": ("FLAME-params baseline (pSp)", 13),
}


def reenactor_method(task: str, reenactor, refine_steps: int) -> Method:
    """A trained Reenactor as a table method: reenact to the target (cross) or frontalize (frontal)."""
    if task == "cross":
        return lambda sources, targets: reenactor.reenact(sources, targets, refine_steps=refine_steps).image
    return lambda sources, targets: reenactor.reenact_params(sources, yaw_deg=0.0, pitch_deg=0.0, roll_deg=0.0,
                                                             refine_steps=refine_steps).image


def variant_row(variant: str):
    """The row builder of one train_reenact variant (None when the evaluate stage did not load it)."""

    def build(task: str, inputs: MethodInputs) -> Optional[Method]:
        reenactor = inputs.reenactors.get(variant)
        return None if reenactor is None else reenactor_method(task, reenactor, inputs.refine_steps)

    return build


for _variant, (_name, _rank) in VARIANT_ROWS.items():
    register_method(_name, _rank)(variant_row(_variant))
