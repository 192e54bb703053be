"""megafr.imageio and megafr.fileio: mode conversions, bad files, size limits, atomic writes, fuzzing."""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from megafr.errors import InputError, NoFaceError
from megafr.fileio import atomic_path, atomic_write, write_json
from megafr.imageio import (
    ALPHA_BACKGROUND,
    KIND_BAD_SIZE,
    KIND_MISSING,
    KIND_UNREADABLE,
    KIND_UNSUPPORTED,
    MAX_SIDE,
    MIN_SIDE,
    ImageFileError,
    image_size,
    image_to_tensor,
    images_to_tensor,
    load_image,
    save_image,
    tensor_to_image,
    tensors_to_images,
)

SIDE = 24  # test images are small: conversions do not depend on size


def _save(tmp_path: Path, img: Image.Image, name: str, **options) -> Path:
    path = tmp_path / name
    img.save(path, **options)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit RGB) with a tiny, wrong IDAT: enough for Image.open."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


# ---------------------------------------------------------------- mode conversions


def test_rgb_png_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (SIDE, SIDE + 5, 3), dtype=np.uint8)
    path = save_image(tmp_path / "sub" / "x.png", pixels)
    loaded = load_image(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (SIDE, SIDE + 5, 3)
    np.testing.assert_array_equal(loaded, pixels)


@pytest.mark.parametrize("suffix", [".png", ".tiff", ".bmp"])
def test_greyscale_l_becomes_equal_rgb_channels(tmp_path, suffix):
    grey = np.arange(SIDE * SIDE, dtype=np.uint32).reshape(SIDE, SIDE) % 256
    path = _save(tmp_path, Image.fromarray(grey.astype(np.uint8), "L"), "g" + suffix)
    out = load_image(path)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_bilevel_mode_1(tmp_path):
    bits = np.zeros((SIDE, SIDE), dtype=bool)
    bits[:, : SIDE // 2] = True
    path = _save(tmp_path, Image.fromarray(bits), "b.png")
    assert Image.open(path).mode == "1"
    out = load_image(path)
    assert (out[:, : SIDE // 2] == 255).all() and (out[:, SIDE // 2:] == 0).all()


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red 200, green 0, blue 0
    rgba[:, :8, 3] = 0  # transparent -> background
    rgba[:, 8:16, 3] = 255  # opaque -> colour
    rgba[:, 16:, 3] = 51  # 20 % alpha -> 0.2 * colour + 0.8 * background
    path = _save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png")
    out = load_image(path)
    np.testing.assert_array_equal(out[0, 0], ALPHA_BACKGROUND)
    np.testing.assert_array_equal(out[0, 10], [200, 0, 0])
    expected = np.rint(np.array([200, 0, 0]) * 0.2 + np.array(ALPHA_BACKGROUND) * 0.8)
    np.testing.assert_array_equal(out[0, 20], expected)


def test_la_greyscale_with_alpha(tmp_path):
    la = np.zeros((SIDE, SIDE, 2), dtype=np.uint8)
    la[..., 0] = 90
    la[:, SIDE // 2:, 1] = 255
    path = _save(tmp_path, Image.fromarray(la, "LA"), "la.png")
    out = load_image(path)
    np.testing.assert_array_equal(out[0, 0], ALPHA_BACKGROUND)
    np.testing.assert_array_equal(out[0, -1], [90, 90, 90])


def test_palette_image_without_and_with_transparency(tmp_path):
    index = np.zeros((SIDE, SIDE), dtype=np.uint8)
    index[:, SIDE // 2:] = 1
    palette = [10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6)
    img = Image.fromarray(index, "P")
    img.putpalette(palette)
    out = load_image(_save(tmp_path, img, "p.png"))
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, -1], [40, 50, 60])
    # palette entry 0 transparent: those pixels show the background
    out = load_image(_save(tmp_path, img, "pt.png", transparency=0))
    np.testing.assert_array_equal(out[0, 0], ALPHA_BACKGROUND)
    np.testing.assert_array_equal(out[0, -1], [40, 50, 60])
    out = load_image(_save(tmp_path, img, "pt.gif", transparency=0))
    np.testing.assert_array_equal(out[0, 0], ALPHA_BACKGROUND)


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_16bit_grey_is_scaled_to_8bit(tmp_path, suffix):
    levels = np.array([0, 257, 257 * 128, 65535, 128], dtype=np.uint16)  # 128 / 257 rounds to 0
    values = np.resize(levels, (SIDE, SIDE)).astype(np.uint16)
    path = _save(tmp_path, Image.fromarray(values), "h" + suffix)
    assert Image.open(path).mode.startswith("I;16")
    out = load_image(path)
    np.testing.assert_array_equal(out[..., 0], np.rint(values / 257.0).astype(np.uint8))
    assert out[0, 3, 0] == 255 and out[0, 2, 0] == 128


def test_32bit_integer_in_16bit_range_is_scaled_and_outside_is_refused(tmp_path):
    values = np.full((SIDE, SIDE), 257 * 7, dtype=np.int32)
    out = load_image(_save(tmp_path, Image.fromarray(values), "i.tiff"))
    assert (out == 7).all()
    values[0, 0] = -5
    with pytest.raises(ImageFileError, match="16-bit range") as info:
        load_image(_save(tmp_path, Image.fromarray(values), "neg.tiff"))
    assert info.value.kind == KIND_UNSUPPORTED


def test_float_images_finite_in_range_accepted_nan_and_out_of_range_refused(tmp_path):
    values = np.full((SIDE, SIDE), 100.4, dtype=np.float32)
    assert (load_image(_save(tmp_path, Image.fromarray(values), "f.tiff")) == 100).all()
    values[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN") as info:
        load_image(_save(tmp_path, Image.fromarray(values), "nan.tiff"))
    assert info.value.kind == KIND_UNSUPPORTED
    values[3, 3] = 300.0
    with pytest.raises(InputError, match=r"outside both \[0, 1\] and \[0, 255\]"):
        load_image(_save(tmp_path, Image.fromarray(values), "big.tiff"))


def test_float_tiff_in_unit_range_is_scaled_not_black(tmp_path):
    values = np.linspace(0.0, 1.0, SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE)
    out = load_image(_save(tmp_path, Image.fromarray(values), "unit.tiff"))
    np.testing.assert_array_equal(out[:, :, 0], np.rint(values.astype(np.float64) * 255).astype(np.uint8))
    assert out.max() == 255 and (out[:, :, 0] == out[:, :, 2]).all()


@pytest.mark.parametrize("suffix", [".jpg", ".tiff"])
def test_cmyk_is_converted(tmp_path, suffix):
    cmyk = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    cmyk[:, SIDE // 2:, 3] = 255  # full black ink
    out = load_image(_save(tmp_path, Image.fromarray(cmyk, "CMYK"), "c" + suffix))
    assert out.shape == (SIDE, SIDE, 3)
    assert out[SIDE // 2, 2].min() > 240 and out[SIDE // 2, -3].max() < 15


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # landscape, red block at the left end
    pixels[:, :10] = [255, 0, 0]
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "o.png"
    img.save(path, exif=exif)
    out = load_image(path)
    assert out.shape == (40, 20, 3)  # portrait after applying the tag
    assert (out[:10, :, 0] == 255).all()  # the left end is now on top
    assert (out[-10:, :, 0] == 0).all()


def test_first_frame_of_animation(tmp_path):
    frames = [Image.new("RGB", (SIDE, SIDE), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(load_image(path)[0, 0], [255, 0, 0])


# ---------------------------------------------------------------- bad files


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageFileError, match="no such file") as info:
        load_image(tmp_path / "absent.png")
    assert info.value.kind == KIND_MISSING and "absent.png" in str(info.value)
    with pytest.raises(ImageFileError, match="not a regular file"):
        load_image(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, not an image\n", os.urandom(300), b"\x89PNG\r\n\x1a\n" + b"\0" * 30])
def test_garbage_bytes_raise_input_error_naming_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageFileError) as info:
        load_image(path)
    assert str(path) in str(info.value) and info.value.kind == KIND_UNREADABLE
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP"])
def test_truncated_files(tmp_path, fmt):
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = tmp_path / f"t.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageFileError) as info:
        load_image(path)
    assert info.value.kind == KIND_UNREADABLE
    assert info.value.__cause__ is not None  # the decoder's own error is kept for debugging


def test_tiny_and_huge_images(tmp_path):
    tiny = _save(tmp_path, Image.new("RGB", (MIN_SIDE - 1, 100)), "tiny.png")
    with pytest.raises(ImageFileError, match="smaller than the minimum") as info:
        load_image(tiny)
    assert info.value.kind == KIND_BAD_SIZE
    assert load_image(_save(tmp_path, Image.new("RGB", (MIN_SIDE, MIN_SIDE)), "ok.png")).shape == (MIN_SIDE, MIN_SIDE, 3)
    wide = tmp_path / "wide.png"
    wide.write_bytes(_png_header_only(MAX_SIDE + 1, MIN_SIDE))
    with pytest.raises(ImageFileError, match="above the limit") as info:
        load_image(wide)
    assert info.value.kind == KIND_BAD_SIZE
    bomb = tmp_path / "bomb.png"  # within the side limit, above the pixel limit
    bomb.write_bytes(_png_header_only(MAX_SIDE, MAX_SIDE))
    with pytest.raises(ImageFileError, match="above the limit"):
        load_image(bomb)
    pillow_bomb = tmp_path / "pillow_bomb.png"  # above Pillow's own 2x limit too: same documented message
    pillow_bomb.write_bytes(_png_header_only(60000, 60000))
    with pytest.raises(ImageFileError, match="it is 60000x60000 pixels, above the limit") as info:
        load_image(pillow_bomb)
    assert info.value.kind == KIND_BAD_SIZE and "decompression bomb" not in str(info.value).lower()
    with pytest.raises(ImageFileError, match="it is 60000x60000 pixels, above the limit"):
        image_size(pillow_bomb)


def test_image_size_reads_the_header_only(tmp_path):
    big = tmp_path / "big.png"  # a 9000 x 9000 header over a few bytes of pixels: decoding it would fail
    big.write_bytes(_png_header_only(9000, 9000))
    assert image_size(big) == (9000, 9000)
    with pytest.raises(ImageFileError, match="not a readable image"):
        load_image(big)  # proof that image_size did not decode
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned by 90 degrees
    turned = _save(tmp_path, Image.new("RGB", (40, 20)), "turned.jpg", exif=exif)
    assert image_size(turned) == (20, 40) and load_image(turned).shape == (40, 20, 3)
    with pytest.raises(ImageFileError, match="no such file"):
        image_size(tmp_path / "absent.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ImageFileError, match="not a readable image"):
        image_size(tmp_path / "junk.png")


def test_zero_size_header(tmp_path):
    path = tmp_path / "zero.png"
    path.write_bytes(_png_header_only(0, 0))
    with pytest.raises(ImageFileError):
        load_image(path)


# ---------------------------------------------------------------- tensors


def test_tensor_round_trip_and_range():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img[0, 0] = [0, 255, 128]
    t = image_to_tensor(img)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert t[0, 0, 0] == -1.0 and t[1, 0, 0] == 1.0
    assert t.min() >= -1 and t.max() <= 1
    np.testing.assert_array_equal(tensor_to_image(t), img)
    batch = images_to_tensor([img, img[::-1].copy()])
    assert batch.shape == (2, 3, 5, 7)
    np.testing.assert_array_equal(tensors_to_images(batch)[1], img[::-1])
    np.testing.assert_array_equal(tensors_to_images(images_to_tensor(np.stack([img, img])))[0], img)


def test_tensor_to_image_clips_and_refuses_nan():
    t = torch.zeros(3, 2, 2)
    t[0, 0, 0] = 5.0
    t[1, 0, 0] = -5.0
    out = tensor_to_image(t)
    assert out[0, 0, 0] == 255 and out[0, 0, 1] == 0 and out[1, 1, 2] == 128  # 0 -> 127.5 -> 128
    t[2, 1, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        tensor_to_image(t)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                                 np.zeros((4, 4, 4), np.uint8), [[1, 2, 3]]])
def test_wrong_arrays_are_refused(bad):
    with pytest.raises(InputError, match=r"uint8"):
        image_to_tensor(bad)


def test_wrong_tensors_are_refused():
    with pytest.raises(InputError):
        tensor_to_image(torch.zeros(1, 3, 4, 4))
    with pytest.raises(InputError):
        tensors_to_images(torch.zeros(3, 4, 4))
    with pytest.raises(InputError):
        tensors_to_images(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(InputError, match="one size"):
        images_to_tensor([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)])


def test_save_image_accepts_tensor_and_jpeg(tmp_path):
    t = torch.linspace(-1, 1, 3 * 16 * 16).reshape(3, 16, 16)
    np.testing.assert_array_equal(load_image(save_image(tmp_path / "t.png", t)), tensor_to_image(t))
    out = load_image(save_image(tmp_path / "t.jpg", t))
    assert np.abs(out.astype(int) - tensor_to_image(t).astype(int)).mean() < 8  # lossy but close
    with pytest.raises(InputError, match="extension"):
        save_image(tmp_path / "t.unknownext", t)


# ---------------------------------------------------------------- atomic writes


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_on_success_and_keeps_old_on_error(tmp_path):
    target = tmp_path / "deep" / "out.txt"
    with atomic_write(target, "w") as handle:
        handle.write("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("half of the sec")
            raise RuntimeError("interrupted")
    assert target.read_text() == "first"
    assert _leftovers(target.parent) == []


def test_atomic_write_interrupt_leaves_nothing_for_new_file(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as handle:
            handle.write(b"\0" * 1000)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_binary_for_checkpoints_and_modes(tmp_path):
    target = tmp_path / "ckpt.pt"
    with atomic_write(target) as handle:
        torch.save({"state_dict": {"w": torch.ones(2)}, "step": 3}, handle)
    assert torch.load(target)["step"] == 3
    with pytest.raises(InputError):
        with atomic_write(target, "a"):
            pass
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # like open(path, "w"), not mkstemp's 0600


def test_atomic_path(tmp_path):
    target = tmp_path / "x.npy"
    with atomic_path(target) as temp:
        assert temp.parent.parent == target.parent and temp.name == target.name and not temp.exists()
        np.save(open(temp, "wb"), np.arange(3))
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "y.npy") as temp:
            temp.write_bytes(b"partial")
            raise ValueError("boom")
    assert not (tmp_path / "y.npy").exists() and _leftovers(tmp_path) == []


def test_save_image_failure_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(tmp_path / "o.png", np.zeros((16, 16, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_write_json_sorted_indented_and_strict(tmp_path):
    path = write_json(tmp_path / "m" / "metrics.json", {"b": np.float32(0.5), "a": {"z": 1, "y": np.int64(2)}})
    text = path.read_text()
    assert text == json.dumps({"a": {"y": 2, "z": 1}, "b": 0.5}, sort_keys=True, indent=2) + "\n"
    with pytest.raises(InputError, match=r"a\.y"):
        write_json(tmp_path / "bad.json", {"a": {"y": float("nan")}})
    with pytest.raises(InputError):
        write_json(tmp_path / "bad.json", {"a": object()})
    assert not (tmp_path / "bad.json").exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


VALID_PNG = _valid_png_bytes()


def _check_loaded(path: Path) -> None:
    try:
        out = load_image(path)
    except InputError as error:
        assert isinstance(error, ImageFileError) and error.kind in (KIND_UNREADABLE, KIND_UNSUPPORTED, KIND_BAD_SIZE)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=2000),
    st.binary(max_size=200).map(lambda tail: b"\x89PNG\r\n\x1a\n" + tail),
    st.tuples(st.integers(0, len(VALID_PNG)), st.integers(0, 255), st.integers(8, len(VALID_PNG) - 1)).map(
        lambda t: (VALID_PNG[: t[2]] + bytes([t[1]]) + VALID_PNG[t[2] + 1:])[: max(t[0], 8)]),
), suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".bin"]))
def test_fuzz_bytes_only_input_error(data, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"f{suffix}"
        path.write_bytes(data)
        _check_loaded(path)


@FUZZ
@given(dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.bool_]),
       height=st.integers(1, 40), width=st.integers(1, 40), channels=st.sampled_from([None, 1, 2, 3, 4]),
       fmt=st.sampled_from(["png", "tiff", "webp", "gif", "bmp"]), seed=st.integers(0, 2 ** 16),
       special=st.sampled_from([None, np.nan, np.inf, -1.0, 1e6]))
def test_fuzz_arrays_only_input_error(dtype, height, width, channels, fmt, seed, special):
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels is None else (height, width, channels)
    values = rng.uniform(0, 300, shape)
    if special is not None:
        values.flat[0] = special
    if dtype == np.float32:
        array = values.astype(np.float32)  # NaN / inf / out-of-range values kept: load_image must refuse them
    elif dtype == np.bool_:
        array = np.nan_to_num(values) > 150
    else:
        limits = np.iinfo(dtype)
        array = np.clip(np.nan_to_num(values, posinf=limits.max, neginf=limits.min), limits.min, limits.max).astype(dtype)
    try:
        img = Image.fromarray(np.squeeze(array, axis=2) if channels == 1 else array)
    except (TypeError, ValueError, KeyError):
        return  # Pillow has no mode for this array; nothing to write
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"a.{fmt}"
        try:
            img.save(path)
        except (OSError, ValueError, KeyError, TypeError):
            return  # this format cannot store this mode
        _check_loaded(path)


def _check_aligned(aligner, array) -> None:
    try:
        face = aligner.align(array)
    except InputError as error:  # NoFaceError is an InputError
        assert type(error).__module__.startswith("megafr")
        return
    assert face.image.shape == (aligner.output_size, aligner.output_size, 3) and face.image.dtype == np.uint8
    assert face.landmarks.shape == (68, 2) and np.isfinite(face.landmarks).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dtype=st.sampled_from([np.uint8, np.uint8, np.uint16, np.float32, np.int64, np.bool_]),
       shape=st.one_of(st.lists(st.integers(0, 96), min_size=0, max_size=4),
                       st.tuples(st.integers(1, 96), st.integers(1, 96), st.just(3))),
       seed=st.integers(0, 2 ** 16), constant=st.booleans())
def test_fuzz_aligner_random_arrays_only_documented_errors(aligner, dtype, shape, seed, constant):
    rng = np.random.default_rng(seed)
    values = np.full(shape, rng.uniform(0, 255)) if constant else rng.uniform(0, 255, shape)
    _check_aligned(aligner, values.astype(dtype))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(left=st.integers(0, 400), top=st.integers(0, 400), width=st.integers(8, 512), height=st.integers(8, 512),
       flip=st.booleans(), rotate=st.integers(0, 3))
def test_fuzz_aligner_real_face_crops_only_documented_errors(aligner, left, top, width, height, flip, rotate):
    """Windows of a real photo cut through, shrink or turn the face: an aligned face or a documented error."""
    from skimage.data import astronaut

    window = astronaut()[top: top + height, left: left + width]
    window = np.rot90(window[:, ::-1] if flip else window, rotate)
    _check_aligned(aligner, np.ascontiguousarray(window))


@pytest.fixture(scope="module")
def aligner():
    from megafr.datasets.align import FaceAligner

    return FaceAligner(output_size=64)


def test_noface_error_is_an_input_error():
    assert issubclass(NoFaceError, InputError)
