"""The layer-swap measurement of the W+ space: do the coarse and medium entries carry the geometry?

MegaFR edits only the coarse and medium W+ entries (paper Sec. 3.2; ``docs/method.md`` section 2)
and relies on them carrying geometry (pose, expression, face shape) while the fine entries carry colour (appearance, light,
background). The measurement: for pairs (A, B), the style-mixed code ``mix(w_B, w_A)`` (coarse +
medium entries of B, fine entries of A, see :func:`mix_codes`) is decoded, and

- its head pose, measured by a caller-given ``measure_pose`` (the 3D reconstruction network in the
  pipeline), is compared with B's pose: the ground truth, and B's image measured the same way;
- its colours are compared with the rendered right answer (B's geometry and camera, A's appearance,
  light and background, rendered by ``HeadWorld``): PSNR against that truth, and the mean colour of
  the image border (the background) against the truth's and against B's.

``measure_pose(images [B, 3, S, S] in [-1, 1]) -> [B, 3]`` yaw / pitch / roll in degrees.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from megafr.metrics import psnr
from megafr.nets.encoders import layer_groups

YAW_TOLERANCE_DEG = 10.0  # the aim: after the swap, yaw within 10 degrees of B's
BORDER_FRACTION = 0.1  # width of the image border (background) used for the colour comparison
PoseMeasure = Callable[[torch.Tensor], torch.Tensor]


def geometry_layers(n_latent: int) -> list[int]:
    """W+ indices that MegaFR edits (coarse + medium)."""
    groups = layer_groups(n_latent)
    return list(groups["coarse"]) + list(groups["medium"])


def mix_codes(w_geometry: torch.Tensor, w_colour: torch.Tensor) -> torch.Tensor:
    """Coarse + medium entries of ``w_geometry``, fine entries of ``w_colour``. [B, n_latent, D] each."""
    if w_geometry.shape != w_colour.shape or w_geometry.ndim != 3:
        raise ValueError(f"mix_codes needs two W+ codes of one shape [B, n_latent, D], got "
                         f"{tuple(w_geometry.shape)} and {tuple(w_colour.shape)}")
    mask = torch.zeros(w_geometry.shape[1], dtype=torch.bool, device=w_geometry.device)
    mask[geometry_layers(w_geometry.shape[1])] = True
    return torch.where(mask[None, :, None], w_geometry, w_colour)


def border_colour(images: torch.Tensor, fraction: float = BORDER_FRACTION) -> torch.Tensor:
    """Mean RGB [B, 3] of the image border (the background in SynthHeads framings), images in [-1, 1]."""
    size = images.shape[-1]
    k = max(1, int(round(fraction * size)))
    ring = torch.ones(size, size, dtype=torch.bool, device=images.device)
    ring[k:size - k, k:size - k] = False
    return images[:, :, ring].mean(-1)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def layer_swap_report(
    mixed: torch.Tensor,  # G(mix(w_B, w_A)) [N, 3, S, S]
    image_b: torch.Tensor,  # B's real images [N, 3, S, S]
    truth: torch.Tensor,  # rendered right answer (B geometry + A colours) [N, 3, S, S]
    pose_b_true: torch.Tensor,  # B's ground-truth yaw/pitch/roll, degrees [N, 3]
    measure_pose: PoseMeasure | None,  # images -> yaw/pitch/roll degrees [N, 3]; None: pose not measured
    measure_size: int | None = None,  # resize images to this side before measure_pose (None: as they are)
) -> dict:
    """Numbers of the layer-swap measurement (see the module docstring); numeric leaves only."""
    n = len(mixed)
    if not (image_b.shape == truth.shape == mixed.shape) or pose_b_true.shape != (n, 3):
        raise ValueError(f"layer_swap_report: shapes mixed {tuple(mixed.shape)}, B {tuple(image_b.shape)}, "
                         f"truth {tuple(truth.shape)}, pose {tuple(pose_b_true.shape)} do not agree")
    out: dict = {"pairs": n, "psnr_vs_truth": float(psnr(mixed, truth).mean())}
    colour_mixed, colour_truth, colour_b = border_colour(mixed), border_colour(truth), border_colour(image_b)
    out["background_colour_error_vs_truth"] = float((colour_mixed - colour_truth).abs().mean())  # [-1,1] units
    out["background_colour_error_vs_b"] = float((colour_mixed - colour_b).abs().mean())
    out["pose_measured"] = int(measure_pose is not None)
    if measure_pose is None:
        return out
    size = measure_size or mixed.shape[-1]
    pose_mixed = measure_pose(_resize(mixed.clamp(-1, 1), size)).float()  # [N, 3]; G may overshoot [-1, 1]
    pose_b_measured = measure_pose(_resize(image_b, size)).float()
    if pose_mixed.shape != (n, 3):
        raise ValueError(f"measure_pose must return [N, 3] degrees, got {tuple(pose_mixed.shape)}")
    yaw_vs_true = (pose_mixed[:, 0] - pose_b_true[:, 0].float()).abs()
    yaw_vs_measured = (pose_mixed[:, 0] - pose_b_measured[:, 0]).abs()
    out["yaw_error_vs_true_b_deg"] = float(yaw_vs_true.mean())
    out["yaw_error_vs_measured_b_deg"] = float(yaw_vs_measured.mean())
    out["yaw_within_tolerance_vs_true_b"] = float((yaw_vs_true <= YAW_TOLERANCE_DEG).float().mean())
    out["yaw_within_tolerance_vs_measured_b"] = float((yaw_vs_measured <= YAW_TOLERANCE_DEG).float().mean())
    out["pitch_error_vs_true_b_deg"] = float((pose_mixed[:, 1] - pose_b_true[:, 1].float()).abs().mean())
    out["measure_yaw_error_on_real_b_deg"] = float((pose_b_measured[:, 0] - pose_b_true[:, 0].float()).abs().mean())
    return out


def swap_pairs(seed: int, identity: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of rows (a, b) of different identities, a pure function of the seed."""
    rng = np.random.default_rng([seed, n, len(identity)])
    a = rng.integers(0, len(identity), n)
    b = rng.integers(0, len(identity), n)
    clash = identity[a] == identity[b]
    while clash.any():  # redraw b where it shares A's identity
        b[clash] = rng.integers(0, len(identity), int(clash.sum()))
        clash = identity[a] == identity[b]
    return a, b


