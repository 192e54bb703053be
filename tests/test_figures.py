"""The figures stage: example picking, right answers, every figure, the talking-head video, jitter, the explorer.

A tiny SynthHeads world (32 px, prepare's own code) and the tiny random networks of ``conftest``
saved in their release layouts stand in for a trained mini study.
"""

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from megafr.config import build_config, study_root
from megafr.datasets import synthheads as sh
from megafr.datasets.prepare import PrepareConfig, build_synthheads
from megafr.errors import CheckpointError, InputError
from megafr.face3d import headmodel
from megafr.face3d.landmarks import EYELID_PAIRS, LEFT_EYE_OUTER, RIGHT_EYE_OUTER
from megafr.face3d.pose import euler_to_axis_angle
from megafr.figures import inputs as fi
from megafr.figures import panels, stage, talking
from megafr.figures.config import FiguresConfig, load_reenactor, parse_components
from megafr.reenact import train as rt
from megafr.reenact.directions import LatentDirection
from megafr.reenact.model import MegaFR
from megafr.stage import numeric_leaves
from megafr import video
from tests.conftest import TINY_SIZE, TINY_STYLE, write_frozen_files

ROOT = study_root(__file__)


# ------------------------------------------------------------------------------------------------ fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_frozen):
    """A tiny prepared world and the tiny networks saved as files, like a trained study's data/ folder."""
    root = tmp_path_factory.mktemp("study")
    head = root / "prepare" / "head_model"
    prep = PrepareConfig(profile="smoke", seed=0, model_path=str(head / headmodel.MODEL_FILE),
                         landmark_path=str(head / headmodel.LANDMARK_FILE), source="synthetic", image_size=TINY_SIZE,
                         n_train_identities=2, n_test_identities=3, images_per_identity=3, n_idnet_identities=2,
                         idnet_images_per_identity=2, n_cross_pairs=6,
                         n_self_pairs=1, n_frontal=4, n_eye_sources=2, talking_frames=6, max_yaw_deg=60.0,
                         max_pitch_deg=30.0, max_roll_deg=15.0, photos_dir="", test_photos_dir="", photos_aligned=False,
                         align_workers=0, render_workers=1, write_stand_ins=False, out_dir=str(root / "prepare"))
    build_synthheads(prep)
    files = write_frozen_files(root, tiny_frozen, headmodel.HeadModelFiles(head / headmodel.MODEL_FILE,
                                                                            head / headmodel.LANDMARK_FILE, None))
    torch.manual_seed(2)
    model = MegaFR(tiny_frozen.inversion, tiny_frozen.generator)
    with torch.no_grad():
        model.encoder.input_layer[0].weight[:, 3:].normal_(std=0.1)  # let the rendering steer the output
    cfg = rt.ReenactConfig(profile="smoke", seed=0, steps=1, batch_size=1, lr=1e-4,
                           lr_schedule="constant", encoder="e4e", condition="render",
                           edit_groups="coarse,medium", lambda_id=1.0, lambda_lmk=1.0, lambda_pair=1.0, lambda_cyc=1.0,
                           lambda_self=1.0, lambda_latent=0.1, lambda_l2=1.0, lambda_lpips=0.0, lambda_rec_id=0.5,
                           checkpoint_every=1, train_images="", out_dir=str(root / "train_reenact"), cpu_bf16=False, input_cache="",
                           **files)
    rt.save_checkpoint(rt.checkpoint_path(cfg), model, torch.optim.Adam(model.encoder.parameters()), cfg, 1)
    return {"root": root, "files": files, "checkpoint": str(rt.checkpoint_path(cfg)), "model": model}


@pytest.fixture(scope="module")
def reenactor(study):
    return load_reenactor(study["checkpoint"], **study["files"])


def figures_config(study, **overrides) -> FiguresConfig:
    values = dict(profile="smoke", checkpoint=study["checkpoint"], **study["files"],
                  directions_path="", eval_dir=str(study["root"] / "prepare" / "eval"),
                  test_dir=str(study["root"] / "prepare" / "test"), source="synthetic", refine_steps=1, grid_sources=2,
                  grid_targets=2, extreme_pairs=3, max_refine=2, control_sources=2, control_angles=3, yaw_max_deg=30.0,
                  pitch_max_deg=20.0, frontal_inputs=3, eye_sources=2, eye_components="blink_left,blink_right",
                  eye_closed_value=1.0, eye_open_value=0.0, talking_frames=0, fps=8, video_scale=2, threads=0)
    values.update(overrides)
    return build_config(FiguresConfig, values)


