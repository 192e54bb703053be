"""megafr.datasets.align: FFHQ geometry, exact coordinate maps, and alignment of real photos.

Real photos come from installed packages: scikit-image's astronaut (one face) and,
when insightface is installed, its bundled samples (t1.jpg: a group photo;
Tom_Hanks_54745.png: one tightly cropped face).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut

from megafr.datasets.align import (
    FFHQ_EYE_MAX_HALF_DISTANCE,
    FFHQ_EYE_MIDPOINT_MAX_RISE,
    LANDMARK_COLUMNS,
    QUAD_COLUMNS,
    SOURCE_LANDMARK_COLUMNS,
    FaceAligner,
    FaceRejectedError,
    RejectReason,
    align_folder,
    eye_centres,
    ffhq_eye_positions,
    ffhq_quad,
    points_to_aligned,
    quad_side,
    read_landmark_table,
    warp_quad,
)
from megafr.errors import InputError, NoFaceError
from megafr.face3d.landmarks import LEFT_EYE, RIGHT_EYE
from megafr.imageio import load_image

SIZE = 256  # output side used for real photos (transform 1024): big enough for dlib to re-detect
EYE_TOLERANCE = 0.03  # re-detected eye centres must lie within 3 % of the side of the predicted spots
LANDMARK_TOLERANCE = 0.03  # mean distance of re-detected to mapped landmarks, as a fraction of the side


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner(SIZE)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return astronaut()  # uint8 [512, 512, 3], one face


def _insightface_images() -> Path:
    pytest.importorskip("insightface")
    import importlib.util

    folder = Path(importlib.util.find_spec("insightface").submodule_search_locations[0]) / "data" / "images"
    if not folder.is_dir():
        pytest.skip("insightface is installed without its sample images")
    return folder


# ---------------------------------------------------------------- geometry on synthetic landmarks


def _synthetic_landmarks(eye_distance: float, mouth_drop: float, center=(300.0, 200.0), angle: float = 0.0):
    """68 landmarks of an upright symmetric face: eyes +-eye_distance/2 from the centre, mouth corners below.

    Only the points FFHQ uses matter (eyes 36-47, mouth corners 48/54); the rest sit at the centre.
    """
    points = np.zeros((68, 2))
    ring = np.array([[-6, 0], [-3, -2], [3, -2], [6, 0], [3, 2], [-3, 2]], dtype=float)  # mean (0, 0)
    points[list(RIGHT_EYE)] = ring + [-eye_distance / 2, 0]
    points[list(LEFT_EYE)] = ring + [eye_distance / 2, 0]
    points[48] = [-20, mouth_drop]
    points[54] = [20, mouth_drop]
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rotation.T + np.asarray(center)


def test_eyes_land_at_the_derived_fractions_when_eye_distance_sets_the_size():
    size = 1024
    points = _synthetic_landmarks(eye_distance=100.0, mouth_drop=80.0)  # 2 * 100 > 1.8 * 80
    quad = ffhq_quad(points)
    assert quad_side(quad) == pytest.approx(2 * 2.0 * 100.0)
    eyes = ffhq_eye_positions(points, size) + 0.5  # continuous coordinates (pixel edges at integers)
    np.testing.assert_allclose(eyes[:, 0], [size * (0.5 - FFHQ_EYE_MAX_HALF_DISTANCE),
                                            size * (0.5 + FFHQ_EYE_MAX_HALF_DISTANCE)], atol=1e-9)
    rise = 0.1 * 80.0 / quad_side(quad)
    np.testing.assert_allclose(eyes[:, 1], size * (0.5 - rise), atol=1e-9)
    assert rise < FFHQ_EYE_MIDPOINT_MAX_RISE


def test_eyes_land_at_the_derived_fractions_when_eye_to_mouth_sets_the_size():
    size = 1024
    points = _synthetic_landmarks(eye_distance=60.0, mouth_drop=100.0)  # 1.8 * 100 > 2 * 60
    assert quad_side(ffhq_quad(points)) == pytest.approx(2 * 1.8 * 100.0)
    eyes = ffhq_eye_positions(points, size) + 0.5
    np.testing.assert_allclose(eyes[:, 1], size * (0.5 - FFHQ_EYE_MIDPOINT_MAX_RISE), atol=1e-9)
    assert FFHQ_EYE_MIDPOINT_MAX_RISE == pytest.approx(1 / 36)
    half_distance = 30.0 / (2 * 1.8 * 100.0)
    np.testing.assert_allclose(eyes[:, 0], size * (0.5 + np.array([-half_distance, half_distance])), atol=1e-9)


@pytest.mark.parametrize("angle", [0.3, -0.7, 2.0])
def test_alignment_undoes_rotation_translation_and_scale(angle):
    upright = _synthetic_landmarks(80.0, 90.0)
    moved = _synthetic_landmarks(80.0 * 2.5, 90.0 * 2.5, center=(900.0, 40.0), angle=angle)
    np.testing.assert_allclose(ffhq_eye_positions(moved, 512), ffhq_eye_positions(upright, 512), atol=1e-7)
    np.testing.assert_allclose(points_to_aligned(ffhq_quad(moved), ffhq_quad(moved), 512) + 0.5,
                               [[0, 0], [0, 512], [512, 512], [512, 0]], atol=1e-7)


def test_identity_quad_reproduces_the_image_exactly():
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    n = img.shape[0]
    quad = np.array([[0, 0], [0, n], [n, n], [n, 0]], dtype=float) - 0.5  # pixel centres at integers
    np.testing.assert_array_equal(warp_quad(img, quad, n, n, enable_padding=False), img)


def _dot_image(height: int, width: int, dots: np.ndarray, radius: int) -> np.ndarray:
    img = np.full((height, width, 3), 90, dtype=np.uint8)
    ys, xs = np.mgrid[:height, :width]
    for x, y in dots:
        img[(xs - x) ** 2 + (ys - y) ** 2 <= radius ** 2] = [255, 255, 255]
    return img


def _dot_centroids(img: np.ndarray, near: np.ndarray, window: int) -> np.ndarray:
    found = []
    for x, y in near:
        x0, y0 = int(round(x)) - window, int(round(y)) - window
        patch = img[max(y0, 0): y0 + 2 * window + 1, max(x0, 0): x0 + 2 * window + 1, 0].astype(float)
        weight = np.clip(patch - 150.0, 0, None)  # the bright dot over the grey background
        ys, xs = np.mgrid[: patch.shape[0], : patch.shape[1]]
        found.append([(xs * weight).sum() / weight.sum() + max(x0, 0), (ys * weight).sum() / weight.sum() + max(y0, 0)])
    return np.array(found)


@pytest.mark.parametrize("case", ["shrink", "pad", "rotated"])
def test_warp_and_points_to_aligned_agree(case):
    """Dots drawn at source points appear in the output exactly where points_to_aligned puts them."""
    size = 64
    if case == "shrink":  # square of 4.5x the output: the photo is downscaled by 2 first
        points, shape, radius = _synthetic_landmarks(72.0, 60.0, center=(200.0, 180.0)), (400, 420), 9
    elif case == "pad":  # face at the top-left corner: the square leaves the photo and is padded
        points, shape, radius = _synthetic_landmarks(30.0, 28.0, center=(30.0, 26.0)), (120, 150), 3
    else:
        points, shape, radius = _synthetic_landmarks(40.0, 40.0, center=(110.0, 100.0), angle=0.5), (220, 220), 4
    eyes = eye_centres(points)
    dots = np.vstack([eyes, (points[48] + points[54]) / 2])  # eye centres and mouth centre
    img = _dot_image(*shape, dots, radius)
    quad = ffhq_quad(points)
    out = warp_quad(img, quad, size, 4 * size, enable_padding=True)
    assert out.shape == (size, size, 3)
    expected = points_to_aligned(dots, quad, size)
    found = _dot_centroids(out, expected, window=5)
    np.testing.assert_allclose(found, expected, atol=0.35)


# ---------------------------------------------------------------- real photos


def _check_eyes_land(aligner: FaceAligner, face, size: int) -> None:
    """Re-detect the aligned output: eyes where the FFHQ geometry puts them, landmarks where they were mapped."""
    assert face.image.shape == (size, size, 3) and face.image.dtype == np.uint8
    predicted = ffhq_eye_positions(face.source_landmarks, size)
    np.testing.assert_allclose(eye_centres(face.landmarks), predicted, atol=1e-6)  # mapping == geometry
    midpoint = predicted.mean(axis=0) + 0.5
    assert size * (0.5 - FFHQ_EYE_MIDPOINT_MAX_RISE) - 1e-6 <= midpoint[1] <= size * 0.5
    assert abs(predicted[1, 0] - predicted[0, 0]) <= 2 * FFHQ_EYE_MAX_HALF_DISTANCE * size + 1e-6
    redetected = aligner.detect(face.image)
    assert len(redetected) >= 1, "no face found again in the aligned crop"
    again = redetected[0]
    assert np.abs(eye_centres(again) - predicted).max() <= EYE_TOLERANCE * size
    assert np.linalg.norm(again - face.landmarks, axis=1).mean() <= LANDMARK_TOLERANCE * size


def test_astronaut_is_aligned_with_eyes_where_ffhq_puts_them(aligner, photo):
    face = aligner.align(photo, source="astronaut")
    assert face.source_landmarks.shape == (68, 2) and face.landmarks.shape == (68, 2)
    assert face.box is not None and face.score >= aligner.min_detection_score
    left, top, right, bottom = face.box
    inside = (face.source_landmarks[:, 0] >= left - 20) & (face.source_landmarks[:, 0] <= right + 20)
    assert inside.mean() > 0.9  # the landmarks belong to the detected box
    _check_eyes_land(aligner, face, SIZE)


def test_output_sizes_and_transform_size(photo):
    small = FaceAligner(64, transform_size=64)
    assert small.align(photo).image.shape == (64, 64, 3)
    with pytest.raises(InputError, match="transform_size"):
        FaceAligner(128, transform_size=64)
    with pytest.raises(InputError, match="multiple"):
        FaceAligner(128, multiple="all")


def test_blank_and_noise_images_have_no_face(aligner):
    with pytest.raises(NoFaceError, match=r"no face found in blank\.png; use a photo with one visible") as info:
        aligner.align(np.full((200, 300, 3), 127, np.uint8), source="blank.png")
    assert info.value.reason == RejectReason.NO_FACE
    with pytest.raises(NoFaceError):
        aligner.align(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))


def test_corrupt_and_wrong_inputs_raise_input_error(aligner, tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="corrupt.jpg"):
        aligner.align(bad)
    with pytest.raises(InputError, match="uint8"):
        aligner.align(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(InputError, match="sides must be"):
        aligner.align(np.zeros((8, 64, 3), np.uint8))
    with pytest.raises(InputError, match="68, 2"):
        aligner.align_landmarks(np.zeros((64, 64, 3), np.uint8), np.zeros((5, 2)))


def test_face_smaller_than_minimum_is_rejected_with_reason(photo):
    strict = FaceAligner(SIZE, min_face_size=200)  # the astronaut's face box is ~90 px
    with pytest.raises(FaceRejectedError, match=r"below min_face_size=200") as info:
        strict.align(photo, source="astronaut")
    assert info.value.reason == RejectReason.FACE_TOO_SMALL


def test_two_faces_error_or_largest(aligner, photo):
    pair = np.ascontiguousarray(np.concatenate([photo, np.zeros_like(photo)], axis=1))
    pair[128:128 + 384, 512:512 + 384] = np.asarray(Image.fromarray(photo).resize((384, 384)))
    with pytest.raises(FaceRejectedError, match=r"2 faces found in pair") as info:
        aligner.align(pair, source="pair")
    assert info.value.reason == RejectReason.MULTIPLE_FACES
    largest = FaceAligner(SIZE, multiple="largest").align(pair)
    assert largest.box[2] <= 512  # the full-size face on the left, not the 3/4-size copy
    np.testing.assert_allclose(largest.source_landmarks, aligner.align(photo).source_landmarks, atol=3)


def _converted_copies(photo: np.ndarray, folder: Path) -> dict[str, Path]:
    grey = np.asarray(Image.fromarray(photo).convert("L"))
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:, :40, 3] = 0  # a transparent strip far from the face
    paths = {
        "grey": folder / "grey.png",
        "rgba": folder / "rgba.png",
        "16bit": folder / "sixteen.png",
        "palette": folder / "palette.png",
        "cmyk": folder / "cmyk.jpg",
    }
    Image.fromarray(grey).save(paths["grey"])
    Image.fromarray(rgba, "RGBA").save(paths["rgba"])
    Image.fromarray(grey.astype(np.uint16) * 257).save(paths["16bit"])
    Image.fromarray(photo).quantize(256).save(paths["palette"])
    Image.fromarray(photo).convert("CMYK").save(paths["cmyk"], quality=95)
    return paths


def test_converted_modes_still_align(aligner, photo, tmp_path):
    reference = aligner.align(photo).source_landmarks
    for kind, path in _converted_copies(photo, tmp_path).items():
        assert load_image(path).shape == photo.shape
        face = aligner.align(path)
        shift = np.linalg.norm(face.source_landmarks - reference, axis=1).mean()
        assert shift < 3.0, f"{kind}: landmarks moved by {shift:.1f} px"
        assert face.image.shape == (SIZE, SIZE, 3)


def test_insightface_group_photo_policy(aligner):
    group = _insightface_images() / "t1.jpg"
    with pytest.raises(FaceRejectedError) as info:
        aligner.align(group)
    assert info.value.reason == RejectReason.MULTIPLE_FACES
    count = int(re.search(r"(\d+) faces found", str(info.value)).group(1))
    assert count >= 2 and "t1.jpg" in str(info.value)
    assert len(aligner.detect(group)) == count
    face = FaceAligner(SIZE, multiple="largest").align(group)
    _check_eyes_land(aligner, face, SIZE)


def test_insightface_tight_crop_is_padded_and_aligned(aligner):
    face = aligner.align(_insightface_images() / "Tom_Hanks_54745.png")  # 112 px, face fills the frame
    assert quad_side(face.quad) > 112  # the FFHQ square is larger than the photo: padding was needed
    _check_eyes_land(aligner, face, SIZE)


# ---------------------------------------------------------------- folders


def _reasons(out_dir: Path) -> dict[str, str]:
    with open(out_dir / "rejects.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(row["message"] for row in rows)
    return {row["file"]: row["reason"] for row in rows}


def test_align_folder_writes_images_table_and_rejects(aligner, photo, tmp_path):
    src, out = tmp_path / "photos", tmp_path / "aligned"
    src.mkdir()
    Image.fromarray(photo).save(src / "a_astronaut.png")
    Image.fromarray(photo).save(src / "a_astronaut.tiff")  # same stem, sorted after .png: would overwrite
    _converted_copies(photo, tmp_path)["grey"].rename(src / "b_grey.png")
    Image.new("RGB", (200, 200), (127, 127, 127)).save(src / "c_blank.png")
    (src / "d_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    Image.new("RGB", (8, 8)).save(src / "e_tiny.png")
    pair = np.ascontiguousarray(np.concatenate([photo, photo], axis=1))
    Image.fromarray(pair).save(src / "f_pair.png")
    Image.fromarray(np.full((64, 64), np.nan, np.float32)).save(src / "g_nan.tiff")
    Image.fromarray(np.asarray(Image.fromarray(photo).resize((256, 256)))).save(src / "h_small_face.png")  # face box ~44 px
    (src / "notes.txt").write_text("not an image")
    (src / ".hidden.png").write_bytes(b"")
    (src / "sub").mkdir()
    (out / "images").mkdir(parents=True)
    (out / "images" / "stale.png").write_bytes(b"left over from an earlier run")

    report = align_folder(src, out, SIZE, aligner=aligner, progress=False)

    assert report.aligned == ("a_astronaut.png", "b_grey.png")
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a_astronaut.png", "b_grey.png"]
    assert load_image(out / "images" / "a_astronaut.png").shape == (SIZE, SIZE, 3)
    assert set(report.skipped) == {".hidden.png", "sub"}
    assert _reasons(out) == {
        "a_astronaut.tiff": "duplicate_name",
        "c_blank.png": "no_face",
        "d_corrupt.jpg": "unreadable",
        "e_tiny.png": "unsupported",
        "f_pair.png": "multiple_faces",
        "g_nan.tiff": "unsupported",
        "h_small_face.png": "face_too_small",
        "notes.txt": "unreadable",
    }
    table, points = read_landmark_table(out / "landmarks.parquet")
    assert list(table["file"]) == ["a_astronaut.png", "b_grey.png"]
    assert set(LANDMARK_COLUMNS + SOURCE_LANDMARK_COLUMNS + QUAD_COLUMNS) <= set(table.columns)
    direct = aligner.align(photo)
    np.testing.assert_allclose(points[0], direct.landmarks)
    np.testing.assert_allclose(table.loc[0, QUAD_COLUMNS].to_numpy(float).reshape(4, 2), direct.quad)
    np.testing.assert_array_equal(load_image(out / "images" / "a_astronaut.png"), direct.image)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"output_size": SIZE, **report.summary()}
    assert summary["aligned"] == 2 and summary["rejected"] == 8 and summary["rejected_unreadable"] == 2
    assert summary["skipped"] == 2

    first = (out / "images" / "a_astronaut.png").read_bytes()
    again = align_folder(src, out, SIZE, aligner=aligner, progress=False)
    assert again == report  # deterministic
    assert (out / "images" / "a_astronaut.png").read_bytes() == first


def test_align_folder_with_nothing_aligned_still_writes_outputs(aligner, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.new("RGB", (100, 100)).save(src / "black.png")
    report = align_folder(src, out, SIZE, aligner=aligner, progress=False)
    assert report.aligned == () and [r.reason for r in report.rejects] == [RejectReason.NO_FACE]
    table, points = read_landmark_table(out / "landmarks.parquet")
    assert len(table) == 0 and points.shape == (0, 68, 2)
    with pytest.raises(InputError, match="not found"):
        align_folder(tmp_path / "absent", out, SIZE, aligner=aligner, progress=False)
    with pytest.raises(InputError, match="output_size"):
        align_folder(src, out, 128, aligner=aligner, progress=False)


def test_align_folder_workers_end_with_their_caller(aligner, photo, tmp_path, monkeypatch):
    """The alignment pool's workers carry the watch that ends them with a killed caller (the watch itself is
    tested in test_parallel_training), and aligning in two processes writes what one process writes."""
    import concurrent.futures

    from megafr import distributed

    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(photo).save(src / "a.png")
    Image.fromarray(np.ascontiguousarray(photo[:, ::-1])).save(src / "b.png")
    initializers = []

    class Recording(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            initializers.append(kwargs.get("initializer"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Recording)
    two = align_folder(src, tmp_path / "two", SIZE, aligner=aligner, progress=False, workers=2)
    assert initializers == [distributed.exit_with_parent]
    one = align_folder(src, tmp_path / "one", SIZE, aligner=aligner, progress=False, workers=1)
    assert initializers == [distributed.exit_with_parent]  # one process: no pool
    assert two.aligned == one.aligned == ("a.png", "b.png")
    for name in two.aligned:
        assert (tmp_path / "two" / "images" / name).read_bytes() == (tmp_path / "one" / "images" / name).read_bytes()
