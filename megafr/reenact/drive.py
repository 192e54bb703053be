"""Reenactment driven by a video: one source photo takes on every frame's head pose and expression.

The talking-head application (paper Sec. 5.3), as the command ``python -m megafr reenact --source
photo --driving clip --out result.mp4`` runs it:

1. the source is framed (FFHQ alignment on real photos; SynthHeads images are framed already),
   inverted into ``w_s`` once and measured by the 3D face network;
2. every driving frame is framed the same way and measured: FLAME expression ``psi_t`` and pose
   ``theta_t``; a frame without a face holds the last measured values (frames before the first face
   take the first one; a clip without any face is refused), and the count is reported;
3. the measurements are smoothed over time (:mod:`megafr.smoothing`: Savitzky-Golay or one-euro),
   so that the 3D network's frame-to-frame noise does not become jitter;
4. absolute motion uses the driving values as they are (the source keeps only its identity shape);
   relative motion (as in LivePortrait) applies the clip's change from its first frame to the
   source's own values: ``psi = psi_s + (psi_t - psi_0)``, ``R = R_t R_0^T R_s`` for the head
   rotation, and jaw and eye rotations shifted by ``theta_t - theta_0``, so a frontal driver can
   animate a turned source;
5. frames are reenacted in batches (F applied ``1 + refine_steps`` times, paper eq. 9), optionally
   under float16 autocast on CUDA, optionally pasted back into the photo (:mod:`megafr.reenact.paste`),
   and written as H.264 MP4 at the clip's frame rate, with the clip's audio track when it has one
   (ffmpeg from ``imageio-ffmpeg``; AAC).

The clip is decoded once, frame by frame: only the per-frame measurements and one batch of frames
are held in memory, so long clips need no more memory than short ones. Every input is checked
before any network runs, and the output is written atomically: a failure leaves no partial file.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix, rotation_matrix_to_axis_angle
from tqdm.auto import tqdm

from megafr.errors import InputError, MegaFRError, NoFaceError
from megafr.face3d import pose as posemod
from megafr.face3d.recon import FaceModel, FaceParams
from megafr.fileio import atomic_path
from megafr.imageio import images_to_tensor, load_image, tensors_to_images
from megafr.reenact.inference import Reenactor, SourceCode
from megafr.reenact.paste import paste_back
from megafr.smoothing import SmoothingConfig, hold_last, smooth
from megafr.video import MP4_BITEXACT, MP4_CODEC, MP4_PIXEL_FORMAT, MP4_QUALITY

VIDEO_SUFFIX = ".mp4"  # the output container
AUDIO_CODEC = "aac"  # the output's audio codec (MP4 cannot hold every input codec, e.g. PCM)
CHROMA_BLOCK = 2  # yuv420p needs even sides: odd outputs get one replicated row / column
MEASURE_BATCH = 32  # driving frames measured per forward pass of the 3D network
FFMPEG_ERROR_LINES = 3  # lines of ffmpeg's message kept in an error


@dataclass(frozen=True)
class DriveConfig:
    batch_size: int = 8  # driving frames reenacted per forward pass
    refine_steps: int = 1  # extra applications of F (paper eq. 9)
    pti_steps: int = 0  # pivotal tuning of the generator around the source first (0: off)
    relative: bool = False  # apply the clip's change from its first frame to the source's own pose/expression
    paste_back: bool = False  # warp each output into the source photo (its size) instead of writing the crop
    half: bool = False  # float16 autocast of E_FR and the generator on CUDA (ignored on the CPU)
    largest_face: bool = False  # source photo with several faces: reenact the largest (default: refuse)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)  # temporal filter of the measurements
    progress: bool = True  # tqdm progress bars on stderr

    def __post_init__(self):
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("refine_steps", "pti_steps"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")


# ------------------------------------------------------------------------------------------------ the clip
@dataclass(frozen=True)
class ClipInfo:
    path: Path
    fps: float  # frames per second (the output keeps it)
    size: tuple[int, int]  # (width, height) of a frame
    frames: int  # frame count estimated from the duration (for progress bars; exact after decoding)
    audio: Optional[str]  # codec of the first audio track, None without audio


def _clip_error(path: Path, problem: str) -> InputError:
    return InputError(f"cannot use video {path}: {problem}; give a video file ffmpeg can read (e.g. MP4 with "
                      "H.264), re-exporting it if it is damaged")


def _reader(path: Path) -> Iterator:
    import imageio_ffmpeg

    return imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:1]) or type(error).__name__


def probe_clip(path: str | Path) -> ClipInfo:
    """Frame rate, size, length and audio of a video file; InputError (one line) if ffmpeg cannot read it."""
    path = Path(path)
    if not path.exists():
        raise _clip_error(path, "no such file")
    if not path.is_file():
        raise _clip_error(path, "it is not a regular file")
    reader = _reader(path)
    try:
        meta = next(reader)
    except Exception as error:  # noqa: BLE001 - imageio-ffmpeg raises OSError/RuntimeError/StopIteration alike
        raise _clip_error(path, f"ffmpeg cannot read it ({_first_line(error)})") from error
    finally:
        reader.close()
    fps, size = float(meta.get("fps") or 0.0), tuple(meta.get("size") or (0, 0))
    if fps <= 0 or min(size) < 1:
        raise _clip_error(path, f"it holds no video stream with a frame rate (fps {fps}, size {size})")
    audio = (meta.get("audio_codec") or "").strip().rstrip(",") or None  # imageio-ffmpeg may keep a comma
    return ClipInfo(path, fps, (int(size[0]), int(size[1])), int(round(float(meta.get("duration") or 0) * fps)), audio)


def clip_frames(info: ClipInfo) -> Iterator[np.ndarray]:
    """Every frame of the clip, uint8 [H, W, 3]; a clip that stops decoding raises InputError."""
    width, height = info.size
    reader = _reader(info.path)
    count = 0
    try:
        next(reader)  # the stream description
        for buffer in reader:
            count += 1
            yield np.frombuffer(buffer, np.uint8).reshape(height, width, 3).copy()
    except MegaFRError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged stream fails in ffmpeg, reported as a read error
        raise _clip_error(info.path, f"decoding stopped after {count} frames ({_first_line(error)})") from error
    finally:
        reader.close()
    if count == 0:
        raise _clip_error(info.path, "it holds no frames")


# ------------------------------------------------------------------------------------------------ framing
@dataclass(frozen=True)
class SourceFace:
    photo: np.ndarray  # uint8 [H, W, 3] the source as given
    crop: np.ndarray  # uint8 [S, S, 3] what is inverted (the aligned face, or the photo itself)
    quad: Optional[np.ndarray]  # [4, 2] the crop's square in the photo; None when the photo is the crop


class SynthFramer:
    """Mini and smoke: SynthHeads images are framed already; frames must have the world's size."""

    def __init__(self, size: int, profile: str):
        self.size, self.profile = size, profile

    def _check(self, image: np.ndarray, name: str) -> np.ndarray:
        if image.shape[:2] != (self.size, self.size):
            raise InputError(f"{name} is {image.shape[1]}x{image.shape[0]} px; the {self.profile} world reenacts "
                             f"{self.size}x{self.size} SynthHeads images (data/prepare/...). For real photos and "
                             "videos use the paper profile (`python -m megafr profile paper`), which aligns them")
        return image

    def source(self, photo: np.ndarray, name: str, largest_face: bool = False) -> SourceFace:
        return SourceFace(photo, self._check(photo, name), None)

    def frame(self, image: np.ndarray, name: str) -> Optional[np.ndarray]:
        """Every frame counts as a face: the synthetic worlds have no face detector."""
        return self._check(image, name)


