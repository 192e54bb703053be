"""Interactive exploration: sliders for head pose, jaw and every expression component of one source.

:func:`explore_figure` draws one edit (what each slider move shows); :func:`explorer` wraps it in
ipywidgets for JupyterLab. Headless (papermill, CI) the widget renders as text, and the notebook
calls :func:`explore_figure` directly so that a broken edit still fails the run.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from megafr import plots
from megafr.face3d import headmodel
from megafr.face3d.pose import JAW, head_pose_degrees
from megafr.figures.measure import as_images, as_tensor, pose_degrees
from megafr.reenact.inference import Reenactor

YAW_RANGE = (-60.0, 60.0)  # degrees
PITCH_RANGE = (-30.0, 30.0)
JAW_RANGE = (0.0, 30.0)
EXPRESSION_RANGE = (0.0, 1.0)  # the synthetic head model's components live in [0, 1]
SLIDER_STEP = 1.0
EXPRESSION_STEP = 0.05
MAX_REFINE = 3


def expression_names(n_expr: int) -> tuple[str, ...]:
    """The head model's component names when the network regresses exactly those, else ``expr <k>``."""
    names = headmodel.EXPRESSION_COMPONENTS
    return tuple(names) if n_expr == len(names) else tuple(f"expr {k}" for k in range(n_expr))


@torch.no_grad()
def source_controls(reenactor: Reenactor, source: np.ndarray) -> dict[str, float]:
    """The source's own yaw, pitch, jaw and expression, as measured by the 3D network (the sliders' start)."""
    params = reenactor.measure(as_tensor(source[None]))
    angles = head_pose_degrees(params.pose)[0]
    values = {"yaw": float(angles[0]), "pitch": float(angles[1]),
              "jaw": float(params.pose[0, JAW.start]) * 180.0 / math.pi}
    names = expression_names(params.expression.shape[1])
    values.update({name: float(v) for name, v in zip(names, params.expression[0])})
    return values


@torch.no_grad()
def explore_figure(reenactor: Reenactor, source: np.ndarray, yaw: float, pitch: float, jaw: float,
                   expression: Optional[Mapping[int, float]] = None, refine_steps: int = 1, title: str = ""):
    """One edit of ``source`` (uint8 [S, S, 3]): source | inverted x_s | rendering r_t | MegaFR, with the measured pose."""
    scalar = lambda v: torch.tensor([float(v)])  # noqa: E731
    out = reenactor.reenact_params(as_tensor(source[None]), yaw_deg=scalar(yaw), pitch_deg=scalar(pitch),
                                   jaw_deg=scalar(jaw),
                                   expression={k: scalar(v) for k, v in (expression or {}).items()},
                                   refine_steps=refine_steps)
    measured = pose_degrees(reenactor, out.image)[0]
    cells = [source, as_images(out.inverted)[0]]
    labels = ["source", "inverted x_s"]
    if out.condition.shape[1] == 3:
        cells.append(as_images(out.condition)[0])
        labels.append("rendering r_t")
    cells.append(as_images(out.image)[0])
    labels.append(f"MegaFR (refine {refine_steps})")
    fig = plt.figure(figsize=(len(cells) * 2.0, 2.9))
    plots.image_table(fig, [cells], col_labels=labels,
                      title=f"{title}\nrequested yaw {yaw:+.0f}°, pitch {pitch:+.0f}°, jaw {jaw:.0f}°; measured yaw "
                            f"{measured[0]:+.0f}°, pitch {measured[1]:+.0f}°, jaw {measured[3]:.0f}°")
    fig.tight_layout()
    plt.close(fig)  # pyplot keeps no reference; a notebook cell still shows the returned figure once
    return fig


def explorer(reenactor: Reenactor, source: np.ndarray, title: str = "", names: Optional[Sequence[str]] = None):
    """Sliders (yaw, pitch, jaw, each expression component, refinement steps) driving :func:`explore_figure`."""
    import ipywidgets as widgets
    from IPython.display import display

    start = source_controls(reenactor, source)
    names = list(names or expression_names(reenactor.frozen.face.config.n_expr))

    def slider(label, value, bounds, step):
        low, high = bounds
        return widgets.FloatSlider(value=float(np.clip(value, low, high)), min=low, max=high, step=step,
                                   description=label, continuous_update=False,
                                   style={"description_width": "initial"})

    controls = {"yaw": slider("yaw (°)", start["yaw"], YAW_RANGE, SLIDER_STEP),
                "pitch": slider("pitch (°)", start["pitch"], PITCH_RANGE, SLIDER_STEP),
                "jaw": slider("jaw (°)", start["jaw"], JAW_RANGE, SLIDER_STEP)}
    for k, name in enumerate(names):
        controls[f"expr_{k}"] = slider(name, start.get(name, 0.0), EXPRESSION_RANGE, EXPRESSION_STEP)
    controls["refine_steps"] = widgets.IntSlider(value=1, min=0, max=MAX_REFINE, description="refine steps",
                                                 continuous_update=False)

    def draw(yaw, pitch, jaw, refine_steps, **expr):
        expression = {int(key.split("_")[1]): value for key, value in expr.items()}
        display(explore_figure(reenactor, source, yaw, pitch, jaw, expression, refine_steps, title))

    output = widgets.interactive_output(draw, controls)
    pose_box = widgets.VBox([controls["yaw"], controls["pitch"], controls["jaw"], controls["refine_steps"]])
    expression_box = widgets.VBox([controls[f"expr_{k}"] for k in range(len(names))])
    return widgets.VBox([widgets.HBox([pose_box, expression_box]), output])
