"""Talking head: a driving sequence reenacted frame by frame, its video, and how much the output jitters.

Jitter of a landmark track ``p_i(t)`` (68 landmarks, T frames, pixels) is the mean size of its
second difference, i.e. of the frame-to-frame change of velocity:

    J = 1/(T-2) * sum_{t=1}^{T-2} 1/68 * sum_i || p_i(t+1) - 2 p_i(t) + p_i(t-1) ||_2        (pixels)

A track moving at constant velocity has J = 0; a landmark that alternates +-a every frame has J = 4a.
The driving sequence moves smoothly (slow sinusoids), so its own J is small but not zero; what
matters is the output's J beside the right answer's, both measured by the same 3D network (the
network's own frame-to-frame noise is in both). ``J / IOD`` divides by the mean inter-ocular
distance (outer eye corners) of the same track, so the number does not depend on the image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import torch

from megafr import plots, video
from megafr.errors import InputError
from megafr.face3d.landmarks import INNER_LIP, LEFT_EYE_OUTER, N_LANDMARKS, RIGHT_EYE_OUTER
from megafr.figures.inputs import Talking
from megafr.figures.measure import BATCH, as_images, as_tensor, landmarks_px
from megafr.reenact.inference import Reenactor

FILMSTRIP_FRAMES = 8  # frames shown in the figure
MOUTH_PAIR = (INNER_LIP[2], INNER_LIP[6])  # inner-lip top and bottom centre (62, 66): mouth opening
TRACKS = {  # metric key -> what the track is
    "megafr": "MegaFR (3D network)",
    "truth_measured": "right answer (3D network)",
    "truth_exact": "right answer (renderer, exact)",
}
STYLES = {"megafr": ("#c44e52", "-"), "truth_measured": ("#8c8c8c", "-"), "truth_exact": ("#55a868", "--")}


def check_track(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (N_LANDMARKS, 2) or len(points) < 3:
        raise InputError(f"a landmark track must be [T >= 3, {N_LANDMARKS}, 2], got {list(points.shape)}")
    return points


def second_difference(points: np.ndarray) -> np.ndarray:
    """Per-frame jitter [T-2]: mean over landmarks of ||p(t+1) - 2 p(t) + p(t-1)|| (pixels)."""
    points = check_track(points)
    accel = points[2:] - 2.0 * points[1:-1] + points[:-2]  # [T-2, 68, 2]
    return np.linalg.norm(accel, axis=-1).mean(axis=-1)


def landmark_jitter(points: np.ndarray) -> float:
    """J of a track [T, 68, 2] in pixels (module docstring)."""
    return float(second_difference(points).mean())


def interocular_distance(points: np.ndarray) -> float:
    """Mean distance between the outer eye corners over a track [T, 68, 2] (pixels)."""
    points = check_track(points)
    return float(np.linalg.norm(points[:, LEFT_EYE_OUTER] - points[:, RIGHT_EYE_OUTER], axis=-1).mean())


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap [T] in pixels."""
    return np.linalg.norm(points[:, MOUTH_PAIR[0]] - points[:, MOUTH_PAIR[1]], axis=-1)


@dataclass(frozen=True)
class TalkingResult:
    source: np.ndarray  # uint8 [S, S, 3] the actor's photo
    driving: np.ndarray  # uint8 [T, S, S, 3]
    ours: np.ndarray  # uint8 [T, S, S, 3] MegaFR, frame by frame
    truth: Optional[np.ndarray]  # uint8 [T, S, S, 3] the actor following the sequence, or None
    tracks: dict  # TRACKS key -> landmarks [T, 68, 2] in pixels

    def jitter(self) -> dict:
        """``{"frames": T, "jitter_px": {track: J}, "jitter_iod_percent": {track: 100 J / IOD}}``."""
        px = {key: landmark_jitter(points) for key, points in self.tracks.items()}
        iod = {key: 100.0 * px[key] / interocular_distance(points) for key, points in self.tracks.items()}
        return {"frames": len(self.ours), "jitter_px": px, "jitter_iod_percent": iod}