class PhotoFramer:
    """Paper: faces found by dlib and cropped the FFHQ way (:class:`megafr.datasets.align.FaceAligner`)."""

    def __init__(self, aligner):
        self.aligner = aligner

    def _faces(self, image: np.ndarray) -> list:
        return [d for d in self.aligner.detect_faces(image) if d.size >= self.aligner.min_face_size]

    def source(self, photo: np.ndarray, name: str, largest_face: bool = False) -> SourceFace:
        """The photo's one face (several: refused unless ``largest_face``, as the still-image command)."""
        from megafr.reenact.cli import FaceChoiceWarning
        import warnings

        faces = self._faces(photo)
        if len(faces) > 1:
            if not largest_face:
                raise NoFaceError(f"{len(faces)} faces found in {name}; crop the photo to one face, or pass "
                                  "--largest-face to reenact the largest one")
            warnings.warn(f"{len(faces)} faces found in {name}; reenacting the largest one", FaceChoiceWarning,
                          stacklevel=2)
        face = self.aligner.select_face(faces or self.aligner.detect_faces(photo), name)
        aligned = self.aligner.align_landmarks(photo, face.landmarks, source=name)
        return SourceFace(photo, aligned.image, aligned.quad)

    def frame(self, image: np.ndarray, name: str) -> Optional[np.ndarray]:
        """The largest face of a driving frame, aligned; None when the frame has none (or none that aligns:
        landmarks too degenerate to frame count as no face, so one bad frame never stops a clip)."""
        faces = self._faces(image)
        if not faces:
            return None
        try:
            return self.aligner.align_landmarks(image, faces[0].landmarks, source=name).image
        except InputError:
            return None


