"""Tests of the 3D face reconstruction network and its training (megafr.face3d.recon / train).

Tiny worlds only: a freshly written synthetic head model, a handful of SynthHeads images at
32 px rendered here, a 4-channel network and a few steps.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from megafr.config import build_config
from megafr.datasets import synthheads as sh
from megafr.errors import CheckpointError, InputError, MissingFileError
from megafr.face3d import headmodel
from megafr.face3d import landmarks as lmk
from megafr.face3d.recon import (
    FaceModel, FaceParams, ReconConfig, load_face_model, read_checkpoint,
)
from megafr.face3d.render import ndc_to_pixels
from megafr.imageio import images_to_tensor
from megafr.face3d.train import (
    LandmarkSet, TrainConfig, batch_indices, build_model, evaluate, landmark_nme, learning_rate,
    load_landmark_set, pixels_to_ndc, reconstruction_figure, train_face3d,
)
from megafr.losses import silhouette_loss, weighted_landmark_loss
from megafr.stage import numeric_leaves

SIZE = 32
CAM_SCALE_INIT = 8.0  # rough framing of SynthHeads crops (NDC units per metre)


def _write_split(world, folder, identities, per_identity, seed):
    from megafr.datasets.prepare import save_array, save_table

    params = sh.sample_split(world, np.random.default_rng(seed), identities, per_identity, (40.0, 20.0, 10.0))
    rendered = world.render(params)
    save_array(folder / "images.npy", rendered["images"])
    save_array(folder / "masks.npy", rendered["masks"])
    save_table(folder / "meta.parquet", sh.scene_table(params, rendered, folder.name))


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("face3d")
    files = headmodel.write_head_model(root / "head_model")
    world = sh.HeadWorld(files.model_path, files.landmark_path, SIZE)
    _write_split(world, root / "train", np.arange(3), 4, seed=1)
    _write_split(world, root / "test", 3 + np.arange(2), 3, seed=2)
    return root


def _config(root, out, **overrides) -> TrainConfig:
    values = dict(
        profile="smoke", seed=0, model_path=str(root / "head_model" / headmodel.MODEL_FILE),
        landmark_path=str(root / "head_model" / headmodel.LANDMARK_FILE), data_dir=str(root), source="synthetic",
        image_size=SIZE, input_size=SIZE, n_shape=headmodel.N_IDENTITY, n_expr=headmodel.N_EXPRESSION, width=4,
        eye_patch=4, extra_splits="", cam_scale_init=CAM_SCALE_INIT, cam_ty_init=0.0, steps=6, batch_size=4, lr=1e-3, lambda_lmk=1.0, lambda_kp=1.0,
        lambda_eye=3.0, lambda_mouth=2.0, lambda_pair=1.0, lambda_sil=0.5, sil_every=2, sil_size=16, sil_batch=2, sil_sigma=1.0,
        lambda_shape=1e-3, lambda_expr=1e-3, lambda_pose=1e-3, checkpoint_every=2, threads=0, cpu_bf16=False, out_dir=str(out),
    )
    values.update(overrides)
    return build_config(TrainConfig, values)


@pytest.fixture(scope="module")
def model(world_dir, tmp_path_factory):
    return build_model(_config(world_dir, tmp_path_factory.mktemp("m"))).eval()


@pytest.fixture(scope="module")
def train_set(world_dir, tmp_path_factory):
    return load_landmark_set(_config(world_dir, tmp_path_factory.mktemp("d")), "train")


def test_shapes_of_reconstruction_and_geometry_image(model, train_set):
    images = images_to_tensor(train_set.images[:2])
    rec = model.reconstruct(images)
    p = rec.params
    assert p.shape.shape == (2, headmodel.N_IDENTITY) and p.expression.shape == (2, headmodel.N_EXPRESSION)
    assert p.pose.shape == (2, 15) and p.cam_scale.shape == (2,) and p.cam_translation.shape == (2, 2)
    assert torch.all(p.pose[:, 3:6] == 0), "the neck rotation must stay zero"
    assert torch.all(p.cam_scale > 0)
    assert rec.landmarks_3d.shape == (2, 68, 3) and rec.landmarks_2d.shape == (2, 68, 2)
    assert rec.vertices.shape[0] == 2 and rec.vertices.shape[2] == 3
    geometry = model.render_geometry(p.shape, p.expression, p.pose, p.camera)
    assert geometry.shape == (2, 3, SIZE, SIZE)
    assert geometry.min() >= -1 and geometry.max() <= 1 and geometry.std() > 0


def test_landmark_fast_path_equals_flame(model):
    g = torch.Generator().manual_seed(3)
    shape = torch.randn(5, model.config.n_shape, generator=g)
    expression = torch.rand(5, model.config.n_expr, generator=g)
    pose = torch.randn(5, 15, generator=g) * 0.3
    full = model.flame(shape, expression, pose).landmarks
    fast = model.landmark_flame(shape, expression, pose)
    assert torch.allclose(full, fast, atol=1e-6)


def test_training_targets_share_the_models_projection(model, train_set):
    """The stored 2D landmarks are what the model projects from the true parameters (same camera convention)."""
    table = train_set.table
    grab = lambda prefix: torch.tensor(table[[c for c in table.columns if c.startswith(prefix)]].to_numpy(np.float32))  # noqa: E731
    params = FaceParams(grab("shape_"), grab("expr_"), grab("pose_"), torch.tensor(table["cam_scale"].to_numpy(np.float32)),
                        grab("cam_t_"))
    _, ndc = model.landmarks(params)
    assert torch.allclose(ndc, torch.from_numpy(train_set.landmarks), atol=1e-4)
    pixels = ndc_to_pixels(ndc, SIZE).numpy()
    assert np.allclose(pixels_to_ndc(pixels, SIZE), train_set.landmarks, atol=1e-4)


def test_weighted_landmark_loss_known_values():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 68, 2, generator=g)
    weights = torch.tensor(lmk.landmark_weights(3.0, 2.0))
    assert weighted_landmark_loss(target, target, weights) == 0
    offset = torch.tensor([0.3, -0.1])
    assert torch.isclose(weighted_landmark_loss(target + offset, target, weights), torch.tensor(0.2))
    # One eye landmark off by (0.4, 0): 3 * 0.2 / sum(w); sum(w) = 36*1 + 12*3 + 20*2 = 112.
    moved = target.clone()
    moved[:, lmk.RIGHT_EYE[1], 0] += 0.4
    assert float(weights.sum()) == 112.0
    assert torch.isclose(weighted_landmark_loss(moved, target, weights), torch.tensor(3 * 0.2 / 112))
    with pytest.raises(ValueError):
        weighted_landmark_loss(target[:, :10], target[:, :10], weights)


def test_silhouette_loss_and_nme_known_values():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    assert silhouette_loss(mask, mask) == 0
    assert silhouette_loss(torch.ones_like(mask), mask) == 0.5
    target = np.zeros((1, 68, 2))
    target[0, lmk.LEFT_EYE_OUTER, 0] = 2.0  # inter-ocular distance 2
    assert np.isclose(landmark_nme(target + [0.3, 0.4], target)[0], 0.25)


def test_gradients_reach_the_input_image(model, train_set):
    images = images_to_tensor(train_set.images[:2]).requires_grad_(True)
    rec = model.reconstruct(images, with_vertices=False)
    (rec.landmarks_3d.sum() + rec.landmarks_2d.sum()).backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, words", [
    (torch.zeros(1, 3, 16, 16), "shape"),
    (torch.zeros(1, 1, SIZE, SIZE), "RGB"),
    (torch.zeros(1, 4, SIZE, SIZE), "RGB"),
    (torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8), "dtype"),
    (torch.full((1, 3, SIZE, SIZE), 200.0), "[-1, 1]"),
    (torch.zeros(0, 3, SIZE, SIZE), "empty"),
    (np.zeros((1, 3, SIZE, SIZE), np.float32), "torch.Tensor"),
])
def test_bad_images_are_refused(model, bad, words):
    with pytest.raises(InputError) as info:
        model.reconstruct(bad)
    message = str(info.value)
    assert words in message and "got" in message and "expected" in message, message


def test_eye_crops_are_centred_on_each_eye_and_the_left_one_mirrored():
    """A white pixel at the right eye's keypoints lands in the middle of its crop; a dot right of the left
    eye's centre lands left of the middle of its mirrored crop."""
    from megafr.face3d.recon import EyeBranch

    size, patch = 32, 8
    branch = EyeBranch(patch, size, width=4)
    image = -torch.ones(1, 3, size, size)
    image[0, :, 10, 8] = 1.0  # row 10, column 8: the right eye
    image[0, :, 10, 23] = 1.0  # one pixel right of the left eye's centre (column 22)
    keypoints = torch.zeros(1, 68, 2)
    centre = lambda row, col: torch.tensor([(col + 0.5) * 2 / size - 1, 1 - (row + 0.5) * 2 / size])  # NDC, y up
    keypoints[0, list(lmk.RIGHT_EYE)] = centre(10, 8)
    keypoints[0, list(lmk.LEFT_EYE)] = centre(10, 22)
    crops = branch.crops(image, keypoints)  # [2, 1, 3, 16, 16]
    assert crops.shape == (2, 1, 3, 16, 16)
    right, left = crops[0, 0, 0], crops[1, 0, 0]
    row, col = divmod(int(right.argmax()), 16)
    assert row in (7, 8) and col in (7, 8)  # the crop's middle (the pixel covers 2 x 2 samples)
    row, col = divmod(int(left.argmax()), 16)
    assert row in (7, 8) and col in (5, 6)  # mirrored: right of the centre shows up left of the middle
    assert branch(image, keypoints).shape == (1, 64)


