"""Driving by a video in the mini world, where the right answer is known: what temporal smoothing buys.

The talking-head evaluation sequence of SynthHeads (``prepare``'s ``eval/talking``: a driver whose
yaw, pitch, roll, jaw and smile follow slow sinusoids, with the true FLAME parameters of every frame)
is written as an H.264 MP4 clip, as a user's clip would arrive, read back, and measured frame by frame
by the 3D face network exactly as ``reenact --driving`` measures it. For each smoothing setting:

- pose error: mean absolute difference of yaw, pitch and roll (degrees) between the smoothed
  measurement and the truth, and of the jaw opening;
- landmark jitter ``J`` (:func:`megafr.figures.talking.landmark_jitter`: mean second difference,
  pixels) and landmark error (mean distance to the truth, pixels) of the motion asked of E_FR: the 68
  landmarks of FLAME(actor's shape, psi_t, theta_t) framed like an FFHQ crop (the target landmarks of
  :func:`megafr.reenact.train.make_targets`), against the same with the true psi_t, theta_t.

This measures the driving signal, not the reenacted images: with a trained E_FR the output follows
this signal (``figures``' talking head measures the output's own jitter).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from megafr.face3d import pose as posemod
from megafr.face3d.framing import aligned_camera
from megafr.face3d.recon import FaceModel, load_face_model
from megafr.face3d.render import ndc_to_pixels, project
from megafr.figures.talking import landmark_jitter
from megafr.fileio import write_json
from megafr.reenact import drive
from megafr.smoothing import SmoothingConfig
from megafr import plots, video
from megafr.imageio import tensors_to_images
from megafr.reenact.paste import face_mask, paste_back
from megafr.reenact.train import make_targets

TALKING_DIR = Path("eval") / "talking"  # inside prepare's output folder
CLIP_FPS = 25  # frame rate the sequence is written at (a common video rate)
# The settings compared: no smoothing, Savitzky-Golay (order 2) over a range of windows, one-euro.
SETTINGS = {
    "none": SmoothingConfig("none"),
    **{f"savgol_{w}": SmoothingConfig("savgol", window=w, order=2) for w in (5, 7, 9, 11, 15)},
    **{f"one_euro_{c:g}hz_beta_{b:g}": SmoothingConfig("one-euro", min_cutoff=c, beta=b)
       for c, b in ((1.0, 0.05), (1.0, 0.5), (2.0, 0.5), (3.0, 0.5), (3.0, 2.0), (5.0, 0.5))},
}


@dataclass(frozen=True)
class TalkingTruth:
    frames: np.ndarray  # uint8 [T, S, S, 3] the driving sequence
    shape: np.ndarray  # [n_shape] the actor's identity (FLAME shape), for the requested landmarks
    expression: np.ndarray  # [T, E] true expression of every frame
    pose: np.ndarray  # [T, 15] true FLAME pose of every frame


def load_talking(prepare_dir: str | Path) -> TalkingTruth:
    """The driving frames and true parameters of ``prepare``'s talking-head sequence."""
    folder = Path(prepare_dir) / TALKING_DIR
    table = pd.read_parquet(folder / "frames.parquet")

    def grab(prefix: str) -> np.ndarray:
        return table[[c for c in table.columns if c.startswith(prefix + "_")]].to_numpy(dtype=np.float32)

    return TalkingTruth(np.load(folder / "driving.npy"), grab("shape")[0], grab("expr"), grab("pose"))


