"""The paper profile's code path on CPU, at 64 px: real photos (scikit-image's astronaut variants) prepared
into manifests and the evaluation protocol, the networks loaded from official-layout files written by the
study's own writers, E_FR trained on the manifest, Tables 1 and 2 scored on the protocol's CSV files."""

import dataclasses

import numpy as np
import pytest
import torch

from megafr.config import build_config
from megafr.datasets import prepare as prep
from megafr.datasets.loader import ImageRows, open_images
from megafr.datasets.samples import write_official_layout, write_sample_photos
from megafr.evaluate import external, linear, tables
from megafr.evaluate.rows import psp_frontalization as psp_row
from megafr.face3d import headmodel
from megafr.face3d.flame import FLAME
from megafr.face3d.recon import FaceModel, ReconConfig, save_checkpoint_dict
from megafr.reenact import train as rt
from megafr.reenact.inference import Reenactor

SIZE = 64


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    write_sample_photos(root / "ffhq", 4)
    write_sample_photos(root / "celebahq", 4, start=4)
    cfg = build_config(prep.PrepareConfig, dict(
        profile="paper", seed=0, model_path="", landmark_path="", source="photos", image_size=SIZE,
        n_train_identities=0, n_test_identities=0, images_per_identity=0, n_idnet_identities=0,
        idnet_images_per_identity=0, n_cross_pairs=4, n_self_pairs=0, n_frontal=3, n_eye_sources=0,
        talking_frames=0, max_yaw_deg=60.0, max_pitch_deg=30.0, max_roll_deg=15.0, photos_dir=str(root / "ffhq"),
        out_dir=str(root / "prepare"), test_photos_dir=str(root / "celebahq"), photos_aligned=False,
        align_workers=1, render_workers=1, write_stand_ins=False))
    prep.run_prepare(cfg)
    files = write_official_layout(root / "weights", size=SIZE, style_dim=32)
    torch.manual_seed(0)
    flame = FLAME.from_files(files["flame_model"], files["flame_landmarks"], headmodel.N_IDENTITY, headmodel.N_EXPRESSION)
    face = FaceModel(ReconConfig(headmodel.N_IDENTITY, headmodel.N_EXPRESSION, SIZE, input_size=32, width=8), flame)
    torch.save(save_checkpoint_dict(face, 0), root / "face3d.pt")
    reenact = rt.ReenactConfig(
        profile="paper", seed=0, steps=2, batch_size=2, lr=1e-4,
        lr_schedule="constant", encoder="e4e", condition="render",
        edit_groups="coarse,medium", lambda_id=1.0, lambda_lmk=1.0, lambda_pair=1.0, lambda_cyc=1.0, lambda_self=1.0,
        lambda_latent=0.1, lambda_l2=1.0, lambda_lpips=0.0, lambda_rec_id=0.5, checkpoint_every=1,
        generator_path=files["stylegan2"], e4e_path=files["e4e"], psp_path=files["psp"],
        face3d_path=str(root / "face3d.pt"), idnet_path=files["arcface"], model_path=files["flame_model"],
        landmark_path=files["flame_landmarks"], train_images=str(cfg.data_dir / "train" / "manifest.csv"),
        out_dir=str(root / "train_reenact"), cpu_bf16=False, input_cache="")
    return cfg, files, reenact


def test_train_and_score_on_photos_from_official_layout_files(world):
    prepared, files, cfg = world
    frozen = rt.load_frozen(cfg)
    images = open_images(cfg.train_images)
    model, curve = rt.train(cfg, frozen, images, progress=False)
    assert len(curve) == 2 and np.isfinite(curve["total"]).all()
    psp = dataclasses.replace(cfg, encoder="psp")
    reenactors = {"e4e_render": Reenactor(model, frozen, "render"),
                  "psp_render": Reenactor(rt.train(psp, rt.load_frozen(psp), images, progress=False)[0],
                                          rt.load_frozen(psp), "render")}
    names = linear.parse_attributes("yaw_deg")  # one direction: 4 photos cannot separate two
    training = ImageRows(images, np.arange(len(images)))
    directions, search = linear.fit_baseline(frozen, training, names, (1.0, 10.0))
    baseline = linear.LinearBaseline(directions, frozen, search)
    reference = ImageRows(open_images(prepared.data_dir / "test" / "manifest.csv"), np.arange(4))
    reasons = {name: f"{name} n/a: test" for name in external.PAPER_METRICS}
    judge = tables.Judge(frozen, external.PaperMetrics(None, None, None, reasons), reference)
    front_row = psp_row.psp_frontalization(files["psp_frontalization"], frozen)
    for task, folder, n in (("cross", "cross", 4), ("frontal", "frontal", 3)):
        data = tables.load_eval_set(prepared.data_dir / "eval" / folder, task, 100)
        assert data.truth is None and len(data) == n
        methods = tables.table_methods(task, reenactors, baseline, 1, frozen, psp_frontal=front_row)
        table, examples = tables.build_table(methods, data, judge)
        assert table[list(tables.TRUTH_METRICS)].isna().all().all()  # no right answer on photos
        assert np.isfinite(table[list(tables.OWN_METRICS)].to_numpy(float)).all()
        assert examples["MegaFR (e4e)"].shape == (min(n, tables.KEEP_OUTPUTS), SIZE, SIZE, 3)
    assert psp_row.PSP_FRONTAL_ROW in list(table["method"])


