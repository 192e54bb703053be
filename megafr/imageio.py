"""Image files in and out, with one error type for every way a photo can be unusable.

Conventions (see ``megafr/__init__.py``): on disk, 8-bit RGB PNG; in memory,
``uint8 [H, W, 3]`` RGB arrays; between modules, float tensors ``[B, 3, H, W]``
in ``[-1, 1]`` (the StyleGAN2 / e4e / pSp convention, ``x / 127.5 - 1``).

:func:`load_image` decodes with Pillow and normalises every common file to
``uint8 [H, W, 3]`` RGB without a word where that is safe:

==================  ==========================================================
Pillow mode         conversion
==================  ==========================================================
``1``, ``L``        grey replicated to R, G, B
``LA``, ``RGBA``,   alpha composited over :data:`ALPHA_BACKGROUND` (white), the
``RGBa``, ``PA``,   way browsers and image viewers show transparent pixels
``P`` with
transparency
``P``               palette looked up
``I;16*``           16-bit grey scaled to 8 bits: ``round(v * 255 / 65535)``
``I``               32-bit integer grey holding 16-bit data (how some TIFF and
                    older Pillow PNG readers deliver it): values must lie in
                    ``[0, 65535]`` and are scaled as ``I;16``; others refused
``F``               32-bit float grey: values in ``[0, 1]`` (the convention of
                    float files written by scientific and HDR tools) are
                    scaled by 255; other values must lie in ``[0, 255]``
                    (Pillow's own convention, 8-bit intensities); NaN,
                    infinity and other ranges are refused
``CMYK``, ``YCbCr``, Pillow's converter (CMYK without colour management)
``LAB``, ``HSV``,
``RGBX``
==================  ==========================================================

The EXIF orientation tag is applied (a phone portrait comes out upright), and
multi-frame files (GIF, TIFF) give their first frame.

Sizes are checked from the file's header before any pixel is decoded (Pillow opens
lazily): an image over :data:`MAX_SIDE` or :data:`MAX_PIXELS` is refused with the
same message whatever its size (Pillow's own decompression-bomb check is replaced
by this one while the header is read), and :func:`image_size` lets a caller check
the size it needs before paying for decoding (a 9000 x 9000 PNG decodes to about
a quarter of a gigabyte, and conversions multiply that). Everything else raises
:class:`ImageFileError`, a :class:`megafr.errors.InputError`, whose message names
the file and the fix, and whose ``kind`` is one of :data:`IMAGE_ERROR_KINDS`. No
other exception type escapes, whatever the bytes: Pillow's decoders raise a
zoo of them (``UnidentifiedImageError``, ``OSError`` "truncated",
``SyntaxError``, ``ValueError``, ``struct.error``, ``DecompressionBombError``,
...), so decoding is wrapped and re-raised with the original as ``__cause__``.

Written by hand because no library offers this contract: Pillow and imageio
return whatever mode the file holds and raise decoder-specific errors.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from megafr.errors import InputError
from megafr.fileio import atomic_write

# Smallest accepted image side in pixels: dlib's HOG face detector scans an 80 px
# window (40 px after one 2x upsampling), so nothing below 16 px can yield a face.
MIN_SIDE = 16
# Largest accepted image side in pixels (a 12000 px side is beyond any camera in
# common use, and guards the aligner's padding and blurring against huge arrays).
MAX_SIDE = 12000
# Largest accepted pixel count: Pillow's default decompression-bomb limit
# (``PIL.Image.MAX_IMAGE_PIXELS`` = 1024**3 / 4 / 3 pixels), pinned here so that
# a library changing the global at run time does not change what is accepted.
MAX_PIXELS = 1024 ** 3 // 4 // 3
# Background that transparent pixels are composited on: white, as viewers show them.
ALPHA_BACKGROUND = (255, 255, 255)
# Full scale of 8-bit and 16-bit samples.
UINT8_MAX = 255
UINT16_MAX = 65535
# uint8 <-> [-1, 1]: x / HALF_RANGE - 1 (StyleGAN2 / pSp convention).
HALF_RANGE = 127.5
# JPEG quality used by save_image for .jpg/.jpeg targets (PNG is lossless).
JPEG_QUALITY = 95

# ImageFileError.kind values: which check a file failed.
KIND_MISSING = "missing"  # no such file, or a folder
KIND_UNREADABLE = "unreadable"  # not an image, corrupt, truncated, unreadable bytes or EXIF
KIND_UNSUPPORTED = "unsupported"  # decodes, but to a mode or value range that has no safe RGB form
KIND_BAD_SIZE = "bad_size"  # empty, smaller than MIN_SIDE or larger than MAX_SIDE / MAX_PIXELS
IMAGE_ERROR_KINDS = (KIND_MISSING, KIND_UNREADABLE, KIND_UNSUPPORTED, KIND_BAD_SIZE)

# Float images whose values all lie in [0, FLOAT_UNIT_MAX] are in the [0, 1] convention and scaled by 255.
FLOAT_UNIT_MAX = 1.0
# Serialises the moments when Pillow's global decompression-bomb limit is lifted to read a header.
_HEADER_LOCK = threading.Lock()

# Modes with an alpha channel (or a palette transparency) that are composited.
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
# Modes that Pillow converts to RGB directly and faithfully.
_DIRECT_RGB_MODES = frozenset({"RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"})
# 16-bit unsigned grey modes (native, little- and big-endian storage).
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageFileError(InputError):
    """An image file that cannot be used; ``kind`` is one of :data:`IMAGE_ERROR_KINDS`."""

    def __init__(self, message: str, kind: str = KIND_UNREADABLE):
        super().__init__(message)
        self.kind = kind  # which check failed, for reports such as align_folder's rejects.csv


def _fail(path: Path, problem: str, fix: str, kind: str) -> ImageFileError:
    return ImageFileError(f"cannot use image {path}: {problem}; {fix}", kind)


def _check_size(path: Path, width: int, height: int) -> None:
    """Refuse empty, tiny and huge images from their header, before decoding."""
    if width <= 0 or height <= 0:
        raise _fail(path, f"the image is empty ({width}x{height} pixels)", "re-export it from the original", KIND_BAD_SIZE)
    if min(width, height) < MIN_SIDE:
        raise _fail(path, f"it is {width}x{height} pixels, smaller than the minimum side {MIN_SIDE} px",
                    "use a larger photo (a face needs at least ~40 px to be found)", KIND_BAD_SIZE)
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise _fail(path, f"it is {width}x{height} pixels, above the limit of {MAX_SIDE} px per side and "
                    f"{MAX_PIXELS} pixels", "downscale it first (e.g. to 4096 px on the long side)", KIND_BAD_SIZE)


def _scale_uint16(values: np.ndarray) -> np.ndarray:
    """16-bit samples [0, 65535] -> uint8 with rounding: round(v * 255 / 65535)."""
    wide = values.astype(np.uint32)
    return ((wide * UINT8_MAX + UINT16_MAX // 2) // UINT16_MAX).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _composite_on_background(rgba: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 4] -> uint8 [H, W, 3]: straight alpha over ALPHA_BACKGROUND, rounded."""
    colour = rgba[:, :, :3].astype(np.float32)
    alpha = rgba[:, :, 3:4].astype(np.float32) / UINT8_MAX
    background = np.asarray(ALPHA_BACKGROUND, dtype=np.float32)
    out = colour * alpha + background * (1.0 - alpha)
    return np.clip(np.rint(out), 0, UINT8_MAX).astype(np.uint8)


