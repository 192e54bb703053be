"""SynthHeads: the synthetic face data set of the mini world, with every ground truth known.

Heads are drawn from the synthetic FLAME-format head model (``megafr.face3d.headmodel``)
and rendered with ``megafr.face3d.render`` in ``photo`` mode. Per image we sample an
expression, a head pose (yaw, pitch, roll), a jaw opening, a gaze, a camera jitter,
spherical-harmonics lighting and a background; per identity a shape and an appearance.
Everything sampled is stored beside the image, so later stages can measure the true
reenactment error, which the paper's real photos cannot give.

All randomness comes from one ``numpy.random.Generator`` seeded from the params seed,
and rendering is deterministic on CPU, so the same params give byte-identical files.
:func:`render_pool` spreads the rendering over worker processes (``prepare.render_workers``): one
single-thread process per core renders faster than one process with as many threads (the rasterizer's
small per-batch operations use a second thread poorly), and each image is rendered by the same code
in the same batch of ``RENDER_BATCH`` scenes, so the files are byte-identical to a serial run.

Every image is rendered at ``SUPERSAMPLE`` x ``SUPERSAMPLE`` samples per pixel and averaged down
(head masks: a pixel is head when at least half its samples are). At 64 px an open eye is about
1.7 px high; with one sample per pixel the lids land on whole pixels, while the averaged samples
shade the partly covered ones, which is what lets a network read the eyelid gap
(``docs/experiments/train_face3d.md``).

The evaluation sets render the right answer with the same renderer:
``cross`` (source identity with the target's expression and pose, target of another
identity), ``self`` (same identity), ``frontal`` (source identity and expression, frontal
pose), ``eyes`` (a closed-eye source and the same face opened to several degrees) and
``talking`` (a smooth driving sequence and the test identity following it).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from megafr.face3d import headmodel, pose as posemod
from megafr.face3d.framing import aligned_camera
from megafr.face3d.flame import FLAME
from megafr.face3d.render import OrthoCamera, Renderer, ndc_to_pixels, project

# Sampling constants: together they define the SynthHeads distribution.
EXPRESSION_ACTIVE_PROB = 0.35  # each expression component is active in an image with this probability
JAW_OPEN_PROB = 0.5  # probability that the mouth is open
MAX_JAW_DEG = 22.0  # largest jaw opening, degrees about the x axis
MAX_GAZE_DEG = 15.0  # largest eye rotation, degrees (both eyes together)
ZOOM_JITTER = 0.04  # relative jitter of the crop size
SHIFT_JITTER = 0.03  # jitter of the crop centre, in NDC units (the image spans [-1, 1])
AMBIENT_RANGE = (1.05, 1.35)  # band-0 SH light strength
DIRECTIONAL_RANGE = (0.2, 0.5)  # band-1 SH light strength
TALKING_MOUTH_CYCLES = 4  # mouth open/close cycles over the talking-head sequence
EYE_DEGREES = (0.0, 0.25, 0.5, 0.75, 1.0)  # eye-opening degrees rendered as ground truth
SUPERSAMPLE = 2  # each image is rendered at 2 x 2 samples per pixel and averaged down (anti-aliased edges and lids)
RENDER_BATCH = 64
POOL_CHUNK = 4 * RENDER_BATCH  # scenes a render worker takes at a time (whole batches: the same images as serially)


@dataclass(frozen=True)
class SceneParams:
    """Everything needed to render a batch of images (numpy, one row per image)."""

    identity: np.ndarray  # [B] int, identity label
    shape: np.ndarray  # [B, n_shape]
    appearance: np.ndarray  # [B, n_appearance]
    expression: np.ndarray  # [B, n_expr]
    pose: np.ndarray  # [B, 15] FLAME pose (axis-angle)
    zoom: np.ndarray  # [B] relative crop-size jitter around 1
    shift: np.ndarray  # [B, 2] crop-centre jitter, NDC units
    sh: np.ndarray  # [B, 9, 3]
    background: np.ndarray  # [B, 2, 3] top and bottom colours of a vertical gradient, in [0, 1]

    def __len__(self) -> int:
        return len(self.identity)

    def take(self, index: np.ndarray) -> "SceneParams":
        """The rows ``index`` of every field."""
        return SceneParams(**{name: value[index] for name, value in vars(self).items()})

    def with_(self, **fields) -> "SceneParams":
        """A copy with some fields replaced (e.g. the target's expression and pose)."""
        return replace(self, **fields)


class HeadWorld:
    """The synthetic head model and renderer, ready to sample and render SynthHeads scenes."""

    def __init__(self, model_path: str | Path, landmark_path: str | Path, image_size: int):
        self.files = (str(model_path), str(landmark_path))  # what a worker process builds its own copy from
        self.flame = FLAME.from_files(model_path, landmark_path, headmodel.N_IDENTITY, headmodel.N_EXPRESSION)
        appearance_path = Path(model_path).with_name(headmodel.APPEARANCE_FILE)
        self.appearance = headmodel.AppearanceModel.load(appearance_path)
        self.renderer = Renderer(self.flame.faces, image_size * SUPERSAMPLE)
        self.image_size = image_size
        self.expression_names = headmodel.EXPRESSION_COMPONENTS

    # ------------------------------------------------------------------ sampling
    def sample_identities(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Shapes [n, n_shape] ~ N(0, 1) and appearances [n, A] from the appearance model."""
        shape = rng.standard_normal((n, headmodel.N_IDENTITY)).astype(np.float32)
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        appearance = self.appearance.sample(generator, n).numpy().astype(np.float32)
        return shape, appearance

    def sample_expression(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Sparse expressions [n, n_expr]: each component active with EXPRESSION_ACTIVE_PROB, strength U(0, 1)."""
        active = rng.random((n, headmodel.N_EXPRESSION)) < EXPRESSION_ACTIVE_PROB
        return (active * rng.random((n, headmodel.N_EXPRESSION))).astype(np.float32)

    def sample_pose(self, rng: np.random.Generator, n: int, max_yaw: float, max_pitch: float, max_roll: float) -> np.ndarray:
        """FLAME poses [n, 15] with uniform yaw/pitch/roll (degrees bounds), a jaw opening and a gaze."""
        deg = math.pi / 180.0
        yaw = rng.uniform(-max_yaw, max_yaw, n) * deg
        pitch = rng.uniform(-max_pitch, max_pitch, n) * deg
        roll = rng.uniform(-max_roll, max_roll, n) * deg
        jaw = np.where(rng.random(n) < JAW_OPEN_PROB, rng.uniform(0.0, MAX_JAW_DEG, n), 0.0) * deg
        gaze = rng.uniform(-MAX_GAZE_DEG, MAX_GAZE_DEG, (n, 2)) * deg
        return make_pose(yaw, pitch, roll, jaw, gaze)

    def sample_scene(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Per-image camera jitter, SH lighting and background colours."""
        zoom = 1.0 + rng.uniform(-ZOOM_JITTER, ZOOM_JITTER, n)
        shift = rng.uniform(-SHIFT_JITTER, SHIFT_JITTER, (n, 2))
        sh = np.zeros((n, 9, 3))
        ambient = rng.uniform(*AMBIENT_RANGE, n)[:, None] * rng.uniform(0.9, 1.1, (n, 3))
        sh[:, 0, :] = ambient
        direction = rng.standard_normal((n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        direction[:, 2] = np.abs(direction[:, 2])  # light from the viewer's side
        strength = rng.uniform(*DIRECTIONAL_RANGE, n)
        sh[:, 1:4, :] = (direction * strength[:, None])[:, :, None]
        background = rng.uniform(0.05, 0.95, (n, 2, 3))
        return dict(
            zoom=zoom.astype(np.float32),
            shift=shift.astype(np.float32),
            sh=sh.astype(np.float32),
            background=background.astype(np.float32),
        )

    # ----------------------------------------------------------------- rendering
    @torch.no_grad()
    def render_samples(self, batch: SceneParams):
        """One batch at ``SUPERSAMPLE`` x ``SUPERSAMPLE`` samples per pixel, before averaging -> (FLAME output,
        the aligned camera, the renderer's output at ``image_size * SUPERSAMPLE`` px)."""
        out = self.flame(torch.from_numpy(batch.shape), torch.from_numpy(batch.expression), torch.from_numpy(batch.pose))
        camera = aligned_camera(out.landmarks, torch.from_numpy(batch.zoom), torch.from_numpy(batch.shift))
        rendered = self.renderer(
            out.vertices,
            camera,
            mode="photo",
            albedo=self.appearance.albedo(torch.from_numpy(batch.appearance)),
            sh=torch.from_numpy(batch.sh),
            background=gradient_background(torch.from_numpy(batch.background), self.image_size * SUPERSAMPLE),
        )
        return out, camera, rendered

    @torch.no_grad()
    def render(self, params: SceneParams, progress: str | None = None) -> dict[str, np.ndarray]:
        """Render ``params`` -> uint8 images [B, H, W, 3], head masks uint8 [B, H, W] (1 = head),
        2D landmarks [B, 68, 2] (pixels), 3D landmarks [B, 68, 3] and the orthographic camera
        actually used (``cam_scale`` [B], ``cam_translation`` [B, 2]; see :func:`aligned_camera`)."""
        images, masks, lmk2d, lmk3d, scales, translations = [], [], [], [], [], []
        starts = range(0, len(params), RENDER_BATCH)
        for start in tqdm(starts, desc=progress, disable=progress is None, leave=False):
            batch = params.take(np.arange(start, min(start + RENDER_BATCH, len(params))))
            out, camera, rendered = self.render_samples(batch)
            images.append(to_uint8(downsample(rendered.image)))
            masks.append((downsample(rendered.mask[:, :1].float())[:, 0] >= 0.5).to(torch.uint8).numpy())
            lmk2d.append(landmarks_to_pixels(out.landmarks, camera, self.image_size).numpy())
            lmk3d.append(out.landmarks.numpy())
            scales.append(camera.scale.numpy())
            translations.append(camera.translation.numpy())
        return dict(
            images=np.concatenate(images),
            masks=np.concatenate(masks),
            landmarks_2d=np.concatenate(lmk2d).astype(np.float32),
            landmarks_3d=np.concatenate(lmk3d).astype(np.float32),
            cam_scale=np.concatenate(scales).astype(np.float32),
            cam_translation=np.concatenate(translations).astype(np.float32),
        )


def _concatenated(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


_WORKER_WORLD: Optional[HeadWorld] = None  # the HeadWorld of a render worker process


def _start_render_worker(files: tuple[str, str], image_size: int, threads: int) -> None:
    global _WORKER_WORLD
    torch.set_num_threads(threads)
    _WORKER_WORLD = HeadWorld(*files, image_size)


def _render_in_worker(params: SceneParams) -> dict[str, np.ndarray]:
    return _WORKER_WORLD.render(params)


class RenderPool:
    """:meth:`HeadWorld.render` in ``workers`` spawned processes, each with its own copy of the world and
    an equal share of this process's torch threads; use through :func:`render_pool`. The workers end
    when this process does (a killed prepare run leaves none rendering)."""

    def __init__(self, world: HeadWorld, workers: int):
        from megafr.distributed import spawn_pool, worker_threads

        self.pool = spawn_pool(workers, _start_render_worker,
                               (world.files, world.image_size, worker_threads(workers)))

    def render(self, params: SceneParams, progress: str | None = None) -> dict[str, np.ndarray]:
        """The same arrays as ``HeadWorld.render(params)``, rendered POOL_CHUNK scenes per task."""
        chunks = [params.take(np.arange(start, min(start + POOL_CHUNK, len(params))))
                  for start in range(0, len(params), POOL_CHUNK)]
        parts = self.pool.map(_render_in_worker, chunks)
        return _concatenated(list(tqdm(parts, total=len(chunks), desc=progress, disable=progress is None, leave=False)))

    def close(self, cancel: bool = False) -> None:
        self.pool.shutdown(wait=True, cancel_futures=cancel)


@contextlib.contextmanager
def render_pool(world: HeadWorld, workers: int) -> Iterator[HeadWorld | RenderPool]:
    """Something with ``world``'s ``render``: the world itself for ``workers`` <= 1, else a :class:`RenderPool`
    of that many processes, shut down on leaving (queued chunks dropped when the block raises)."""
    if workers <= 1:
        yield world
        return
    pool = RenderPool(world, workers)
    try:
        yield pool
    except BaseException:
        pool.close(cancel=True)
        raise
    pool.close()


def make_pose(yaw, pitch, roll, jaw, gaze) -> np.ndarray:
    """FLAME pose [n, 15] from head yaw/pitch/roll [n], jaw opening [n] and gaze [n, 2] (yaw, pitch), radians."""
    n = len(yaw)
    pose = np.zeros((n, posemod.POSE_DIM), dtype=np.float32)
    as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    pose[:, posemod.GLOBAL] = posemod.euler_to_axis_angle(as_t(yaw), as_t(pitch), as_t(roll)).numpy()
    pose[:, posemod.JAW][:, 0] = jaw  # jaw opens by rotating about +x (chin moves down and back)
    eye = posemod.euler_to_axis_angle(as_t(gaze[:, 0]), as_t(gaze[:, 1]), as_t(np.zeros(n))).numpy()
    pose[:, posemod.LEFT_EYE] = eye
    pose[:, posemod.RIGHT_EYE] = eye
    return pose


def gradient_background(colours: torch.Tensor, size: int) -> torch.Tensor:
    """Vertical gradient images [B, 3, H, W] in [-1, 1] from top/bottom colours [B, 2, 3] in [0, 1]."""
    t = torch.linspace(0.0, 1.0, size, dtype=colours.dtype)[None, None, :, None]  # [1, 1, H, 1]
    top, bottom = colours[:, 0, :, None, None], colours[:, 1, :, None, None]  # [B, 3, 1, 1]
    image = top * (1 - t) + bottom * t
    return (image * 2.0 - 1.0).expand(-1, -1, -1, size).contiguous()


def downsample(image: torch.Tensor, factor: int = SUPERSAMPLE) -> torch.Tensor:
    """[B, C, H * factor, W * factor] -> [B, C, H, W]: each pixel the mean of its factor x factor samples."""
    return torch.nn.functional.avg_pool2d(image, factor) if factor > 1 else image


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Images [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    scaled = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).contiguous().numpy()


def landmarks_to_pixels(landmarks: torch.Tensor, camera: OrthoCamera, size: int) -> torch.Tensor:
    """3D landmarks [B, 68, 3] -> pixel coordinates [B, 68, 2] (x right, y down)."""
    return ndc_to_pixels(project(landmarks, camera)[..., :2], size)


# ---------------------------------------------------------------------- data set
def sample_split(
    world: HeadWorld,
    rng: np.random.Generator,
    identities: np.ndarray,
    images_per_identity: int,
    bounds: tuple[float, float, float],
) -> SceneParams:
    """Scene parameters of a split: ``images_per_identity`` images of each identity label in ``identities``."""
    shape, appearance = world.sample_identities(rng, len(identities))
    rows = np.repeat(np.arange(len(identities)), images_per_identity)
    n = len(rows)
    return SceneParams(
        identity=identities[rows].astype(np.int64),
        shape=shape[rows],
        appearance=appearance[rows],
        expression=world.sample_expression(rng, n),
        pose=world.sample_pose(rng, n, *bounds),
        **world.sample_scene(rng, n),
    )


def scene_table(params: SceneParams, rendered: dict[str, np.ndarray], split: str) -> pd.DataFrame:
    """One row per image with its full ground truth, flattened into named columns."""
    columns: dict[str, np.ndarray] = {
        "split": np.full(len(params), split),
        "row": np.arange(len(params)),
        "identity": params.identity,
    }

    def add(prefix: str, values: np.ndarray, names=None) -> None:
        flat = values.reshape(len(values), -1)
        for j in range(flat.shape[1]):
            columns[f"{prefix}_{names[j] if names else j}"] = flat[:, j]

    add("shape", params.shape)
    add("expr", params.expression, headmodel.EXPRESSION_COMPONENTS)
    add("pose", params.pose)
    angles = posemod.head_pose_degrees(torch.from_numpy(params.pose)).numpy()
    columns.update(yaw_deg=angles[:, 0], pitch_deg=angles[:, 1], roll_deg=angles[:, 2])
    columns["jaw_deg"] = np.degrees(params.pose[:, posemod.JAW][:, 0])
    columns["zoom"] = params.zoom
    add("shift", params.shift)
    columns["cam_scale"] = rendered["cam_scale"]
    add("cam_t", rendered["cam_translation"])
    add("sh", params.sh)
    add("appearance", params.appearance)
    add("background", params.background)
    lmk2d = rendered["landmarks_2d"]
    for axis, name in enumerate("xy"):
        add(f"lmk2d_{name}", lmk2d[..., axis])
    lmk3d = rendered["landmarks_3d"]
    for axis, name in enumerate("xyz"):
        add(f"lmk3d_{name}", lmk3d[..., axis])
    return pd.DataFrame(columns)


def table_to_params(table: pd.DataFrame) -> SceneParams:
    """Inverse of :func:`scene_table` for the sampled fields (used to re-render ground truth)."""

    def grab(prefix: str) -> np.ndarray:
        cols = [c for c in table.columns if c.startswith(prefix + "_")]
        return table[cols].to_numpy(dtype=np.float32)

    return SceneParams(
        identity=table["identity"].to_numpy(dtype=np.int64),
        shape=grab("shape"),
        appearance=grab("appearance"),
        expression=grab("expr"),
        pose=grab("pose"),
        zoom=table["zoom"].to_numpy(dtype=np.float32),
        shift=grab("shift"),
        sh=grab("sh").reshape(-1, 9, 3),
        background=grab("background").reshape(-1, 2, 3),
    )


# ----------------------------------------------------------------- evaluation sets
def cross_pairs(rng: np.random.Generator, identity: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (source, target) row pairs whose identities differ."""
    source = rng.integers(0, len(identity), n)
    target = rng.integers(0, len(identity), n)
    clash = identity[source] == identity[target]
    while clash.any():
        target[clash] = rng.integers(0, len(identity), int(clash.sum()))
        clash = identity[source] == identity[target]
    return source, target


def self_pairs(rng: np.random.Generator, identity: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (source, target) row pairs: two different images of the same identity."""
    source = rng.integers(0, len(identity), n)
    target = np.empty_like(source)
    for k, s in enumerate(source):
        same = np.flatnonzero((identity == identity[s]) & (np.arange(len(identity)) != s))
        if len(same) == 0:
            raise ValueError("self-reenactment pairs need at least 2 images per test identity")
        target[k] = same[rng.integers(len(same))]
    return source, target


def reenact_truth(test: SceneParams, source: np.ndarray, target: np.ndarray) -> SceneParams:
    """The right answer of reenacting ``source`` rows by ``target`` rows: the source's identity, appearance,
    camera, light and background with the target's expression and whole pose (head, jaw, gaze)."""
    return test.take(source).with_(expression=test.expression[target], pose=test.pose[target])


def frontal_truth(test: SceneParams, source: np.ndarray) -> SceneParams:
    """Frontalization's right answer: the source with zero global and neck rotation (jaw, gaze, expression kept)."""
    truth = test.take(source)
    pose = truth.pose.copy()
    pose[:, posemod.GLOBAL] = 0.0
    pose[:, posemod.NECK] = 0.0
    return truth.with_(pose=pose)


def blink_columns() -> tuple[int, int]:
    """Columns of the blink_left and blink_right expression components."""
    names = headmodel.EXPRESSION_COMPONENTS
    return names.index("blink_left"), names.index("blink_right")


def eye_opening_set(test: SceneParams, source: np.ndarray, degrees=EYE_DEGREES) -> tuple[SceneParams, SceneParams]:
    """Closed-eye sources (both blinks at 1) and the same faces opened to each degree (blink = 1 - degree).

    Returns ``(closed [n], opened [n * len(degrees)])``, opened ordered source-major.
    """
    left, right = blink_columns()
    closed = test.take(source)
    expression = closed.expression.copy()
    expression[:, [left, right]] = 1.0
    closed = closed.with_(expression=expression)
    rows = np.repeat(np.arange(len(source)), len(degrees))
    opened = closed.take(rows)
    degree = np.tile(np.asarray(degrees, dtype=np.float32), len(source))
    expression = opened.expression.copy()
    expression[:, left] = 1.0 - degree
    expression[:, right] = 1.0 - degree
    return closed, opened.with_(expression=expression)


def talking_sequence(test: SceneParams, actor_row: int, driver_row: int, frames: int) -> tuple[SceneParams, SceneParams]:
    """A smooth driving sequence played by the driver's identity, and the actor following it.

    Head yaw and pitch move along slow sinusoids, the jaw opens and closes TALKING_MOUTH_CYCLES
    times, and the smile rises and falls once. Returns ``(driving, truth)``, each [frames].
    """
    t = np.linspace(0.0, 1.0, frames, endpoint=False)
    yaw = np.radians(25.0) * np.sin(2 * np.pi * t)
    pitch = np.radians(10.0) * np.sin(4 * np.pi * t + 0.5)
    roll = np.radians(4.0) * np.sin(2 * np.pi * t + 1.0)
    jaw = np.radians(MAX_JAW_DEG * 0.8) * 0.5 * (1 - np.cos(2 * np.pi * TALKING_MOUTH_CYCLES * t))
    gaze = np.zeros((frames, 2))
    pose = make_pose(yaw, pitch, roll, jaw, gaze)
    expression = np.zeros((frames, headmodel.N_EXPRESSION), dtype=np.float32)
    expression[:, headmodel.EXPRESSION_COMPONENTS.index("smile")] = 0.5 * (1 - np.cos(2 * np.pi * t))
    driving = test.take(np.full(frames, driver_row)).with_(expression=expression, pose=pose)
    truth = test.take(np.full(frames, actor_row)).with_(expression=expression, pose=pose)
    return driving, truth
