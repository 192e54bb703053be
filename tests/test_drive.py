"""Driving a photo by a video, and pasting the result back into the photo.

- the temporal filters and the hold-last policy on known tracks; relative motion;
- the split reenactment API (source encoded once) against the one-call ``Reenactor.reenact``;
- the command in the smoke world with the tiny random networks of ``conftest``: frame rate and count
  kept, a clip with audio (AAC in MP4, PCM in Matroska) and one without, unreadable clips (one line,
  exit status 2, no output), wrong frame sizes, paste-back as the identity;
- the paper world on the CPU: the official file layouts written at 32 px with the study's own
  ``save_*`` functions, a real photo (scikit-image's astronaut, public domain), a driving clip of odd
  frame size written from it with frames that hold no face;
- paste-back geometry: an aligned crop pasted back unchanged lands within a pixel of the face.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from megafr.datasets.align import FaceAligner
from megafr.errors import InputError, NoFaceError
from megafr.face3d import headmodel
from megafr.face3d import pose as posemod
from megafr.face3d.flame import FLAME
from megafr.face3d.recon import FaceModel, FaceParams, ReconConfig, save_checkpoint_dict
from megafr.nets.checkpoints import save_arcface, save_encoder, save_stylegan2
from megafr.nets.encoders import Encoder4Editing, EncoderConfig, InversionNet, LatentCodesDiscriminator
from megafr.nets.irse import ArcFace, ArcFaceConfig
from megafr.nets.stylegan2 import Generator
from megafr.reenact import cli, drive, paste
from megafr.reenact import train as rt
from megafr.reenact.model import MegaFR
from megafr.smoothing import SmoothingConfig, hold_last, one_euro, savgol, smooth
from tests.conftest import TINY_BODY, TINY_SIZE, TINY_STYLE
from tests.test_reliability import _cli, _no_debris, _png, _study, smoke, tiny_reenactor  # noqa: F401 (fixtures)

FPS = 12  # frame rate of the test clips (not a common default, so that keeping it is a real check)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ clips
def _ffmpeg(*args: str) -> None:
    done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *args], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def _silent_clip(path: Path, frames: np.ndarray, fps: int = FPS) -> Path:
    """Frames uint8 [T, H, W, 3] as a video; odd sizes in yuv444p (4:2:0 needs even sides)."""
    height, width = frames.shape[1:3]
    odd = height % 2 or width % 2
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264", macro_block_size=1,
                                         pix_fmt_out="yuv444p" if odd else "yuv420p", output_params=["-v", "error"])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def _clip_with_audio(path: Path, frames: np.ndarray, source: str, codec: str) -> Path:
    """A clip whose audio comes from an ffmpeg lavfi source (``sine=...`` or ``anullsrc``)."""
    silent = _silent_clip(path.with_name("silent_" + path.stem + ".mp4"), frames)
    _ffmpeg("-i", str(silent), "-f", "lavfi", "-i", source, "-map", "0:v", "-map", "1:a", "-c:v", "copy",
            "-c:a", codec, "-shortest", str(path))
    return path


def _random_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _streams(path: Path) -> dict:
    """Frame count, frame rate, size and audio codec of a written video."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    return {"frames": count, "fps": meta["fps"], "size": tuple(meta["size"]), "audio": drive.probe_clip(path).audio}


# ------------------------------------------------------------------------------------------------ smoothing
def test_hold_last_fills_gaps_and_leading_frames_and_refuses_all_missing():
    values = np.arange(6, dtype=float)[:, None] * [1.0, 10.0]  # [6, 2]
    found = np.array([False, False, True, False, True, False])
    filled = hold_last(values, found)
    assert filled[:, 0].tolist() == [2, 2, 2, 2, 4, 4]  # leading frames take the first face, gaps the last
    with pytest.raises(InputError, match="no frame has a measurement"):
        hold_last(values, np.zeros(6, bool))


