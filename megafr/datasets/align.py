"""FFHQ-style alignment of real photos from dlib's 68 facial landmarks.

StyleGAN2 (and so e4e, pSp and MegaFR, which invert into its latent space) only
reproduces faces cropped the way FFHQ was cropped (Karras et al., "A Style-Based
Generator Architecture for GANs", CVPR 2019, appendix A; the procedure is
``recreate_aligned_images`` in NVlabs' ``ffhq-dataset/download_ffhq.py``, reused
by e4e/pSp's ``align_all_parallel.py``). CelebA-HQ test photos, and any
in-the-wild photo, must go through the same steps before inversion:

1. landmarks: dlib's HOG face detector and 68-point shape predictor (iBUG order);
2. eye centres ``e_l``, ``e_r`` = means of landmarks 36-41 and 42-47; mouth centre
   ``m`` = midpoint of the mouth corners 48 and 54;
   ``eye_to_eye = e_r - e_l``, ``eye_avg = (e_l + e_r) / 2``, ``eye_to_mouth = m - eye_avg``;
3. an oriented square: half-side vector ``x`` along ``eye_to_eye - rot90(eye_to_mouth)``
   with length ``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)`` (so the side is twice that),
   ``y = rot90(x)``, centre ``c = eye_avg + 0.1 eye_to_mouth``;
4. shrink: if the square is more than 4x the output size, downscale the photo by
   ``floor(side / output / 2)`` (antialiased) first;
5. crop to the square's bounding box plus a border of 10 % of the side;
6. pad, where the square leaves the photo, by reflection (at least 30 % of the
   side), blur the padding (sigma 2 % of the side) and fade it to the median colour;
7. resample the square onto ``transform_size`` pixels (bilinear), then resize to
   ``output_size`` (antialiased); FFHQ uses 4096 -> 1024.

Where the eyes land (derived from steps 2-3, tested in ``tests/test_align.py``):
in the output of side ``S`` the eye midpoint sits at ``c - 0.1 eye_to_mouth``, i.e.
above the centre by ``0.1 |eye_to_mouth| / side * S``. Because the side is at
least ``2 * 1.8 |eye_to_mouth|``, that rise is at most ``S / 36``
(:data:`FFHQ_EYE_MIDPOINT_MAX_RISE`), reached when the eye-to-mouth distance sets
the size; and the eyes are at most ``S / 8`` either side of the vertical centre
line (:data:`FFHQ_EYE_MAX_HALF_DISTANCE`), reached when the eye distance sets the
size. So for every face the eye midpoint lies in the row band
``[S/2 - S/36, S/2]``, and on a frontal face (mouth below the eye midpoint) on the
vertical centre line; :func:`ffhq_eye_positions` gives the exact positions for
given landmarks.

Written here rather than imported: the reference scripts are command-line
programs (downloading, multiprocessing, fixed paths), not importable functions,
and they lose track of coordinates (the landmarks of the aligned image are
needed by the 3D face network). This implementation keeps the exact source ->
aligned affine map, so aligned landmarks come out without a second detection.
"""

from __future__ import annotations

import csv
import enum
import functools
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from megafr.errors import InputError, MissingFileError, NoFaceError
from megafr.face3d.landmarks import LEFT_EYE, N_LANDMARKS, RIGHT_EYE
from megafr.fileio import atomic_write, write_json
from megafr.imageio import (
    KIND_BAD_SIZE,
    KIND_UNSUPPORTED,
    MAX_SIDE,
    MIN_SIDE,
    ImageFileError,
    check_image_array,
    load_image,
    save_image,
)

