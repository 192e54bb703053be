"""Reliability: bad input at every door, interrupted training, damaged or stale checkpoints.

- the ``reenact`` command: unreadable, truncated, tiny, huge, wrong-size and odd-mode images, bad output
  paths, missing / truncated / foreign / unfinished / stale E_FR checkpoints, several faces on paper; every
  failure is one ``error:`` line naming the problem and the fix, exit status 2, and no output file;
- the prepare stage's photo folder, parameters out of range for every training stage, atomic checkpoint writes;
- a real interruption: the train_face3d training runs in a subprocess that is SIGKILLed after its first
  checkpoint, is started again, and ends with the weights of an uninterrupted run, bit for bit;
- hypothesis fuzzing of alignment by given landmarks and of align_folder over random files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from megafr.__main__ import main
from megafr.config import build_config, study_root
from megafr.datasets.align import FaceAligner, align_folder
from megafr.errors import CheckpointError, InputError, MissingFileError, NoFaceError
from megafr.reenact import cli
from megafr.reenact.inference import Reenactor
from megafr.reenact.model import MegaFR
from megafr.reenact.train import checkpoint_path

ROOT = study_root(__file__)
SMOKE_SIZE = 32  # the smoke world's image side (profiles/smoke.yaml, prepare.image_size)


# ------------------------------------------------------------------------------------------ helpers
def _study(root: Path, profile: str) -> Path:
    """A scratch study: dvc.yaml, the profiles, params.yaml = ``profile``, the train_reenact notebook."""
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(ROOT / "profiles", root / "profiles")
    shutil.copy(ROOT / "profiles" / f"{profile}.yaml", root / "params.yaml")
    (root / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "06_train_reenact.ipynb", root / "notebooks")
    return root


@pytest.fixture
def smoke(tmp_path, monkeypatch):
    monkeypatch.chdir(_study(tmp_path, "smoke"))
    return tmp_path


def _png(path: Path, size: int = SMOKE_SIZE, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["reenact", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _no_debris(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"


def _bad_image(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.png"
    if kind == "missing":
        return path
    if kind == "truncated":
        data = _png(folder / "whole.png").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path = folder / "garbage.jpg"
        path.write_bytes(b"\xff\xd8\xff\xe0 this is no jpeg at all")
    elif kind == "tiny":
        _png(path, size=8)
    elif kind == "huge":
        Image.new("L", (13000, 16)).save(path)  # refused from the header, never decoded whole
    elif kind == "nan_float":
        path = folder / "nan.tif"
        Image.fromarray(np.full((SMOKE_SIZE, SMOKE_SIZE), np.nan, np.float32)).save(path)
    elif kind == "folder":
        path.mkdir()
    return path


# ------------------------------------------------------------------------------ reenact: bad input
@pytest.mark.parametrize("kind,words", [
    ("missing", "no such file"), ("truncated", "not a readable image"), ("garbage", "not a readable image"),
    ("tiny", "smaller than the minimum side"), ("huge", "above the limit"), ("nan_float", "NaN"),
    ("folder", "not a regular file"),
])
@pytest.mark.parametrize("role", ["source", "target"])
def test_reenact_refuses_bad_images_with_one_line_and_no_output(smoke, capsys, kind, words, role):
    bad, good = _bad_image(smoke, kind), _png(smoke / "good.png")
    source, target = (bad, good) if role == "source" else (good, bad)
    code, out, err = _cli(capsys, "--source", str(source), "--target", str(target), "--out", "out/result.png")
    assert code == 2 and out == ""
    assert err.startswith("error: cannot use image") and err.count("\n") == 1, err
    assert words in err and bad.name in err and ";" in err  # the problem, then the fix
    assert not (smoke / "out").exists()


def test_reenact_refuses_bad_output_paths_before_any_work(smoke, capsys):
    good = _png(smoke / "good.png")
    (smoke / "folder").mkdir()
    for out, words in (("result.xyz", "unknown file extension '.xyz'"), ("folder", "it is a folder"),
                       (str(good), "is also an input image")):
        code, _, err = _cli(capsys, "--source", str(good), "--target", "missing.png", "--out", out)
        assert code == 2 and words in err and err.count("\n") == 1, err
    assert good.read_bytes() == _png(smoke / "again.png").read_bytes()  # the input was not touched
    code, _, err = _cli(capsys, "--source", str(good), "--target", str(good), "--out", "o.png", "--refine-steps", "-1")
    assert code == 2 and "--refine-steps must be >= 0" in err


def test_reenact_proves_the_output_writable_before_loading_networks(smoke, capsys, monkeypatch):
    import pathlib

    good = _png(smoke / "good.png")
    monkeypatch.setattr(cli, "load_reenactor", lambda cfg: pytest.fail("networks loaded before the output check"))
    (smoke / "afile").write_text("not a folder")
    locked = smoke / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits: refuse as the kernel refuses other users
        real_mkdir = pathlib.Path.mkdir

        def refused(self, *args, **kwargs):
            if self.absolute().parent == locked:
                raise PermissionError(13, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "mkdir", refused)
    cases = (("afile/out.png", "afile is a file, not a folder"), ("afile/deeper/out.png", "afile is a file"),
             ("locked/out.png", "no permission to create files in locked"),
             ("locked/new/out.png", "no permission to create files in locked"),
             ("n" * 300 + ".png", "its file name is 304 bytes, longer than the file system allows"))
    for out, words in cases:
        code, printed, err = _cli(capsys, "--source", str(good), "--target", str(good), "--out", out)
        assert code == 2 and printed == "" and err.count("\n") == 1 and words in err, err
        assert err.startswith(f"error: cannot write {out}") and "choose" in err
    locked.chmod(0o755)
    assert sorted(p.name for p in smoke.iterdir() if p.name.startswith(".")) == []  # no probe left behind
    assert list(locked.iterdir()) == []


def test_reenact_writes_a_legal_240_character_file_name(smoke, capsys, tiny_reenactor):
    good = _png(smoke / "good.png")
    name = "r" * 236 + ".png"  # 240 bytes: legal (NAME_MAX 255); the temporary names must fit beside it
    code, out, err = _cli(capsys, "--source", str(good), "--target", str(good), "--out", f"out/{name}")
    assert code == 0 and out.strip() == f"wrote out/{name}", err
    assert (smoke / "out" / name).is_file()
    _no_debris(smoke / "out")


def test_reenact_outside_the_study_says_where_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    good = _png(tmp_path / "good.png")
    code, _, err = _cli(capsys, "--source", str(good), "--target", str(good), "--out", "o.png")
    assert code == 2 and "no dvc.yaml" in err and "inside the study folder" in err


def test_stage_config_is_what_dvc_repro_runs(smoke):
    cfg = cli.stage_config()
    assert cfg.profile == "smoke" and cfg.out_dir == "data/train_reenact"
    smoke_block = yaml.safe_load((smoke / "params.yaml").read_text())["train_reenact"]
    assert cfg.steps == smoke_block["steps"] and cfg.lr == smoke_block["lr"]
    assert checkpoint_path(cfg) == smoke / "data" / "train_reenact" / "megafr_e4e_render.pt"


def test_reenact_without_trained_networks_names_the_stage(smoke, capsys):
    good = _png(smoke / "good.png")
    code, _, err = _cli(capsys, "--source", str(good), "--target", str(good), "--out", "o.png")
    assert code == 2 and "MegaFR checkpoint not found" in err and "train_reenact" in err
    assert not (smoke / "o.png").exists()


def _write_efr_checkpoint(cfg, **changes) -> Path:
    payload = {"state_dict": {}, "config": dataclasses.asdict(cfg), "step": cfg.steps, "optimizer": {}}
    payload.update(changes)
    path = checkpoint_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def test_load_reenactor_refuses_damaged_foreign_unfinished_and_stale_checkpoints(smoke, monkeypatch):
    cfg = cli.stage_config()
    path = _write_efr_checkpoint(cfg)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="not a readable MegaFR checkpoint"):
        cli.load_reenactor(cfg)
    torch.save({"g_ema": {}, "latent_avg": torch.zeros(4)}, path)
    with pytest.raises(CheckpointError, match="expected keys state_dict, config, step"):
        cli.load_reenactor(cfg)
    _write_efr_checkpoint(cfg, step=cfg.steps - 1)
    with pytest.raises(CheckpointError,
                       match=rf"stopped at step {cfg.steps - 1} of {cfg.steps}.*dvc repro train_reenact"):
        cli.load_reenactor(cfg)
    _write_efr_checkpoint(cfg, config={**dataclasses.asdict(cfg), "lambda_id": 7.0, "batch_size": 99})
    with pytest.raises(CheckpointError, match="other settings than params.yaml.*batch_size, lambda_id"):
        cli.load_reenactor(cfg)
    _write_efr_checkpoint(cfg)  # a right checkpoint: the next missing piece is the frozen generator, named
    with pytest.raises(MissingFileError, match="stylegan2.pt"):
        cli.load_reenactor(cfg)

    def other_size(_cfg, _checkpoint=None, _frozen=None):
        torch.nn.Linear(3, 3).load_state_dict(torch.nn.Linear(4, 4).state_dict())  # the real error type

    monkeypatch.setattr(Reenactor, "from_config", other_size)
    with pytest.raises(CheckpointError, match="does not fit the networks.*size mismatch"):
        cli.load_reenactor(cfg)


def test_a_finished_checkpoint_of_another_profile_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(_study(tmp_path, "mini"))
    cfg = cli.stage_config()
    _write_efr_checkpoint(cfg, config={**dataclasses.asdict(cfg), "profile": "smoke", "steps": 2}, step=2)
    with pytest.raises(CheckpointError, match=r"trained on the smoke profile but params.yaml is the mini profile; "
                                              r"switch back with `python -m megafr profile smoke`") as info:
        cli.load_reenactor(cfg)
    assert "interrupted" not in str(info.value)


@pytest.fixture
def tiny_reenactor(tiny_frozen, monkeypatch):
    """The command's networks replaced by tiny random ones of the smoke world's size."""
    torch.manual_seed(0)
    reenactor = Reenactor(MegaFR(tiny_frozen.inversion, tiny_frozen.generator), tiny_frozen)
    monkeypatch.setattr(cli, "load_reenactor", lambda cfg: reenactor)
    return reenactor


def test_reenact_converts_odd_modes_and_writes_the_output(smoke, capsys, tiny_reenactor):
    rgb = np.random.default_rng(1).integers(0, 256, (SMOKE_SIZE, SMOKE_SIZE, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), "RGBA").save(smoke / "rgba.png")
    Image.fromarray(rgb).convert("L").save(smoke / "grey.png")
    Image.fromarray(rgb).quantize(64).save(smoke / "palette.png")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(smoke / "sixteen.png")
    for source, target in (("rgba.png", "grey.png"), ("palette.png", "sixteen.png")):
        code, out, err = _cli(capsys, "--source", source, "--target", target, "--out", "out/result.png")
        assert code == 0 and out.strip() == "wrote out/result.png", err
        with Image.open(smoke / "out" / "result.png") as written:
            assert written.mode == "RGB" and written.size == (SMOKE_SIZE, SMOKE_SIZE)
        _no_debris(smoke / "out")


def test_loaded_images_are_writable_arrays(tmp_path):
    from megafr.imageio import image_to_tensor, load_image

    img = load_image(_png(tmp_path / "x.png"))
    assert img.flags.writeable and img.flags.c_contiguous
    img[0, 0] = 0  # editable in place, as numpy users expect
    frozen = img.copy()
    frozen.flags.writeable = False
    assert torch.equal(image_to_tensor(frozen), image_to_tensor(img))


def test_reenact_refuses_another_worlds_size_and_never_half_writes(smoke, capsys, tiny_reenactor, monkeypatch):
    good, large = _png(smoke / "good.png"), _png(smoke / "large.png", size=48)
    code, _, err = _cli(capsys, "--source", str(large), "--target", str(good), "--out", "o.png")
    assert code == 2 and "large.png is 48x48 px; the smoke world reenacts 32x32" in err and "profile paper" in err
    real = tiny_reenactor.reenact

    def diverged(*args, **kwargs):
        result = real(*args, **kwargs)
        result.image.fill_(float("nan"))
        return result

    monkeypatch.setattr(tiny_reenactor, "reenact", diverged)
    code, _, err = _cli(capsys, "--source", str(good), "--target", str(good), "--out", "o.png")
    assert code == 2 and "NaN" in err
    assert not (smoke / "o.png").exists()
    _no_debris(smoke)


def test_reenact_on_paper_lists_missing_files_before_loading_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(_study(tmp_path, "paper"))
    monkeypatch.setattr(cli, "load_reenactor", lambda cfg: pytest.fail("networks loaded despite missing files"))
    good = _png(tmp_path / "good.png", size=64)
    code, _, err = _cli(capsys, "--source", str(good), "--target", str(good), "--out", "o.png")
    assert code == 2 and "paper profile:" in err and "required files are missing" in err
    # the networks come from the pipeline's products (official mode copies the released files there): only
    # FLAME is read from outside
    assert "generic_model.pkl" in err and "stylegan2-ffhq-config-f.pt" not in err and "datasets/celebahq" not in err


def test_reenact_on_paper_refuses_a_photo_without_a_face_before_loading_networks(tmp_path, monkeypatch, capsys):
    from megafr import preflight

    monkeypatch.chdir(_study(tmp_path, "paper"))
    monkeypatch.setattr(preflight, "check", lambda **kwargs: [])  # as if every external file were there
    monkeypatch.setattr(cli, "load_reenactor", lambda cfg: pytest.fail("networks loaded before faces were found"))
    blank = _png(tmp_path / "blank.png", size=64)  # noise: no face
    code, out, err = _cli(capsys, "--source", str(blank), "--target", str(blank), "--out", "o.png")
    assert code == 2 and out == "" and "no face found in" in err and "blank.png" in err and err.count("\n") == 1


def test_reenact_refuses_another_worlds_size_from_the_header_before_decoding(smoke, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_reenactor", lambda cfg: pytest.fail("networks loaded before the size check"))
    big = smoke / "big.png"  # a 9000 x 9000 header over a few bytes: decoding it would fail (or cost ~1 GB)
    header = struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                    + chunk(b"IEND", b""))
    good = _png(smoke / "good.png")
    code, _, err = _cli(capsys, "--source", str(big), "--target", str(good), "--out", "o.png")
    assert code == 2 and "big.png is 9000x9000 px; the smoke world reenacts 32x32" in err, err


@pytest.fixture(scope="module")
def photo_aligner():
    return FaceAligner(64, multiple="largest")


def test_paper_faces_none_several_or_largest_with_a_warning(photo_aligner):
    from skimage.data import astronaut

    photo = astronaut()
    pair = np.ascontiguousarray(np.concatenate([photo, np.zeros_like(photo)], axis=1))
    pair[128:512, 512:896] = np.asarray(Image.fromarray(photo).resize((384, 384)))
    with pytest.raises(NoFaceError,
                       match=r"2 faces found in pair.png; crop the photo to one face, or pass --largest-face"):
        cli.prepare_image("pair.png", pair, 64, "paper", photo_aligner)
    with pytest.warns(cli.FaceChoiceWarning, match="2 faces found in pair.png; reenacting the largest"):
        largest = cli.prepare_image("pair.png", pair, 64, "paper", photo_aligner, largest_face=True)
    single = cli.prepare_image("one.png", photo, 64, "paper", photo_aligner)
    assert largest.shape == single.shape == (1, 3, 64, 64)
    assert torch.allclose(largest, single, atol=0.1)  # the full-size face on the left, aligned alike
    with pytest.raises(NoFaceError, match="no face found in blank.png"):
        cli.prepare_image("blank.png", np.full((200, 200, 3), 127, np.uint8), 64, "paper", photo_aligner)


# ------------------------------------------------------------------------- prepare, params, checkpoints
def test_align_folder_refuses_a_folder_without_photos_before_writing(tmp_path, photo_aligner):
    src, out = tmp_path / "photos", tmp_path / "aligned"
    src.mkdir()
    with pytest.raises(InputError, match="holds no files to align"):
        align_folder(src, out, 64, aligner=photo_aligner, progress=False)
    (src / ".DS_Store").write_bytes(b"\x00")
    (src / "nested").mkdir()
    with pytest.raises(InputError, match="put the photos directly in it"):
        align_folder(src, out, 64, aligner=photo_aligner, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("stage,key,value", [
    ("prepare", "image_size", 8), ("prepare", "n_test_identities", 1),
    ("train_face3d", "steps", -1), ("train_face3d", "lr", 0.0), ("train_face3d", "lambda_eye", -3.0),
    ("train_idnet", "steps", -1), ("train_idnet", "lr", -0.1), ("train_idnet", "drop_ratio", 1.5),
    ("train_generator", "steps", 0), ("train_generator", "image_size", 48),
    ("train_inversion", "steps", -2), ("train_inversion", "lambda_id", -1.0), ("train_inversion", "lr", 0.0),
    ("train_reenact", "steps", -1), ("train_reenact", "lambda_cyc", -1.0), ("train_reenact", "encoder", "stylegan"),
    ("train_reenact", "lr", float("inf")), ("train_idnet", "margin", float("nan")),
])
def test_every_stage_refuses_out_of_range_parameters(smoke, stage, key, value):
    from megafr import stages

    stages.load_config(stage)  # the smoke profile itself is valid
    with pytest.raises(InputError) as info:
        stages.load_config(stage, overrides={key: value})
    message = str(info.value)
    assert "\n" not in message and (key in message or key.split("_")[-1] in message), message


def test_unknown_profile_and_missing_params_file(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        main(["profile", "huge"])
    assert info.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 2
    assert "params file" in capsys.readouterr().err


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    from megafr.nets import checkpoints
    from megafr.nets.irse import MINI_ARCFACE, ArcFace

    net = ArcFace(MINI_ARCFACE)
    target = tmp_path / "arcface.pt"
    checkpoints.save_arcface(target, net)
    before = target.read_bytes()

    def dies_half_way(obj, path):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # Ctrl-C during the write

    monkeypatch.setattr(checkpoints.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_arcface(target, net)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_arcface(tmp_path / "new.pt", net)
    assert target.read_bytes() == before and not (tmp_path / "new.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arcface.pt"]


def test_lpips_without_backbone_weights_is_off_not_a_crash(tmp_path, monkeypatch, capsys):
    from megafr.reenact import train as rt

    monkeypatch.setattr(rt, "_LPIPS_SAID", set())  # as in a fresh process
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert rt.load_lpips(0.8) is None and rt.load_lpips(0.0) is None
    assert capsys.readouterr().out.startswith("LPIPS off")
    assert rt.load_lpips(0.8) is None and capsys.readouterr().out == ""  # said once per process


def test_inference_loads_no_lpips_and_says_nothing_about_it(tmp_path, monkeypatch, capsys, tiny_frozen):
    """The reenact command (Reenactor.from_config) never uses LPIPS: no "LPIPS off" line on every run."""
    from megafr.reenact import train as rt
    from tests.test_reenact_train import _config

    monkeypatch.setattr(rt, "_LPIPS_SAID", set())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(rt.checkpoints, "load_stylegan2", lambda path: (tiny_frozen.generator, None))
    monkeypatch.setattr(rt.checkpoints, "load_e4e", lambda path: tiny_frozen.inversion)
    monkeypatch.setattr(rt.checkpoints, "load_latent_discriminator", lambda path: tiny_frozen.latent_d)
    monkeypatch.setattr(rt.checkpoints, "load_arcface", lambda path: tiny_frozen.idnet)
    monkeypatch.setattr(rt, "load_face_model", lambda *paths: tiny_frozen.face)
    cfg = _config(tmp_path, lambda_lpips=0.8)
    model = rt.build_model(cfg, tiny_frozen)
    checkpoint = {"state_dict": model.encoder.state_dict(), "config": dataclasses.asdict(cfg), "step": cfg.steps}
    reenactor = Reenactor.from_config(cfg, checkpoint)
    assert reenactor.frozen.lpips is None and "LPIPS" not in capsys.readouterr().out
    assert rt.load_frozen(cfg).lpips is None and capsys.readouterr().out.startswith("LPIPS off")  # training says it


# ------------------------------------------------------------------------------ interruption (SIGKILL)
KILL_STEPS = 40  # long enough that the run is still going when its first checkpoint appears
KILL_CHECKPOINT_EVERY = 4
# The training entry point, run in a fresh interpreter: config JSON in, resume point and steps run out.
DRIVER = """
import json, sys
from megafr.config import build_config
from megafr.face3d.train import TrainConfig, load_landmark_set, train_face3d
cfg = build_config(TrainConfig, json.loads(sys.argv[1]))
result = train_face3d(cfg, load_landmark_set(cfg, "train"), progress=False)
print(json.dumps({"resumed_from": result.resumed_from, "steps_run": result.steps_run}))
"""


@pytest.fixture(scope="module")
def face3d_world(tmp_path_factory):
    """The synthetic head model and a 3-identity training split at 32 px (what the smoke prepare writes)."""
    from tests.conftest import write_head_world

    root = tmp_path_factory.mktemp("world")
    return root, write_head_world(root, SMOKE_SIZE)


def _face3d_values(world, out_dir: Path, **overrides) -> dict:
    from megafr.face3d import headmodel

    root, files = world
    values = dict(
        profile="smoke", seed=0, model_path=str(files.model_path), landmark_path=str(files.landmark_path),
        data_dir=str(root), source="synthetic", image_size=SMOKE_SIZE, input_size=SMOKE_SIZE,
        n_shape=headmodel.N_IDENTITY, n_expr=headmodel.N_EXPRESSION, width=4, eye_patch=0, extra_splits="", cam_scale_init=8.0,
        cam_ty_init=0.0,
        steps=KILL_STEPS, batch_size=4, lr=1e-3, lambda_lmk=1.0, lambda_kp=1.0, lambda_eye=3.0, lambda_mouth=2.0,
        lambda_pair=1.0,
        lambda_sil=0.5, sil_every=2, sil_size=16, sil_batch=2, sil_sigma=1.0, lambda_shape=1e-3, lambda_expr=1e-3,
        lambda_pose=1e-3, checkpoint_every=KILL_CHECKPOINT_EVERY, threads=1, cpu_bf16=False, out_dir=str(out_dir))
    values.update(overrides)
    return values


def _training(values: dict) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(values)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _same_state(a, b) -> bool:
    """Equal nested dicts/lists of tensors and plain values, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b


