"""Driving by a video: frames per second of ``reenact --driving`` end to end, and the cost of paste-back.

The clip (random frames at the profile's size, H.264 MP4) is decoded, every frame measured by the 3D
network, the track smoothed (Savitzky-Golay), the source reenacted frame by frame in batches (one
refinement step) and the result encoded as MP4: :func:`megafr.reenact.drive.drive` as the command runs
it, with random networks of the mini profile's sizes. Paste-back is timed on its own at the paper's
crop size (1024 px into a 2048 x 1536 photo; --quick: 64 px into 200 x 150), as it costs the same
whatever the networks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.cases import build_reenactor, pick
from benchmarks.timing import rate, side_by_side, timed
from benchmarks.worlds import Settings, image_size, random_images
from megafr.reenact import drive, paste
from megafr.video import write_mp4

CLIP_FRAMES = (64, 6)  # frames of the driving clip (full suite, --quick)
CLIP_FPS = 25  # its frame rate
DRIVE_BATCHES = ((8, 32), (2,))  # frames reenacted per forward pass
PASTE_CROP = (1024, 64)  # crop side of the paste-back case
PASTE_PHOTO = ((2048, 1536), (200, 150))  # (width, height) of its photo


def _quad(photo_size: tuple[int, int], crop: int) -> np.ndarray:
    """A face square of ``crop`` px turned by 10 degrees in the middle of the photo (top-left, bottom-left,
    bottom-right, top-right)."""
    centre = np.array(photo_size, dtype=float) / 2
    angle = np.radians(10.0)
    x = np.array([np.cos(angle), np.sin(angle)]) * crop / 2
    y = np.array([-x[1], x[0]])
    return np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])


def paste_case(settings: Settings) -> dict:
    crop_side, photo_size = pick(PASTE_CROP, settings), pick(PASTE_PHOTO, settings)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (photo_size[1], photo_size[0], 3), dtype=np.uint8)
    crop = rng.integers(0, 256, (crop_side, crop_side, 3), dtype=np.uint8)
    quad, mask = _quad(photo_size, crop_side), paste.face_mask(crop_side)
    timing = timed(lambda: paste.paste_back(photo, crop, quad, mask), settings.repeats)
    return {"crop": crop_side, "photo": list(photo_size), **timing, "frames_per_s": rate(1, timing["median_s"])}


def driving(settings: Settings) -> dict:
    """``drive`` over a random clip at the profile's size for each batch size, and paste-back alone."""
    size, frames = image_size(settings), pick(CLIP_FRAMES, settings)
    work = Path(settings.work_dir) / "driving"
    work.mkdir(parents=True, exist_ok=True)
    clip = drive.probe_clip(write_mp4(work / "driving.mp4", random_images(frames, size, seed=2), CLIP_FPS))
    photo = random_images(1, size, seed=1)[0]
    reenactor = build_reenactor(settings)
    framer = drive.SynthFramer(size, settings.profile)

    def run(batch: int):
        cfg = drive.DriveConfig(batch_size=batch, progress=False)
        return lambda: drive.drive(reenactor, framer, photo, clip, work / f"out_{batch}.mp4", cfg)

    batches = pick(DRIVE_BATCHES, settings)
    timings = side_by_side({f"batch_{b}": run(b) for b in batches}, settings.repeats)
    rows = {name: {"batch": b, **timings[name], "frames_per_s": rate(frames, timings[name]["median_s"])}
            for name, b in zip(timings, batches)}
    measure = timed(lambda: drive.measure_clip(reenactor.frozen.face, drive.clip_frames(clip), framer, "clip",
                                               progress=False), settings.repeats)
    defaults = drive.DriveConfig()
    return {"image_size": size, "frames": frames, "fps_of_clip": CLIP_FPS, "refine_steps": defaults.refine_steps,
            "smoothing": defaults.smoothing.method, "rows": rows,
            "decode_and_measure": {**measure, "frames_per_s": rate(frames, measure["median_s"])},
            "paste_back": paste_case(settings)}