@pytest.fixture(scope="module")
def inputs(study):
    return fi.load_inputs(figures_config(study))


@pytest.fixture(scope="module")
def directions(reenactor):
    g = torch.Generator().manual_seed(0)
    shape = (reenactor.model.generator.n_latent, TINY_STYLE)
    return {name: LatentDirection(name, torch.randn(*shape, generator=g) * 0.05, 0.0, 1.0)
            for name in ("yaw_deg", "pitch_deg")}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------------------ config, loading
def test_config_checks_values_and_resolves_components(study):
    assert parse_components("blink_left, blink_right") == (1, 2)
    assert parse_components("3,5") == (3, 5)
    assert parse_components(3) == (3,)  # `-p eye_components 3` arrives as an int
    assert parse_components(figures_config(study, eye_components=3).eye_components) == (3,)
    with pytest.raises(InputError, match="not a head model component"):
        parse_components("eyelid")
    with pytest.raises(InputError, match="talking_frames"):
        figures_config(study, talking_frames=2)
    with pytest.raises(InputError, match="prepare.source"):
        figures_config(study, source="video")
    with pytest.raises(InputError, match="must differ"):
        figures_config(study, eye_open_value=1.0)
    assert figures_config(study).world() == "smoke world"


def test_load_reenactor_restores_the_trained_encoder(study, reenactor, tmp_path):
    saved = study["model"].encoder.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in reenactor.model.encoder.state_dict().items())
    assert reenactor.frozen.latent_d is None and reenactor.condition == "render"
    renamed = tmp_path / "other_name.pt"
    renamed.write_bytes(open(study["checkpoint"], "rb").read())
    with pytest.raises(CheckpointError, match="megafr_e4e_render.pt"):
        load_reenactor(renamed, **study["files"])


# ------------------------------------------------------------------------------------------------ picking, truth
def test_picking_helpers_known_values():
    assert list(fi.spread(np.array([5.0, -3.0, 9.0, 0.0, 1.0]), 3)) == [1, 4, 2]  # smallest, median, largest
    assert list(fi.pick_extremes(np.array([10.0, -50.0, 20.0, 5.0]), np.array([0.0, 1.0, 2.0, 30.0]), 3)) == [1, 2, 3]
    identity = np.array([7, 7, 8, 9, 8])
    assert list(fi.first_distinct(identity, np.arange(5), 3)) == [0, 2, 3]
    assert list(fi.first_distinct(identity, np.arange(5), 3, exclude={7})) == [2, 3]


def test_eyelid_gap_is_signed_and_pose_free():
    points = np.zeros((2, 68, 3))
    for upper, lower in EYELID_PAIRS:
        points[:, upper, 1], points[:, lower, 1] = 0.004, 0.001  # 3 mm apart, upper above lower
    points[1] *= -1.0  # second face: the lids crossed (upper below lower)
    gaps = fi.eyelid_gap_mm(points, np.zeros((2, 3)))
    assert gaps == pytest.approx([3.0, -3.0])
    turned = torch.as_tensor(points[:1], dtype=torch.float32)
    rotation = euler_to_axis_angle(torch.tensor([0.6]), torch.tensor([-0.3]), torch.tensor([0.2]))
    from kornia.geometry.conversions import axis_angle_to_rotation_matrix

    posed = turned @ axis_angle_to_rotation_matrix(rotation).transpose(1, 2)  # p' = R p
    assert fi.eyelid_gap_mm(posed, rotation) == pytest.approx([3.0], abs=1e-4)