def test_sigkilled_training_resumes_and_ends_like_an_uninterrupted_run(face3d_world, tmp_path):
    from megafr.face3d.recon import read_checkpoint

    whole = _finish(_training(_face3d_values(face3d_world, tmp_path / "whole")))
    assert whole == {"resumed_from": 0, "steps_run": KILL_STEPS}

    broken_dir = tmp_path / "broken"
    checkpoint = broken_dir / "checkpoint.pt"
    values = _face3d_values(face3d_world, broken_dir)
    proc = _training(values)
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = read_checkpoint(checkpoint)["step"]
    assert 0 < killed_at < KILL_STEPS and killed_at % KILL_CHECKPOINT_EVERY == 0

    resumed = _finish(_training(values))
    assert resumed == {"resumed_from": killed_at, "steps_run": KILL_STEPS - killed_at}
    a, b = read_checkpoint(tmp_path / "whole" / "checkpoint.pt"), read_checkpoint(checkpoint)
    assert a["step"] == b["step"] == KILL_STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), "weights differ"
    assert _same_state(a["optimizer"], b["optimizer"]) and _same_state(a["rng"], b["rng"])
    assert a["curve"] == b["curve"]


def test_damaged_leftover_checkpoint_starts_afresh(face3d_world, tmp_path):
    from megafr.face3d.recon import read_checkpoint
    from megafr.face3d.train import TrainConfig, load_landmark_set, train_face3d

    cfg = build_config(TrainConfig, _face3d_values(face3d_world, tmp_path / "run", steps=2, checkpoint_every=1))
    cfg.checkpoint_path.parent.mkdir(parents=True)
    cfg.checkpoint_path.write_bytes(b"PK\x03\x04 the first bytes of a zip, then the power went off")
    result = train_face3d(cfg, load_landmark_set(cfg, "train"), progress=False)
    assert result.resumed_from == 0 and result.steps_run == 2 and read_checkpoint(cfg.checkpoint_path)["step"] == 2