def test_config_errors(world_dir, tmp_path):
    with pytest.raises(InputError, match="lambda_sil must be 0"):
        _config(world_dir, tmp_path, source="photos", lambda_sil=1.0)
    with pytest.raises(InputError, match="input_size"):
        _config(world_dir, tmp_path, input_size=48)
    with pytest.raises(InputError, match="eye_patch"):
        _config(world_dir, tmp_path, eye_patch=SIZE)
    with pytest.raises(MissingFileError, match="prepare"):
        load_landmark_set(_config(world_dir, tmp_path, data_dir=str(tmp_path)), "train")


def test_extra_splits_add_their_images_landmarks_and_masks_to_train_only(world_dir, tmp_path):
    """``extra_splits`` appends a SynthHeads split (the mini recognition set) to the training images, with its
    landmarks and masks in the same rows; the test split stays as it is; test itself can never be an extra."""
    import shutil

    root = tmp_path / "world"
    shutil.copytree(world_dir, root)
    shutil.copytree(root / "test", root / "recognition")  # any SynthHeads split folder (its rows are known)
    plain = load_landmark_set(_config(root, tmp_path / "a"), "train")
    more = load_landmark_set(_config(root, tmp_path / "b", extra_splits="recognition"), "train")
    extra = load_landmark_set(_config(root, tmp_path / "c"), "test")
    n = len(plain)
    assert len(more) == n + len(extra)
    np.testing.assert_array_equal(np.asarray(more.images[n:len(more)]), np.asarray(extra.images[0:len(extra)]))
    np.testing.assert_array_equal(np.asarray(more.images[0:n]), np.asarray(plain.images[0:n]))
    np.testing.assert_array_equal(more.landmarks[n:], extra.landmarks)
    np.testing.assert_array_equal(more.masks[n:], extra.masks)
    assert list(more.table["split"][n:]) == list(extra.table["split"])
    assert more.digest() != plain.digest()  # a checkpoint of the train split alone is not resumed on more
    assert len(load_landmark_set(_config(root, tmp_path / "d", extra_splits="recognition"), "test")) == len(extra)
    with pytest.raises(InputError, match="extra_splits"):
        _config(root, tmp_path, extra_splits="recognition,test")
    with pytest.raises(InputError, match="extra_splits"):
        _config(root, tmp_path, source="photos", lambda_sil=0.0, extra_splits="recognition")