# ---------------------------------------------------------------- FFHQ constants (download_ffhq.py)
# Mouth corners in the iBUG-68 order (first and seventh outer-lip points).
MOUTH_LEFT_CORNER = 48
MOUTH_RIGHT_CORNER = 54
# The half-side of the crop square is max(EYE_DISTANCE_SCALE * |eye_to_eye|,
# EYE_TO_MOUTH_SCALE * |eye_to_mouth|).
EYE_DISTANCE_SCALE = 2.0
EYE_TO_MOUTH_SCALE = 1.8
# The crop centre is moved from the eye midpoint towards the mouth by this fraction of eye_to_mouth.
CENTER_SHIFT_TO_MOUTH = 0.1
# The photo is downscaled by floor(side / output_size * SHRINK_FACTOR) when that is at least MIN_SHRINK.
SHRINK_FACTOR = 0.5
MIN_SHRINK = 2
# Crop border, as a fraction of the square's side, at least MIN_BORDER pixels.
BORDER_FRACTION = 0.1
MIN_BORDER = 3
# Padding happens when the square needs more than (border - PAD_TRIGGER_SLACK) pixels outside the photo.
PAD_TRIGGER_SLACK = 4
# Reflection padding is at least this fraction of the side.
PAD_FRACTION = 0.3
# Sigma of the blur applied to the padding, as a fraction of the side.
PAD_BLUR_FRACTION = 0.02
# Gain of the padding mask for the blur blend (full blur from a third of the padding inwards).
PAD_BLUR_MASK_GAIN = 3.0
# FFHQ resamples at 4x the output size (4096 for 1024) before the antialiased resize.
TRANSFORM_SUPERSAMPLING = 4
# Largest crop square accepted, as a multiple of the photo's long side. A real face's square is under
# about 2x even for a photo cropped tight to the face (side = 4 x eye distance or 3.6 x eye-to-mouth);
# far larger squares come from landmarks that do not belong to the photo, and padding them would
# allocate gigabytes.
MAX_QUAD_TO_IMAGE = 8.0

# Derived eye geometry in the aligned image, as fractions of its side (module docstring).
FFHQ_EYE_MIDPOINT_MAX_RISE = CENTER_SHIFT_TO_MOUTH / (2.0 * EYE_TO_MOUTH_SCALE)  # = 1/36
FFHQ_EYE_MAX_HALF_DISTANCE = 1.0 / (4.0 * EYE_DISTANCE_SCALE)  # = 1/8

# ---------------------------------------------------------------- detection policy
# dlib's HOG detector finds faces down to 80 px; each 2x upsampling halves that at 4x the cost.
DEFAULT_UPSAMPLE_TIMES = 1
# Photos are downscaled to this long side for detection only (landmarks use full resolution):
# detection cost grows with the pixel count, and a face small in a 1024 px copy is too small anyway.
DEFAULT_DETECT_MAX_SIDE = 1024
# Smallest face (detector box side, source pixels) that is aligned; a policy default: smaller
# faces are upsampled several times over even for a 256 px output.
DEFAULT_MIN_FACE_SIZE = 64
# Smallest dlib detection score (SVM margin; 0 is dlib's own threshold) counted as a face.
# Measured on the bundled test photos (one upsampling): real faces scored 0.37 to 2.8, the
# mission patch on the astronaut's suit 0.12; at 0 such round badges count as second faces.
DEFAULT_MIN_DETECTION_SCORE = 0.25
MULTIPLE_POLICIES = ("error", "largest")

# Landmark table columns (aligned-image and source pixel coordinates, pixel centres at integers).
LANDMARK_COLUMNS = [f"lm{i:02d}_{axis}" for i in range(N_LANDMARKS) for axis in "xy"]
SOURCE_LANDMARK_COLUMNS = [f"src_lm{i:02d}_{axis}" for i in range(N_LANDMARKS) for axis in "xy"]
QUAD_COLUMNS = [f"quad{k}_{axis}" for k in range(4) for axis in "xy"]
BOX_COLUMNS = ["box_left", "box_top", "box_right", "box_bottom"]


class RejectReason(str, enum.Enum):
    """Why align_folder did not align a file (the ``reason`` column of rejects.csv)."""

    NO_FACE = "no_face"  # the detector found no face
    MULTIPLE_FACES = "multiple_faces"  # several faces and multiple="error"
    FACE_TOO_SMALL = "face_too_small"  # faces found, all smaller than min_face_size
    UNREADABLE = "unreadable"  # missing, not an image, corrupt or truncated file
    UNSUPPORTED = "unsupported"  # decodes, but mode, values or size are out of the accepted range
    DUPLICATE_NAME = "duplicate_name"  # another input with the same stem already wrote images/<stem>.png


class FaceRejectedError(NoFaceError):
    """No usable face in a photo; ``reason`` is a :class:`RejectReason`."""

    def __init__(self, message: str, reason: RejectReason = RejectReason.NO_FACE):
        super().__init__(message)
        self.reason = reason  # which policy rejected the photo