# ---------------------------------------------------------------------------------------------- fuzzing
@pytest.fixture(scope="module")
def small_aligner():
    return FaceAligner(32)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(height=st.integers(16, 80), width=st.integers(16, 300), seed=st.integers(0, 2 ** 16),
       scale=st.sampled_from([1e-4, 1.0, 8.0, 60.0, 1e3, 1e6, 1e12]), offset=st.sampled_from([0.0, -1e4, 3e5]),
       special=st.sampled_from([None, np.nan, np.inf, -np.inf]), degenerate=st.booleans(),
       n_points=st.sampled_from([68, 68, 67, 5]))
def test_fuzz_align_by_landmarks_only_documented_errors(small_aligner, height, width, seed, scale, offset, special,
                                                        degenerate, n_points):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    points = rng.normal(0.0, 1.0, (n_points, 2)) * scale + [width / 2 + offset, height / 2]
    if degenerate:
        points[:] = points[0]
    if special is not None:
        points[rng.integers(n_points)] = special
    try:
        face = small_aligner.align_landmarks(img, points)
    except InputError as error:
        assert type(error).__module__.startswith("megafr") and str(error)
        return
    assert face.image.shape == (32, 32, 3) and face.image.dtype == np.uint8
    assert face.landmarks.shape == (68, 2) and np.isfinite(face.landmarks).all()