# ------------------------------------------------------------------------------------------------ motion
@dataclass(frozen=True)
class DrivingTrack:
    expression: np.ndarray  # [T, E] measured FLAME expression (rows without a face: zeros)
    pose: np.ndarray  # [T, 15] measured FLAME pose, axis-angle
    found: np.ndarray  # [T] bool, the frame had a face

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.flatnonzero(~self.found))


@torch.no_grad()
def measure_crops(face: FaceModel, crops: list[np.ndarray]) -> FaceParams:
    """FLAME parameters of framed crops uint8 [S, S, 3] by the 3D network (returned on the CPU)."""
    device = next(face.net.parameters()).device
    params = face.net(images_to_tensor(crops).to(device).clamp(-1, 1))
    return FaceParams(*(t.cpu() for t in params))


def measure_clip(face: FaceModel, frames: Iterable[np.ndarray], framer, name: str, total: int = 0,
                 progress: bool = True, batch: int = MEASURE_BATCH) -> DrivingTrack:
    """Frame every driving frame and measure it with the 3D network ``face``: FLAME expression and pose per
    frame, and which frames had a face."""
    n_expr, n_pose = face.config.n_expr, posemod.POSE_DIM
    expressions, poses, found, pending = [], [], [], []

    def flush():
        if pending:
            params = measure_crops(face, [crop for _, crop in pending])
            for row, (index, _) in enumerate(pending):
                expressions[index], poses[index] = params.expression[row].numpy(), params.pose[row].numpy()
            pending.clear()

    for index, image in enumerate(tqdm(frames, total=total or None, desc="measure driving", unit="frame",
                                       disable=not progress)):
        crop = framer.frame(image, f"{name} frame {index}")
        expressions.append(np.zeros(n_expr))
        poses.append(np.zeros(n_pose))
        found.append(crop is not None)
        if crop is not None:
            pending.append((index, crop))
        if len(pending) >= batch:
            flush()
    flush()
    return DrivingTrack(np.stack(expressions), np.stack(poses), np.asarray(found, dtype=bool))


