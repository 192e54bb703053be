"""What each figure shows: examples picked from prepare's sets, with right answers where the world knows them.

The mini and smoke worlds are rendered, so the right answer of any edit can be rendered too
(:class:`TruthWorld`): the sources x targets grid gets one for every cell, and the yaw and pitch
sweeps one for every angle. The frontalization, eye-opening and talking-head sets ship theirs.
On photos (``source: photos``) the figures show no right answer where none exists.

Selection is deterministic: first rows in the sets' order, or ranks of a known quantity
(target yaw, jaw opening, input yaw), never a random draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from megafr.config import study_path
from megafr.errors import InputError, MissingFileError
from megafr.face3d.landmarks import EYELID_PAIRS, N_LANDMARKS
from megafr.figures.config import FiguresConfig

MM_PER_M = 1000.0
POSE_AXES = {"yaw": 0, "pitch": 1}  # column of head_pose_degrees / position in (yaw, pitch, roll)


@dataclass(frozen=True)
class Grid:
    """Sources x targets; ``truth[i, j]`` is source i with target j's expression and pose."""

    sources: np.ndarray  # uint8 [n, S, S, 3]
    targets: np.ndarray  # uint8 [m, S, S, 3]
    truth: Optional[np.ndarray]  # uint8 [n, m, S, S, 3] or None


@dataclass(frozen=True)
class Pairs:
    """Source/target pairs with a label per pair (what makes the target hard)."""

    source: np.ndarray  # uint8 [n, S, S, 3]
    target: np.ndarray  # uint8 [n, S, S, 3]
    truth: Optional[np.ndarray]  # uint8 [n, S, S, 3] or None
    labels: tuple[str, ...]  # one per pair


@dataclass(frozen=True)
class Sweep:
    """Sources whose head is turned to each requested angle about one axis."""

    axis: str  # "yaw" or "pitch"
    sources: np.ndarray  # uint8 [k, S, S, 3]
    angles: np.ndarray  # float [A] degrees requested
    truth: Optional[np.ndarray]  # uint8 [k, A, S, S, 3] or None


@dataclass(frozen=True)
class Frontal:
    """Frontalization inputs (sorted by yaw) and their frontal right answers."""

    source: np.ndarray  # uint8 [n, S, S, 3]
    truth: Optional[np.ndarray]  # uint8 [n, S, S, 3] or None
    input_yaw: Optional[np.ndarray]  # float [n] true yaw of the inputs (degrees), or None


@dataclass(frozen=True)
class Eyes:
    """Closed-eye sources, the requested opening degrees and the right answers at each."""

    source: np.ndarray  # uint8 [k, S, S, 3]
    degrees: np.ndarray  # float [D] in [0, 1]
    truth: Optional[np.ndarray]  # uint8 [k, D, S, S, 3] or None
    truth_gap_mm: Optional[np.ndarray]  # float [k, D] signed eyelid gap of the right answers (renderer's landmarks), mm


@dataclass(frozen=True)
class Talking:
    """A driving sequence, the actor's photo, and the actor following the sequence (right answer)."""

    source: np.ndarray  # uint8 [1, S, S, 3] the actor
    driving: np.ndarray  # uint8 [T, S, S, 3] played by another identity
    truth: Optional[np.ndarray]  # uint8 [T, S, S, 3] or None
    truth_landmarks: Optional[np.ndarray]  # float [T, 68, 2] renderer's landmarks of the truth, pixels


@dataclass(frozen=True)
class FigureInputs:
    grid: Grid
    extremes: Pairs
    yaw: Sweep
    pitch: Sweep
    frontal: Frontal
    eyes: Eyes
    talking: Talking