def _tiny_png_bytes(seed: int) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return _png(Path(folder) / "x.png", size=24, seed=seed).read_bytes()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.tuples(st.sampled_from(["a.png", "b.jpg", "c", "d.tif", "e.PNG"]),
                                st.one_of(st.binary(max_size=300), st.integers(0, 99).map(_tiny_png_bytes))),
                      min_size=1, max_size=4, unique_by=lambda f: f[0]))
def test_fuzz_align_folder_rejects_every_bad_file_and_never_crashes(small_aligner, files):
    with tempfile.TemporaryDirectory() as folder:
        src, out = Path(folder) / "in", Path(folder) / "out"
        src.mkdir()
        for name, data in files:
            (src / name).write_bytes(data)
        report = align_folder(src, out, 32, aligner=small_aligner, progress=False)
        assert sorted([*report.aligned, *(r.file for r in report.rejects)]) == sorted(name for name, _ in files)
        assert all(r.message for r in report.rejects)
        rejects = (out / "rejects.csv").read_text().strip().splitlines()
        assert len(rejects) == 1 + len(report.rejects)  # header + one row per reject
        _no_debris(out)


# --------------------------------------------------------------------- reproducible products (two clones)
REPRO_STEPS = 4  # a few steps of each training: enough for weights, optimizer state and curves to be written