@torch.no_grad()
def requested_landmarks(face: FaceModel, shape: np.ndarray, expression: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Landmarks [T, 68, 2] (pixels) of FLAME(shape, expression_t, pose_t) framed like an FFHQ crop."""
    frames = len(expression)
    shape, expression, pose = (torch.from_numpy(np.array(v, dtype=np.float32)) for v in (shape, expression, pose))
    points = face.landmark_flame(shape.expand(frames, -1), expression, pose)  # [T, 68, 3]
    ndc = project(points, aligned_camera(points))[..., :2]
    return ndc_to_pixels(ndc, face.config.image_size).numpy()


def pose_errors(pose: np.ndarray, truth: np.ndarray) -> dict:
    """Mean absolute yaw, pitch, roll and jaw differences (degrees) of FLAME poses [T, 15]."""
    angles, true_angles = (posemod.head_pose_degrees(torch.from_numpy(np.array(p, dtype=np.float32))).numpy()
                           for p in (pose, truth))
    errors = np.abs(angles - true_angles).mean(axis=0)
    jaw = np.abs(pose[:, posemod.JAW.start] - truth[:, posemod.JAW.start]).mean() * 180.0 / math.pi
    return {"yaw_deg": float(errors[0]), "pitch_deg": float(errors[1]), "roll_deg": float(errors[2]),
            "head_pose_deg": float(errors.mean()), "jaw_deg": float(jaw)}


def write_talking_clip(prepare_dir: str | Path, path: str | Path, fps: int = CLIP_FPS) -> Path:
    """The talking-head driving sequence of a prepared synthetic world as an MP4 clip (for the explorer)."""
    return video.write_mp4(path, load_talking(prepare_dir).frames, fps)


def measure_talking_clip(face: FaceModel, truth: TalkingTruth, clip_path: str | Path,
                         fps: int = CLIP_FPS) -> drive.DrivingTrack:
    """Write the sequence as an MP4 clip, read it back and measure every frame as ``reenact --driving`` does."""
    path = video.write_mp4(clip_path, truth.frames, fps)
    clip = drive.probe_clip(path)
    size = truth.frames.shape[1]
    return drive.measure_clip(face, drive.clip_frames(clip), drive.SynthFramer(size, "mini"), path.name,
                              progress=False)


def smoothing_study(face: FaceModel, truth: TalkingTruth, track: drive.DrivingTrack,
                    settings: Mapping[str, SmoothingConfig] = SETTINGS, fps: float = CLIP_FPS) -> pd.DataFrame:
    """One row per smoothing setting: pose errors, landmark jitter and error against the truth (module docstring)."""
    true_points = requested_landmarks(face, truth.shape, truth.expression, truth.pose)
    rows = []
    for name, cfg in settings.items():
        expression, pose = drive.smoothed_motion(track, cfg, fps)
        points = requested_landmarks(face, truth.shape, expression, pose)
        rows.append({"setting": name, **pose_errors(pose, truth.pose),
                     "landmark_jitter_px": landmark_jitter(points),
                     "landmark_error_px": float(np.linalg.norm(points - true_points, axis=-1).mean()),
                     "truth_jitter_px": landmark_jitter(true_points)})
    return pd.DataFrame(rows)


STILL_FRAMES = 6  # driving frames shown in the still


@torch.no_grad()
def requested_renders(face: FaceModel, shape: np.ndarray, expression: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """r_t, the geometry E_FR is conditioned on, of FLAME(shape, expression_t, pose_t): uint8 [T, S, S, 3]."""
    frames = len(expression)
    shape, expression, pose = (torch.from_numpy(np.array(v, dtype=np.float32)) for v in (shape, expression, pose))
    targets = make_targets(face, shape.expand(frames, -1), expression, pose, "render")
    return tensors_to_images(targets.condition)


def driving_still(face: FaceModel, truth: TalkingTruth, track: drive.DrivingTrack, cfg: SmoothingConfig,
                  fps: float = CLIP_FPS, frames_shown: int = STILL_FRAMES):
    """Driving frames, the geometry the command asks of E_FR from them (measured, smoothed) and from the truth."""
    expression, pose = drive.smoothed_motion(track, cfg, fps)
    shown = np.unique(np.linspace(0, len(truth.frames) - 1, frames_shown).round().astype(int))
    measured = requested_renders(face, truth.shape, expression[shown], pose[shown])
    exact = requested_renders(face, truth.shape, truth.expression[shown], truth.pose[shown])
    fig = plt.figure(figsize=(len(shown) * plots.CELL_INCHES + 0.6, 3 * plots.CELL_INCHES + 0.5), layout="constrained")
    plots.image_table(fig, [list(truth.frames[shown]), list(measured), list(exact)],
                      col_labels=[f"frame {i}" for i in shown],
                      row_labels=["driving clip", f"r_t measured\n({cfg.method})", "r_t of the truth"])
    return fig


def paste_still(photo: np.ndarray, crop: np.ndarray, quad: np.ndarray):
    """Paste-back on a real photo: the aligned crop, its soft face mask, and the crop pasted back unchanged."""
    mask = face_mask(crop.shape[0])
    pasted = paste_back(photo, crop, quad, mask)
    masked = (crop * mask[:, :, None]).astype(np.uint8)
    fig = plt.figure(figsize=(4 * 1.6, 1.9), layout="constrained")
    axes = plots.image_table(fig, [[photo, crop, masked, pasted]],
                             col_labels=["photo", "aligned crop", "crop x face mask", "pasted back"])
    outline = np.vstack([quad, quad[:1]])
    axes[0, 3].plot(outline[:, 0], outline[:, 1], color="#c44e52", linewidth=0.8)
    return fig


def write_stills(face: FaceModel, truth: TalkingTruth, track: drive.DrivingTrack, folder: str | Path,
                 cfg: SmoothingConfig = SmoothingConfig()) -> list[Path]:
    """``drive_mini_still.png`` (:func:`driving_still`) and ``drive_paste_back.png`` (:func:`paste_still` on
    scikit-image's astronaut photo, public domain, aligned at the mini size) in ``folder``."""
    from skimage.data import astronaut

    from megafr.datasets.align import FaceAligner

    folder = Path(folder)
    plots.save_figure(driving_still(face, truth, track, cfg), folder / "drive_mini_still.png")
    photo = astronaut()
    aligned = FaceAligner(truth.frames.shape[1]).align(photo)
    plots.save_figure(paste_still(photo, aligned.image, aligned.quad), folder / "drive_paste_back.png")
    return [folder / "drive_mini_still.png", folder / "drive_paste_back.png"]


def result_still(source: np.ndarray, driving: np.ndarray, result: np.ndarray, frames_shown: int = STILL_FRAMES):
    """A driven clip at a glance: the source, then driving frames [T, H, W, 3] above the result's [T, H, W, 3]."""
    shown = np.unique(np.linspace(0, min(len(driving), len(result)) - 1, frames_shown).round().astype(int))
    blank = np.full_like(source, 255)
    fig = plt.figure(figsize=((len(shown) + 1) * plots.CELL_INCHES + 0.6, 2 * plots.CELL_INCHES + 0.5),
                     layout="constrained")
    plots.image_table(fig, [[source, *driving[shown]], [blank, *result[shown]]],
                      col_labels=["source", *(f"frame {i}" for i in shown)],
                      row_labels=["driving clip", "result"])
    return fig


def write_result_still(source: str | Path, driving: str | Path, result: str | Path, out: str | Path) -> Path:
    """:func:`result_still` of a ``reenact --driving`` run (its source image, clip and output video) as a PNG."""
    from megafr.imageio import load_image

    frames = [np.stack(list(drive.clip_frames(drive.probe_clip(path)))) for path in (driving, result)]
    plots.save_figure(result_still(load_image(source), *frames), out)
    return Path(out)


def run(prepare_dir: str | Path, face3d_path: str | Path, out: Optional[str | Path] = None,
        stills: Optional[str | Path] = None) -> pd.DataFrame:
    """The study on a prepared mini world and its trained 3D network; the table is also written as JSON
    (``out``), with the stills in the folder ``stills`` when given."""
    prepare_dir = Path(prepare_dir)
    head = prepare_dir / "head_model"
    face = load_face_model(face3d_path, head / "head_model.pkl", head / "landmark_embedding.npy")
    truth = load_talking(prepare_dir)
    track = measure_talking_clip(face, truth, Path(out or "drive_smoothing.json").with_suffix(".mp4"))
    table = smoothing_study(face, truth, track)
    if out is not None:
        write_json(out, {"frames": len(truth.frames), "fps": CLIP_FPS, "image_size": int(truth.frames.shape[1]),
                         "settings": {name: asdict(cfg) for name, cfg in SETTINGS.items()},
                         "rows": table.to_dict(orient="records")})
    if stills is not None:
        write_stills(face, truth, track, stills)
    return table


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m megafr.reenact.drive_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-dir", default="data/prepare", help="output folder of the prepare stage (mini)")
    parser.add_argument("--face3d", default="data/train_face3d/checkpoint.pt", help="the trained 3D face network")
    parser.add_argument("--out", default="data/drive_smoothing.json", help="JSON table written here")
    parser.add_argument("--stills", help="also write the README's two stills into this folder")
    parser.add_argument("--result-still", nargs=4, metavar=("SOURCE", "DRIVING", "RESULT", "PNG"),
                        help="only draw a driven clip: its source image, driving clip and result video, into PNG")
    args = parser.parse_args(argv)
    if args.result_still:
        print(f"wrote {write_result_still(*args.result_still)}")
        return
    print(run(args.prepare_dir, args.face3d, args.out, args.stills).to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
