"""The synthetic FLAME-format head model: file layout, rig behaviour, mesh topology, appearance."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import scipy.sparse
import torch

from megafr.face3d import headmesh, headmodel
from megafr.face3d import landmarks as lmk
from megafr.face3d.flame import FLAME, load_flame_assets

LEFT_EYE_PAIRS = tuple(p for p in lmk.EYELID_PAIRS if p[0] in lmk.LEFT_EYE)
RIGHT_EYE_PAIRS = tuple(p for p in lmk.EYELID_PAIRS if p[0] in lmk.RIGHT_EYE)
JAW_OPEN_RAD = math.radians(15.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return headmodel.write_head_model(tmp_path_factory.mktemp("head"))


@pytest.fixture(scope="module")
def flame(files):
    return FLAME.from_files(files.model_path, files.landmark_path, headmodel.N_IDENTITY, headmodel.N_EXPRESSION).double()


def _run(flame, shape=None, expression=None, pose=None, batch=1):
    shape = torch.zeros(batch, flame.n_shape, dtype=torch.float64) if shape is None else shape
    expression = torch.zeros(batch, flame.n_expr, dtype=torch.float64) if expression is None else expression
    pose = torch.zeros(batch, 15, dtype=torch.float64) if pose is None else pose
    return flame(shape, expression, pose)


def _expr(name, value=1.0):
    e = torch.zeros(1, headmodel.N_EXPRESSION, dtype=torch.float64)
    e[0, headmodel.EXPRESSION_COMPONENTS.index(name)] = value
    return e


def _gaps(landmarks, pairs):
    return np.array([float(landmarks[0, u, 1] - landmarks[0, l, 1]) for u, l in pairs])


def test_official_key_layout(files):
    with open(files.model_path, "rb") as handle:
        model = pickle.load(handle, encoding="latin1")
    n = model["v_template"].shape[0]
    assert 2000 <= n <= 5000
    assert model["f"].dtype == np.uint32 and model["f"].shape[1] == 3
    assert model["v_template"].shape == (n, 3)
    assert model["shapedirs"].shape == (n, 3, 400)
    assert model["posedirs"].shape == (n, 3, 36)
    assert scipy.sparse.issparse(model["J_regressor"]) and model["J_regressor"].format == "csc"
    assert model["J_regressor"].shape == (5, n)
    assert model["kintree_table"].tolist() == [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]
    assert model["weights"].shape == (n, 5)
    np.testing.assert_allclose(model["weights"].sum(axis=1), 1.0, atol=1e-9)
    assert model["weights"].min() >= 0.0
    # only the documented columns are used
    used = np.abs(model["shapedirs"]).max(axis=(0, 1)) > 0
    assert used[: headmodel.N_IDENTITY].all() and not used[headmodel.N_IDENTITY : 300].any()
    assert used[300 : 300 + headmodel.N_EXPRESSION].all() and not used[300 + headmodel.N_EXPRESSION :].any()
    emb = np.load(files.landmark_path, allow_pickle=True, encoding="latin1").item()
    assert emb["full_lmk_faces_idx"].shape == (1, 68)
    assert emb["full_lmk_bary_coords"].shape == (1, 68, 3)
    assert emb["static_lmk_faces_idx"].shape == (51,)
    assert emb["static_lmk_bary_coords"].shape == (51, 3)
    np.testing.assert_allclose(emb["full_lmk_bary_coords"].sum(-1), 1.0, atol=1e-9)
    assert emb["full_lmk_bary_coords"].min() >= -1e-9


def test_loads_with_flame_loader(files):
    assets = load_flame_assets(files.model_path, files.landmark_path)
    assert assets.n_expression_components == 100
    assert assets.parents.tolist() == [-1, 0, 1, 1, 1]
    assert len(headmodel.IDENTITY_COMPONENTS) == headmodel.N_IDENTITY >= 20
    assert len(headmodel.EXPRESSION_COMPONENTS) == headmodel.N_EXPRESSION >= 10
    for name in ("smile", "blink_left", "blink_right", "brow_raise", "brow_frown", "mouth_pucker", "lip_stretch"):
        assert name in headmodel.EXPRESSION_COMPONENTS


def test_write_is_deterministic(files, tmp_path):
    again = headmodel.write_head_model(tmp_path)
    for a, b in zip(
        (files.model_path, files.landmark_path, files.appearance_path),
        (again.model_path, again.landmark_path, again.appearance_path),
    ):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_zero_parameters_give_template(flame):
    out = _run(flame)
    torch.testing.assert_close(out.vertices[0], flame.v_template.double(), atol=1e-7, rtol=0)  # float32 file arrays


def test_face_points_to_viewer(flame):
    lm = _run(flame).landmarks[0]
    nose_tip, eye_corners = lm[30], lm[[36, 45]]
    assert float(nose_tip[2]) > float(eye_corners[:, 2].max()) + 0.01
    assert float(lm[45, 0]) > 0 > float(lm[36, 0])  # left eye on +x
    assert float(lm[19, 1]) > float(lm[37, 1]) > float(lm[30, 1]) > float(lm[51, 1]) > float(lm[8, 1])


def test_jaw_opening_widens_every_lip_gap(flame):
    closed = _run(flame).landmarks
    pose = torch.zeros(1, 15, dtype=torch.float64)
    pose[0, 6] = JAW_OPEN_RAD  # rotation about x
    opened = _run(flame, pose=pose).landmarks
    widen = _gaps(opened, lmk.LIP_PAIRS) - _gaps(closed, lmk.LIP_PAIRS)
    assert (widen > 0.005).all(), widen  # > 5 mm for a 15 degree opening
    eyes_change = _gaps(opened, lmk.EYELID_PAIRS) - _gaps(closed, lmk.EYELID_PAIRS)
    np.testing.assert_allclose(eyes_change, 0.0, atol=1e-7)


@pytest.mark.parametrize("name, closing, other", [("blink_left", LEFT_EYE_PAIRS, RIGHT_EYE_PAIRS), ("blink_right", RIGHT_EYE_PAIRS, LEFT_EYE_PAIRS)])
def test_blink_closes_one_eye(flame, name, closing, other):
    neutral = _run(flame).landmarks
    blink = _run(flame, expression=_expr(name)).landmarks
    assert (_gaps(neutral, closing) > 0.004).all()
    ratio = _gaps(blink, closing) / _gaps(neutral, closing)
    assert (ratio < 0.2).all(), ratio
    assert (ratio >= 0.0).all(), ratio  # the lid stops at the lower lid
    np.testing.assert_allclose(_gaps(blink, other), _gaps(neutral, other), atol=1e-6)


def test_identity_components_smooth_and_change_landmarks(flame, files):
    assets = load_flame_assets(files.model_path, files.landmark_path)
    faces = assets.faces
    edges = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1), axis=0)
    v = assets.v_template.astype(np.float64)
    length = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
    long_enough = length > 1e-4  # the closed slits' 0.6 mm bands are the shortest edges kept
    rng = np.random.default_rng(0)
    for k, name in enumerate(headmodel.IDENTITY_COMPONENTS):
        d = assets.shapedirs[:, :, k].astype(np.float64)
        assert 0.001 < np.abs(d).max() < 0.02, name  # one std moves something by 1 mm .. 2 cm
        stretch = np.linalg.norm(d[edges[:, 0]] - d[edges[:, 1]], axis=1)[long_enough] / length[long_enough]
        assert stretch.max() < 1.0, (name, stretch.max())
        assert np.median(stretch) < 0.1, name
    # a random (non-smooth) field of the same size fails the same check
    noise = rng.standard_normal(v.shape) * 0.003
    noise_stretch = np.linalg.norm(noise[edges[:, 0]] - noise[edges[:, 1]], axis=1)[long_enough] / length[long_enough]
    assert noise_stretch.max() > 1.0
    # face components move landmarks
    not_on_landmarks = {"head_depth", "ear_size", "ear_protrusion", "neck_width", "head_height", "forehead_height", "forehead_slope"}
    neutral = _run(flame).landmarks[0].numpy()
    for k, name in enumerate(headmodel.IDENTITY_COMPONENTS):
        shape = torch.zeros(1, flame.n_shape, dtype=torch.float64)
        shape[0, k] = 1.0
        moved = np.linalg.norm(_run(flame, shape=shape).landmarks[0].numpy() - neutral, axis=1).max()
        if name not in not_on_landmarks:
            assert moved > 0.0008, (name, moved)
    # random identities are clearly different heads
    shapes = torch.from_numpy(rng.standard_normal((4, flame.n_shape)))
    verts = _run(flame, shape=shapes, batch=4).vertices.numpy()
    assert np.linalg.norm(verts[0] - verts[1], axis=1).mean() > 0.002


def test_gaze_moves_only_that_eyeball(flame, files):
    assets = load_flame_assets(files.model_path, files.landmark_path)
    pose = torch.zeros(1, 15, dtype=torch.float64)
    pose[0, 10] = 0.3  # left eye turns about y
    neutral = _run(flame).vertices[0].numpy()
    out = _run(flame, pose=pose)
    moved = np.linalg.norm(out.vertices[0].numpy() - neutral, axis=1) > 1e-9
    left_eye = assets.lbs_weights[:, 3] > 0.5
    assert moved.any() and (moved == left_eye).all()
    center = out.joints[0, 3].numpy()
    radius = np.linalg.norm(out.vertices[0].numpy()[left_eye] - center, axis=1)
    np.testing.assert_allclose(radius, headmesh.EYE_RADIUS, rtol=1e-6)
    # the pupil (front pole) now looks toward +x
    pupil = out.vertices[0].numpy()[np.flatnonzero(left_eye)[0]]
    assert pupil[0] > center[0] + 0.003


def _components(faces: np.ndarray, n: int) -> np.ndarray:
    parent = np.arange(n)

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b, c in faces:
        for p, q in ((a, b), (b, c)):
            rp, rq = find(p), find(q)
            if rp != rq:
                parent[rp] = rq
    return np.array([find(f[0]) for f in faces])


def test_mesh_closed_and_outward(files):
    assets = load_flame_assets(files.model_path, files.landmark_path)
    faces, v = assets.faces, assets.v_template.astype(np.float64)
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    # consistently oriented: every directed edge once, and its reverse exists (so each edge has 2 faces)
    keys = directed[:, 0] * len(v) + directed[:, 1]
    assert len(np.unique(keys)) == len(keys)
    reverse = directed[:, 1] * len(v) + directed[:, 0]
    assert np.isin(reverse, keys).all()
    comp = _components(faces, len(v))
    labels = np.unique(comp)
    assert len(labels) == 3  # head, two eyeballs
    a, b, c = (v[faces[:, k]] for k in range(3))
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0
    for label in labels:
        assert volume[comp == label].sum() > 0  # outward normals enclose a positive volume
    assert len(np.unique(faces)) == len(v)  # no stray vertices


def test_appearance_albedo(files):
    model = headmodel.AppearanceModel.load(files.appearance_path)
    params = model.sample(torch.Generator().manual_seed(3), 5)
    assert params.shape == (5, headmodel.N_APPEARANCE)
    assert params.min() >= 0 and params.max() <= 1
    albedo = model.albedo(params)
    assert albedo.shape == (5, model.n_vertices, 3)
    assert albedo.min() >= 0 and albedo.max() <= 1
    assert (albedo[0] - albedo[1]).abs().mean() > 0.02
    # pupils are dark, sclera light, lips redder than skin
    w = model.region_weights
    pupil, sclera = w[:, 4] > 0.99, w[:, 5] > 0.99
    assert albedo[:, pupil].max() < 0.1 and albedo[:, sclera].min() > 0.7
    p = torch.full((1, headmodel.N_APPEARANCE), 0.5)
    p[0, headmodel.APPEARANCE_PARAMETERS.index("lip_redness")] = 1.0
    a = model.albedo(p)[0]
    lips, skin = w[:, 1] > 0.99, w[:, 0] > 0.99
    red = lambda rgb: (rgb[:, 0] - rgb[:, 1:].mean(1)).mean()  # noqa: E731
    assert red(a[lips]) > red(a[skin])
    with pytest.raises(ValueError):
        model.albedo(torch.zeros(2, 3))
