"""Tests of the FLAME layer and its file loader (megafr.face3d.flame).

Every test writes its own small random model in the FLAME 2020 file layout (no licensed
file is needed) and checks known answers or an independent computation.
"""

import pickle

import chumpy
import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial.transform import Rotation
from smplx.lbs import lbs as smplx_lbs

from megafr.errors import CheckpointError, MissingFileError
from megafr.face3d.flame import (
    FILE_SHAPE_COMPONENTS,
    FLAME,
    POSE_DIM,
    FlameAssets,
    load_flame_assets,
)

N_VERTS = 50
N_FACES = 40
N_EXPR_FILE = 100
N_SHAPE, N_EXPR = 7, 5
ROOT_SENTINEL = 2**32 - 1  # how FLAME's kintree_table stores the root's parent
EYE_JOINTS = (3, 4)


def _random_model(seed=0, sparse=False, use_chumpy=False):
    """A FLAME-format model dict with eye vertices skinned only to the eye joints."""
    rng = np.random.default_rng(seed)
    region = np.arange(N_VERTS) % 5  # 0-2: head/neck/jaw mixtures, 3: left eye, 4: right eye
    weights = np.zeros((N_VERTS, 5))
    for i, r in enumerate(region):
        if r in EYE_JOINTS:
            weights[i, r] = 1.0
        else:
            mix = rng.random(3)
            weights[i, :3] = mix / mix.sum()
    posedirs = rng.normal(scale=0.01, size=(N_VERTS, 3, 36))
    for joint in range(1, 5):  # pose correctives of a joint only where the joint has weight
        posedirs[weights[:, joint] == 0, :, 9 * (joint - 1):9 * joint] = 0.0
    j_regressor = rng.random((5, N_VERTS))
    j_regressor /= j_regressor.sum(axis=1, keepdims=True)
    model = {
        "f": rng.integers(0, N_VERTS, size=(N_FACES, 3)).astype(np.uint32),
        "v_template": rng.normal(scale=0.1, size=(N_VERTS, 3)),
        "shapedirs": rng.normal(scale=0.01, size=(N_VERTS, 3, FILE_SHAPE_COMPONENTS + N_EXPR_FILE)),
        "posedirs": posedirs,
        "J_regressor": scipy.sparse.csc_matrix(j_regressor) if sparse else j_regressor,
        "kintree_table": np.array([[ROOT_SENTINEL, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": weights,
    }
    if use_chumpy:
        for key in ("v_template", "shapedirs", "posedirs", "weights"):
            model[key] = chumpy.array(model[key])
    landmarks = {
        "full_lmk_faces_idx": rng.integers(0, N_FACES, size=(1, 68)),
        "full_lmk_bary_coords": rng.dirichlet(np.ones(3), size=(1, 68)),
        "static_lmk_faces_idx": np.zeros(51, dtype=np.int64),  # present in DECA's file, unused here
    }
    return model, landmarks


def _write(tmp_path, model, landmarks, name="m"):
    model_path, lmk_path = tmp_path / f"{name}.pkl", tmp_path / f"{name}_lmk.npy"
    with open(model_path, "wb") as handle:
        pickle.dump(model, handle, protocol=2)
    np.save(lmk_path, np.array(landmarks, dtype=object), allow_pickle=True)
    return model_path, lmk_path


@pytest.fixture
def files(tmp_path):
    model, landmarks = _random_model()
    return model, landmarks, *_write(tmp_path, model, landmarks)


def _params(batch, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, N_SHAPE, generator=g, dtype=dtype),
            torch.randn(batch, N_EXPR, generator=g, dtype=dtype),
            0.3 * torch.randn(batch, POSE_DIM, generator=g, dtype=dtype))


def _zeros(batch, dtype=torch.float64):
    return (torch.zeros(batch, N_SHAPE, dtype=dtype), torch.zeros(batch, N_EXPR, dtype=dtype),
            torch.zeros(batch, POSE_DIM, dtype=dtype))


def test_zero_parameters_give_template(files):
    model, _, model_path, lmk_path = files
    flame = FLAME.from_files(model_path, lmk_path, N_SHAPE, N_EXPR)
    out = flame(*_zeros(2))
    expected = torch.from_numpy(model["v_template"].astype(np.float32)).double()
    assert out.vertices.shape == (2, N_VERTS, 3) and out.landmarks.shape == (2, 68, 3) and out.joints.shape == (2, 5, 3)
    assert torch.allclose(out.vertices, expected.expand(2, -1, -1), atol=1e-6)


def test_shape_and_expression_use_the_right_columns(files):
    """Unposed output equals v_template + identity columns [0, n_shape) + expression columns [300, 300+n_expr)."""
    model, _, model_path, lmk_path = files
    flame = FLAME.from_files(model_path, lmk_path, N_SHAPE, N_EXPR)
    shape, expr, _ = _params(1)
    out = flame(shape, expr, torch.zeros(1, POSE_DIM, dtype=torch.float64))
    dirs = model["shapedirs"].astype(np.float32).astype(np.float64)
    expected = (model["v_template"].astype(np.float32)
                + dirs[:, :, :N_SHAPE] @ shape[0].numpy()
                + dirs[:, :, FILE_SHAPE_COMPONENTS:FILE_SHAPE_COMPONENTS + N_EXPR] @ expr[0].numpy())
    assert np.allclose(out.vertices[0].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("sparse,use_chumpy", [(False, False), (True, False), (False, True), (True, True)])
def test_matches_smplx_lbs_called_directly(tmp_path, sparse, use_chumpy):
    """Our layer equals smplx's lbs fed the raw file arrays (all 400 columns, zero-padded betas)."""
    model, landmarks = _random_model(seed=3, sparse=sparse, use_chumpy=use_chumpy)
    flame = FLAME.from_files(*_write(tmp_path, model, landmarks), N_SHAPE, N_EXPR)
    shape, expr, pose = _params(3)
    out = flame(shape, expr, pose)

    raw = _random_model(seed=3)[0]  # the same arrays as plain numpy
    betas = torch.zeros(3, FILE_SHAPE_COMPONENTS + N_EXPR_FILE, dtype=torch.float64)
    betas[:, :N_SHAPE] = shape
    betas[:, FILE_SHAPE_COMPONENTS:FILE_SHAPE_COMPONENTS + N_EXPR] = expr
    as64 = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32).astype(np.float64))  # noqa: E731
    parents = torch.tensor([-1, 0, 1, 1, 1])
    verts, joints = smplx_lbs(
        betas, pose, as64(raw["v_template"])[None].expand(3, -1, -1), as64(raw["shapedirs"]),
        as64(raw["posedirs"]).reshape(-1, 36).T, as64(raw["J_regressor"]), parents, as64(raw["weights"]),
    )
    assert torch.allclose(out.vertices, verts, atol=1e-9)
    assert torch.allclose(out.joints, joints, atol=1e-9)
    # Landmarks: barycentric combination of the embedding's triangles, computed in numpy.
    tri = raw["f"].astype(np.int64)[landmarks["full_lmk_faces_idx"][0]]  # [68, 3]
    bary = landmarks["full_lmk_bary_coords"][0].astype(np.float32).astype(np.float64)
    expected = np.einsum("blkc,lk->blc", verts.numpy()[:, tri], bary)
    assert np.allclose(out.landmarks.numpy(), expected, atol=1e-9)


def test_global_rotation_rotates_about_root(files):
    _, _, model_path, lmk_path = files
    flame = FLAME.from_files(model_path, lmk_path, N_SHAPE, N_EXPR)
    shape, expr, _ = _params(1)
    rest = flame(shape, expr, torch.zeros(1, POSE_DIM, dtype=torch.float64))
    rotvec = np.array([0.3, -0.5, 0.2])
    pose = torch.zeros(1, POSE_DIM, dtype=torch.float64)
    pose[0, :3] = torch.from_numpy(rotvec)
    posed = flame(shape, expr, pose)
    rotation = Rotation.from_rotvec(rotvec).as_matrix()
    root = rest.joints[0, 0].numpy()
    expected = (rest.landmarks[0].numpy() - root) @ rotation.T + root
    assert np.allclose(posed.landmarks[0].numpy(), expected, atol=1e-6)
    assert np.allclose(posed.joints[0, 0].numpy(), root, atol=1e-9)


def test_eye_pose_moves_only_eye_vertices(files):
    model, _, model_path, lmk_path = files
    flame = FLAME.from_files(model_path, lmk_path, N_SHAPE, N_EXPR)
    shape, expr, _ = _params(1)
    rest = flame(shape, expr, torch.zeros(1, POSE_DIM, dtype=torch.float64)).vertices[0]
    pose = torch.zeros(1, POSE_DIM, dtype=torch.float64)
    pose[0, 9:12] = torch.tensor([0.2, 0.4, 0.0])  # left eye joint (index 3)
    moved = (flame(shape, expr, pose).vertices[0] - rest).norm(dim=-1)
    left_eye = torch.from_numpy(model["weights"][:, 3] > 0)
    assert torch.all(moved[~left_eye] < 1e-12)
    assert torch.all(moved[left_eye] > 1e-4)


def test_batch_equals_one_by_one(files):
    _, _, model_path, lmk_path = files
    flame = FLAME.from_files(model_path, lmk_path, N_SHAPE, N_EXPR)
    shape, expr, pose = _params(4, dtype=torch.float32)
    batched = flame(shape, expr, pose)
    for i in range(4):
        single = flame(shape[i:i + 1], expr[i:i + 1], pose[i:i + 1])
        assert torch.allclose(batched.vertices[i], single.vertices[0], atol=1e-6)
        assert torch.allclose(batched.landmarks[i], single.landmarks[0], atol=1e-6)


def test_file_round_trip_equals_in_memory_assets(files):
    model, landmarks, model_path, lmk_path = files
    in_memory = FlameAssets(
        v_template=model["v_template"].astype(np.float32), faces=model["f"].astype(np.int64),
        shapedirs=model["shapedirs"].astype(np.float32), posedirs=model["posedirs"].astype(np.float32),
        j_regressor=model["J_regressor"].astype(np.float32), parents=np.array([-1, 0, 1, 1, 1]),
        lbs_weights=model["weights"].astype(np.float32), lmk_faces_idx=landmarks["full_lmk_faces_idx"][0],
        lmk_bary_coords=landmarks["full_lmk_bary_coords"][0].astype(np.float32),
    )
    loaded = load_flame_assets(model_path, lmk_path)
    assert loaded.parents.tolist() == [-1, 0, 1, 1, 1] and loaded.faces.dtype == np.int64
    params = _params(2, dtype=torch.float32)
    a = FLAME(in_memory, N_SHAPE, N_EXPR)(*params)
    b = FLAME(loaded, N_SHAPE, N_EXPR)(*params)
    assert torch.equal(a.vertices, b.vertices) and torch.equal(a.landmarks, b.landmarks)


def test_gradients_reach_all_parameters(files):
    _, _, model_path, lmk_path = files
    flame = FLAME.from_files(model_path, lmk_path, N_SHAPE, N_EXPR)
    shape, expr, pose = (p.requires_grad_() for p in _params(2, dtype=torch.float32))
    out = flame(shape, expr, pose)
    (out.vertices.pow(2).sum() + out.landmarks.pow(2).sum()).backward()
    for grad in (shape.grad, expr.grad, pose.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.all(pose.grad.abs().view(2, 5, 3).sum(-1) > 0)  # every joint influences the output


# ----------------------------------------------------------------------------- errors
def test_missing_files_name_the_source(tmp_path, files):
    _, _, model_path, lmk_path = files
    with pytest.raises(MissingFileError, match="flame.is.tue.mpg.de"):
        load_flame_assets(tmp_path / "absent.pkl", lmk_path)
    with pytest.raises(MissingFileError, match="DECA"):
        load_flame_assets(model_path, tmp_path / "absent.npy")


def test_not_a_pickle(tmp_path, files):
    _, _, _, lmk_path = files
    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(b"this is not a pickle at all")
    with pytest.raises(CheckpointError, match="not a readable pickle.*flame.is.tue.mpg.de"):
        load_flame_assets(bad, lmk_path)


def test_missing_key_is_named(tmp_path):
    model, landmarks = _random_model()
    del model["posedirs"]
    with pytest.raises(CheckpointError, match=r"missing keys \['posedirs'\]"):
        load_flame_assets(*_write(tmp_path, model, landmarks))


def test_wrong_shape_is_reported(tmp_path):
    model, landmarks = _random_model()
    model["shapedirs"] = model["shapedirs"][:, :, :FILE_SHAPE_COMPONENTS]  # no expression columns
    with pytest.raises(CheckpointError, match=r"'shapedirs' should have shape .*found \(50, 3, 300\)"):
        load_flame_assets(*_write(tmp_path, model, landmarks))
    model, landmarks = _random_model()
    model["weights"] = model["weights"][:, :4]
    with pytest.raises(CheckpointError, match=r"'weights' should have shape \[50, 5\], found \(50, 4\)"):
        load_flame_assets(*_write(tmp_path, model, landmarks))


def test_bad_landmark_embedding(tmp_path):
    model, landmarks = _random_model()
    del landmarks["full_lmk_bary_coords"]
    with pytest.raises(CheckpointError, match="full_lmk_bary_coords"):
        load_flame_assets(*_write(tmp_path, model, landmarks))
    model, landmarks = _random_model()
    landmarks["full_lmk_faces_idx"] = landmarks["full_lmk_faces_idx"] + N_FACES  # triangles beyond the mesh
    with pytest.raises(CheckpointError, match="another mesh"):
        load_flame_assets(*_write(tmp_path, model, landmarks))


def test_too_many_components_requested(files):
    _, _, model_path, lmk_path = files
    with pytest.raises(CheckpointError, match="expression components"):
        FLAME.from_files(model_path, lmk_path, N_SHAPE, N_EXPR_FILE + 1)
    with pytest.raises(CheckpointError, match="identity components"):
        FLAME.from_files(model_path, lmk_path, FILE_SHAPE_COMPONENTS + 1, N_EXPR)


def test_wrong_parameter_shapes(files):
    _, _, model_path, lmk_path = files
    flame = FLAME.from_files(model_path, lmk_path, N_SHAPE, N_EXPR)
    shape, expr, pose = _params(2)
    with pytest.raises(ValueError, match="pose should be"):
        flame(shape, expr, pose[:, :12])
    with pytest.raises(ValueError, match="expression should be"):
        flame(shape, expr[:, :3], pose)