@dataclass(frozen=True)
class Detection:
    """One detected face, in source pixel coordinates."""

    box: tuple[int, int, int, int]  # left, top, right, bottom (dlib rectangle)
    score: float  # dlib detection score (SVM margin)
    landmarks: np.ndarray  # [68, 2] float64 (x, y), iBUG order

    @property
    def size(self) -> int:
        """Side of the detection box in pixels (the larger of width and height)."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass(frozen=True)
class AlignedFace:
    """An FFHQ-aligned face crop and where everything lies in it."""

    image: np.ndarray  # uint8 [S, S, 3]
    landmarks: np.ndarray  # [68, 2] aligned-image pixel coordinates (pixel centres at integers)
    quad: np.ndarray  # [4, 2] source coordinates of the crop square: top-left, bottom-left, bottom-right, top-right
    source_landmarks: np.ndarray  # [68, 2] source pixel coordinates
    box: tuple[int, int, int, int] | None = None  # detector box (left, top, right, bottom); None if landmarks were given
    score: float | None = None  # detector score; None if landmarks were given


# ---------------------------------------------------------------- geometry


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (N_LANDMARKS, 2) or not np.isfinite(points).all():
        raise InputError(f"landmarks must be a finite array [{N_LANDMARKS}, 2] (x, y) in iBUG order, "
                         f"got shape {list(points.shape)}; use FaceAligner.detect to get them")
    return points


def eye_and_mouth_vectors(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eye_avg, eye_to_eye, eye_to_mouth), each [2], from 68 landmarks (FFHQ step 2)."""
    points = _check_landmarks(landmarks)
    eye_left = points[list(RIGHT_EYE)].mean(axis=0)  # subject's right eye = image left
    eye_right = points[list(LEFT_EYE)].mean(axis=0)
    eye_avg = (eye_left + eye_right) / 2.0
    mouth_avg = (points[MOUTH_LEFT_CORNER] + points[MOUTH_RIGHT_CORNER]) / 2.0
    return eye_avg, eye_right - eye_left, mouth_avg - eye_avg


