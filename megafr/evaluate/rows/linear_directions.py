"""The "linear directions (e4e)" row: InterFaceGAN-style edits of the e4e code along fitted yaw, pitch and
smile directions (:class:`megafr.evaluate.linear.LinearBaseline`): to the target's measured values in
Table 1, to yaw = pitch = 0 in Table 2."""

from __future__ import annotations

from megafr.evaluate.registry import Method, MethodInputs, register_method

LINEAR_ROW = "linear directions (e4e)"


@register_method(LINEAR_ROW, rank=30)
def linear_directions(task: str, inputs: MethodInputs) -> Method:
    linear = inputs.linear
    if task == "cross":
        return lambda sources, targets: linear.reenact(sources, targets)
    return lambda sources, targets: linear.frontalize(sources)