def test_figures_on_photos_show_every_panel_without_right_answers(world):
    from megafr.figures import panels, talking
    from megafr.figures.config import FiguresConfig
    from megafr.figures.inputs import load_inputs
    from megafr.reenact.directions import LatentDirection

    prepared, files, cfg = world
    frozen = rt.load_frozen(cfg)
    reenactor = Reenactor(rt.build_model(cfg, frozen), frozen, "render")
    figures = build_config(FiguresConfig, dict(
        profile="paper", checkpoint="", generator_path="", e4e_path="", psp_path="", face3d_path="", idnet_path="",
        model_path="", landmark_path="", directions_path="", eval_dir=str(prepared.data_dir / "eval"),
        test_dir=str(prepared.data_dir / "test"), source="photos", refine_steps=0, grid_sources=2, grid_targets=1,
        extreme_pairs=2, max_refine=1, control_sources=1, control_angles=2, yaw_max_deg=30.0, pitch_max_deg=20.0,
        frontal_inputs=2, eye_sources=1, eye_components="1", eye_closed_value=1.0, eye_open_value=0.0,
        talking_frames=0, fps=8, video_scale=1, threads=0))
    inputs = load_inputs(figures)
    assert inputs.grid.truth is None and inputs.extremes.truth is None and inputs.frontal.truth is None
    assert inputs.grid.sources.shape == (2, SIZE, SIZE, 3) and len(inputs.extremes.source) == 2
    panels.grid_figure(reenactor, inputs.grid, 0, "paper-ci")
    panels.refinement_figure(reenactor, inputs.extremes, 1, "paper-ci")
    shape = (reenactor.model.generator.n_latent, reenactor.model.generator.style_dim)
    directions = {f"{axis}_deg": LatentDirection(f"{axis}_deg", torch.randn(*shape) * 0.01, 0.0, 1.0)
                  for axis in ("yaw", "pitch")}
    assert len(panels.pose_control_figure(reenactor, directions, inputs.yaw, 0, "paper-ci").table) == 2 * 2
    assert len(panels.frontalization_figure(reenactor, inputs.frontal, 0, "paper-ci").table) == 2
    eyes = panels.eye_opening_figure(reenactor, inputs.eyes, (1,), 1.0, 0.0, 0, "paper-ci").table
    assert "truth_gap_mm" not in eyes and len(eyes) == 5
    result = talking.reenact_sequence(reenactor, inputs.talking, 0)
    assert set(result.tracks) == {"megafr"} and len(result.ours) == len(inputs.talking.driving) >= 1


def test_stand_ins_are_written_by_prepare_where_the_profile_points(tmp_path, monkeypatch):
    """paper-ci: prepare writes the photos and official-layout files itself, at the paths its profile names."""
    from megafr.config import load_params, profile_file, study_root
    from megafr.errors import InputError
    from megafr.nets.checkpoints import load_e4e, load_stylegan2

    params = load_params(profile_file("paper-ci", study_root(__file__)))
    values = dict(params["prepare"], profile="paper-ci", seed=0, model_path=params["flame"]["model_path"],
                  landmark_path=params["flame"]["landmark_path"], image_size=32)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # a scratch study root: data/ is written here
    cfg = build_config(prep.PrepareConfig, values)
    counts = prep.write_stand_ins(cfg)
    assert counts == {"stand_in_photos": 2 * prep.STAND_IN_PHOTOS, "stand_in_files": 7}
    assert len(list((tmp_path / cfg.photos_dir).glob("*.png"))) == prep.STAND_IN_PHOTOS
    assert (tmp_path / cfg.model_path).is_file() and (tmp_path / cfg.landmark_path).is_file()
    for key in ("official_stylegan2", "official_e4e"):
        assert (tmp_path / params["train_generator"][key]).is_file()
    generator, _ = load_stylegan2(tmp_path / params["train_generator"]["official_stylegan2"])
    assert generator.size == 32 and load_e4e(tmp_path / params["train_generator"]["official_e4e"]) is not None
    for bad, match in ((dict(photos_dir="elsewhere/ffhq"), "must lie in data/prepare/"),
                       (dict(model_path="weights/flame/generic_model.pkl"), "flame.model_path must be"),
                       (dict(photos_aligned=True), "photos_aligned: false")):
        with pytest.raises(InputError, match=match):
            build_config(prep.PrepareConfig, {**values, **bad})