def _rot90(v: np.ndarray) -> np.ndarray:
    """Rotate a 2-vector by +90 degrees in image coordinates (y down): (x, y) -> (-y, x)."""
    return np.array([-v[1], v[0]])


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ crop square [4, 2] (top-left, bottom-left, bottom-right, top-right) in source pixels."""
    eye_avg, eye_to_eye, eye_to_mouth = eye_and_mouth_vectors(landmarks)
    direction = eye_to_eye - _rot90(eye_to_mouth)  # = eye_to_eye - flipud(eye_to_mouth) * [-1, 1]
    norm = float(np.hypot(*direction))
    if norm <= 0.0:
        raise InputError("landmarks are degenerate (eyes and mouth coincide); detect them again")
    half = max(float(np.hypot(*eye_to_eye)) * EYE_DISTANCE_SCALE, float(np.hypot(*eye_to_mouth)) * EYE_TO_MOUTH_SCALE)
    x = direction / norm * half
    y = _rot90(x)
    center = eye_avg + eye_to_mouth * CENTER_SHIFT_TO_MOUTH
    return np.stack([center - x - y, center - x + y, center + x + y, center + x - y])


def quad_side(quad: np.ndarray) -> float:
    """Side length of a crop square [4, 2] (FFHQ's ``qsize``)."""
    return float(np.hypot(*(quad[3] - quad[0])))


def points_to_aligned(points: np.ndarray, quad: np.ndarray, output_size: int) -> np.ndarray:
    """Map source pixel coordinates [N, 2] into the aligned image of side ``output_size`` -> [N, 2].

    Pillow's QUAD transform maps the output square bilinearly onto the quad; for a
    parallelogram that is affine, so the inverse is a 2x2 solve. Coordinates use
    pixel centres at integers on both sides (hence the half-pixel shifts).
    """
    points = np.asarray(points, dtype=np.float64)
    quad = np.asarray(quad, dtype=np.float64)
    across = quad[3] - quad[0]  # source vector of the output's x axis
    down = quad[1] - quad[0]  # source vector of the output's y axis
    basis = np.stack([across, down], axis=1)  # [2, 2]
    fractions = np.linalg.solve(basis, (points - quad[0]).T).T  # [N, 2] in [0, 1] inside the square
    return fractions * output_size - 0.5


def ffhq_eye_positions(landmarks: np.ndarray, output_size: int) -> np.ndarray:
    """Where FFHQ alignment puts the two eye centres, [2, 2] (image-left eye first), for these landmarks."""
    eye_avg, eye_to_eye, _ = eye_and_mouth_vectors(landmarks)
    eyes = np.stack([eye_avg - eye_to_eye / 2.0, eye_avg + eye_to_eye / 2.0])
    return points_to_aligned(eyes, ffhq_quad(landmarks), output_size)


def eye_centres(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres [2, 2] (image-left eye first) as means of the six eye landmarks each."""
    points = _check_landmarks(landmarks)
    return np.stack([points[list(RIGHT_EYE)].mean(axis=0), points[list(LEFT_EYE)].mean(axis=0)])


def warp_quad(img: np.ndarray, quad: np.ndarray, output_size: int, transform_size: int,
              enable_padding: bool = True) -> np.ndarray:
    """FFHQ steps 4-7: resample the square ``quad`` [4, 2] of ``img`` uint8 [H, W, 3] to uint8 [S, S, 3].

    The quad is tracked exactly through shrink (continuous-coordinate scaling),
    crop and pad (integer shifts), so the output is a resampling of the original
    square and :func:`points_to_aligned` is its exact coordinate map.
    """
    check_image_array(img)
    quad = np.asarray(quad, dtype=np.float64).copy()
    side = quad_side(quad)
    if not np.isfinite(quad).all() or side > MAX_QUAD_TO_IMAGE * max(img.shape[:2]):
        raise InputError(f"the face crop square is {side:.0f} px across, more than {MAX_QUAD_TO_IMAGE:g}x the photo's "
                         f"long side ({max(img.shape[:2])} px): the landmarks do not belong to this photo; detect them "
                         "again (FaceAligner.detect)")
    picture = Image.fromarray(np.ascontiguousarray(img))

    shrink = int(np.floor(side / output_size * SHRINK_FACTOR))
    if shrink >= MIN_SHRINK:
        width, height = picture.size
        new_size = (max(int(np.rint(width / shrink)), 1), max(int(np.rint(height / shrink)), 1))
        picture = picture.resize(new_size, Image.Resampling.LANCZOS)
        scale = np.array([new_size[0] / width, new_size[1] / height])
        quad = (quad + 0.5) * scale - 0.5
        side /= shrink

    border = max(int(np.rint(side * BORDER_FRACTION)), MIN_BORDER)
    low = np.floor(quad.min(axis=0)).astype(int)
    high = np.ceil(quad.max(axis=0)).astype(int)
    width, height = picture.size
    crop = (max(low[0] - border, 0), max(low[1] - border, 0), min(high[0] + border, width), min(high[1] + border, height))
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
        raise InputError("the face crop lies entirely outside the image; check the landmarks' coordinates")
    if crop[2] - crop[0] < width or crop[3] - crop[1] < height:
        picture = picture.crop(crop)
        quad -= crop[:2]

    width, height = picture.size
    low = np.floor(quad.min(axis=0)).astype(int)
    high = np.ceil(quad.max(axis=0)).astype(int)
    pad = np.array([max(-low[0] + border, 0), max(-low[1] + border, 0),
                    max(high[0] - width + border, 0), max(high[1] - height + border, 0)])
    if enable_padding and pad.max() > border - PAD_TRIGGER_SLACK:
        pad = np.maximum(pad, max(int(np.rint(side * PAD_FRACTION)), 1))
        padded = np.pad(np.asarray(picture, dtype=np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)),
                        mode="reflect")  # [H + pad_top + pad_bottom, W + pad_left + pad_right, 3]
        rows, cols = padded.shape[:2]
        ys, xs = np.ogrid[:rows, :cols]
        xs = xs.astype(np.float32)
        ys = ys.astype(np.float32)
        # 1 at the outer edge of the padding, 0 where the photo starts, negative inside the photo.
        mask = np.maximum(1.0 - np.minimum(xs / pad[0], (cols - 1 - xs) / pad[2]),
                          1.0 - np.minimum(ys / pad[1], (rows - 1 - ys) / pad[3]))[:, :, None]
        sigma = side * PAD_BLUR_FRACTION
        blurred = gaussian_filter(padded, [sigma, sigma, 0])
        padded += (blurred - padded) * np.clip(mask * PAD_BLUR_MASK_GAIN + 1.0, 0.0, 1.0)
        padded += (np.median(padded, axis=(0, 1)) - padded) * np.clip(mask, 0.0, 1.0)
        picture = Image.fromarray(np.clip(np.rint(padded), 0, 255).astype(np.uint8))
        quad += pad[:2]

    corners = tuple(float(v) for v in (quad + 0.5).flatten())  # Pillow: pixel centres at +0.5
    picture = picture.transform((transform_size, transform_size), Image.Transform.QUAD, corners,
                                Image.Resampling.BILINEAR)
    if output_size < transform_size:
        picture = picture.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return np.asarray(picture, dtype=np.uint8).copy()  # [S, S, 3]


# ---------------------------------------------------------------- dlib models


def shape_predictor_path() -> Path:
    """Path of dlib's 68-landmark model as shipped by the ``face-recognition-models`` package.

    Found without importing that package (its ``__init__`` needs ``pkg_resources``,
    which recent setuptools no longer ship).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    fix = "install it with `pip install face-recognition-models` (it ships shape_predictor_68_face_landmarks.dat)"
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(f"the face-recognition-models package is not installed; {fix}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise MissingFileError(f"{path} is missing; re-install the package: {fix}")
    return path


def _import_dlib():
    try:
        import dlib
    except ImportError as error:
        raise MissingFileError("dlib is not installed; install the prebuilt wheel with `pip install dlib-bin`") from error
    return dlib


@functools.lru_cache(maxsize=1)
def _frontal_detector():
    return _import_dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=4)
def _shape_predictor(path: str):
    try:
        return _import_dlib().shape_predictor(path)
    except RuntimeError as error:
        raise MissingFileError(f"cannot load dlib shape predictor {path} ({error}); re-install "
                               f"face-recognition-models or pass a valid predictor_path") from error


# ---------------------------------------------------------------- the aligner


class FaceAligner:
    """Detect exactly one face with dlib and crop it the FFHQ way.

    Policy for photos that do not hold exactly one usable face (all raise
    :class:`FaceRejectedError`, a :class:`~megafr.errors.NoFaceError`):
    detections scoring below ``min_detection_score`` are not faces; if none are
    left -> ``no_face``; detections smaller than ``min_face_size`` are ignored, and
    if that leaves none -> ``face_too_small``; more than one left ->
    ``multiple_faces`` with ``multiple="error"`` (the default), or the largest box
    with ``multiple="largest"``.
    """

    def __init__(self, output_size: int,
                 transform_size: int | None = None,  # resampling size before the final resize; None: 4 x output
                 min_face_size: int = DEFAULT_MIN_FACE_SIZE,  # smallest detector box side (source px) to align
                 upsample_times: int = DEFAULT_UPSAMPLE_TIMES,  # dlib upsamplings: finds smaller faces, 4x cost each
                 multiple: str = "error",  # several faces: "error" or "largest"
                 min_detection_score: float = DEFAULT_MIN_DETECTION_SCORE,  # dlib score below which a box is no face
                 detect_max_side: int = DEFAULT_DETECT_MAX_SIDE,  # long side of the copy that detection runs on
                 enable_padding: bool = True,  # FFHQ's reflect-blur padding where the crop leaves the photo
                 predictor_path: str | os.PathLike | None = None):  # 68-landmark model; None: face-recognition-models'
        for name, value in (("output_size", output_size), ("min_face_size", min_face_size),
                            ("detect_max_side", detect_max_side)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InputError(f"FaceAligner {name} must be a positive integer, got {value!r}")
        transform_size = TRANSFORM_SUPERSAMPLING * output_size if transform_size is None else transform_size
        if not isinstance(transform_size, (int, np.integer)) or transform_size < output_size:
            raise InputError(f"FaceAligner transform_size must be an integer >= output_size={output_size}, "
                             f"got {transform_size!r}; leave it None for {TRANSFORM_SUPERSAMPLING} x output_size")
        if not isinstance(upsample_times, (int, np.integer)) or not 0 <= upsample_times <= 3:
            raise InputError(f"FaceAligner upsample_times must be 0..3, got {upsample_times!r}")
        if multiple not in MULTIPLE_POLICIES:
            raise InputError(f"FaceAligner multiple must be one of {MULTIPLE_POLICIES}, got {multiple!r}")
        self.output_size = int(output_size)
        self.transform_size = int(transform_size)
        self.min_face_size = int(min_face_size)
        self.upsample_times = int(upsample_times)
        self.multiple = multiple
        self.min_detection_score = float(min_detection_score)
        self.detect_max_side = int(detect_max_side)
        self.enable_padding = bool(enable_padding)
        self.predictor_path = Path(predictor_path) if predictor_path is not None else shape_predictor_path()
        if not self.predictor_path.is_file():
            raise MissingFileError(f"shape predictor {self.predictor_path} not found; pass the path of "
                                   f"shape_predictor_68_face_landmarks.dat or install face-recognition-models")
        self._detector = _frontal_detector()
        self._predictor = _shape_predictor(str(self.predictor_path))

    def _prepare(self, img: np.ndarray | str | os.PathLike, source: str | None) -> tuple[np.ndarray, str]:
        if isinstance(img, (str, os.PathLike)):
            return load_image(img), source or str(img)
        img = check_image_array(img)
        height, width = img.shape[:2]
        if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE:
            raise InputError(f"image {source or '<array>'} is {width}x{height} pixels; sides must be "
                             f"{MIN_SIDE}..{MAX_SIDE} px: use a larger photo or downscale it")
        return np.ascontiguousarray(img), source or "<array>"

    def detect_faces(self, img: np.ndarray | str | os.PathLike) -> list[Detection]:
        """All faces scoring at least min_detection_score, largest box first, with 68 landmarks each."""
        img, _ = self._prepare(img, None)
        height, width = img.shape[:2]
        scale = min(1.0, self.detect_max_side / max(height, width))
        small = img
        if scale < 1.0:
            small_size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
            small = np.asarray(Image.fromarray(img).resize(small_size, Image.Resampling.BILINEAR, reducing_gap=2.0))
        boxes, scores, _ = self._detector.run(small, self.upsample_times, self.min_detection_score)
        dlib = _import_dlib()
        found = []
        for box, score in zip(boxes, scores):
            if score < self.min_detection_score:
                continue
            full = tuple(int(round(v / scale)) for v in (box.left(), box.top(), box.right(), box.bottom()))
            shape = self._predictor(img, dlib.rectangle(*full))
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
            found.append(Detection(box=full, score=float(score), landmarks=points))  # landmarks [68, 2]
        found.sort(key=lambda d: (-(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]), -d.score))
        return found

    def detect(self, img: np.ndarray | str | os.PathLike) -> list[np.ndarray]:
        """Landmarks [68, 2] (x, y source pixels) of every face found, largest first."""
        return [d.landmarks for d in self.detect_faces(img)]

    def select_face(self, detections: Sequence[Detection], source: str) -> Detection:
        """Apply the one-face policy (class docstring) to detections, or raise FaceRejectedError."""
        if not detections:
            raise FaceRejectedError(f"no face found in {source}; use a photo with one visible frontal-ish face",
                                    RejectReason.NO_FACE)
        large = [d for d in detections if d.size >= self.min_face_size]
        if not large:
            biggest = max(d.size for d in detections)
            raise FaceRejectedError(
                f"the face found in {source} is {biggest} px wide, below min_face_size={self.min_face_size} px; "
                f"use a higher-resolution photo or a closer crop (or lower min_face_size)", RejectReason.FACE_TOO_SMALL)
        if len(large) > 1 and self.multiple == "error":
            raise FaceRejectedError(
                f"{len(large)} faces found in {source}; crop the photo to one face, or use multiple='largest' "
                f"to align the largest", RejectReason.MULTIPLE_FACES)
        return max(large, key=lambda d: (d.size, d.score))

    def align_landmarks(self, img: np.ndarray | str | os.PathLike, landmarks: np.ndarray,
                        source: str | None = None) -> AlignedFace:
        """Align by given source landmarks [68, 2] (no detection): FFHQ steps 3-7."""
        img, source = self._prepare(img, source)
        points = _check_landmarks(landmarks)
        quad = ffhq_quad(points)
        if quad_side(quad) < 1.0:
            raise FaceRejectedError(f"the face in {source} is under one pixel across; use a larger photo",
                                    RejectReason.FACE_TOO_SMALL)
        image = warp_quad(img, quad, self.output_size, self.transform_size, self.enable_padding)
        return AlignedFace(image=image, landmarks=points_to_aligned(points, quad, self.output_size),
                           quad=quad, source_landmarks=points)

    def align(self, img: np.ndarray | str | os.PathLike, source: str | None = None) -> AlignedFace:
        """Detect exactly one face in ``img`` (uint8 [H, W, 3] or a path) and return it FFHQ-aligned."""
        img, source = self._prepare(img, source)
        face = self.select_face(self.detect_faces(img), source)
        aligned = self.align_landmarks(img, face.landmarks, source)
        return AlignedFace(image=aligned.image, landmarks=aligned.landmarks, quad=aligned.quad,
                           source_landmarks=aligned.source_landmarks, box=face.box, score=face.score)


# ---------------------------------------------------------------- folders


@dataclass(frozen=True)
class Reject:
    """One input file that was not aligned."""

    file: str  # file name inside the input folder
    reason: RejectReason
    message: str  # the error's message: names the problem and the fix


@dataclass(frozen=True)
class AlignReport:
    """What align_folder did."""

    out_dir: Path
    aligned: tuple[str, ...]  # input file names written to images/<stem>.png, sorted
    rejects: tuple[Reject, ...]  # input files not aligned, sorted
    skipped: tuple[str, ...] = field(default=())  # hidden files and sub-folders, not looked at

    def summary(self) -> dict[str, int]:
        """Numbers of files per outcome (numeric leaves, for DVC metrics): aligned, skipped,
        rejected, and ``rejected_<reason>`` for every :class:`RejectReason`."""
        counts = {"aligned": len(self.aligned), "skipped": len(self.skipped), "rejected": len(self.rejects)}
        for reason in RejectReason:
            counts[f"rejected_{reason.value}"] = sum(r.reason == reason for r in self.rejects)
        return counts


def _reason_for(error: InputError) -> RejectReason:
    if isinstance(error, FaceRejectedError):
        return error.reason
    if isinstance(error, ImageFileError):
        return RejectReason.UNSUPPORTED if error.kind in (KIND_UNSUPPORTED, KIND_BAD_SIZE) else RejectReason.UNREADABLE
    if isinstance(error, NoFaceError):
        return RejectReason.NO_FACE
    return RejectReason.UNSUPPORTED


def _landmark_row(name: str, face: AlignedFace, source_shape: tuple[int, ...]) -> dict:
    row = {"file": name, "image": f"images/{Path(name).stem}.png",
           "source_width": int(source_shape[1]), "source_height": int(source_shape[0]),
           "score": float("nan") if face.score is None else face.score}
    box = face.box if face.box is not None else (-1, -1, -1, -1)
    row.update(zip(BOX_COLUMNS, (int(v) for v in box)))
    row.update(zip(QUAD_COLUMNS, face.quad.flatten().tolist()))
    row.update(zip(LANDMARK_COLUMNS, face.landmarks.flatten().tolist()))
    row.update(zip(SOURCE_LANDMARK_COLUMNS, face.source_landmarks.flatten().tolist()))
    return row


def _write_landmark_table(path: Path, rows: list[dict]) -> None:
    columns = ["file", "image", "source_width", "source_height", "score", *BOX_COLUMNS, *QUAD_COLUMNS,
               *LANDMARK_COLUMNS, *SOURCE_LANDMARK_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    table = table.astype({"file": "string", "image": "string", "source_width": "int64", "source_height": "int64",
                          **{c: "int64" for c in BOX_COLUMNS},
                          **{c: "float64" for c in ["score", *QUAD_COLUMNS, *LANDMARK_COLUMNS,
                                                    *SOURCE_LANDMARK_COLUMNS]}})
    with atomic_write(path) as handle:
        table.to_parquet(handle, index=False)


def _write_rejects(path: Path, rejects: Sequence[Reject]) -> None:
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "reason", "message"])
        for reject in rejects:
            writer.writerow([reject.file, reject.reason.value, reject.message])


def read_landmark_table(path: str | os.PathLike) -> tuple[pd.DataFrame, np.ndarray]:
    """Read landmarks.parquet -> (the table, aligned landmarks [N, 68, 2])."""
    table = pd.read_parquet(path)
    points = table[LANDMARK_COLUMNS].to_numpy(dtype=np.float64).reshape(len(table), N_LANDMARKS, 2)
    return table, points


def _align_file(aligner: FaceAligner, path: Path, image_dir: Path) -> tuple[dict | None, Reject | None]:
    """Align one photo and write ``images/<stem>.png`` -> (its landmarks row, None) or (None, why not)."""
    try:
        img = load_image(path)
        face = aligner.align(img, source=str(path))
    except InputError as error:
        return None, Reject(path.name, _reason_for(error), str(error))
    save_image(image_dir / f"{path.stem}.png", face.image)
    return _landmark_row(path.name, face, img.shape), None


def _previous_rows(out_dir: Path) -> dict[str, dict]:
    """Rows of an earlier run's landmarks.parquet whose image is still there (what ``resume`` keeps)."""
    table_path = out_dir / "landmarks.parquet"
    if not table_path.is_file():
        return {}
    table = pd.read_parquet(table_path)
    return {row["file"]: row for row in table.to_dict("records") if (out_dir / row["image"]).is_file()}


def _previous_rejects(out_dir: Path) -> dict[str, Reject]:
    """The rejects of an earlier run (rejects.csv), which ``resume`` does not try again."""
    path = out_dir / "rejects.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["file"]: Reject(row["file"], RejectReason(row["reason"]), row["message"])
                for row in csv.DictReader(handle)}