def _clone(world, folder: Path) -> Path:
    """A scratch study (``dvc.yaml`` marks its root) holding the smoke world as ``data/prepare``; the
    recognition and test splits of train_idnet are copies of the training split."""
    root, _ = world
    folder.mkdir()
    (folder / "dvc.yaml").write_text("stages: {}\n")
    shutil.copytree(root, folder / "data" / "prepare")
    for split in ("recognition", "test"):
        shutil.copytree(root / "train", folder / "data" / "prepare" / split)
    return folder


def _run_stages_in(clone: Path, world) -> None:
    """train_face3d and train_idnet, through their stage functions, with the relative paths dvc.yaml passes."""
    from megafr.face3d.train import TrainConfig, load_landmark_set, train_face3d
    from megafr.pretrain import idnet

    root, files = world
    here = os.getcwd()
    os.chdir(clone)
    try:
        values = _face3d_values(world, Path("data/train_face3d"), steps=REPRO_STEPS, checkpoint_every=2,
                                data_dir="data/prepare",
                                model_path=f"data/prepare/{Path(files.model_path).relative_to(root).as_posix()}",
                                landmark_path=f"data/prepare/{Path(files.landmark_path).relative_to(root).as_posix()}")
        cfg = build_config(TrainConfig, values)
        train_face3d(cfg, load_landmark_set(cfg, "train"), progress=False)
        id_cfg = idnet.IdNetConfig(profile="smoke", seed=5, mode="train", data_dir="data/prepare", official_path="",
                                   input_size=16, embedding_dim=8, width=4, units=1, drop_ratio=0.0, margin=0.3,
                                   scale=8.0, steps=REPRO_STEPS, batch_size=6, lr=1e-3, weight_decay=1e-4,
                                   blur_sigma_max=1.0, checkpoint_every=2, threads=1, out_dir="data/train_idnet")
        idnet.run_idnet_stage(id_cfg, progress=False)
    finally:
        os.chdir(here)