def test_filters_keep_smooth_motion_and_remove_jitter():
    t = np.arange(150) / 30.0
    truth = np.stack([np.sin(2 * np.pi * 0.2 * t), 0.1 * t ** 2], axis=1)  # [150, 2]
    noisy = truth + np.random.default_rng(0).normal(0, 0.1, truth.shape)
    quadratic = 0.5 * t[:, None] ** 2 + 3 * t[:, None]
    assert np.allclose(savgol(quadratic, 7, 2), quadratic)  # polynomials of the filter's order pass unchanged
    jitter = np.abs(np.diff(noisy, 2, axis=0)).mean()
    error = np.abs(noisy - truth).mean()
    for filtered in (savgol(noisy, 9, 2), one_euro(noisy, 30.0, 1.0, 0.5),
                     smooth(noisy, SmoothingConfig("one-euro", min_cutoff=1.0, beta=0.5), 30.0)):
        assert np.abs(np.diff(filtered, 2, axis=0)).mean() < 0.3 * jitter  # jitter (second difference) cut
        assert np.abs(filtered - truth).mean() < error  # and closer to the truth
    ramp = np.linspace(0.0, 3.0, 60)[:, None]  # fast, noise-free motion: a higher beta lags less
    assert np.abs(one_euro(ramp, 30.0, 1.0, 1.0) - ramp).mean() < np.abs(one_euro(ramp, 30.0, 1.0, 0.0) - ramp).mean()
    constant = np.full((10, 3), 2.5)
    assert np.allclose(one_euro(constant, 25.0, 1.0, 0.1), constant)
    assert np.array_equal(savgol(noisy[:2], 7, 2), noisy[:2])  # too short for the polynomial: unchanged
    assert savgol(noisy[:5], 7, 2).shape == (5, 2)  # the window shrinks to the clip
    assert np.array_equal(smooth(noisy, SmoothingConfig("none"), 30.0), noisy)
    with pytest.raises(InputError, match="odd window"):
        SmoothingConfig(window=6)
    with pytest.raises(InputError, match="smoothing method"):
        SmoothingConfig(method="kalman")


def test_relative_motion_starts_from_the_source_and_moves_like_the_clip():
    g = torch.Generator().manual_seed(0)
    frames = 5
    yaw = torch.linspace(0.0, 0.4, frames)
    pose = torch.zeros(frames, posemod.POSE_DIM)
    pose[:, posemod.GLOBAL] = posemod.euler_to_axis_angle(yaw, torch.zeros(frames), torch.zeros(frames))
    pose[:, posemod.JAW.start] = torch.linspace(0.1, 0.3, frames)
    expression = torch.randn(frames, 4, generator=g)
    source_pose = torch.zeros(1, posemod.POSE_DIM)
    source_pose[:, posemod.GLOBAL] = posemod.euler_to_axis_angle(torch.tensor([-0.5]), torch.tensor([0.2]),
                                                                 torch.tensor([0.0]))
    source = FaceParams(torch.zeros(1, 3), torch.randn(1, 4, generator=g), source_pose, torch.ones(1),
                        torch.zeros(1, 2))
    expr, out = drive.relative_motion(expression.numpy(), pose.numpy(), source)
    assert np.allclose(expr[0], source.expression[0]) and np.allclose(out[0], source_pose[0], atol=1e-5)
    assert np.allclose(expr - expr[:1], (expression - expression[:1]).numpy(), atol=1e-6)
    angles = posemod.head_pose_degrees(torch.as_tensor(out, dtype=torch.float32))
    start = posemod.head_pose_degrees(source_pose)
    # a pure yaw of the driver turns the source about its vertical axis: pitch stays, yaw adds up
    assert torch.allclose(angles[:, 0] - start[:, 0], torch.rad2deg(yaw), atol=1e-3)
    assert torch.allclose(angles[:, 1], start[:, 1].expand(frames), atol=1e-3)
    assert np.allclose(out[:, posemod.JAW.start] - out[0, posemod.JAW.start], (pose[:, 6] - pose[0, 6]).numpy())


def test_split_api_reenacts_like_one_call(tiny_frozen):
    from megafr.reenact.inference import Reenactor

    torch.manual_seed(0)
    reenactor = Reenactor(MegaFR(tiny_frozen.inversion, tiny_frozen.generator), tiny_frozen)
    sources = torch.rand(1, 3, TINY_SIZE, TINY_SIZE) * 2 - 1
    targets = torch.rand(3, 3, TINY_SIZE, TINY_SIZE) * 2 - 1
    whole = reenactor.reenact(sources.expand(3, -1, -1, -1), targets)
    code = reenactor.encode_source(sources)
    measured = reenactor.measure(targets)
    split = reenactor.reenact_code(code, measured.expression, measured.pose, half=True)  # half: ignored on CPU
    assert torch.allclose(whole.image, split.image, atol=1e-5)
    with pytest.raises(InputError, match="one image"):
        reenactor.encode_source(targets)