def smoothed_motion(track: DrivingTrack, cfg: SmoothingConfig, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Expression [T, E] and pose [T, 15]: frames without a face hold the last measurement, then smoothed."""
    if not track.found.any():
        raise NoFaceError("no face found in any frame of the driving clip; use a clip that shows one face")
    values = hold_last(np.concatenate([track.expression, track.pose], axis=1), track.found)
    values = smooth(values, cfg, fps)
    n_expr = track.expression.shape[1]
    return values[:, :n_expr], values[:, n_expr:]


def relative_motion(expression: np.ndarray, pose: np.ndarray, source: FaceParams) -> tuple[np.ndarray, np.ndarray]:
    """The clip's change from its first frame applied to the source's own expression and pose (module docstring)."""
    expr = source.expression[0].numpy() + (expression - expression[:1])  # [T, E]
    out = source.pose[0].numpy() + (pose - pose[:1])  # jaw and eyes: shifted axis-angles; [T, 15]
    rotations = axis_angle_to_rotation_matrix(torch.as_tensor(pose[:, posemod.GLOBAL], dtype=torch.float32))
    first = rotations[:1].transpose(1, 2)  # R_0^T
    own = axis_angle_to_rotation_matrix(source.pose[:1, posemod.GLOBAL].float())  # R_s
    out[:, posemod.GLOBAL] = rotation_matrix_to_axis_angle((rotations @ first @ own).contiguous()).numpy()
    return expr, out


# ------------------------------------------------------------------------------------------------ output
def reenacted_frames(reenactor: Reenactor, code: SourceCode, expression: np.ndarray, pose: np.ndarray,
                     cfg: DriveConfig) -> Iterator[np.ndarray]:
    """The source reenacted by each row of ``expression`` [T, E] / ``pose`` [T, 15], uint8 [S, S, 3] each."""
    total = len(expression)
    with tqdm(total=total, desc="reenact", unit="frame", disable=not cfg.progress) as bar:
        for start in range(0, total, cfg.batch_size):
            part = slice(start, start + cfg.batch_size)
            out = reenactor.reenact_code(code, torch.as_tensor(expression[part], dtype=torch.float32),
                                         torch.as_tensor(pose[part], dtype=torch.float32), cfg.refine_steps, cfg.half)
            bar.update(len(out.image))
            yield from tensors_to_images(out.image)


def even_frame(frame: np.ndarray) -> np.ndarray:
    """Pad [H, W, 3] to even sides by replicating the last row / column (H.264 in yuv420p needs them)."""
    pad_h, pad_w = -frame.shape[0] % CHROMA_BLOCK, -frame.shape[1] % CHROMA_BLOCK
    if not pad_h and not pad_w:
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _write_stream(path: Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Frames uint8 [H, W, 3] (one size) as an H.264 stream in an MP4 file; returns the count."""
    import imageio_ffmpeg

    writer, count = None, 0
    try:
        for frame in frames:
            frame = even_frame(frame)
            if writer is None:
                writer = imageio_ffmpeg.write_frames(str(path), (frame.shape[1], frame.shape[0]), fps=fps,
                                                     codec=MP4_CODEC, quality=MP4_QUALITY,
                                                     pix_fmt_out=MP4_PIXEL_FORMAT, macro_block_size=1,
                                                     output_params=["-f", "mp4", *MP4_BITEXACT])
                writer.send(None)  # start ffmpeg
            writer.send(np.ascontiguousarray(frame))
            count += 1
    finally:
        if writer is not None:
            writer.close()
    if count == 0:
        raise InputError("no frames to write")
    return count


def mux_audio(video: Path, audio_source: Path, out: Path, seconds: float) -> None:
    """``video``'s picture with ``audio_source``'s first audio track (AAC) into ``out``; the audio is cut at
    ``seconds`` (the video's length) and a shorter one leaves the rest silent, so no frame is ever dropped."""
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", str(video), "-i", str(audio_source),
               "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", AUDIO_CODEC, "-t", f"{seconds:.6f}",
               *MP4_BITEXACT, "-f", "mp4", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        message = " ".join(done.stderr.strip().splitlines()[-FFMPEG_ERROR_LINES:])
        raise _clip_error(audio_source, f"ffmpeg could not copy its audio track ({message})")


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float,
                audio_from: Optional[Path] = None) -> tuple[Path, int]:
    """Write frames as MP4 at ``fps`` (with ``audio_from``'s audio track if given), atomically; returns
    (path, frame count)."""
    path = Path(path)
    with atomic_path(path) as temp:
        if audio_from is None:
            count = _write_stream(temp, frames, fps)
        else:
            with tempfile.TemporaryDirectory(prefix="megafr-drive-") as scratch:
                silent = Path(scratch) / f"video{VIDEO_SUFFIX}"
                count = _write_stream(silent, frames, fps)
                mux_audio(silent, audio_from, temp, count / fps)
    return path, count