def _tracked_files(clone: Path) -> dict[str, bytes]:
    return {p.relative_to(clone).as_posix(): p.read_bytes()
            for stage in ("train_face3d", "train_idnet") for p in sorted((clone / "data" / stage).rglob("*"))
            if p.is_file()}


def test_two_clones_write_byte_identical_products(face3d_world, tmp_path):
    clones = [_clone(face3d_world, tmp_path / name) for name in ("first", "second")]
    for clone in clones:
        _run_stages_in(clone, face3d_world)
    first, second = (_tracked_files(clone) for clone in clones)
    assert set(first) == {"data/train_face3d/checkpoint.pt", "data/train_idnet/arcface.pt",
                          "data/train_idnet/products.json"}, sorted(first)
    differ = sorted(name for name in first if first[name] != second.get(name))
    assert not differ, f"not byte-identical between the two clones: {differ}"
    for clone in clones:  # no checkout path inside, and the wall time went to the untracked log
        for name, data in _tracked_files(clone).items():
            assert str(clone).encode() not in data and str(tmp_path).encode() not in data, name
        log = json.loads((clone / "data" / "logs" / "train_idnet.json").read_text())
        assert log["steps_run"] == REPRO_STEPS and log["train_seconds"] >= 0
    assert json.loads(first["data/train_idnet/products.json"]) == {"arcface": "data/train_idnet/arcface.pt"}