@torch.no_grad()
def reenact_sequence(reenactor: Reenactor, talking: Talking, refine_steps: int) -> TalkingResult:
    """The actor's photo reenacted by every driving frame (each frame on its own: no temporal smoothing)."""
    if len(talking.source) != 1:
        raise InputError(f"the talking head reenacts one actor photo, got {len(talking.source)}")
    frames = []
    for start in range(0, len(talking.driving), BATCH):
        targets = as_tensor(talking.driving[start:start + BATCH])
        sources = as_tensor(talking.source).expand(len(targets), -1, -1, -1)
        frames.append(reenactor.reenact(sources, targets, refine_steps=refine_steps).image)
    ours = torch.cat(frames)
    tracks = {"megafr": landmarks_px(reenactor, ours)}
    if talking.truth is not None:
        tracks["truth_measured"] = landmarks_px(reenactor, talking.truth)
    if talking.truth_landmarks is not None:
        tracks["truth_exact"] = np.asarray(talking.truth_landmarks, dtype=np.float64)
    return TalkingResult(talking.source[0], talking.driving, as_images(ours), talking.truth, tracks)


def talking_head_figure(result: TalkingResult, title: str, frames_shown: int = FILMSTRIP_FRAMES):
    """Filmstrip (driving, MegaFR, right answer) over the sequence, the mouth opening and the per-frame jitter."""
    t = len(result.ours)
    shown = np.unique(np.linspace(0, t - 1, min(frames_shown, t)).round().astype(int))
    rows = [("driving", result.driving), ("MegaFR", result.ours)]
    if result.truth is not None:
        rows.append(("right answer", result.truth))
    fig = plt.figure(figsize=(max((len(shown) + 1) * plots.CELL_INCHES, 8.4),
                              len(rows) * plots.CELL_INCHES + 3.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[len(rows) * plots.CELL_INCHES + 0.4, 2.8])
    cells = [[result.source if name == "MegaFR" else None, *(frames[i] for i in shown)] for name, frames in rows]
    plots.image_table(top, cells, col_labels=["actor (source)", *(f"frame {i}" for i in shown)],
                      row_labels=[name for name, _ in rows],
                      title=f"{title}: talking head, each frame reenacted on its own")
    mouth_ax, jitter_ax = bottom.subplots(1, 2)
    summary = result.jitter()["jitter_px"]
    for key, points in result.tracks.items():
        colour, style = STYLES[key]
        mouth_ax.plot(mouth_opening(points), color=colour, linestyle=style, linewidth=1.0, label=TRACKS[key])
        jitter_ax.plot(np.arange(1, t - 1), second_difference(points), color=colour, linestyle=style,
                       linewidth=1.0, label=f"{TRACKS[key]}: J = {summary[key]:.2f} px")
    mouth_ax.set_xlabel("frame")
    mouth_ax.set_ylabel("inner-lip gap (pixels)")
    mouth_ax.set_title("mouth opening (inner lips)", fontsize=8)
    mouth_ax.legend(fontsize=7)
    jitter_ax.set_xlabel("frame t")
    jitter_ax.set_ylabel("mean |p(t+1) - 2p(t) + p(t-1)| (pixels)")
    jitter_ax.set_title("landmark jitter per frame (second difference)", fontsize=8)
    jitter_ax.legend(fontsize=7)
    return fig


def write_talking_video(result: TalkingResult, mp4_path: str | Path, gif_path: str | Path, fps: int,
                        scale: int, world: str) -> tuple[Path, Path]:
    """driving | MegaFR | right answer, side by side under printed labels, as an MP4 and a GIF.

    ``world`` ("mini world", ...) is printed over MegaFR's column, as on every figure.
    """
    columns, labels = [result.driving, result.ours], ["driving", f"MegaFR ({world})"]
    if result.truth is not None:
        columns.append(result.truth)
        labels.append("right answer")
    frames = video.side_by_side(columns, labels, scale=scale)
    return video.write_mp4(mp4_path, frames, fps), video.write_gif(gif_path, frames, fps)