# ------------------------------------------------------------------------------------------------ smoke world
def _drive(capsys, source, clip, out, *extra):
    return _cli(capsys, "--source", str(source), "--driving", str(clip), "--out", str(out), "--no-progress", *extra)


def test_drive_keeps_rate_and_frame_count_without_audio(smoke, capsys, tiny_reenactor):
    source = _png(smoke / "source.png")
    clip = _silent_clip(smoke / "clip.mp4", _random_frames(9, 32))
    for extra in ((), ("--smooth", "one-euro", "--relative", "--batch-size", "4", "--half")):
        code, out, err = _drive(capsys, source, clip, smoke / "out" / "result.mp4", *extra)
        assert code == 0, err
        assert "9 frames at 12 fps, 32x32 px" in out and "a face in every frame" in out and "no audio" in out
        assert out.strip().endswith("wrote " + str(smoke / "out" / "result.mp4"))
        streams = _streams(smoke / "out" / "result.mp4")
        assert streams == {"frames": 9, "fps": 12.0, "size": (32, 32), "audio": None}
        _no_debris(smoke / "out")
    assert "float32 (--half needs CUDA" in out


@pytest.mark.parametrize("name,source,codec", [("sine.mp4", "sine=frequency=440:duration=5", "aac"),
                                               ("silence.mkv", "anullsrc=r=22050:cl=mono", "pcm_s16le")])
def test_drive_copies_the_clips_audio_track(smoke, capsys, tiny_reenactor, name, source, codec):
    clip = _clip_with_audio(smoke / name, _random_frames(12, 32), source, codec)
    assert _streams(clip)["audio"] == codec
    code, out, err = _drive(capsys, _png(smoke / "source.png"), clip, smoke / "result.mp4", "--paste-back")
    assert code == 0, err
    assert f"audio ({codec}) kept as aac" in out and "paste-back is the identity here" in out
    streams = _streams(smoke / "result.mp4")
    assert streams["audio"] == "aac" and streams["frames"] == 12 and streams["fps"] == 12.0
    _no_debris(smoke)


@pytest.mark.parametrize("kind,words", [("garbage", "ffmpeg cannot read it"), ("truncated", "ffmpeg cannot read it"),
                                        ("empty", "ffmpeg cannot read it"), ("missing", "no such file"),
                                        ("folder", "not a regular file")])
def test_unreadable_clip_is_one_line_exit_2_and_no_output(smoke, capsys, tiny_reenactor, kind, words):
    clip = smoke / "clip.mp4"
    if kind == "garbage":
        clip.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is no video at all" * 20)
    elif kind == "truncated":
        data = _silent_clip(smoke / "whole.mp4", _random_frames(6, 32)).read_bytes()
        clip.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        clip.write_bytes(b"")
    elif kind == "folder":
        clip.mkdir()
    code, out, err = _drive(capsys, _png(smoke / "source.png"), clip, smoke / "out" / "result.mp4")
    assert code == 2 and out == ""
    assert err.startswith(f"error: cannot use video {clip}") and err.count("\n") == 1, err
    assert words in err and ";" in err
    assert not (smoke / "out").exists()


def test_drive_refuses_bad_outputs_and_other_sizes_before_writing(smoke, capsys, tiny_reenactor):
    source = _png(smoke / "source.png")
    clip = _silent_clip(smoke / "clip.mp4", _random_frames(4, 48))
    code, _, err = _drive(capsys, source, clip, smoke / "result.gif")
    assert code == 2 and "unknown video extension '.gif'; use .mp4" in err
    code, _, err = _drive(capsys, source, clip, clip)
    assert code == 2 and "is also an input file" in err
    code, _, err = _drive(capsys, source, clip, smoke / "result.mp4")
    assert code == 2 and "frame 0 is 48x48 px; the smoke world reenacts 32x32" in err and err.count("\n") == 1
    assert not (smoke / "result.mp4").exists()
    _no_debris(smoke)
    code, _, err = _cli(capsys, "--source", str(source), "--target", str(source), "--out", "o.png", "--relative")
    assert code == 2 and "--relative needs --driving" in err


