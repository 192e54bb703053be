"""The synthetic head model of the mini world, written as a FLAME 2020 file.

``write_head_model(out_dir)`` writes three files:

* ``head_model.pkl`` in the layout of FLAME 2020's ``generic_model.pkl`` (Li et al., "Learning
  a model of facial shape and expression from 4D scans", SIGGRAPH Asia 2017): a latin1-readable
  pickle (protocol 2) of a dict with ``f`` [F, 3] uint32, ``v_template`` [N, 3], ``shapedirs``
  [N, 3, 400] (identity in columns 0..299, expression in 300..399), ``posedirs`` [N, 3, 36]
  (zeros: no pose correctives), ``J_regressor`` [5, N] scipy.sparse csc, ``kintree_table`` [2, 5]
  (root parent 4294967295), ``weights`` [N, 5], plus FLAME's ``J``, ``bs_style``, ``bs_type``;
* ``landmark_embedding.npy`` in DECA's layout (a pickled dict): ``full_lmk_faces_idx`` [1, 68],
  ``full_lmk_bary_coords`` [1, 68, 3] and the 51 inner landmarks (17..67) as
  ``static_lmk_faces_idx`` [51] / ``static_lmk_bary_coords`` [51, 3];
* ``head_appearance.npz``: per-vertex region weights, hair height and blush weight, read by
  ``AppearanceModel`` to turn appearance parameters into per-vertex albedo.

So the mini world goes through exactly the FLAME code path (``megafr.face3d.flame``) that the
real FLAME file takes. The geometry comes from ``megafr.face3d.headmesh``; see there why it is
hand-written. Identity coefficients are N(0, 1) (one unit = one standard deviation of the trait),
expression coefficients are in [0, 1] (1 = the full expression; blink 1 = eye fully closed).
Pose follows FLAME: global, neck, jaw, left eye, right eye, axis-angle; the jaw opens with a
positive rotation about x (pose[:, 6]); eyes gaze with pose[:, 9:12] (left) and [12:15] (right).
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
import torch

from megafr.errors import CheckpointError, InputError, MissingFileError
from megafr.face3d import headmesh

MODEL_FILE = "head_model.pkl"
LANDMARK_FILE = "landmark_embedding.npy"
APPEARANCE_FILE = "head_appearance.npz"
FILE_IDENTITY_COLUMNS = 300  # FLAME 2020: shapedirs columns 0..299 are identity
FILE_EXPRESSION_COLUMNS = 100  # and 300..399 expression
POSE_FEATURES = 36  # posedirs columns: 4 non-root joints x 9
PICKLE_PROTOCOL = 2  # what FLAME 2020's file uses (readable by Python 2 era loaders)
ROOT_PARENT = 4294967295  # uint32 max marks the root in FLAME's kintree_table
FIRST_STATIC_LANDMARK = 17  # DECA's static embedding: the 51 landmarks without the jaw contour
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed time stamp of the npz members, so the bytes are reproducible

IDENTITY_MEANINGS = {
    "head_width": "whole head wider (+) or narrower (-), about 3.4 mm per side",
    "head_height": "cranium taller (+) or flatter (-) above the eyes",
    "head_depth": "back of the head longer (+) or shorter (-)",
    "face_width": "mid and lower face wider (+)",
    "face_length": "lower face longer (+): chin and mouth lower",
    "forehead_height": "hairline and upper forehead higher (+)",
    "forehead_slope": "upper forehead more upright (+) or sloping back (-)",
    "brow_ridge": "brow ridge more prominent (+)",
    "eye_spacing": "eyes (with lids and eyeballs) further apart (+)",
    "eye_size": "eyes, lids and eyeballs larger (+), about 1 mm of eyeball radius",
    "eye_height": "eyes higher on the face (+)",
    "eye_depth": "eyes set deeper (+)",
    "nose_length": "nose tip and base lower (+)",
    "nose_width": "nostril wings wider (+)",
    "nose_projection": "nose tip further forward (+)",
    "nose_bridge": "nose bridge higher (+)",
    "cheekbones": "cheekbones wider and more forward (+)",
    "cheek_fullness": "lower cheeks fuller (+)",
    "jaw_width": "jaw angles wider (+)",
    "chin_projection": "chin further forward (+)",
    "chin_height": "chin lower (+)",
    "lip_thickness": "lips fuller (+)",
    "mouth_width": "mouth wider (+)",
    "mouth_height": "mouth higher (+), shorter upper lip",
    "ear_size": "ears larger (+)",
    "ear_protrusion": "ears stand further out (+)",
    "neck_width": "neck thicker (+)",
}
IDENTITY_COMPONENTS = tuple(IDENTITY_MEANINGS)
N_IDENTITY = len(IDENTITY_COMPONENTS)

EXPRESSION_MEANINGS = {
    "smile": "mouth corners up, out and back, cheeks raised, lower lids up a little; 0..1",
    "blink_left": "left (subject's) upper lid down; 1 = fully closed; 0..1",
    "blink_right": "right upper lid down; 1 = fully closed; 0..1",
    "brow_raise": "both brows and the forehead up; 0..1",
    "brow_frown": "inner brows down and together; 0..1",
    "mouth_pucker": "lips pushed forward and gathered; 0..1",
    "lip_stretch": "mouth corners pulled sideways, lips thinned; 0..1",
    "squint": "lower lids raised, upper lids lowered a little, cheeks up; 0..1",
    "cheek_puff": "cheeks blown out; 0..1",
    "sneer": "upper lip and nose wings raised; 0..1",
    "mouth_left": "mouth shifted toward the subject's left (+x); 0..1",
    "mouth_right": "mouth shifted toward the subject's right (-x); 0..1",
    "lip_press": "lips pressed thin and drawn in; 0..1",
    "eyes_wide": "upper lids raised 3 mm; 0..1",
}
EXPRESSION_COMPONENTS = tuple(EXPRESSION_MEANINGS)  # index = column offset from 300 in shapedirs
N_EXPRESSION = len(EXPRESSION_COMPONENTS)

# Appearance parameters, each in [0, 1].
APPEARANCE_MEANINGS = {
    "skin_tone": "skin lightness: 0 deep brown .. 1 very light",
    "skin_warmth": "skin undertone: 0 pink/cool .. 1 yellow/olive",
    "lip_redness": "lip colour: 0 close to the skin .. 1 strongly red",
    "hair_lightness": "hair and brow colour: 0 black .. 0.5 brown .. 1 blond",
    "hair_redness": "hair hue: 0 ash .. 1 auburn/red",
    "hair_coverage": "scalp hair: 0 bald .. 1 full hairline (sampled mostly near 1)",
    "iris_hue": "iris colour: 0 brown .. 0.5 hazel/green .. 1 blue",
    "iris_lightness": "iris brightness: 0 dark .. 1 light",
    "brow_strength": "brow density: 0 faint .. 1 dense",
    "cheek_blush": "redness of the cheeks: 0 none .. 1 strong",
}
APPEARANCE_PARAMETERS = tuple(APPEARANCE_MEANINGS)
N_APPEARANCE = len(APPEARANCE_PARAMETERS)
BALD_SAMPLE_POWER = 4.0  # hair_coverage = 1 - U^power: most heads have full hair, a few are balding
SKIN_SAMPLE_POWER = 0.6  # skin_tone = U^power: the renderer shows albedo without gamma, so lean lighter

# Colours (linear RGB in [0, 1]) that the appearance parameters blend between.
SKIN_DARK, SKIN_LIGHT = (0.38, 0.24, 0.16), (0.93, 0.77, 0.67)
SKIN_WARMTH_GAIN = (0.06, 0.02, -0.10)  # added per unit of (warmth - 0.5), times lightness
LIP_RED = (0.72, 0.28, 0.30)
HAIR_BLACK, HAIR_BROWN, HAIR_BLOND = (0.05, 0.04, 0.035), (0.30, 0.19, 0.11), (0.78, 0.64, 0.40)
HAIR_AUBURN = (0.55, 0.20, 0.08)
IRIS_BROWN, IRIS_GREEN, IRIS_BLUE = (0.30, 0.17, 0.07), (0.33, 0.40, 0.20), (0.30, 0.45, 0.62)
PUPIL_COLOUR, SCLERA_COLOUR = (0.02, 0.02, 0.02), (0.90, 0.88, 0.85)
MOUTH_COLOUR, TEETH_COLOUR = (0.28, 0.07, 0.08), (0.86, 0.82, 0.72)
BLUSH_RED = (0.80, 0.35, 0.35)
HAIRLINE_SOFTNESS = 0.004  # m: width of the hairline transition
BALD_HAIRLINE_SHIFT = 0.16  # m: how far the hairline recedes at coverage 0
BROW_FAINT = 0.25  # share of the hair colour in a brow at brow_strength 0
BLUSH_MAX = 0.45  # largest blend toward BLUSH_RED


@dataclass(frozen=True)
class HeadModelFiles:
    """Paths of the three files of the synthetic head model."""

    model_path: Path  # FLAME-format model (head_model.pkl)
    landmark_path: Path  # DECA-format landmark embedding (landmark_embedding.npy)
    appearance_path: Path  # per-vertex appearance regions (head_appearance.npz)


def build_model_arrays() -> dict:
    """Every array of the model files (numpy), computed from ``headmesh``."""
    mesh = headmesh.build_mesh()
    n = len(mesh.vertices)
    shapedirs = np.zeros((n, 3, FILE_IDENTITY_COLUMNS + FILE_EXPRESSION_COLUMNS))
    for k, name in enumerate(IDENTITY_COMPONENTS):
        shapedirs[:, :, k] = headmesh.identity_displacement(mesh, name)
    for k, name in enumerate(EXPRESSION_COMPONENTS):
        shapedirs[:, :, FILE_IDENTITY_COLUMNS + k] = headmesh.expression_displacement(mesh, name)
    regressor = headmesh.joint_regressor(mesh)
    faces_idx, bary = headmesh.landmark_embedding(mesh)
    return {
        "mesh": mesh,
        "v_template": mesh.vertices,
        "f": mesh.faces,
        "shapedirs": shapedirs,
        "J_regressor": regressor,
        "weights": headmesh.skinning_weights(mesh),
        "lmk_faces_idx": faces_idx,
        "lmk_bary_coords": bary,
        "appearance": headmesh.appearance_regions(mesh),
    }


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz like ``np.savez`` but with fixed member time stamps (reproducible bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(value), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE), buffer.getvalue())


def write_head_model(out_dir) -> HeadModelFiles:
    """Write the FLAME-format head model, its landmark embedding and appearance file to ``out_dir``.

    Deterministic: two calls write byte-identical files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = build_model_arrays()
    n = len(arrays["v_template"])
    regressor = scipy.sparse.csc_matrix(arrays["J_regressor"])
    model = {
        "f": arrays["f"].astype(np.uint32),
        "v_template": arrays["v_template"].astype(np.float64),
        "shapedirs": arrays["shapedirs"].astype(np.float64),
        "posedirs": np.zeros((n, 3, POSE_FEATURES)),
        "J_regressor": regressor,
        "kintree_table": np.array([[ROOT_PARENT, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": arrays["weights"].astype(np.float64),
        "J": regressor @ arrays["v_template"],
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    files = HeadModelFiles(out_dir / MODEL_FILE, out_dir / LANDMARK_FILE, out_dir / APPEARANCE_FILE)
    with open(files.model_path, "wb") as handle:
        pickle.dump(model, handle, protocol=PICKLE_PROTOCOL)
    faces_idx, bary = arrays["lmk_faces_idx"], arrays["lmk_bary_coords"]
    embedding = {
        "full_lmk_faces_idx": faces_idx[None, :].astype(np.int64),  # [1, 68]
        "full_lmk_bary_coords": bary[None, :, :].astype(np.float64),  # [1, 68, 3]
        "static_lmk_faces_idx": faces_idx[FIRST_STATIC_LANDMARK:].astype(np.int64),  # [51]
        "static_lmk_bary_coords": bary[FIRST_STATIC_LANDMARK:].astype(np.float64),  # [51, 3]
    }
    with open(files.landmark_path, "wb") as handle:
        np.save(handle, np.array(embedding, dtype=object), allow_pickle=True)
    appearance = arrays["appearance"]
    _write_npz(
        files.appearance_path,
        {
            "region_names": np.array(headmesh.REGIONS),
            "region_weights": appearance["region_weights"].astype(np.float32),
            "hair_height": appearance["hair_height"].astype(np.float32),
            "blush": appearance["blush"].astype(np.float32),
            "parameter_names": np.array(APPEARANCE_PARAMETERS),
        },
    )
    return files


# ============================================================================ appearance
def _lerp(a, b, t):
    return a + (b - a) * t


class AppearanceModel:
    """Per-vertex albedo from ``N_APPEARANCE`` parameters in [0, 1] (see ``APPEARANCE_MEANINGS``).

    The albedo is a blend of region colours (skin, lips, brows, iris, pupil, sclera, mouth
    interior, teeth) with weights fixed per vertex, plus scalp hair above a hairline that the
    ``hair_coverage`` parameter moves, and a cheek blush.
    """

    def __init__(self, region_weights: torch.Tensor, hair_height: torch.Tensor, blush: torch.Tensor):
        self.region_weights = region_weights  # [N, R] float, rows sum to 1, R = len(headmesh.REGIONS)
        self.hair_height = hair_height  # [N] metres above the full hairline (negative: never hair)
        self.blush = blush  # [N] cheek weight in [0, 1]

    @property
    def n_vertices(self) -> int:
        return int(self.region_weights.shape[0])

    @classmethod
    def load(cls, path) -> "AppearanceModel":
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(
                f"head appearance file not found: {path}. Write it with "
                "megafr.face3d.headmodel.write_head_model(out_dir) (the prepare stage does this)."
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                names = tuple(str(v) for v in data["region_names"])
                weights, hair, blush = data["region_weights"], data["hair_height"], data["blush"]
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
            raise CheckpointError(
                f"{path}: not a head appearance file ({type(error).__name__}: {error}); rewrite it with "
                "megafr.face3d.headmodel.write_head_model."
            ) from error
        if names != headmesh.REGIONS:
            raise CheckpointError(
                f"{path}: regions {names} differ from this code's {headmesh.REGIONS}; rewrite the file with "
                "megafr.face3d.headmodel.write_head_model."
            )
        return cls(torch.from_numpy(weights.astype(np.float32)), torch.from_numpy(hair.astype(np.float32)),
                   torch.from_numpy(blush.astype(np.float32)))

    def sample(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """``n`` appearance vectors [n, N_APPEARANCE]: uniform in [0, 1], skin leaning light, hair coverage mostly full."""
        params = torch.rand(n, N_APPEARANCE, generator=generator)
        params[:, APPEARANCE_PARAMETERS.index("skin_tone")] **= SKIN_SAMPLE_POWER
        k = APPEARANCE_PARAMETERS.index("hair_coverage")
        params[:, k] = 1.0 - params[:, k] ** BALD_SAMPLE_POWER
        return params

    def albedo(self, params: torch.Tensor) -> torch.Tensor:
        """Per-vertex albedo [B, N, 3] in [0, 1] for parameters [B, N_APPEARANCE] (differentiable)."""
        if params.ndim != 2 or params.shape[1] != N_APPEARANCE:
            raise InputError(f"appearance params should be [B, {N_APPEARANCE}], got {tuple(params.shape)}")
        device, dtype = params.device, params.dtype
        c = lambda colour: torch.tensor(colour, device=device, dtype=dtype)  # noqa: E731
        p = {name: params[:, k : k + 1] for k, name in enumerate(APPEARANCE_PARAMETERS)}  # each [B, 1]
        skin = _lerp(c(SKIN_DARK), c(SKIN_LIGHT), p["skin_tone"]) + c(SKIN_WARMTH_GAIN) * (p["skin_warmth"] - 0.5) * (
            0.5 + p["skin_tone"]
        )  # [B, 3]
        lips = _lerp(skin * 0.85, c(LIP_RED) * (0.55 + 0.45 * p["skin_tone"]), p["lip_redness"])
        light = p["hair_lightness"]
        hair = torch.where(
            light < 0.5, _lerp(c(HAIR_BLACK), c(HAIR_BROWN), 2 * light), _lerp(c(HAIR_BROWN), c(HAIR_BLOND), 2 * light - 1)
        )
        hair = _lerp(hair, c(HAIR_AUBURN) * (0.6 + 0.6 * light), 0.7 * p["hair_redness"])
        brows = _lerp(skin, hair, BROW_FAINT + (1 - BROW_FAINT) * p["brow_strength"])
        hue = p["iris_hue"]
        iris = torch.where(hue < 0.5, _lerp(c(IRIS_BROWN), c(IRIS_GREEN), 2 * hue), _lerp(c(IRIS_GREEN), c(IRIS_BLUE), 2 * hue - 1))
        iris = iris * (0.6 + 0.8 * p["iris_lightness"])
        batch = params.shape[0]
        fixed = lambda colour: c(colour).expand(batch, 3)  # noqa: E731
        colours = torch.stack(
            [skin, lips, brows, iris, fixed(PUPIL_COLOUR), fixed(SCLERA_COLOUR), fixed(MOUTH_COLOUR), fixed(TEETH_COLOUR)], dim=1
        )  # [B, R, 3]
        weights = self.region_weights.to(device=device, dtype=dtype)  # [N, R]
        albedo = torch.einsum("nr,brc->bnc", weights, colours)  # [B, N, 3]
        blush = self.blush.to(device=device, dtype=dtype)[None, :, None] * p["cheek_blush"][:, :, None] * BLUSH_MAX
        albedo = _lerp(albedo, c(BLUSH_RED) * skin[:, None, :].mean(-1, keepdim=True) * 1.3, blush)
        shift = (1.0 - p["hair_coverage"]) * BALD_HAIRLINE_SHIFT  # [B, 1]
        height = self.hair_height.to(device=device, dtype=dtype)[None, :]  # [1, N]
        hair_w = torch.sigmoid((height - shift) / HAIRLINE_SOFTNESS) * (height > -0.5)  # [B, N]
        skin_w = weights[None, :, 0]  # hair only replaces skin
        albedo = _lerp(albedo, hair[:, None, :], (hair_w * skin_w)[:, :, None])
        return albedo.clamp(0.0, 1.0)


# ============================================================================ figure
FIGURE_EXPRESSIONS = ("neutral", "smile", "jaw open", "blink", "brow raise")
FIGURE_YAWS = (-45.0, 0.0, 45.0)  # degrees
FIGURE_JAW_DEG = 20.0  # jaw opening of the "jaw open" column
FIGURE_IMAGE_SIZE = 128  # pixels per rendered head
FIGURE_CAMERA_SCALE = 8.0  # orthographic NDC units per metre
FIGURE_CAMERA_TY = -0.005  # metres, centres the head vertically
FIGURE_SEED = 0
FIGURE_BACKGROUND = (0.85, 0.87, 0.90)


def _figure_params(n_identities: int, flame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shape, expression, pose for every tile: identity-major, then expression, then yaw."""
    generator = torch.Generator().manual_seed(FIGURE_SEED)
    shapes = torch.randn(n_identities, flame.n_shape, generator=generator)
    rows = []
    for i in range(n_identities):
        for name in FIGURE_EXPRESSIONS:
            for yaw in FIGURE_YAWS:
                expression = torch.zeros(flame.n_expr)
                pose = torch.zeros(15)
                if name == "smile":
                    expression[EXPRESSION_COMPONENTS.index("smile")] = 1.0
                elif name == "blink":
                    expression[EXPRESSION_COMPONENTS.index("blink_left")] = 1.0
                    expression[EXPRESSION_COMPONENTS.index("blink_right")] = 1.0
                elif name == "brow raise":
                    expression[EXPRESSION_COMPONENTS.index("brow_raise")] = 1.0
                elif name == "jaw open":
                    pose[6] = math.radians(FIGURE_JAW_DEG)
                pose[1] = math.radians(yaw)
                rows.append((shapes[i], expression, pose))
    return tuple(torch.stack([r[k] for r in rows]) for k in range(3))


def head_model_figure(files: HeadModelFiles, n_identities: int = 8):
    """Grid of rendered heads: identities x (expression x yaw), photo mode and geometry mode -> a Figure.

    Each identity has two rows (photo above, geometry below); the columns are the
    ``FIGURE_EXPRESSIONS`` at each of the ``FIGURE_YAWS``. Save it with ``megafr.plots.save_figure``.
    """
    import matplotlib.pyplot as plt

    from megafr.face3d.flame import FLAME
    from megafr.face3d.render import OrthoCamera, Renderer

    flame = FLAME.from_files(files.model_path, files.landmark_path, N_IDENTITY, N_EXPRESSION)
    appearance = AppearanceModel.load(files.appearance_path)
    renderer = Renderer(flame.faces, FIGURE_IMAGE_SIZE)
    shape, expression, pose = _figure_params(n_identities, flame)
    generator = torch.Generator().manual_seed(FIGURE_SEED + 1)
    looks = appearance.sample(generator, n_identities)
    per_identity = len(FIGURE_EXPRESSIONS) * len(FIGURE_YAWS)
    albedo = appearance.albedo(looks).repeat_interleave(per_identity, dim=0)
    batch = shape.shape[0]
    with torch.no_grad():
        vertices = flame(shape, expression, pose).vertices
        camera = OrthoCamera(
            scale=torch.full((batch,), FIGURE_CAMERA_SCALE), translation=torch.tensor([[0.0, FIGURE_CAMERA_TY]]).expand(batch, 2)
        )
        sh = torch.zeros(batch, 9, 3)
        sh[:, 0] = 0.9  # ambient
        sh[:, 1:4] = torch.tensor([0.15, 0.25, 0.35])[:, None]  # light from the front, above, the left
        background = torch.tensor(FIGURE_BACKGROUND).expand(batch, 3)
        photo = renderer(vertices, camera, mode="photo", albedo=albedo, sh=sh, background=background).image
        geometry = renderer(vertices, camera, mode="geometry", background=background).image
    to_np = lambda img: ((img.permute(0, 2, 3, 1).numpy() + 1.0) / 2.0).clip(0, 1)  # noqa: E731
    photo, geometry = to_np(photo), to_np(geometry)
    n_cols = per_identity
    fig, axes = plt.subplots(2 * n_identities, n_cols, figsize=(n_cols * 1.25, 2 * n_identities * 1.25 + 0.8))
    for i in range(n_identities):
        for j in range(n_cols):
            for k, images in enumerate((photo, geometry)):
                ax = axes[2 * i + k, j]
                ax.imshow(images[i * per_identity + j])
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and k == 0:
                    name = FIGURE_EXPRESSIONS[j // len(FIGURE_YAWS)]
                    ax.set_title(f"{name}\nyaw {FIGURE_YAWS[j % len(FIGURE_YAWS)]:+.0f}", fontsize=7)
                if j == 0:
                    ax.set_ylabel(f"id {i}\n{'photo' if k == 0 else 'geometry'}", fontsize=7)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.985))
    fig.suptitle("Synthetic FLAME-format head model: identities x expressions x yaw", fontsize=9, y=0.997)
    return fig
