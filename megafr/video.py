"""Writing image sequences as MP4 and GIF files, and composing labelled side-by-side frames.

MP4 goes through imageio's FFMPEG plugin and the ffmpeg binary that ``imageio-ffmpeg`` ships
(H.264, yuv420p, so browsers and the README can play it); GIF through imageio's Pillow plugin.
Both are written atomically (:func:`megafr.fileio.atomic_path`): a killed stage leaves no
half-written video behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from megafr.errors import InputError
from megafr.fileio import atomic_path

MP4_CODEC = "libx264"
MP4_PIXEL_FORMAT = "yuv420p"  # what browsers play
MP4_QUALITY = 8  # imageio's 0..10 quality scale (10 = best)
MACRO_BLOCK = 16  # H.264 works in 16 px blocks; frames are padded to a multiple of it
# Keep encoder version strings and wall-clock metadata out of the file, so a re-run writes the same bytes.
MP4_BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", "-threads", "1"]
HEADER_PX = 16  # height of the label strip above each column
HEADER_FONT_PX = 12  # label size (Pillow's bundled font; its bitmap fallback where FreeType is missing)
HEADER_BACKGROUND = (255, 255, 255)
HEADER_TEXT = (0, 0, 0)
GUTTER_PX = 4  # white space between columns


def check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    """``frames`` must be uint8 [T, H, W, 3] with T >= 1."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise InputError(f"{name} must be uint8 [T, H, W, 3] with at least one frame, got {frames.dtype} "
                         f"{list(frames.shape)}")
    return frames


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer ``factor`` (small images stay sharp in a player)."""
    if factor < 1:
        raise InputError(f"upscale factor must be >= 1, got {factor}")
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def _pad_to_block(frames: np.ndarray, block: int = MACRO_BLOCK) -> np.ndarray:
    """Pad [T, H, W, 3] with white on the bottom and right to multiples of ``block`` (H.264 needs it)."""
    height, width = frames.shape[1:3]
    pad_h, pad_w = -height % block, -width % block
    if not pad_h and not pad_w:
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=255)


def side_by_side(columns: Sequence[np.ndarray], labels: Sequence[str], scale: int = 1) -> np.ndarray:
    """Sequences [T, H, W, 3] (same T, H) placed left to right, each under a printed label -> [T, H', W', 3]."""
    if len(columns) != len(labels) or not columns:
        raise InputError(f"side_by_side needs one label per column, got {len(columns)} columns and {len(labels)} labels")
    columns = [upscale(check_frames(c, f"column {label!r}"), scale) for c, label in zip(columns, labels)]
    lengths, heights = {len(c) for c in columns}, {c.shape[1] for c in columns}
    if len(lengths) != 1 or len(heights) != 1:
        raise InputError(f"columns must have the same number of frames and height, got {sorted(lengths)} frames, "
                         f"{sorted(heights)} px")
    font = ImageFont.load_default(size=HEADER_FONT_PX)
    parts = []
    for k, (frames, label) in enumerate(zip(columns, labels)):
        header = Image.new("RGB", (frames.shape[2], HEADER_PX), HEADER_BACKGROUND)
        ImageDraw.Draw(header).text((3, 1), label, fill=HEADER_TEXT, font=font)
        strip = np.broadcast_to(np.asarray(header), (len(frames), *np.asarray(header).shape))
        parts.append(np.concatenate([strip, frames], axis=1))
        if k < len(columns) - 1:
            parts.append(np.full((len(frames), parts[-1].shape[1], GUTTER_PX, 3), 255, np.uint8))
    return np.ascontiguousarray(np.concatenate(parts, axis=2))


def write_mp4(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """Write uint8 frames [T, H, W, 3] as an H.264 MP4 (padded to 16 px blocks); return the path.

    Uses imageio-ffmpeg's frame writer directly: imageio's own FFMPEG plugin refuses a file name
    without a video extension, and the atomic temporary name ends in ``.tmp`` (the container is
    named with ``-f mp4`` instead).
    """
    import imageio_ffmpeg

    frames = _pad_to_block(check_frames(frames))
    if fps < 1:
        raise InputError(f"fps must be >= 1, got {fps}")
    height, width = frames.shape[1:3]
    path = Path(path)
    with atomic_path(path) as temp:
        writer = imageio_ffmpeg.write_frames(str(temp), (width, height), fps=fps, codec=MP4_CODEC,
                                             quality=MP4_QUALITY, pix_fmt_out=MP4_PIXEL_FORMAT,
                                             macro_block_size=1, output_params=["-f", "mp4", *MP4_BITEXACT])
        writer.send(None)  # start the ffmpeg process
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
    return path


def write_gif(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """Write uint8 frames [T, H, W, 3] as a looping GIF; return the path."""
    import imageio.v3 as iio

    frames = check_frames(frames)
    if fps < 1:
        raise InputError(f"fps must be >= 1, got {fps}")
    path = Path(path)
    with atomic_path(path) as temp:
        iio.imwrite(temp, frames, extension=".gif", plugin="pillow", duration=1000.0 / fps, loop=0)
    return path


def read_frames(path: str | Path) -> np.ndarray:
    """Every frame of an MP4 or GIF as uint8 [T, H, W, 3] (for checks and tests)."""
    import imageio.v3 as iio

    path = Path(path)
    if path.suffix.lower() == ".mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)  # the first item describes the stream
        width, height = meta["size"]
        frames = [np.frombuffer(buffer, np.uint8).reshape(height, width, 3) for buffer in reader]
        return np.stack(frames)
    frames = iio.imread(path, index=None, plugin="pillow", mode="RGB")
    return frames if frames.ndim == 4 else frames[None]