def test_inputs_pick_examples_and_render_right_answers(study, inputs):
    test = pd.read_parquet(study["root"] / "prepare" / "test" / "meta.parquet")
    images = np.load(study["root"] / "prepare" / "test" / "images.npy")
    cross = pd.read_parquet(study["root"] / "prepare" / "eval" / "cross" / "pairs.parquet")
    grid = inputs.grid
    assert grid.truth.shape == (2, 2, TINY_SIZE, TINY_SIZE, 3)
    rows = lambda picked: [int(np.flatnonzero((images == im).all(axis=(1, 2, 3)))[0]) for im in picked]  # noqa: E731
    source_ids, target_ids = set(test["identity"][rows(grid.sources)]), set(test["identity"][rows(grid.targets)])
    assert len(source_ids) == 2 and not source_ids & target_ids
    # the world's re-rendered right answer equals prepare's for a pair of the cross set
    world = fi.TruthWorld(study["files"]["model_path"], study["files"]["landmark_path"], test, TINY_SIZE)
    rendered = world.reenact(cross["source_row"].to_numpy()[:2], cross["target_row"].to_numpy()[:2])
    assert np.abs(rendered.astype(int) - np.load(study["root"] / "prepare" / "eval" / "cross" / "truth.npy")[:2]).max() <= 1
    # turning a head to its own yaw gives back its photo
    own = world.turned(np.array([0]), "yaw", np.array([test["yaw_deg"].iloc[0]]))[0, 0]
    assert np.abs(own.astype(float) - images[0]).mean() < 1.0
    assert inputs.yaw.truth.shape == (2, 3, TINY_SIZE, TINY_SIZE, 3) and list(inputs.yaw.angles) == [-30.0, 0.0, 30.0]
    # the refinement pairs start with the largest |target yaw| of the cross set
    assert inputs.extremes.labels[0].startswith(f"target yaw {cross['yaw_deg'].iloc[np.abs(cross['yaw_deg']).argmax()]:+.0f}")
    assert np.all(np.diff(inputs.frontal.input_yaw) >= 0)
    assert list(inputs.eyes.degrees) == list(sh.EYE_DEGREES) and inputs.eyes.truth_gap_mm.shape == (2, 5)
    assert np.all(np.diff(inputs.eyes.truth_gap_mm, axis=1) > 0)  # opening the lids widens the rendered gap
    assert inputs.talking.driving.shape[0] == 6 and inputs.talking.truth_landmarks.shape == (6, 68, 2)
    no_truth = fi.load_inputs(figures_config(study, source="photos", talking_frames=4))
    assert no_truth.grid.truth is None and no_truth.yaw.truth is None and len(no_truth.talking.driving) == 4


# ------------------------------------------------------------------------------------------------ figures
def _axes_count(fig) -> int:
    return len(fig.axes)  # subfigures' axes included


def test_grid_figure_lays_out_sources_by_targets(reenactor, inputs):
    fig = panels.grid_figure(reenactor, inputs.grid, 1, "tiny")
    assert len(fig.axes) == 3 * (2 + 2 + 2)  # header row + 2 sources; source, x_s, 2 outputs, 2 right answers
    assert "tiny" in fig._suptitle.get_text()
    bare = fi.Grid(inputs.grid.sources, inputs.grid.targets, None)
    assert len(panels.grid_figure(reenactor, bare, 0, "tiny").axes) == 3 * (2 + 2)


def test_refinement_figure_shows_every_step(reenactor, inputs):
    fig = panels.refinement_figure(reenactor, inputs.extremes, 2, "tiny")
    assert len(fig.axes) == 3 * (3 + 3 + 1)


def test_pose_control_measures_every_output(reenactor, inputs, directions):
    result = panels.pose_control_figure(reenactor, directions, inputs.yaw, 0, "tiny")
    table = result.table
    assert set(table["method"]) == {"MegaFR", "linear latent direction", "right answer"}
    assert len(table) == 3 * 2 * 3 and np.isfinite(table["measured_deg"]).all()
    megafr = table[table["method"] == "MegaFR"]
    assert list(megafr["requested_deg"][:3]) == [-30.0, 0.0, 30.0]
    assert _axes_count(result.figure) == 3 * 4 + 1
    metrics = stage.pose_control_metrics(table)
    expected = (megafr["measured_deg"] - megafr["requested_deg"]).abs().mean()
    assert metrics["megafr_mae_deg"] == pytest.approx(expected)
    with pytest.raises(CheckpointError, match="pitch_deg"):
        panels.pose_control_figure(reenactor, {"yaw_deg": directions["yaw_deg"]}, inputs.pitch, 0, "tiny")