def align_folder(in_dir: str | os.PathLike, out_dir: str | os.PathLike, output_size: int, *,
                 aligner: FaceAligner | None = None, progress: bool = True, workers: int = 1,
                 resume: bool = False) -> AlignReport:
    """Align every file in ``in_dir`` (not recursive, sorted by name) into ``out_dir``.

    Writes ``images/<stem>.png`` per aligned face, ``landmarks.parquet`` (one row
    per aligned file: source size, detector box and score, quad, aligned and source
    landmarks; read it with :func:`read_landmark_table`), ``rejects.csv`` (file,
    reason, message; reasons are :class:`RejectReason` values) and ``summary.json``
    (output size and :meth:`AlignReport.summary`). Every file either is aligned or appears in rejects.csv; hidden files
    (name starting with ".") and sub-folders are skipped and listed in the report; a folder with no
    other file is refused (InputError) before anything is written.
    PNGs in ``images/`` left from an earlier run and not written by this one are
    removed, so the folder always matches the table. ``aligner`` defaults to
    ``FaceAligner(output_size)``; pass one to change the policy.

    ``workers`` > 1 aligns in that many processes (each with a copy of the aligner; about 1 s per
    photo each), with the same outputs in the same order as one process. ``resume`` keeps the
    photos an earlier run aligned into ``out_dir`` (their row in landmarks.parquet and their PNG)
    and the ones it rejected (rejects.csv) instead of trying them again, so an interrupted run
    continues where it stopped.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise InputError(f"input folder {in_dir} not found; pass the folder that holds the photos")
    if aligner is None:
        aligner = FaceAligner(output_size)
    elif aligner.output_size != output_size:
        raise InputError(f"align_folder output_size={output_size} differs from the aligner's "
                         f"{aligner.output_size}; pass the same size")
    if out_dir.resolve() == in_dir.resolve():
        raise InputError(f"output folder {out_dir} is the input folder; choose another")
    entries = sorted(in_dir.iterdir(), key=lambda p: p.name)
    skipped = tuple(p.name for p in entries if p.name.startswith(".") or not p.is_file())
    files = [p for p in entries if not p.name.startswith(".") and p.is_file()]
    if not files:
        raise InputError(f"input folder {in_dir} holds no files to align (sub-folders and hidden files are not "
                         "read); put the photos directly in it")
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    aligned: list[str] = []
    rejects: list[Reject] = []
    rows: list[dict] = []
    written: set[str] = set()
    previous = _previous_rows(out_dir) if resume else {}
    refused = _previous_rejects(out_dir) if resume else {}
    stems: set[str] = set()
    outcome: dict[str, tuple[dict | None, Reject | None]] = {}
    todo = []
    for path in files:  # duplicates and resumed photos are settled here; the rest is aligned below
        if path.stem in stems:
            outcome[path.name] = (None, Reject(path.name, RejectReason.DUPLICATE_NAME,
                                               f"{path.name} would overwrite images/{path.stem}.png, written from "
                                               f"another file with the same stem; rename one of them"))
        elif path.name in previous:
            outcome[path.name] = (previous[path.name], None)
        elif path.name in refused and refused[path.name].reason != RejectReason.DUPLICATE_NAME:
            outcome[path.name] = (None, refused[path.name])
        else:
            todo.append(path)
        stems.add(path.stem)
    bar = tqdm(total=len(files), initial=len(files) - len(todo), desc="align", unit="img", disable=not progress)
    if workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        from megafr.distributed import exit_with_parent  # a killed prepare leaves no aligner running

        with ProcessPoolExecutor(workers, initializer=exit_with_parent) as pool:
            results = pool.map(_align_file, [aligner] * len(todo), todo, [image_dir] * len(todo), chunksize=4)
            for path, result in zip(todo, results):
                outcome[path.name] = result
                bar.update()
    else:
        for path in todo:
            outcome[path.name] = _align_file(aligner, path, image_dir)
            bar.update()
    bar.close()
    for path in files:  # in name order, whichever process aligned them
        row, reject = outcome[path.name]
        if reject is not None:
            rejects.append(reject)
            continue
        written.add(f"{path.stem}.png")
        aligned.append(path.name)
        rows.append(row)

    for stale in image_dir.glob("*.png"):
        if stale.name not in written:
            stale.unlink()
    _write_landmark_table(out_dir / "landmarks.parquet", rows)
    _write_rejects(out_dir / "rejects.csv", rejects)
    report = AlignReport(out_dir=out_dir, aligned=tuple(aligned), rejects=tuple(rejects), skipped=skipped)
    write_json(out_dir / "summary.json", {"output_size": output_size, **report.summary()})
    return report