def test_saved_checkpoint_equals_a_direct_torch_save(tmp_path):
    """atomic_path hands torch.save a file of the target's name: same bytes as saving to the target directly."""
    from megafr.fileio import atomic_path

    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7}
    torch.save(state, tmp_path / "direct.pt")
    for _ in range(2):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with atomic_path(tmp_path / "sub" / "direct.pt") as temp:
            torch.save(state, temp)
        assert (tmp_path / "sub" / "direct.pt").read_bytes() == (tmp_path / "direct.pt").read_bytes()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["direct.pt"]


def test_face3d_checkpoint_records_study_relative_head_model_paths(face3d_world, tmp_path, monkeypatch):
    from megafr.face3d.recon import load_face_model, read_checkpoint

    clone = _clone(face3d_world, tmp_path / "study")
    _run_stages_in(clone, face3d_world)
    monkeypatch.chdir(clone)
    flame = read_checkpoint("data/train_face3d/checkpoint.pt")["flame"]
    assert flame["model_path"].startswith("data/prepare/") and not Path(flame["model_path"]).is_absolute()
    monkeypatch.chdir(clone / "data")  # a notebook in JupyterLab runs below the root: paths still resolve
    assert load_face_model(Path("train_face3d/checkpoint.pt")).config.image_size == SMOKE_SIZE


def test_ablation_configs_name_their_folder_relative_to_the_study(smoke):
    from megafr.evaluate.ablations import REFERENCE, Ablation, ablation_config

    base = cli.stage_config()
    cfg = ablation_config(base, Ablation(REFERENCE, "reference", (), 1), 3, smoke / "data/evaluate/ablations")
    assert cfg.out_dir == "data/evaluate/ablations/reference"
    assert checkpoint_path(cfg) == smoke / "data/evaluate/ablations/reference/megafr_e4e_render.pt"


# ------------------------------------------------------------------------- non-finite losses stop training
def _force(cfg, **values):
    """``cfg`` with fields replaced without validation (what a value slipping past the params checks does)."""
    for name, value in values.items():
        object.__setattr__(cfg, name, value)
    return cfg