def test_latent_edit_moves_the_code_to_the_requested_value(reenactor, inputs, directions):
    from megafr.figures.measure import as_tensor, inversions, latent_edit

    sources = as_tensor(inputs.yaw.sources)
    _, w_s = rt.invert(reenactor.frozen, sources)
    edited = directions["yaw_deg"].edit(w_s, torch.tensor([10.0, -5.0]))
    expected = reenactor.model.synthesize(edited).clamp(-1, 1)
    assert torch.allclose(latent_edit(reenactor, sources, directions["yaw_deg"], [10.0, -5.0]), expected, atol=1e-5)
    many = sources.repeat(20, 1, 1, 1)  # 40 images: two batches of measure.BATCH
    assert torch.allclose(inversions(reenactor, many), rt.invert(reenactor.frozen, many)[0], atol=1e-5)


def test_frontalization_and_eye_opening(reenactor, inputs):
    from megafr.figures.measure import eyelid_gaps, inversions, pose_degrees

    front = panels.frontalization_figure(reenactor, inputs.frontal, 0, "tiny")
    assert len(front.table) == 3 and len(front.figure.axes) == 4 * 3
    assert list(front.table["input_yaw_deg"]) == list(inputs.frontal.input_yaw)
    truth_yaw = pose_degrees(reenactor, inputs.frontal.truth)[:, 0]  # the right answers, measured like MegaFR's
    np.testing.assert_allclose(front.table["truth_yaw_measured_deg"], truth_yaw, atol=1e-5)
    assert stage.frontal_metrics(front.table)["truth_measured_abs_yaw_deg"] == pytest.approx(np.abs(truth_yaw).mean())
    assert panels.eyelid_values(np.array([0.0, 0.5, 1.0]), 1.0, 0.0) == pytest.approx([1.0, 0.5, 0.0])
    eyes = panels.eye_opening_figure(reenactor, inputs.eyes, (1, 2), 1.0, 0.0, 0, "tiny")
    assert len(eyes.table) == 2 * 5
    assert {"megafr_gap_mm", "truth_gap_mm", "truth_measured_gap_mm", "truth_inverted_gap_mm"} <= set(eyes.table.columns)
    inverted = eyelid_gaps(reenactor, inversions(reenactor, inputs.eyes.truth.reshape(-1, *inputs.eyes.truth.shape[2:])))
    np.testing.assert_allclose(eyes.table["truth_inverted_gap_mm"], inverted, atol=1e-5)
    assert _axes_count(eyes.figure) == 4 * 6 + 1
    metrics = stage.eye_metrics(eyes.table)
    assert metrics["megafr_gap_mae_mm"] == pytest.approx((eyes.table["megafr_gap_mm"] - eyes.table["truth_gap_mm"]).abs().mean())


def test_eye_metrics_known_values():
    table = pd.DataFrame({"source": [0, 0, 1, 1], "degree": [0.0, 1.0, 0.0, 1.0],
                          "megafr_gap_mm": [2.0, 4.0, 3.0, 5.0], "truth_measured_gap_mm": [1.0, 6.0, 2.0, 7.0],
                          "truth_inverted_gap_mm": [1.0, 2.0, 1.0, 2.0], "truth_gap_mm": [0.0, 8.0, 0.0, 8.0]})
    metrics = stage.eye_metrics(table)
    assert metrics["truth_inverted_opening_mm"] == 1.0 and metrics["inverted_opening_fraction"] == pytest.approx(0.2)
    assert metrics["megafr_gap_closed_mm"] == 2.5 and metrics["megafr_gap_open_mm"] == 4.5
    assert metrics["megafr_opening_mm"] == 2.0 and metrics["truth_measured_opening_mm"] == 5.0
    assert metrics["truth_opening_mm"] == 8.0 and metrics["megafr_opening_fraction"] == pytest.approx(0.4)
    assert metrics["megafr_gap_mae_mm"] == pytest.approx(3.0) and metrics["truth_measured_gap_mae_mm"] == pytest.approx(1.5)


# ------------------------------------------------------------------------------------------------ jitter, video
def _face_track(frames=10) -> np.ndarray:
    g = np.random.default_rng(0)
    base = g.uniform(10, 50, (68, 2))
    base[RIGHT_EYE_OUTER], base[LEFT_EYE_OUTER] = (20.0, 30.0), (44.0, 30.0)  # inter-ocular distance 24 px
    return np.repeat(base[None], frames, axis=0)