def test_batches_are_a_function_of_seed_and_step():
    first = [batch_indices(5, step, 10, 4) for step in range(5)]
    assert all(np.array_equal(a, batch_indices(5, s, 10, 4)) for s, a in enumerate(first))
    flat = np.concatenate(first)  # 20 positions = two epochs of 10
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:])
    assert not np.array_equal(batch_indices(6, 0, 10, 4), first[0])


def test_learning_rate_schedule():
    cfg = TrainConfig.__new__(TrainConfig)
    object.__setattr__(cfg, "lr", 1.0)
    object.__setattr__(cfg, "steps", 100)
    rates = [learning_rate(cfg, k) for k in range(100)]
    assert max(rates) == pytest.approx(1.0) and rates[0] < rates[4] and rates[-1] < 1e-3


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(world_dir, train_set, tmp_path):
    straight = _config(world_dir, tmp_path / "a")
    whole = train_face3d(straight, train_set, progress=False)
    broken = _config(world_dir, tmp_path / "b")
    first = train_face3d(broken, train_set, progress=False, stop_after=3)
    assert first.steps_run == 3 and read_checkpoint(broken.checkpoint_path)["step"] == 3
    second = train_face3d(broken, train_set, progress=False)
    assert second.resumed_from == 3 and second.steps_run == 3
    a, b = whole.model.net.state_dict(), second.model.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.curve.equals(second.curve)
    again = train_face3d(straight, train_set, progress=False)  # a finished checkpoint: nothing left to run
    assert again.steps_run == 0
    changed = train_face3d(replace(straight, lr=2e-3), train_set, progress=False, stop_after=1)
    assert changed.resumed_from == 0, "a checkpoint of other settings must not be resumed"