def test_still_paste_back_is_the_identity_on_synthetic_images(smoke, capsys, tiny_reenactor):
    source, target = _png(smoke / "source.png"), _png(smoke / "target.png", seed=1)
    code, out, err = _cli(capsys, "--source", str(source), "--target", str(target), "--out", "pasted.png",
                          "--paste-back", "--no-progress")
    assert code == 0 and out.strip() == "wrote pasted.png", err
    code, _, err = _cli(capsys, "--source", str(source), "--target", str(target), "--out", "plain.png")
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(smoke / "pasted.png")), np.asarray(Image.open(smoke / "plain.png")))


# ------------------------------------------------------------------------------------------------ paste-back geometry
@pytest.fixture(scope="module")
def astronaut():
    from skimage.data import astronaut as photo

    return np.ascontiguousarray(photo()[:, 40:459])  # 419 px wide: odd


@pytest.mark.parametrize("size", [64, 256])
def test_pasted_unchanged_crop_lands_on_the_face(astronaut, size):
    from skimage.registration import phase_cross_correlation

    aligner = FaceAligner(size)
    face = aligner.align(astronaut)
    back = paste.crop_to_photo_points(face.landmarks, face.quad, size)
    assert np.abs(back - face.source_landmarks).max() < 1e-6  # the two coordinate maps are inverses
    pasted = paste.paste_back(astronaut, face.image, face.quad)
    assert pasted.shape == astronaut.shape
    changed = np.abs(pasted.astype(int) - astronaut).max(axis=-1) > 0
    rows, cols = np.nonzero(changed)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    eyes = face.source_landmarks[36:48].mean(axis=0)
    assert rows.min() < eyes[1] < rows.max() and cols.min() < eyes[0] < cols.max()  # the mask covers the face
    shift, _, _ = phase_cross_correlation(astronaut[box].mean(-1), pasted[box].mean(-1), upsample_factor=20)
    assert np.hypot(*shift) < 1.0
    redetected = aligner.detect(pasted)[0]
    assert np.linalg.norm(redetected - face.source_landmarks, axis=1).mean() < 1.0
    outside = ~changed
    assert np.array_equal(pasted[outside], astronaut[outside])  # the photo is untouched outside the mask
    left, top, right, bottom = paste.face_box(face.quad, (astronaut.shape[1], astronaut.shape[0]))
    whole = paste.warp_to_photo(face.image, face.quad, (0, 0, astronaut.shape[1], astronaut.shape[0]))
    assert np.array_equal(whole[top:bottom, left:right], paste.warp_to_photo(face.image, face.quad,
                                                                           (left, top, right, bottom)))
    assert not whole[:top].any() and not whole[bottom:].any()  # nothing of the square outside its box


def test_face_mask_is_soft_and_inside_the_crop():
    mask = paste.face_mask(64)
    assert mask.dtype == np.float32 and mask.shape == (64, 64)
    assert mask[36, 32] > 0.99 and mask[0].max() < 0.01 and mask[:, 0].max() < 0.01
    assert ((mask > 0.05) & (mask < 0.95)).sum() > 64  # a feathered edge, not a hard cut