def _to_rgb_array(path: Path, img: Image.Image) -> np.ndarray:
    """Decoded Pillow image of any mode -> uint8 [H, W, 3] RGB, or ImageFileError(unsupported)."""
    mode = img.mode
    has_palette_alpha = mode == "P" and "transparency" in img.info
    if mode in _ALPHA_MODES or has_palette_alpha:
        return _composite_on_background(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    if mode in _UINT16_MODES:
        return _grey_to_rgb(_scale_uint16(np.asarray(img)))
    if mode == "I":
        values = np.asarray(img, dtype=np.int64)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > UINT16_MAX:
            raise _fail(path, f"32-bit integer image with values in [{low}, {high}], outside the 16-bit range "
                        f"[0, {UINT16_MAX}] that can be scaled safely", "save it as an 8- or 16-bit PNG", KIND_UNSUPPORTED)
        return _grey_to_rgb(_scale_uint16(values))
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise _fail(path, "float image holding NaN or infinite values", "save it as an 8-bit PNG", KIND_UNSUPPORTED)
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > UINT8_MAX:
            raise _fail(path, f"float image with values in [{low:g}, {high:g}], outside both [0, 1] and "
                        f"[0, {UINT8_MAX}] (the two float conventions)", "save it as an 8-bit PNG", KIND_UNSUPPORTED)
        if high <= FLOAT_UNIT_MAX:  # the [0, 1] convention: as 8-bit intensities it would be black
            values = values * UINT8_MAX
        return _grey_to_rgb(np.rint(values).astype(np.uint8))
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)  # no conversion copy
    if mode in _DIRECT_RGB_MODES:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as error:
        raise _fail(path, f"Pillow mode {mode!r} has no RGB conversion ({error})", "save it as an 8-bit RGB PNG",
                    KIND_UNSUPPORTED) from error