# ------------------------------------------------------------------------------------------------ the command
@dataclass(frozen=True)
class DriveReport:
    out: Path
    frames: int  # frames written
    fps: float
    missing: tuple[int, ...]  # driving frames without a face (the last pose was held)
    audio: Optional[str]  # the driving clip's audio codec, copied as AAC; None: no audio
    paste_back: str  # "off", "affine" (real photo) or "identity" (already framed synthetic image)
    precision: str  # "float32", "float16 autocast", or why --half was not used
    size: tuple[int, int]  # (width, height) of the output frames before even padding

    def lines(self) -> list[str]:
        """What the command prints."""
        shown = ", ".join(map(str, self.missing[:10])) + (", ..." if len(self.missing) > 10 else "")
        faces = (f"{len(self.missing)} frames without a face held the last pose (frames {shown})"
                 if self.missing else "a face in every frame")
        audio = f"audio ({self.audio}) kept as {AUDIO_CODEC}" if self.audio else "no audio track"
        paste = {"off": "aligned crop", "affine": "pasted back into the source photo",
                 "identity": "paste-back is the identity here (synthetic images are framed already)"}[self.paste_back]
        return [f"{self.frames} frames at {self.fps:g} fps, {self.size[0]}x{self.size[1]} px ({paste}); {faces}; "
                f"{audio}; {self.precision}", f"wrote {self.out}"]


def check_video_output(out: str | Path, inputs: tuple[str | Path, ...]) -> Path:
    """Refuse an output path that is not a new .mp4 file name."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"cannot write video {out}: it is a folder; give a file name such as {out / 'result.mp4'}")
    if out.suffix.lower() != VIDEO_SUFFIX:
        raise InputError(f"cannot write video {out}: unknown video extension {out.suffix.lower()!r}; use .mp4")
    for given in inputs:
        if Path(given).exists() and out.exists() and out.resolve() == Path(given).resolve():
            raise InputError(f"--out {out} is also an input file and would be overwritten; choose another name")
    return out


def _precision(cfg: DriveConfig, reenactor: Reenactor) -> str:
    if not cfg.half:
        return "float32"
    return "float16 autocast" if reenactor.device.type == "cuda" else "float32 (--half needs CUDA; none here)"


def drive(reenactor: Reenactor, framer, photo: np.ndarray, clip: ClipInfo, out: str | Path, cfg: DriveConfig,
          source_name: str = "source") -> DriveReport:
    """Reenact ``photo`` by every frame of ``clip`` and write the video to ``out`` (module docstring)."""
    face = framer.source(photo, source_name, cfg.largest_face)
    code = reenactor.encode_source(images_to_tensor([face.crop]), cfg.pti_steps)
    track = measure_clip(reenactor.frozen.face, clip_frames(clip), framer, clip.path.name, clip.frames, cfg.progress)
    expression, pose = smoothed_motion(track, cfg.smoothing, clip.fps)
    if cfg.relative:
        expression, pose = relative_motion(expression, pose, FaceParams(*(t.cpu() for t in code.params)))
    frames: Iterable[np.ndarray] = reenacted_frames(reenactor, code, expression, pose, cfg)
    paste = "off"
    if cfg.paste_back:
        paste = "affine" if face.quad is not None else "identity"
        frames = (paste_back(face.photo, crop, face.quad) for crop in frames)
    size = (face.photo.shape[1], face.photo.shape[0]) if cfg.paste_back else (face.crop.shape[1], face.crop.shape[0])
    path, count = write_video(out, frames, clip.fps, clip.path if clip.audio else None)
    return DriveReport(path, count, clip.fps, track.missing, clip.audio, paste, _precision(cfg, reenactor), size)


def reenact_still(reenactor: Reenactor, framer, photo: np.ndarray, target: np.ndarray, cfg: DriveConfig,
                  source_name: str = "source", target_name: str = "target") -> np.ndarray:
    """One target image instead of a clip: uint8 [S, S, 3], or the photo's size with ``paste_back``."""
    if cfg.relative:
        raise InputError("--relative needs a driving clip (it applies the change from the clip's first frame); "
                         "use --driving CLIP, or drop --relative")
    face = framer.source(photo, source_name, cfg.largest_face)
    crop = framer.frame(target, target_name)
    if crop is None:
        raise NoFaceError(f"no face found in {target_name}; use a photo with one visible frontal-ish face")
    code = reenactor.encode_source(images_to_tensor([face.crop]), cfg.pti_steps)
    params = measure_crops(reenactor.frozen.face, [crop])
    expression, pose = params.expression.numpy(), params.pose.numpy()
    out = next(reenacted_frames(reenactor, code, expression, pose, cfg))
    return paste_back(face.photo, out, face.quad) if cfg.paste_back else out


