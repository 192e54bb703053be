"""The FLAME head model as a differentiable PyTorch layer.

FLAME (Li, Bolkart, Black, Li, Romero: "Learning a model of facial shape and expression
from 4D scans", SIGGRAPH Asia 2017) maps identity ``beta``, expression ``psi`` and pose
``theta`` to a mesh:

    T_P(beta, psi, theta) = T_bar + B_S(beta) + B_E(psi) + B_P(theta)     (paper eq. 2-5)
    M(beta, psi, theta)   = W(T_P, J(beta), theta, weights)                (eq. 1, linear blend skinning)

with five joints (global/root, neck, jaw, left eye, right eye; 3 axis-angle values each,
``POSE_DIM = 15``). MegaFR (paper Sec. 3.1-3.3; ``docs/method.md`` sections 1-4) uses it to
turn (beta_s, psi_t, theta_t) into the geometry that the renderer draws, and its 68-point landmark embedding for L_lmk
and L_pair.

File formats read here (``docs/method.md`` section 7):

- ``generic_model.pkl`` (FLAME 2020): a pickle written by Python 2, read with
  ``encoding="latin1"``; values may be chumpy arrays (unpickled by the ``chumpy-fixed``
  wheel, converted with ``np.asarray``) and ``J_regressor`` may be ``scipy.sparse``.
  Keys: ``f`` [F,3], ``v_template`` [N,3], ``shapedirs`` [N,3,400] (300 identity columns
  then 100 expression columns), ``posedirs`` [N,3,36], ``J_regressor`` [5,N],
  ``kintree_table`` [2,5] (row 0 = parents), ``weights`` [N,5].
- DECA's ``landmark_embedding.npy``: ``np.load(allow_pickle=True, encoding="latin1").item()``,
  a dict whose ``full_lmk_faces_idx`` [1,68] and ``full_lmk_bary_coords`` [1,68,3] place the
  68 iBUG landmarks on the mesh surface.

Only the file reading is hand-written (no library reads these files with useful error
messages); the blend shapes and skinning are ``smplx.lbs.lbs`` and the landmark lookup is
``smplx.lbs.vertices2landmarks``, the maintained implementations of the FLAME authors' group.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from smplx.lbs import lbs, vertices2landmarks

from megafr.errors import CheckpointError, MissingFileError

N_JOINTS = 5  # global, neck, jaw, left eye, right eye
POSE_DIM = 3 * N_JOINTS  # 5 joints x axis-angle
FILE_SHAPE_COMPONENTS = 300  # columns of shapedirs that are identity in the FLAME 2020 file; the rest (100) expression
POSE_FEATURES = 9 * (N_JOINTS - 1)  # posedirs columns: (R - I) of every joint except the root
N_FLAME_LANDMARKS = 68  # iBUG-68 order, as in megafr.face3d.landmarks
GLOBAL_JOINT, NECK_JOINT, JAW_JOINT, LEFT_EYE_JOINT, RIGHT_EYE_JOINT = range(N_JOINTS)

FLAME_SOURCE = (
    "FLAME 2020 'generic_model.pkl' is licensed: register and download it at https://flame.is.tue.mpg.de "
    "(or generate the synthetic stand-in with megafr.face3d.headmodel)"
)
LANDMARK_SOURCE = (
    "'landmark_embedding.npy' ships with DECA (https://github.com/yfeng95/DECA, data/landmark_embedding.npy)"
)
MODEL_KEYS = ("f", "v_template", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
LANDMARK_KEYS = ("full_lmk_faces_idx", "full_lmk_bary_coords")


@dataclass(frozen=True)
class FlameAssets:
    """The arrays of a FLAME model file plus its landmark embedding (numpy, dense)."""

    v_template: np.ndarray  # [N, 3] float32, mean head in metres
    faces: np.ndarray  # [F, 3] int64, triangles (counter-clockwise seen from outside)
    shapedirs: np.ndarray  # [N, 3, K] float32, K = 300 identity + expression columns (100 in FLAME 2020)
    posedirs: np.ndarray  # [N, 3, 36] float32, pose-corrective blend shapes
    j_regressor: np.ndarray  # [5, N] float32, joints from vertices
    parents: np.ndarray  # [5] int64, kinematic tree, parents[0] = -1
    lbs_weights: np.ndarray  # [N, 5] float32, skinning weights
    lmk_faces_idx: np.ndarray  # [68] int64, triangle of each landmark
    lmk_bary_coords: np.ndarray  # [68, 3] float32, barycentric position inside that triangle

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def n_expression_components(self) -> int:
        return int(self.shapedirs.shape[2]) - FILE_SHAPE_COMPONENTS


class FlameOutput(NamedTuple):
    vertices: torch.Tensor  # [B, N, 3]
    landmarks: torch.Tensor  # [B, 68, 3]
    joints: torch.Tensor  # [B, 5, 3], posed joint locations


def _dense(value: Any) -> np.ndarray:
    """A chumpy array, scipy.sparse matrix or numpy array as a dense numpy array."""
    if hasattr(value, "toarray"):  # scipy.sparse
        return np.asarray(value.toarray())
    return np.asarray(value)


def _shape_error(path: Path, key: str, expected: str, found: tuple, source: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: '{key}' should have shape {expected}, found {found}. The file is not a FLAME 2020 model "
        f"or is damaged; {source}."
    )


def _read_model_dict(model_path: Path) -> dict:
    if not model_path.is_file():
        raise MissingFileError(f"FLAME model file not found: {model_path}. {FLAME_SOURCE}.")
    try:
        with open(model_path, "rb") as handle:
            data = pickle.load(handle, encoding="latin1")
    except ModuleNotFoundError as error:  # chumpy or scipy missing
        raise CheckpointError(
            f"{model_path}: unpickling needs the module '{error.name}' (FLAME files hold chumpy arrays); "
            "install 'chumpy-fixed' and 'scipy'."
        ) from error
    except Exception as error:  # any unpickling failure means the file is not a FLAME pickle
        raise CheckpointError(
            f"{model_path}: not a readable pickle ({type(error).__name__}: {error}). Expected FLAME 2020 "
            f"'generic_model.pkl' with keys {list(MODEL_KEYS)}; {FLAME_SOURCE}."
        ) from error
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{model_path}: holds a {type(data).__name__}, expected a dict with keys {list(MODEL_KEYS)}; "
            f"{FLAME_SOURCE}."
        )
    missing = [key for key in MODEL_KEYS if key not in data]
    if missing:
        raise CheckpointError(
            f"{model_path}: missing keys {missing} (found {sorted(map(str, data))}); expected FLAME 2020 keys "
            f"{list(MODEL_KEYS)}; {FLAME_SOURCE}."
        )
    return data


def _read_landmark_dict(landmark_path: Path) -> dict:
    if not landmark_path.is_file():
        raise MissingFileError(f"FLAME landmark embedding not found: {landmark_path}. {LANDMARK_SOURCE}.")
    try:
        loaded = np.load(landmark_path, allow_pickle=True, encoding="latin1")
        data = loaded.item() if isinstance(loaded, np.ndarray) and loaded.dtype == object else loaded
    except Exception as error:  # unreadable, not .npy, or not a 0-d object array
        raise CheckpointError(
            f"{landmark_path}: not a readable landmark embedding ({type(error).__name__}: {error}); expected a "
            f".npy holding a dict with {list(LANDMARK_KEYS)}; {LANDMARK_SOURCE}."
        ) from error
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{landmark_path}: holds {type(data).__name__}, expected a dict with keys {list(LANDMARK_KEYS)}; "
            f"{LANDMARK_SOURCE}."
        )
    missing = [key for key in LANDMARK_KEYS if key not in data]
    if missing:
        raise CheckpointError(
            f"{landmark_path}: missing keys {missing} (found {sorted(map(str, data))}); {LANDMARK_SOURCE}."
        )
    return data


def load_flame_assets(model_path, landmark_path) -> FlameAssets:
    """Read a FLAME 2020 ``generic_model.pkl`` and DECA's ``landmark_embedding.npy``.

    Raises ``MissingFileError`` for an absent file and ``CheckpointError`` for a file of the
    wrong kind or with arrays of the wrong shape; messages name the file, the expected and
    found contents, and where to obtain the right file.
    """
    model_path, landmark_path = Path(model_path), Path(landmark_path)
    data = _read_model_dict(model_path)
    try:
        arrays = {key: _dense(data[key]) for key in MODEL_KEYS}
    except Exception as error:  # a value that is neither an array nor convertible to one
        raise CheckpointError(
            f"{model_path}: could not convert the arrays to numpy ({error}); {FLAME_SOURCE}."
        ) from error

    v_template = arrays["v_template"]
    if v_template.ndim != 2 or v_template.shape[1] != 3 or v_template.shape[0] < 3:
        raise _shape_error(model_path, "v_template", "[N, 3]", v_template.shape, FLAME_SOURCE)
    n = v_template.shape[0]
    faces = arrays["f"]
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] < 1:
        raise _shape_error(model_path, "f", "[F, 3]", faces.shape, FLAME_SOURCE)
    if faces.min() < 0 or faces.max() >= n:
        raise CheckpointError(
            f"{model_path}: 'f' indexes vertices {faces.min()}..{faces.max()} but there are {n}; {FLAME_SOURCE}."
        )
    shapedirs = arrays["shapedirs"]
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (n, 3) or shapedirs.shape[2] <= FILE_SHAPE_COMPONENTS:
        raise _shape_error(
            model_path, "shapedirs", f"[{n}, 3, K] with K > {FILE_SHAPE_COMPONENTS} (FLAME 2020: 400)",
            shapedirs.shape, FLAME_SOURCE,
        )
    posedirs = arrays["posedirs"]
    if posedirs.shape == (n * 3, POSE_FEATURES):  # some exports store it flattened
        posedirs = posedirs.reshape(n, 3, POSE_FEATURES)
    if posedirs.shape != (n, 3, POSE_FEATURES):
        raise _shape_error(model_path, "posedirs", f"[{n}, 3, {POSE_FEATURES}]", posedirs.shape, FLAME_SOURCE)
    j_regressor = arrays["J_regressor"]
    if j_regressor.shape != (N_JOINTS, n):
        raise _shape_error(model_path, "J_regressor", f"[{N_JOINTS}, {n}]", j_regressor.shape, FLAME_SOURCE)
    kintree = arrays["kintree_table"]
    if kintree.ndim != 2 or kintree.shape != (2, N_JOINTS):
        raise _shape_error(model_path, "kintree_table", f"[2, {N_JOINTS}]", kintree.shape, FLAME_SOURCE)
    # Row 0 holds parents; the root's entry is uint32 max (or -1): force -1.
    parents = kintree[0].astype(np.int64)
    parents[0] = -1
    if np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, N_JOINTS)):
        raise CheckpointError(
            f"{model_path}: 'kintree_table' row 0 {kintree[0].tolist()} is not a tree with parents before "
            f"children; {FLAME_SOURCE}."
        )
    weights = arrays["weights"]
    if weights.shape != (n, N_JOINTS):
        raise _shape_error(model_path, "weights", f"[{n}, {N_JOINTS}]", weights.shape, FLAME_SOURCE)

    landmarks = _read_landmark_dict(landmark_path)
    lmk_faces_idx = np.asarray(landmarks["full_lmk_faces_idx"]).reshape(-1)
    lmk_bary = np.asarray(landmarks["full_lmk_bary_coords"])
    if lmk_faces_idx.shape != (N_FLAME_LANDMARKS,):
        raise _shape_error(landmark_path, "full_lmk_faces_idx", "[1, 68]", np.shape(landmarks["full_lmk_faces_idx"]),
                           LANDMARK_SOURCE)
    if lmk_bary.size != N_FLAME_LANDMARKS * 3:
        raise _shape_error(landmark_path, "full_lmk_bary_coords", "[1, 68, 3]", lmk_bary.shape, LANDMARK_SOURCE)
    lmk_bary = lmk_bary.reshape(N_FLAME_LANDMARKS, 3)
    if lmk_faces_idx.min() < 0 or lmk_faces_idx.max() >= faces.shape[0]:
        raise CheckpointError(
            f"{landmark_path}: landmark triangles {lmk_faces_idx.min()}..{lmk_faces_idx.max()} do not exist in "
            f"{model_path} ({faces.shape[0]} triangles): the embedding belongs to another mesh; {LANDMARK_SOURCE}."
        )

    return FlameAssets(
        v_template=v_template.astype(np.float32),
        faces=faces.astype(np.int64),
        shapedirs=shapedirs.astype(np.float32),
        posedirs=posedirs.astype(np.float32),
        j_regressor=j_regressor.astype(np.float32),
        parents=parents,
        lbs_weights=weights.astype(np.float32),
        lmk_faces_idx=lmk_faces_idx.astype(np.int64),
        lmk_bary_coords=lmk_bary.astype(np.float32),
    )


class FLAME(torch.nn.Module):
    """FLAME(beta, psi, theta) -> vertices, 68 landmarks, joints (paper eq. 1-5, see module docstring)."""

    faces: torch.Tensor

    def __init__(self, assets: FlameAssets, n_shape: int, n_expr: int):
        super().__init__()
        n_file_expr = assets.n_expression_components
        if not 0 <= n_shape <= FILE_SHAPE_COMPONENTS:
            raise CheckpointError(
                f"n_shape={n_shape} asked for, but the FLAME file has {FILE_SHAPE_COMPONENTS} identity components; "
                f"use 0 <= n_shape <= {FILE_SHAPE_COMPONENTS}."
            )
        if not 0 <= n_expr <= n_file_expr:
            raise CheckpointError(
                f"n_expr={n_expr} asked for, but the FLAME file has {n_file_expr} expression components; "
                f"use 0 <= n_expr <= {n_file_expr}."
            )
        self.n_shape = n_shape  # identity coefficients used (first columns of shapedirs)
        self.n_expr = n_expr  # expression coefficients used (first columns after the 300 identity ones)
        n = assets.n_vertices
        shapedirs = np.concatenate(
            [assets.shapedirs[:, :, :n_shape],
             assets.shapedirs[:, :, FILE_SHAPE_COMPONENTS:FILE_SHAPE_COMPONENTS + n_expr]], axis=2
        )  # [N, 3, n_shape + n_expr]
        # smplx expects posedirs as [P, N*3]: row p holds the displacement of every coordinate.
        posedirs = assets.posedirs.reshape(n * 3, POSE_FEATURES).T  # [36, N*3]
        self.register_buffer("v_template", torch.from_numpy(assets.v_template.copy()))  # [N, 3]
        self.register_buffer("shapedirs", torch.from_numpy(np.ascontiguousarray(shapedirs)))
        self.register_buffer("posedirs", torch.from_numpy(np.ascontiguousarray(posedirs)))
        self.register_buffer("j_regressor", torch.from_numpy(assets.j_regressor.copy()))  # [5, N]
        self.register_buffer("parents", torch.from_numpy(assets.parents.copy()))  # [5]
        self.register_buffer("lbs_weights", torch.from_numpy(assets.lbs_weights.copy()))  # [N, 5]
        self.register_buffer("faces", torch.from_numpy(assets.faces.copy()))  # [F, 3]
        self.register_buffer("lmk_faces_idx", torch.from_numpy(assets.lmk_faces_idx.copy()))  # [68]
        self.register_buffer("lmk_bary_coords", torch.from_numpy(assets.lmk_bary_coords.copy()))  # [68, 3]

    @classmethod
    def from_files(cls, model_path, landmark_path, n_shape: int, n_expr: int) -> "FLAME":
        return cls(load_flame_assets(model_path, landmark_path), n_shape, n_expr)

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor) -> FlameOutput:
        """shape [B, n_shape], expression [B, n_expr], pose [B, 15] (axis-angle, joint order above)."""
        if shape.ndim != 2 or shape.shape[1] != self.n_shape:
            raise ValueError(f"FLAME: shape should be [B, {self.n_shape}], got {tuple(shape.shape)}")
        batch = shape.shape[0]
        if expression.shape != (batch, self.n_expr):
            raise ValueError(f"FLAME: expression should be [{batch}, {self.n_expr}], got {tuple(expression.shape)}")
        if pose.shape != (batch, POSE_DIM):
            raise ValueError(f"FLAME: pose should be [{batch}, {POSE_DIM}], got {tuple(pose.shape)}")
        dtype = shape.dtype
        betas = torch.cat([shape, expression.to(dtype)], dim=1)  # [B, n_shape + n_expr]
        vertices, joints = lbs(
            betas,
            pose.to(dtype),
            self.v_template.to(dtype).unsqueeze(0).expand(batch, -1, -1),
            self.shapedirs.to(dtype),
            self.posedirs.to(dtype),
            self.j_regressor.to(dtype),
            self.parents,
            self.lbs_weights.to(dtype),
        )  # [B, N, 3], [B, 5, 3]
        landmarks = vertices2landmarks(
            vertices,
            self.faces,
            self.lmk_faces_idx.unsqueeze(0).repeat(batch, 1),  # smplx views it: must be contiguous
            self.lmk_bary_coords.to(dtype).unsqueeze(0).repeat(batch, 1, 1),
        )  # [B, 68, 3]
        return FlameOutput(vertices=vertices, landmarks=landmarks, joints=joints)