def test_jitter_known_values():
    still = _face_track()
    assert talking.landmark_jitter(still) == 0.0
    assert talking.interocular_distance(still) == pytest.approx(24.0)
    moving = still + np.arange(10)[:, None, None] * np.array([1.5, -0.5])  # constant velocity
    assert talking.landmark_jitter(moving) == pytest.approx(0.0, abs=1e-12)
    shaking = still.copy()
    shaking[:, :, 0] += 0.5 * (-1.0) ** np.arange(10)[:, None]  # +-0.5 px every other frame
    assert talking.landmark_jitter(shaking) == pytest.approx(2.0)  # |(-1)^t a (-4)| = 4a
    assert talking.second_difference(shaking).shape == (8,)
    with pytest.raises(InputError, match="T >= 3"):
        talking.landmark_jitter(still[:2])


def test_talking_head_video_and_metrics(reenactor, inputs, tmp_path):
    result = talking.reenact_sequence(reenactor, inputs.talking, 0)
    assert result.ours.shape == inputs.talking.driving.shape and result.ours.dtype == np.uint8
    assert set(result.tracks) == {"megafr", "truth_measured", "truth_exact"}
    jitter = result.jitter()
    exact = inputs.talking.truth_landmarks
    assert jitter["jitter_px"]["truth_exact"] == pytest.approx(talking.landmark_jitter(exact))
    assert jitter["jitter_iod_percent"]["truth_exact"] == pytest.approx(
        100 * talking.landmark_jitter(exact) / talking.interocular_distance(exact))
    assert _axes_count(talking.talking_head_figure(result, "tiny")) == 3 * (1 + 6) + 2
    mp4, gif = talking.write_talking_video(result, tmp_path / "t.mp4", tmp_path / "t.gif", fps=8, scale=2,
                                           world="tiny world")
    height, width = video.HEADER_PX + 2 * TINY_SIZE, 3 * 2 * TINY_SIZE + 2 * video.GUTTER_PX
    assert video.read_frames(gif).shape == (6, height, width, 3)
    frames = video.read_frames(mp4)  # padded to 16 px blocks for H.264
    assert frames.shape == (6, height + (-height % 16), width + (-width % 16), 3)
    picture = (slice(None), slice(video.HEADER_PX, height), slice(0, width))  # below the labels, without the padding
    assert np.abs(frames[picture].astype(int) - video.read_frames(gif)[picture]).mean() < 10
    tree = numeric_leaves(stage.metrics_tree(*(pd.DataFrame(columns=["method", "requested_deg", "measured_deg"]),) * 2,
                                             pd.DataFrame({"input_yaw_deg": [10.0], "output_yaw_deg": [1.0],
                                                           "output_pitch_deg": [-2.0]}),
                                             pd.DataFrame({"source": [0, 0], "degree": [0.0, 1.0],
                                                           "megafr_gap_mm": [1.0, 3.0], "truth_gap_mm": [0.0, 4.0]}),
                                             result))
    assert tree["talking_head"]["frames"] == 6
    assert tree["eye_opening"]["megafr_gap_mae_mm"] == pytest.approx(1.0)
    assert tree["frontalization"]["megafr_abs_yaw_deg"] == pytest.approx(1.0)


def test_side_by_side_labels_and_checks():
    a = np.zeros((3, 16, 16, 3), np.uint8)
    frames = video.side_by_side([a, a + 255], ["left", "right"], scale=2)
    assert frames.shape == (3, video.HEADER_PX + 32, 2 * 32 + video.GUTTER_PX, 3)
    assert (frames[:, : video.HEADER_PX] < 255).any()  # the labels are printed
    with pytest.raises(InputError, match="one label per column"):
        video.side_by_side([a], ["a", "b"])
    with pytest.raises(InputError, match="uint8"):
        video.write_gif("/tmp/never.gif", a.astype(float), 4)


# ------------------------------------------------------------------------------------------------ explorer
def test_explore_figure_and_notebook_run_headless(study, reenactor, tmp_path):
    import papermill

    from megafr.figures.explore import explore_figure, explorer, source_controls

    source = np.load(study["root"] / "prepare" / "test" / "images.npy")[0]
    assert len(explore_figure(reenactor, source, 20.0, -5.0, 10.0, {1: 0.0}, 0, "tiny").axes) == 4
    start = source_controls(reenactor, source)
    assert set(start) >= {"yaw", "pitch", "jaw", "smile", "blink_left"}
    assert explorer(reenactor, source, "tiny") is not None
    out = tmp_path / "explore.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "explore.ipynb"), str(out), cwd=str(ROOT), progress_bar=False,
                               parameters=dict(profile="smoke", checkpoint=study["checkpoint"], source_index=1,
                                               images_path=str(study["root"] / "prepare" / "test" / "images.npy"),
                                               prepare_dir=str(study["root"] / "prepare"), threads=1,
                                               **study["files"]))
    cells = json.loads(out.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the static edit was drawn
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)  # the sliders
    assert any("<video" in "".join(o.get("data", {}).get("text/html", "")) for o in outputs)  # the driven clip