def _check_file(path: Path) -> None:
    if not path.exists():
        raise _fail(path, "no such file", "check the path (and the working folder)", KIND_MISSING)
    if not path.is_file():
        raise _fail(path, "it is not a regular file", "pass the path of an image file", KIND_MISSING)


@contextlib.contextmanager
def _open_checked(path: Path):
    """``Image.open(path)`` (the header only: pixels are decoded by ``load``), its size checked against
    MAX_SIDE / MAX_PIXELS. Pillow's decompression-bomb limit is lifted while the header is read, so that
    every huge file gets this module's message (whose limit is the same pixel count) rather than Pillow's."""
    with _HEADER_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            opened = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    with opened:
        _check_size(path, *opened.size)
        yield opened


@contextlib.contextmanager
def _image_errors(path: Path):
    """Re-raise whatever Pillow raises inside the block as an ImageFileError naming ``path`` (module docstring)."""
    try:
        yield
    except ImageFileError:
        raise
    except Image.DecompressionBombError as error:  # a limit Pillow checks beyond the header (never expected)
        raise _fail(path, f"it is above the limit of {MAX_SIDE} px per side and {MAX_PIXELS} pixels",
                    "downscale it first (e.g. to 4096 px on the long side)", KIND_BAD_SIZE) from error
    except PermissionError as error:
        raise _fail(path, "permission denied", "make the file readable (chmod) or copy it", KIND_UNREADABLE) from error
    except MemoryError as error:
        raise _fail(path, "not enough memory to decode it", "downscale it first", KIND_BAD_SIZE) from error
    except Exception as error:  # noqa: BLE001 - Pillow's decoders raise many types; all mean "unreadable" and are re-raised
        raise _fail(path, f"the file is not a readable image ({type(error).__name__}: {error})",
                    "check that it is a complete PNG/JPEG/TIFF/WebP file (re-download or re-export it)",
                    KIND_UNREADABLE) from error


# EXIF orientations (tag 0x0112) that turn the image by 90 degrees, swapping width and height.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file as :func:`load_image` would return it, read from the header
    without decoding pixels (EXIF orientation applied when the header holds it: JPEG, and PNG or TIFF
    files that store it before the pixels). Raises :class:`ImageFileError` as :func:`load_image` does
    for missing, unreadable, empty, tiny and huge files."""
    path = Path(path)
    _check_file(path)
    with _image_errors(path), _open_checked(path) as opened:
        width, height = opened.size
        exif = opened.getexif() if "exif" in opened.info else {}
        if exif.get(_ORIENTATION_TAG) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return width, height


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 ``[H, W, 3]`` RGB (module docstring: conversions, limits, errors).

    Raises :class:`ImageFileError` (an :class:`~megafr.errors.InputError`) and
    nothing else for a missing, unreadable, unsupported, empty, tiny or huge file.
    The size is checked from the header before the pixels are decoded.
    """
    path = Path(path)
    _check_file(path)
    with _image_errors(path):
        with warnings.catch_warnings():
            # Sizes are checked against MAX_PIXELS; Pillow's own warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_checked(path) as opened:
                opened.load()
                ImageOps.exif_transpose(opened, in_place=True)  # in place: no copy of a large image
                _check_size(path, *opened.size)
                rgb = _to_rgb_array(path, opened)
    return np.require(rgb, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])  # Pillow's arrays are read-only views