def test_checkpoint_is_not_resumed_over_other_training_data(world_dir, train_set, tmp_path):
    cfg = _config(world_dir, tmp_path)
    train_face3d(cfg, train_set, progress=False, stop_after=2)
    moved = replace(train_set, landmarks=train_set.landmarks + np.float32(0.01))  # e.g. a re-made prepare split
    assert train_face3d(cfg, moved, progress=False, stop_after=1).resumed_from == 0
    assert train_face3d(cfg, moved, progress=False, stop_after=1).resumed_from == 1  # its own checkpoint resumes


def test_checkpoint_round_trip(world_dir, train_set, tmp_path):
    cfg = _config(world_dir, tmp_path, steps=2)
    result = train_face3d(cfg, train_set, progress=False)
    data = read_checkpoint(cfg.checkpoint_path)
    assert {"state_dict", "config", "step", "optimizer"} <= set(data) and data["step"] == 2
    loaded = load_face_model(cfg.checkpoint_path)
    images = images_to_tensor(train_set.images[:3])
    with torch.no_grad():
        assert torch.allclose(loaded.reconstruct(images).landmarks_2d, result.model.reconstruct(images).landmarks_2d)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="state_dict"):
        load_face_model(tmp_path / "other.pt")
    with pytest.raises(MissingFileError, match="train_face3d"):
        load_face_model(tmp_path / "absent.pt")


def test_training_lowers_the_landmark_loss(world_dir, train_set, tmp_path):
    cfg = _config(world_dir, tmp_path, steps=40, lr=3e-3, width=8, lambda_sil=0.0, checkpoint_every=40)
    curve = train_face3d(cfg, train_set, progress=False).curve
    assert curve["lmk"].iloc[-1] < 0.7 * curve["lmk"].iloc[0]