# ------------------------------------------------------------------------------------------------ the stage notebook
def test_figures_notebook_writes_every_output(study, directions, tmp_path):
    import papermill
    from PIL import Image

    from megafr.reenact.directions import save_directions

    save_directions(directions, tmp_path / "directions.pt")
    cfg = figures_config(study, talking_frames=5)
    values = {name: getattr(cfg, name) for name in FiguresConfig.__dataclass_fields__ if name != "run_dir"}
    values.update(directions_path=str(tmp_path / "directions.pt"), threads=1)
    parameters = {"params_file": "profiles/smoke.yaml", "overrides": values, "run_dir": str(tmp_path / "run")}
    papermill.execute_notebook(str(ROOT / "notebooks" / "08_figures.ipynb"), str(tmp_path / "08.ipynb"), cwd=str(ROOT),
                               parameters=parameters, progress_bar=False)
    names = ["reenactment_grid", "refinement", "yaw_control", "pitch_control", "frontalization", "eye_opening",
             "talking_head"]
    for name in names:
        with Image.open(tmp_path / "run" / "figures" / f"figures_{name}.png") as image:
            assert image.size[0] > 300 and image.size[1] > 200
    mp4, gif = (tmp_path / "run" / "figures" / f"figures_talking_head.{ext}" for ext in ("mp4", "gif"))
    assert len(video.read_frames(mp4)) == 5 and len(video.read_frames(gif)) == 5
    metrics = numeric_leaves(json.loads((tmp_path / "run" / "metrics" / "figures.json").read_text()))
    assert metrics["talking_head"]["frames"] == 5
    assert set(metrics["pose_control"]["yaw"]) == {"megafr_mae_deg", "linear_latent_direction_mae_deg",
                                                   "right_answer_mae_deg"}
    curve = pd.read_csv(tmp_path / "run" / "plots" / "figures_yaw_control.csv")
    assert list(curve["requested_deg"]) == [-30.0, 0.0, 30.0]


# ------------------------------------------------------------------------------------------------ devices
def test_figures_run_with_every_network_on_another_device(reenactor, inputs, directions):
    """The figures' code paths with the networks on a second device (``tests.second_device``): inputs
    come as CPU arrays, every batch must follow the networks, and the numbers equal the CPU run's."""
    import copy

    from megafr.figures import measure
    from megafr.reenact.inference import Reenactor
    from tests.second_device import remote_device, to_remote

    def run(r):
        s, t = measure.as_tensor(inputs.extremes.source), measure.as_tensor(inputs.extremes.target)
        chain = r.reenact_steps(s, t, range(3))
        return {"chain": torch.stack([chain[k].image for k in range(3)]),
                "refine": panels.refinement_figure(r, inputs.extremes, 1, "tiny") is not None,
                "yaw": panels.pose_control_figure(r, directions, inputs.yaw, 0, "tiny").table,
                "frontal": panels.frontalization_figure(r, inputs.frontal, 0, "tiny").table,
                "eyes": panels.eye_opening_figure(r, inputs.eyes, (1, 2), 1.0, 0.0, 0, "tiny").table,
                "talking": talking.reenact_sequence(r, inputs.talking, 0).tracks["megafr"]}

    expected = run(reenactor)
    with remote_device():
        frozen = rt.Frozen(*(None if m is None else to_remote(copy.deepcopy(m)) for m in reenactor.frozen))
        remote = Reenactor(to_remote(copy.deepcopy(reenactor.model)), frozen, reenactor.condition)
        got = run(remote)
    assert torch.allclose(got["chain"], expected["chain"], atol=1e-5)
    for key in ("yaw", "frontal", "eyes"):
        pd.testing.assert_frame_equal(got[key], expected[key], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got["talking"], expected["talking"], atol=1e-3)