def _stage():
    """The ``train_reenact`` configuration ``dvc repro`` runs, after the paper profile's file check."""
    from megafr.reenact import cli

    stage = cli.stage_config()
    if stage.profile == "paper":
        from megafr import preflight

        preflight.check(stages=(preflight.REENACT_CLI,))
    return stage


def _networks(stage):
    """The trained MegaFR of ``stage`` (refused when missing or stale) and the framer of its world."""
    from megafr.reenact import cli

    reenactor = cli.load_reenactor(stage)
    return reenactor, _framer(stage.profile, reenactor.model.generator.size)


def _framer(profile: str, size: int):
    if profile == "paper":
        from megafr.datasets.align import FaceAligner

        return PhotoFramer(FaceAligner(size, multiple="largest"))
    return SynthFramer(size, profile)


def drive_in_notebook(reenactor: Reenactor, profile: str, photo: np.ndarray, clip_path: str | Path,
                      out: str | Path, **options) -> DriveReport:
    """:func:`drive` with the framer of ``profile``'s world and :class:`DriveConfig` ``options`` (no progress bars)."""
    cfg = DriveConfig(**{"progress": False, **options})
    framer = _framer(profile, reenactor.model.generator.size)
    return drive(reenactor, framer, photo, probe_clip(clip_path), check_video_output(out, (clip_path,)), cfg)


def drive_files(source: str, driving: str, out: str, cfg: DriveConfig) -> DriveReport:
    """``python -m megafr reenact --source PHOTO --driving CLIP --out OUT.mp4``: check every input (output
    path, photo, clip, the profile's files, the trained networks), then :func:`drive`."""
    out_path = check_video_output(out, (source, driving))
    photo, clip = load_image(source), probe_clip(driving)
    reenactor, framer = _networks(_stage())
    return drive(reenactor, framer, photo, clip, out_path, cfg, str(source))


def still_files(source: str, target: str, out: str, cfg: DriveConfig) -> Path:
    """``reenact --source A --target B --out C.png --paste-back``: the still-image command with paste-back."""
    from megafr.imageio import save_image
    from megafr.reenact import cli

    out_path = cli.check_output(out, (source, target))
    photo, target_image = load_image(source), load_image(target)
    reenactor, framer = _networks(_stage())
    result = reenact_still(reenactor, framer, photo, target_image, cfg, str(source), str(target))
    return save_image(out_path, result)