# ----------------------------------------------------------------------------------------------- picking
def spread(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` entries of ``values`` at evenly spaced ranks from the smallest to the largest."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        raise InputError("spread: no values to pick from")
    order = np.argsort(values, kind="stable")
    ranks = np.unique(np.round(np.linspace(0, len(values) - 1, min(n, len(values)))).astype(int))
    return order[ranks]


def pick_extremes(yaw: np.ndarray, jaw: np.ndarray, n: int) -> np.ndarray:
    """``ceil(n/2)`` rows with the largest |yaw|, then the rest with the largest jaw opening (no repeats)."""
    by_yaw = np.argsort(-np.abs(np.asarray(yaw, dtype=float)), kind="stable")
    chosen = list(by_yaw[: (n + 1) // 2])
    for row in np.argsort(-np.asarray(jaw, dtype=float), kind="stable"):
        if len(chosen) >= min(n, len(yaw)):
            break
        if row not in chosen:
            chosen.append(row)
    return np.asarray(chosen, dtype=int)


def first_distinct(identity: np.ndarray, rows: np.ndarray, n: int, exclude=()) -> np.ndarray:
    """The first ``n`` of ``rows`` whose ``identity[row]`` is new (and not in ``exclude``)."""
    seen, picked = set(exclude), []
    for row in rows:
        if identity[row] not in seen:
            seen.add(identity[row])
            picked.append(row)
        if len(picked) == n:
            break
    return np.asarray(picked, dtype=int)


def _float_tensor(values) -> torch.Tensor:
    return values.detach().float() if isinstance(values, torch.Tensor) else torch.tensor(np.asarray(values), dtype=torch.float32)


def eyelid_gap_mm(landmarks_3d: np.ndarray | torch.Tensor, head_rotation: np.ndarray | torch.Tensor) -> np.ndarray:
    """Signed eyelid opening [B] in mm: the mean over ``EYELID_PAIRS`` of (upper - lower) along the head's up axis.

    ``landmarks_3d`` are posed FLAME landmarks [B, 68, 3] (metres) and ``head_rotation`` the global
    axis-angle [B, 3] that posed them; undoing it makes "up" the model's +y whatever the head pose.
    Negative values mean the upper lid passed below the lower one (a squeezed, closed eye).
    """
    points = _float_tensor(landmarks_3d)  # [B, 68, 3]
    rotation = axis_angle_to_rotation_matrix(_float_tensor(head_rotation).reshape(-1, 3))  # [B, 3, 3]
    upper = points[:, [u for u, _ in EYELID_PAIRS]]
    lower = points[:, [lo for _, lo in EYELID_PAIRS]]
    local = torch.einsum("bji,bpj->bpi", rotation, upper - lower)  # R^T (upper - lower), [B, pairs, 3]
    return (local[..., 1].mean(dim=-1) * MM_PER_M).numpy().astype(np.float64)


def table_landmarks(table: pd.DataFrame, kind: str = "lmk2d") -> np.ndarray:
    """The renderer's landmarks stored in a scene table -> [B, 68, 2] (``lmk2d``, pixels) or [B, 68, 3] (``lmk3d``, metres)."""
    axes = "xy" if kind == "lmk2d" else "xyz"
    columns = [[f"{kind}_{a}_{i}" for a in axes] for i in range(N_LANDMARKS)]
    return np.stack([table[[c[k] for c in columns]].to_numpy(dtype=np.float64) for k in range(len(axes))], axis=-1)


# ----------------------------------------------------------------------------------------------- files
def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise MissingFileError(f"{what} not found: {path}; run the prepare stage (`dvc repro prepare`) with the "
                               "same prepare.source as figures.source")
    return path


def _load_set(folder: Path, names: tuple[str, ...], table: str) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    arrays = {name: np.load(_need(folder / f"{name}.npy", f"evaluation array {name}")) for name in names}
    return arrays, pd.read_parquet(_need(folder / table, "evaluation table"))


class TruthWorld:
    """The synthetic world's renderer over the test split's scene parameters: right answers of any edit."""

    def __init__(self, model_path: str | Path, landmark_path: str | Path, test_table: pd.DataFrame, image_size: int):
        from megafr.datasets import synthheads as sh

        self._sh = sh
        self.world = sh.HeadWorld(study_path(model_path), study_path(landmark_path), image_size)
        self.params = sh.table_to_params(test_table)

    def reenact(self, source_rows: np.ndarray, target_rows: np.ndarray) -> np.ndarray:
        """Sources with the targets' expression and pose -> uint8 [len(rows), S, S, 3]."""
        return self.world.render(self._sh.reenact_truth(self.params, source_rows, target_rows))["images"]

    def turned(self, rows: np.ndarray, axis: str, angles: np.ndarray) -> np.ndarray:
        """Each row's scene with the head's ``axis`` angle set to each of ``angles`` -> uint8 [k, A, S, S, 3]."""
        from megafr.reenact.inference import edit_pose

        repeated = self.params.take(np.repeat(rows, len(angles)))
        values = torch.as_tensor(np.tile(angles, len(rows)), dtype=torch.float32)
        pose = edit_pose(torch.from_numpy(repeated.pose), **{f"{axis}_deg": values}).numpy()
        images = self.world.render(repeated.with_(pose=pose.astype(np.float32)))["images"]
        return images.reshape(len(rows), len(angles), *images.shape[1:])


PHOTO_EYE_DEGREES = (0.0, 0.25, 0.5, 0.75, 1.0)  # eye-opening degrees asked of photos (the synthetic sets' own)


def load_photo_inputs(cfg: FiguresConfig) -> FigureInputs:
    """Every figure's examples on photos, in the protocol's order, with no right answer anywhere.

    From the test manifest (``<test_dir>/manifest.csv``) and the protocol's files (``<eval_dir>/cross/pairs.csv``,
    ``frontal/sources.csv``): the grid's sources and targets are the first test photos, the refinement figure
    shows the first cross pairs, the yaw / pitch sweeps and the eye opening start from the first test photos
    (photos hold no closed-eye set, so the eyes open from the photo's own state), the frontalization inputs
    are the first protocol sources. The talking head is driven by the next test photos in manifest order:
    photos hold no video, so its jitter measures the change between unrelated drivers, not temporal noise.
    """
    from megafr.datasets import protocol
    from megafr.datasets.loader import ImageFiles, ImageRows

    photos = ImageFiles(_need(study_path(cfg.test_dir) / "manifest.csv", "test manifest"))
    eval_dir = study_path(cfg.eval_dir)

    def first(n: int, start: int = 0) -> np.ndarray:
        rows = np.arange(start, min(start + n, len(photos)))
        if len(rows) == 0:
            raise InputError(f"{cfg.test_dir} lists {len(photos)} test photos, too few for the figures; add photos")
        return ImageRows(photos, rows)[:]

    n_grid = cfg.grid_sources + cfg.grid_targets
    grid = Grid(first(cfg.grid_sources), first(cfg.grid_targets, cfg.grid_sources), None)
    cross = protocol.eval_images(eval_dir / "cross", ("source", "target"), cfg.extreme_pairs)
    extremes = Pairs(cross["source"][:], cross["target"][:], None,
                     tuple(f"pair {k + 1}" for k in range(len(cross["source"]))))
    sweeps = {axis: Sweep(axis, first(cfg.control_sources), np.linspace(-limit, limit, cfg.control_angles), None)
              for axis, limit in (("yaw", cfg.yaw_max_deg), ("pitch", cfg.pitch_max_deg))}
    frontal = protocol.eval_images(eval_dir / "frontal", ("source",), cfg.frontal_inputs)["source"][:]
    eyes = Eyes(first(cfg.eye_sources), np.asarray(PHOTO_EYE_DEGREES), None, None)
    frames = cfg.talking_frames or max(len(photos) - n_grid - 1, 1)
    talk = Talking(first(1, n_grid), first(frames, n_grid + 1) if len(photos) > n_grid + 1 else first(frames),
                   None, None)
    return FigureInputs(grid, extremes, sweeps["yaw"], sweeps["pitch"], Frontal(frontal, None, None), eyes, talk)


def load_inputs(cfg: FiguresConfig) -> FigureInputs:
    """Pick every figure's examples from prepare's test split and evaluation sets (see the module docstring)."""
    if cfg.source == "photos" and (study_path(cfg.test_dir) / "manifest.csv").is_file():
        return load_photo_inputs(cfg)  # prepare on photos: manifests and the protocol's files
    eval_dir, test_dir = study_path(cfg.eval_dir), study_path(cfg.test_dir)
    test_images = np.load(_need(test_dir / "images.npy", "test images"))
    test = pd.read_parquet(_need(test_dir / "meta.parquet", "test scene table"))
    identity = test["identity"].to_numpy()
    world = (TruthWorld(cfg.model_path, cfg.landmark_path, test, test_images.shape[1]) if cfg.render_truth else None)

    cross, cross_table = _load_set(eval_dir / "cross", ("source", "target", "truth"), "pairs.parquet")
    # grid: the cross set's first sources of distinct identities; test images of the other identities, spread over yaw
    source_rows = first_distinct(identity, cross_table["source_row"].to_numpy(), cfg.grid_sources)
    candidates = np.flatnonzero(~np.isin(identity, identity[source_rows]))
    target_rows = candidates[spread(test["yaw_deg"].to_numpy()[candidates], cfg.grid_targets)]
    grid_truth = None
    if world is not None:
        rendered = world.reenact(np.repeat(source_rows, len(target_rows)), np.tile(target_rows, len(source_rows)))
        grid_truth = rendered.reshape(len(source_rows), len(target_rows), *rendered.shape[1:])
    grid = Grid(test_images[source_rows], test_images[target_rows], grid_truth)

    # refinement: the cross pairs whose target turns or opens the jaw most (the truth rows hold the target's pose)
    rows = pick_extremes(cross_table["yaw_deg"].to_numpy(), cross_table["jaw_deg"].to_numpy(), cfg.extreme_pairs)
    labels = tuple(f"target yaw {cross_table['yaw_deg'].iloc[r]:+.0f}°\njaw {cross_table['jaw_deg'].iloc[r]:.0f}°"
                   for r in rows)
    extremes = Pairs(cross["source"][rows], cross["target"][rows], cross["truth"][rows], labels)

    # yaw and pitch control: the most frontal test images of distinct identities
    frontalness = np.abs(test["yaw_deg"].to_numpy()) + np.abs(test["pitch_deg"].to_numpy())
    control_rows = first_distinct(identity, np.argsort(frontalness, kind="stable"), cfg.control_sources)
    sweeps = {}
    for axis, limit in (("yaw", cfg.yaw_max_deg), ("pitch", cfg.pitch_max_deg)):
        angles = np.linspace(-limit, limit, cfg.control_angles)
        truth = world.turned(control_rows, axis, angles) if world is not None else None
        sweeps[axis] = Sweep(axis, test_images[control_rows], angles, truth)

    frontal, frontal_table = _load_set(eval_dir / "frontal", ("source", "truth"), "pairs.parquet")
    input_yaw = test["yaw_deg"].to_numpy()[frontal_table["source_row"].to_numpy()]
    picked = spread(input_yaw, cfg.frontal_inputs)
    front = Frontal(frontal["source"][picked], frontal["truth"][picked], input_yaw[picked])

    eyes, eyes_table = _load_set(eval_dir / "eyes", ("source", "truth"), "pairs.parquet")
    degrees = eyes_table.loc[eyes_table["source_index"] == 0, "degree"].to_numpy(dtype=float)
    k = min(cfg.eye_sources, len(eyes["source"]))
    opened = eyes["truth"].reshape(len(eyes["source"]), len(degrees), *eyes["truth"].shape[1:])[:k]
    rotation = eyes_table[[f"pose_{i}" for i in range(3)]].to_numpy()  # the global (head) rotation
    gaps = eyelid_gap_mm(table_landmarks(eyes_table, "lmk3d"), rotation).reshape(len(eyes["source"]), len(degrees))[:k]
    eye_set = Eyes(eyes["source"][:k], degrees, opened, gaps)

    talking, frames = _load_set(eval_dir / "talking", ("driving", "truth"), "frames.parquet")
    count = cfg.talking_frames or len(talking["driving"])
    actor = np.flatnonzero(identity == frames["identity"].iloc[0])
    if len(actor) == 0:
        raise InputError(f"the talking-head actor (identity {frames['identity'].iloc[0]}) has no image in {test_dir}")
    talk = Talking(test_images[actor[:1]], talking["driving"][:count], talking["truth"][:count],
                   table_landmarks(frames.iloc[:count], "lmk2d"))
    return FigureInputs(grid, extremes, sweeps["yaw"], sweeps["pitch"], front, eye_set, talk)