def swap_truth_params(params, a: np.ndarray, b: np.ndarray):
    """SceneParams of the right answer for pairs (a, b): B's shape, expression, pose and camera; A's colours."""
    geometry = params.take(b)
    return params.take(a).with_(shape=geometry.shape, expression=geometry.expression, pose=geometry.pose,
                                zoom=geometry.zoom, shift=geometry.shift)


def render_swap_set(world, table: pd.DataFrame, a: np.ndarray, b: np.ndarray, progress: str | None = None) -> np.ndarray:
    """uint8 [n, S, S, 3] renderings of the swap truth for rows a, b of a SynthHeads table."""
    from megafr.datasets.synthheads import table_to_params

    return world.render(swap_truth_params(table_to_params(table), a, b), progress=progress)["images"]


def face3d_pose_measure(checkpoint_path, model_path=None, landmark_path=None) -> tuple[PoseMeasure, int]:
    """``(measure_pose, input_size)`` from a train_face3d checkpoint: images -> yaw/pitch/roll degrees [N, 3]."""
    from megafr.face3d.pose import head_pose_degrees
    from megafr.face3d.recon import load_face_model

    model = load_face_model(checkpoint_path, model_path, landmark_path)

    @torch.no_grad()
    def measure(images: torch.Tensor) -> torch.Tensor:
        params = model.net(images)
        return head_pose_degrees(params.pose)

    return measure, int(model.config.image_size)


def pose_table_degrees(table) -> np.ndarray:
    """Ground-truth yaw/pitch/roll in degrees [N, 3] of rows of a SynthHeads table."""
    return table[["yaw_deg", "pitch_deg", "roll_deg"]].to_numpy(dtype=np.float32, copy=True)  # writable: torch.from_numpy