def test_evaluate_and_figure(world_dir, model, tmp_path):
    test = load_landmark_set(_config(world_dir, tmp_path), "test")
    metrics = numeric_leaves(evaluate(model, test))
    for key in ("nme_percent", "eye_opening_error_mm", "mouth_opening_error_mm", "yaw_error_deg", "pitch_error_deg",
                "roll_error_deg", "expression_error", "shape_error", "shape_vertex_error_mm"):
        assert key in metrics and metrics[key] >= 0
    assert metrics["images"] == len(test)
    photos_like = LandmarkSet(test.images, test.landmarks, None, test.table[["identity"]])
    assert set(evaluate(model, photos_like)) == {"images", "nme_percent", "nme_percent_median"}
    fig = reconstruction_figure(model, test, 3, "test")
    assert len(fig.axes) == 6


def test_loss_evaluation_and_figure_run_on_the_chosen_device(world_dir, train_set, tmp_path):
    """The network on a second device (``tests.second_device``; the GPU where there is one): the training loss,
    the evaluation and the figure move every batch there and give the CPU's numbers. (Backward passes cannot
    run on that stand-in device: autograd makes tensors on it that hold no data.)"""
    import copy

    from megafr.face3d.train import Face3dLoss
    from tests.second_device import FAKE, remote_device, to_remote

    cfg = _config(world_dir, tmp_path / "cpu", steps=2)
    model = train_face3d(cfg, train_set, progress=False).model
    rows = np.arange(4)
    images = images_to_tensor(train_set.images[rows])
    target = torch.from_numpy(train_set.landmarks[rows])
    masks = torch.from_numpy(train_set.masks[rows[:cfg.sil_batch]])
    with torch.no_grad():
        expected_total, expected_terms = Face3dLoss(cfg)(model, images, target, masks)
    expected = evaluate(model, train_set)
    with remote_device(), torch.no_grad():
        moved = to_remote(copy.deepcopy(model))
        total, terms = to_remote(Face3dLoss(cfg))(moved, images.to(FAKE), target.to(FAKE), masks.to(FAKE))
        metrics = evaluate(moved, train_set)
        reconstruction_figure(moved, train_set, 2, "device")
    assert float(total) == pytest.approx(float(expected_total), rel=1e-5)
    assert terms == pytest.approx(expected_terms, rel=1e-5, abs=1e-7)
    assert metrics == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_runs_the_cnn_in_bfloat16_only_where_the_cpu_has_it(world_dir, tmp_path, monkeypatch, native):
    from megafr import devices
    from megafr.face3d.recon import FaceReconstructor

    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: native)
    seen = []
    real = FaceReconstructor.regress_with_keypoints

    def recording(self, images):
        params, keypoints = real(self, images)
        seen.append(keypoints.dtype)
        return params, keypoints

    monkeypatch.setattr(FaceReconstructor, "regress_with_keypoints", recording)
    plain = train_face3d(_config(world_dir, tmp_path / "fp32", steps=2), load_landmark_set(_config(world_dir, tmp_path), "train"))
    mixed = train_face3d(_config(world_dir, tmp_path / "bf16", steps=2, cpu_bf16=True),
                         load_landmark_set(_config(world_dir, tmp_path), "train"))
    assert seen == [torch.float32] * 2 + [torch.bfloat16 if native else torch.float32] * 2
    assert np.isfinite(mixed.curve.to_numpy()).all()
    same = all(torch.equal(a, b) for a, b in zip(plain.model.net.state_dict().values(), mixed.model.net.state_dict().values()))
    assert same is not native  # bfloat16 steps move the weights differently; without native bf16 nothing changes
    with pytest.raises(InputError, match="cpu_bf16"):
        _config(world_dir, tmp_path, cpu_bf16="yes")