def test_face3d_nan_loss_stops_naming_term_and_step_and_keeps_the_checkpoint(face3d_world, tmp_path):
    from megafr.face3d.train import TrainConfig, load_landmark_set, train_face3d
    from megafr.training import NonFiniteLossError

    good = build_config(TrainConfig, _face3d_values(face3d_world, tmp_path / "run", steps=2, checkpoint_every=2))
    data = load_landmark_set(good, "train")
    train_face3d(good, data, progress=False)
    before = good.checkpoint_path.read_bytes()
    bad = _force(build_config(TrainConfig, _face3d_values(face3d_world, tmp_path / "run", steps=6,
                                                          checkpoint_every=2)), lr=float("inf"))
    with pytest.raises(NonFiniteLossError) as info:
        train_face3d(bad, data, progress=False)
    # lr = inf turns the weights NaN in the first update; the second step's loss is then NaN
    assert info.value.step == 2 and info.value.term in ("lmk", "kp", "sil", "shape", "expr", "pose")
    message = str(info.value)
    assert f"'{info.value.term}'" in message and "step 2" in message and str(good.checkpoint_path) in message
    assert good.checkpoint_path.read_bytes() == before
    assert sorted(p.name for p in good.checkpoint_path.parent.iterdir()) == ["checkpoint.pt"]


def _pretrain_nan_case(stage: str, tmp_path):
    """(good config, diverging config, train function) of a pretraining stage on tiny networks."""
    from tests.test_pretrain import _gen_cfg, _id_cfg, _psp_cfg
    from megafr.pretrain import autoencoder as ae
    from megafr.pretrain import idnet, inversion
    from megafr.pretrain.latent_structure import swap_pairs

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, SMOKE_SIZE, SMOKE_SIZE, 3), dtype=np.uint8)
    if stage == "train_idnet":
        identity = np.repeat(np.arange(6), 4)
        good, bad = _id_cfg(tmp_path), _force(_id_cfg(tmp_path, checkpoint_every=2), lr=float("inf"))
        return good, bad, lambda cfg, **kw: idnet.train_idnet(cfg, images, identity, progress=False, **kw)
    a, b = swap_pairs(0, np.repeat(np.arange(6), 4), 8)
    pool = {"a": a, "b": b, "truth": rng.integers(0, 256, (8, SMOKE_SIZE, SMOKE_SIZE, 3), dtype=np.uint8)}
    if stage == "train_generator":
        good, bad = _gen_cfg(tmp_path), _force(_gen_cfg(tmp_path, checkpoint_every=2), lr_e=float("inf"))
        return good, bad, lambda cfg, **kw: ae.train_generator(cfg, images, pool, progress=False, **kw)
    nets = ae.train_generator(_gen_cfg(tmp_path / "g", steps=1), images, pool, progress=False).nets

    def train(cfg, **kw):
        net = inversion.build_psp(ae.e4e_net(nets), nets.g_ema, nets.latent_avg, seed=2)
        return inversion.train_psp(cfg, net, images, None, progress=False, **kw)

    good = _psp_cfg(tmp_path, lambda_id=0.0)
    return good, _force(_psp_cfg(tmp_path, lambda_id=0.0, checkpoint_every=2), lr=float("inf")), train


@pytest.mark.parametrize("stage", ["train_idnet", "train_generator", "train_inversion"])
def test_pretraining_nan_loss_stops_naming_term_and_step_and_keeps_the_checkpoint(stage, tmp_path):
    from megafr.training import NonFiniteLossError

    good, bad, train = _pretrain_nan_case(stage, tmp_path)
    train(good, stop_after=2)  # an interrupted good run: its resume checkpoint is the last good state
    before = good.checkpoint_path.read_bytes()
    with pytest.raises(NonFiniteLossError) as info:
        train(bad)
    assert info.value.stage == stage and info.value.step == 2
    assert f"'{info.value.term}'" in str(info.value) and "step 2" in str(info.value)
    assert good.checkpoint_path.read_bytes() == before


def test_reenact_nan_loss_stops_naming_term_and_step_and_keeps_the_checkpoint(tiny_frozen, tmp_path, monkeypatch):
    from megafr import losses
    from megafr.reenact import train as rt
    from megafr.training import NonFiniteLossError
    from tests.test_reenact_train import _config, _images

    cfg = _config(tmp_path, steps=4, checkpoint_every=2)
    real_step = rt.step_losses
    calls = []

    def interrupted_after_two_steps(*args):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt  # Ctrl-C during step 3, after the checkpoint of step 2
        return real_step(*args)

    monkeypatch.setattr(rt, "step_losses", interrupted_after_two_steps)
    with pytest.raises(KeyboardInterrupt):
        rt.train(cfg, tiny_frozen, _images(), progress=False)
    monkeypatch.setattr(rt, "step_losses", real_step)
    path = rt.checkpoint_path(cfg)
    before = path.read_bytes()
    monkeypatch.setattr(losses, "pair_loss", lambda *args: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError) as info:
        rt.train(cfg, tiny_frozen, _images(), progress=False)  # resumes at step 2; step 3's L_pair is NaN
    assert (info.value.term, info.value.step) == ("pair", 3)
    assert "'pair' is nan at step 3" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before