# ------------------------------------------------------------------------------------------------ paper world
@pytest.fixture(scope="module")
def paper_study(tmp_path_factory):
    """A paper-profile study whose official weight files (StyleGAN2, e4e, ArcFace, FLAME, the 3D network)
    and trained E_FR are tiny random networks at 32 px, saved in their release layouts."""
    root = _study(tmp_path_factory.mktemp("paper"), "paper")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        cfg = cli.stage_config()
        head = headmodel.write_head_model(root / "head")
        Path(cfg.model_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(head.model_path, cfg.model_path)
        shutil.copy(head.landmark_path, cfg.landmark_path)
        torch.manual_seed(0)
        flame = FLAME.from_files(cfg.model_path, cfg.landmark_path, headmodel.N_IDENTITY, headmodel.N_EXPRESSION)
        face = FaceModel(ReconConfig(headmodel.N_IDENTITY, headmodel.N_EXPRESSION, TINY_SIZE, input_size=16, width=8),
                         flame)
        generator = Generator(TINY_SIZE, TINY_STYLE, n_mlp=2, channel_multiplier=1, max_channels=32)
        encoder = EncoderConfig(input_size=TINY_SIZE, n_latent=generator.n_latent, style_dim=TINY_STYLE, body=TINY_BODY)
        inversion = InversionNet(Encoder4Editing(encoder), torch.randn(generator.n_latent, TINY_STYLE) * 0.1)
        save_stylegan2(cfg.generator_path, generator, torch.zeros(TINY_STYLE))
        save_encoder(cfg.e4e_path, inversion, discriminator=LatentCodesDiscriminator(style_dim=TINY_STYLE))
        Path(cfg.face3d_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(save_checkpoint_dict(face, 0), cfg.face3d_path)
        save_arcface(cfg.idnet_path, ArcFace(ArcFaceConfig(input_size=TINY_SIZE, embedding_dim=16, body=TINY_BODY)))
        model = MegaFR(inversion, generator)
        rt.save_checkpoint(rt.checkpoint_path(cfg), model, torch.optim.Adam(model.encoder.parameters()), cfg, cfg.steps)
    finally:
        os.chdir(cwd)
    return root


def _moving_face_clip(photo: np.ndarray, frames: int, blank: tuple[int, ...], size=(301, 277)) -> np.ndarray:
    """A clip from a real photo: the head turns a few degrees and drifts; ``blank`` frames hold no face."""
    width, height = size
    centre = (230, 150)  # near the astronaut's face in the 419 px crop
    out = []
    for t in range(frames):
        turned = Image.fromarray(photo).rotate(4.0 * np.sin(t / 2.0), center=centre, resample=Image.Resampling.BILINEAR)
        left, top = centre[0] - width // 2 + 3 * t, centre[1] - height // 2 + 2 * (t % 3)
        frame = np.asarray(turned.crop((left, top, left + width, top + height)))
        out.append(np.full_like(frame, 120) if t in blank else frame)
    return np.stack(out)


def test_paper_world_drives_a_real_photo_with_faceless_frames_and_odd_sizes(paper_study, astronaut, monkeypatch,
                                                                           capsys):
    monkeypatch.chdir(paper_study)
    source = paper_study / "astronaut.png"
    Image.fromarray(astronaut).save(source)
    clip = _silent_clip(paper_study / "driving.mp4", _moving_face_clip(astronaut, 8, blank=(0, 1, 5)))
    assert _streams(clip)["size"] == (301, 277)
    code, out, err = _drive(capsys, source, clip, "pasted.mp4", "--paste-back", "--relative")
    assert code == 0, err
    assert "8 frames at 12 fps, 419x512 px (pasted back into the source photo)" in out
    assert "3 frames without a face held the last pose (frames 0, 1, 5)" in out
    streams = _streams(paper_study / "pasted.mp4")
    assert streams["frames"] == 8 and streams["size"] == (420, 512)  # odd width: one replicated column
    code, out, err = _drive(capsys, source, clip, "crop.mp4")
    assert code == 0 and "32x32 px (aligned crop)" in out, err
    code, out, err = _cli(capsys, "--source", str(source), "--target", str(source), "--out", "still.png",
                          "--paste-back")
    assert code == 0, err
    assert Image.open(paper_study / "still.png").size == (419, 512)


def test_paper_world_clip_without_any_face_is_refused(paper_study, astronaut, monkeypatch, capsys):
    monkeypatch.chdir(paper_study)
    source = paper_study / "astronaut.png"
    Image.fromarray(astronaut).save(source)
    clip = _silent_clip(paper_study / "empty.mp4", np.full((4, 64, 64, 3), 90, np.uint8))
    code, _, err = _drive(capsys, source, clip, "none.mp4")  # stdout: the network loader's LPIPS note
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "no face found in any frame of the driving clip" in err
    assert not (paper_study / "none.mp4").exists()
    with pytest.raises(NoFaceError):
        drive.smoothed_motion(drive.DrivingTrack(np.zeros((2, 3)), np.zeros((2, 15)), np.zeros(2, bool)),
                              SmoothingConfig(), 25.0)


# ------------------------------------------------------------------------------------------------ mini world, benchmark
@pytest.fixture(scope="module")
def talking_world(tmp_path_factory):
    """A tiny prepared SynthHeads world (prepare's own code) holding the talking-head sequence."""
    from megafr.datasets.prepare import PrepareConfig, build_synthheads

    root = tmp_path_factory.mktemp("world")
    head = root / "prepare" / "head_model"
    build_synthheads(PrepareConfig(
        profile="smoke", seed=0, model_path=str(head / headmodel.MODEL_FILE),
        landmark_path=str(head / headmodel.LANDMARK_FILE), source="synthetic", image_size=TINY_SIZE,
        n_train_identities=2, n_test_identities=2, images_per_identity=2, n_idnet_identities=2,
        idnet_images_per_identity=2, n_cross_pairs=2, n_self_pairs=1, n_frontal=2, n_eye_sources=1, talking_frames=20,
        max_yaw_deg=60.0, max_pitch_deg=30.0, max_roll_deg=15.0, photos_dir="", test_photos_dir="", photos_aligned=False,
        align_workers=0, render_workers=1, write_stand_ins=False, out_dir=str(root / "prepare")))
    return root / "prepare"


def test_smoothing_study_against_the_known_truth(talking_world, tiny_frozen, tmp_path):
    from megafr.reenact import drive_eval

    truth = drive_eval.load_talking(talking_world)
    assert truth.frames.shape == (20, TINY_SIZE, TINY_SIZE, 3) and truth.pose.shape == (20, posemod.POSE_DIM)
    face = tiny_frozen.face
    perfect = drive.DrivingTrack(truth.expression, truth.pose, np.ones(20, bool))
    table = drive_eval.smoothing_study(face, truth, perfect).set_index("setting")
    exact = table.loc["none"]
    assert exact["head_pose_deg"] < 1e-3 and exact["jaw_deg"] < 1e-3 and exact["landmark_error_px"] < 1e-4
    assert exact["landmark_jitter_px"] == pytest.approx(exact["truth_jitter_px"])
    jitter = np.random.default_rng(0).normal(0, 0.02, truth.pose.shape)  # radians
    noisy = drive.DrivingTrack(truth.expression, truth.pose + jitter, np.ones(20, bool))
    table = drive_eval.smoothing_study(face, truth, noisy).set_index("setting")
    assert table.loc["savgol_7", "landmark_jitter_px"] < table.loc["none", "landmark_jitter_px"]
    assert table.loc["savgol_7", "head_pose_deg"] < table.loc["none", "head_pose_deg"]
    measured = drive_eval.measure_talking_clip(face, truth, tmp_path / "talking.mp4")
    assert measured.pose.shape == (20, posemod.POSE_DIM) and measured.found.all()
    assert len(drive_eval.driving_still(face, truth, measured, SmoothingConfig()).axes) == 3 * 6


def test_paste_still_draws_four_panels(astronaut):
    import matplotlib.pyplot as plt

    from megafr.reenact import drive_eval

    face = FaceAligner(64).align(astronaut)
    assert len(drive_eval.paste_still(astronaut, face.image, face.quad).axes) == 4
    plt.close("all")


def test_result_still_shows_the_source_and_the_driven_frames(tmp_path):
    import matplotlib.pyplot as plt

    from megafr.reenact import drive_eval

    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    driving, result = (rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    fig = drive_eval.result_still(source, driving, result, frames_shown=3)
    assert len(fig.axes) == 2 * 4  # source column + 3 frames, two rows
    plt.close("all")


def test_driving_benchmark_case_and_its_table(tmp_path):
    from benchmarks import driving, report
    from benchmarks.worlds import Settings, write_head_model

    settings = Settings(quick=True, repeats=1, threads=1, head_dir=str(write_head_model(tmp_path / "head")),
                        work_dir=str(tmp_path / "work"))
    result = driving.driving(settings)
    assert result["frames"] == 6 and all(row["frames_per_s"] > 0 for row in result["rows"].values())
    assert result["paste_back"]["frames_per_s"] > 0 and result["decode_and_measure"]["frames_per_s"] > 0
    rows = report._driving_rows(result)
    assert len(rows) == len(result["rows"]) + 2 and "frames/s" in rows[0][3]