def check_image_array(img: object, name: str = "image") -> np.ndarray:
    """Return ``img`` if it is a uint8 ``[H, W, 3]`` array, else raise InputError saying what it is."""
    if not isinstance(img, np.ndarray):
        raise InputError(f"{name} must be a numpy uint8 array [H, W, 3], got {type(img).__name__}; "
                         f"read files with megafr.imageio.load_image")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"{name} must be a uint8 array [H, W, 3] (RGB), got {img.dtype} {list(img.shape)}; "
                         f"read files with megafr.imageio.load_image or convert with tensor_to_image")
    return img


def image_to_tensor(img: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` in ``[-1, 1]`` (x / 127.5 - 1)."""
    img = check_image_array(img)
    owned = np.require(img, requirements=["C_CONTIGUOUS", "WRITEABLE"])  # torch refuses read-only memory
    chw = torch.from_numpy(owned).permute(2, 0, 1)  # [3, H, W] uint8
    return (chw.to(device=device, dtype=torch.float32) / HALF_RANGE - 1.0).contiguous()


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """Float ``[3, H, W]`` in ``[-1, 1]`` (values outside are clipped) -> uint8 ``[H, W, 3]``.

    NaN or infinite values raise InputError: they mean a diverged model, and
    silently writing them as black pixels would hide that.
    """
    if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != 3 or not t.is_floating_point():
        shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"tensor_to_image expects a float tensor [3, H, W], got {shape}; "
                         f"for a batch [B, 3, H, W] use tensors_to_images")
    return tensors_to_images(t.unsqueeze(0))[0]


def images_to_tensor(images: Sequence[np.ndarray] | np.ndarray,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """B images uint8 ``[H, W, 3]`` (a list, or an array ``[B, H, W, 3]``) -> float32 ``[B, 3, H, W]`` in ``[-1, 1]``."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if len(images) == 0:
        raise InputError("images_to_tensor got no images; pass at least one uint8 [H, W, 3] array")
    tensors = [image_to_tensor(img, device) for img in images]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise InputError(f"images_to_tensor needs images of one size, got {sorted(shapes)}; resize or align them first")
    return torch.stack(tensors)  # [B, 3, H, W]


def tensors_to_images(t: torch.Tensor) -> np.ndarray:
    """Float ``[B, 3, H, W]`` in ``[-1, 1]`` -> uint8 ``[B, H, W, 3]`` (clipped, rounded to nearest)."""
    if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 3 or not t.is_floating_point():
        shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"tensors_to_images expects a float tensor [B, 3, H, W], got {shape}")
    values = t.detach().to("cpu", torch.float32)
    if not torch.isfinite(values).all():
        raise InputError("image tensor holds NaN or infinite values (a diverged model or a bad input); "
                         "check the network outputs before saving")
    scaled = ((values.clamp(-1.0, 1.0) + 1.0) * HALF_RANGE).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # [B, H, W, 3]


def output_format(path: str | os.PathLike) -> str:
    """Pillow format name that :func:`save_image` writes to ``path`` (from its extension).

    Raises InputError for an extension Pillow cannot write or a path that is a folder, so that a
    command can refuse a bad output path before doing any work.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"cannot save image {path}: it is a folder; give a file name such as {path / 'out.png'}")
    suffix = path.suffix.lower()
    formats = Image.registered_extensions()
    if suffix not in formats or formats[suffix] not in Image.SAVE:
        raise InputError(f"cannot save image {path}: unknown file extension {suffix!r}; use .png")
    return formats[suffix]


def save_image(path: str | os.PathLike, img: np.ndarray | torch.Tensor) -> Path:
    """Write uint8 ``[H, W, 3]`` (or a float tensor ``[3, H, W]`` in ``[-1, 1]``) atomically; returns the path.

    The format follows the extension (``.png`` is the study's on-disk format);
    parent folders are created; a crash leaves either the old file or none.
    """
    path = Path(path)
    array = tensor_to_image(img) if isinstance(img, torch.Tensor) else check_image_array(img)
    fmt = output_format(path)
    options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    picture = Image.fromarray(np.ascontiguousarray(array))  # uint8 [H, W, 3] -> mode RGB
    with atomic_write(path, "wb") as handle:
        picture.save(handle, format=fmt, **options)
    return path
