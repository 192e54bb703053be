"""Procedural geometry of the synthetic head (the mesh behind ``headmodel.py``).

The head of the mini world is built here from named, documented parameters, and the
FLAME-format file of ``headmodel.write_head_model`` is derived from it:

* the **template** (FLAME's ``v_template``) is the head built with every parameter at rest;
* each **expression** blendshape is ``build(state_k) + field_k - build(rest)``: eyelids are
  rebuilt with the lid opening of the expression (so they slide over the eyeball), the rest
  of the face moves by smooth displacement fields;
* each **identity** blendshape is a smooth displacement field of the template (Gaussian and
  smoothstep weights of the canonical position), one standard deviation per unit coefficient.

Why hand-written: FLAME's own data is licensed and cannot be shipped; no library makes a
closed, rigged head with a mouth that opens and eyelids that close. The construction is a
latitude-longitude grid (rows from the top of the head down to the neck, columns around the
vertical axis, a vertex at each pole) so that the surface is closed by construction. The
eye and mouth slits are *pockets*: extra rows inserted between the upper and the lower edge
of a slit, which outside the eyes and the mouth lie flat on the surface (a band 0.6 mm wide)
and inside them fold back into the head, so the lips can part and the lids can open while
the surface stays one closed, consistently oriented sheet. Eyeballs are separate closed
spheres skinned to FLAME's eye joints.

Coordinates are FLAME's: metres, +y up, +x to the subject's left, +z toward the viewer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.interpolate import PchipInterpolator

from megafr.face3d import landmarks as lmk

# ----------------------------------------------------------------------------- layout
N_COLUMNS = 48  # vertices per row around the head (even, so the grid is mirror-symmetric)
COLUMN_FRONT_DENSITY = 0.65  # 0: uniform columns; larger packs more columns into the face
ROW_SPACING = 0.012  # metres of front profile between rows outside the face
FACE_ROW_DENSITY = 4.0  # rows in the face region are this many times denser
FACE_REGION_Y = (-0.088, 0.060)  # y range (m) of the dense rows
SLIT_BAND = 0.0006  # m: distance between the two edges of a closed slit (eyes and mouth)
SLIT_CLEARANCE = 0.0012  # m: regular rows closer than this to a slit line are dropped
EYE_POCKET_ROWS = 4  # rows folded into each eye slit
MOUTH_POCKET_ROWS = 6  # rows folded into the mouth slit

# Profile of the head, top pole to neck bottom: (s, y, half width, front depth, back depth),
# each cross-section is two half ellipses (front and back) meeting at x = +-half width.
PROFILE_KEYS = np.array(
    [
        [0.000, 0.1150, 0.000, 0.000, 0.000],
        [0.020, 0.1135, 0.024, 0.026, 0.032],
        [0.055, 0.1040, 0.046, 0.052, 0.066],
        [0.110, 0.0880, 0.063, 0.071, 0.089],
        [0.190, 0.0630, 0.073, 0.085, 0.103],
        [0.270, 0.0380, 0.076, 0.091, 0.108],
        [0.350, 0.0130, 0.0765, 0.092, 0.105],
        [0.450, -0.0180, 0.073, 0.093, 0.095],
        [0.550, -0.0480, 0.066, 0.091, 0.081],
        [0.630, -0.0720, 0.056, 0.086, 0.069],
        [0.690, -0.0890, 0.046, 0.076, 0.063],
        [0.730, -0.0970, 0.043, 0.052, 0.060],
        [0.770, -0.1030, 0.047, 0.034, 0.058],
        [0.850, -0.1200, 0.050, 0.032, 0.056],
        [0.930, -0.1380, 0.052, 0.033, 0.057],
        [0.965, -0.1450, 0.038, 0.024, 0.042],
        [1.000, -0.1470, 0.000, 0.000, 0.000],
    ]
)

# ----------------------------------------------------------------------------- features
EYE_CENTER = (0.031, 0.030, 0.066)  # m: centre of the left eyeball (the right one mirrors x)
EYE_RADIUS = 0.0120  # m: eyeball radius
EYE_HALF_WIDTH = 0.0140  # m: half the width of the eye slit (corner to corner)
LID_CLEARANCE = 0.0008  # m: lids stay this far in front of the eyeball
LID_OPEN_UP = 0.0045  # m: rise of the upper lid edge above the eye line, eye open
LID_OPEN_DOWN = 0.0030  # m: drop of the lower lid edge below the eye line
LID_FALLOFF = 0.008  # m: how far above/below the lid edge the lid warp reaches
EYE_POCKET_DEPTH = 0.009  # m: depth of the fold behind the lids
MOUTH_Y = -0.047  # m: height of the closed mouth line
MOUTH_HALF_WIDTH = 0.025  # m: corner to centre
MOUTH_POCKET_DEPTH = 0.028  # m: depth of the mouth cavity
JAW_JOINT = (0.0, -0.002, -0.008)  # m: pivot of the jaw (the temporo-mandibular joints' midpoint)
NECK_JOINT = (0.0, -0.095, -0.015)  # m: the head turns about this point
ROOT_JOINT = (0.0, -0.135, -0.012)  # m: FLAME's global joint, at the neck base
EAR_CENTER_Y, EAR_CENTER_Z = 0.004, -0.012  # m: ear bump centre on each side

# Eyeball tessellation: polar angles (rad from the gaze axis) of its rings.
EYE_RING_ANGLES = (0.10, 0.20, 0.30, 0.40, 0.50, 0.62, 0.80, 1.05, 1.35, 1.70, 2.10, 2.55, 2.90)
EYE_COLUMNS = 16
PUPIL_ANGLE = 0.17  # rad: pupil radius seen from the eyeball centre
IRIS_ANGLE = 0.46  # rad: iris radius

JOINT_NAMES = ("global", "neck", "jaw", "left_eye", "right_eye")
JOINT_PARENTS = (-1, 0, 1, 1, 1)


# ============================================================================ helpers
def smoothstep(x, lo, hi):
    """0 below ``lo``, 1 above ``hi``, cubic in between (works for lo > hi too)."""
    t = np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def gauss(x, y, cx, cy, sx, sy):
    """Anisotropic Gaussian weight of the points (x, y) around (cx, cy)."""
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def bump(q, power):
    """(1 - q^2)^power inside |q| < 1, else 0: the opening profile of a slit."""
    return np.clip(1.0 - np.asarray(q) ** 2, 0.0, None) ** power


# ============================================================================ the grid
@dataclass(frozen=True)
class Grid:
    """Topology and per-vertex bookkeeping of the head surface (eyeballs excluded)."""

    s: np.ndarray  # [R] profile parameter of each row (pocket rows: that of the slit's upper edge)
    u: np.ndarray  # [C] azimuth of each column (0 = front, +pi/2 = subject's left)
    row_kind: np.ndarray  # [R] 0 surface, 1 eye pocket, 2 mouth pocket
    row_t: np.ndarray  # [R] position along the pocket, 0 (upper edge) .. 1 (lower edge)
    row_upper: np.ndarray  # [R] pocket rows: index of the slit's upper-edge row, else -1
    row_lower: np.ndarray  # [R] pocket rows: index of the slit's lower-edge row, else -1
    eye_rows: tuple[int, int]  # (upper lid edge row, lower lid edge row)
    mouth_rows: tuple[int, int]  # (upper lip edge row, lower lip edge row)

    @property
    def n_rows(self) -> int:
        return len(self.s)

    @property
    def n_vertices(self) -> int:
        return len(self.s) * len(self.u) + 2  # + top and bottom poles

    def index(self, row: int, col: int) -> int:
        """Vertex index of grid point (row, col); the top pole is 0, the bottom pole the last."""
        return 1 + row * len(self.u) + (col % len(self.u))


def _profile():
    keys = PROFILE_KEYS
    return [PchipInterpolator(keys[:, 0], keys[:, k]) for k in range(1, 5)]


def _s_at_y(y_target: float) -> float:
    """Profile parameter of the face rows at height ``y_target`` (y(s) decreases in s)."""
    fy = _profile()[0]
    s = np.linspace(0.15, 0.7, 20001)
    y = fy(s)
    return float(np.interp(-y_target, -y, s))


def build_grid() -> Grid:
    """Rows spaced along the front profile (denser in the face) with the two slits inserted."""
    fy, _, fz, _ = _profile()
    s_fine = np.linspace(0.0, 1.0, 20001)
    y, z = fy(s_fine), fz(s_fine)
    step = np.hypot(np.diff(y), np.diff(z))
    mid_y = 0.5 * (y[1:] + y[:-1])
    density = 1.0 + (FACE_ROW_DENSITY - 1.0) * smoothstep(mid_y, FACE_REGION_Y[0] - 0.01, FACE_REGION_Y[0]) * smoothstep(
        mid_y, FACE_REGION_Y[1] + 0.01, FACE_REGION_Y[1]
    )
    length = np.concatenate([[0.0], np.cumsum(step * density)])
    n_regular = int(round(length[-1] / ROW_SPACING))
    s_rows = np.interp(np.linspace(0.0, length[-1], n_regular + 1)[1:-1], length, s_fine)

    slits = [(EYE_CENTER[1], EYE_POCKET_ROWS, 1), (MOUTH_Y, MOUTH_POCKET_ROWS, 2)]
    y_rows = fy(s_rows)
    keep = np.ones(len(s_rows), dtype=bool)
    for y_line, _, _ in slits:
        keep &= np.abs(y_rows - y_line) > SLIT_CLEARANCE
    rows = [(float(s), 0, 0.0) for s in s_rows[keep]]  # (s, kind, t)
    for y_line, n_pocket, kind in slits:
        s_up, s_lo = _s_at_y(y_line + SLIT_BAND / 2), _s_at_y(y_line - SLIT_BAND / 2)
        rows.append((s_up, 0, -1.0))  # the upper edge, tagged by t=-1 until sorted
        for k in range(n_pocket):
            rows.append((s_up + 1e-9 * (k + 1), kind, (k + 1) / (n_pocket + 1)))
        rows.append((s_lo, 0, 2.0))  # the lower edge
    rows.sort(key=lambda r: r[0])
    s = np.array([r[0] for r in rows])
    kind = np.array([r[1] for r in rows])
    t = np.array([r[2] for r in rows])
    upper = np.full(len(rows), -1)
    lower = np.full(len(rows), -1)
    edges = {}
    for kind_id in (1, 2):
        idx = np.flatnonzero(kind == kind_id)
        up, lo = idx[0] - 1, idx[-1] + 1
        upper[idx], lower[idx] = up, lo
        edges[kind_id] = (int(up), int(lo))
    t = np.where(kind == 0, 0.0, t)

    j = np.arange(N_COLUMNS) / N_COLUMNS
    u = 2 * np.pi * j - COLUMN_FRONT_DENSITY * np.sin(2 * np.pi * j)
    u = np.where(u > np.pi, u - 2 * np.pi, u)
    return Grid(s, u, kind, t, upper, lower, edges[1], edges[2])


def grid_faces(grid: Grid) -> np.ndarray:
    """Triangles [F, 3] of the closed grid surface, counter-clockwise seen from outside."""
    n_r, n_c = grid.n_rows, len(grid.u)
    faces = []
    top, bottom = 0, grid.n_vertices - 1
    for c in range(n_c):
        faces.append((top, grid.index(0, c), grid.index(0, c + 1)))
    for r in range(n_r - 1):
        for c in range(n_c):
            a, b = grid.index(r, c), grid.index(r, c + 1)
            d, e = grid.index(r + 1, c), grid.index(r + 1, c + 1)
            faces.append((a, d, b))
            faces.append((b, d, e))
    for c in range(n_c):
        faces.append((grid.index(n_r - 1, c), bottom, grid.index(n_r - 1, c + 1)))
    return np.asarray(faces, dtype=np.int64)


def sphere_faces(n_rings: int, n_cols: int, offset: int) -> np.ndarray:
    """Triangles of a pole-ring-pole sphere with vertices [pole0, rings..., pole1] from ``offset``."""
    faces = []
    idx = lambda r, c: offset + 1 + r * n_cols + (c % n_cols)  # noqa: E731
    last = offset + 1 + n_rings * n_cols
    for c in range(n_cols):
        faces.append((offset, idx(0, c), idx(0, c + 1)))
    for r in range(n_rings - 1):
        for c in range(n_cols):
            faces.append((idx(r, c), idx(r + 1, c), idx(r, c + 1)))
            faces.append((idx(r, c + 1), idx(r + 1, c), idx(r + 1, c + 1)))
    for c in range(n_cols):
        faces.append((idx(n_rings - 1, c), last, idx(n_rings - 1, c + 1)))
    return np.asarray(faces, dtype=np.int64)


# ============================================================================ building
@dataclass(frozen=True)
class LidState:
    """Eyelid configuration of one build (1.0 = the rest pose)."""

    open_left: float = 1.0  # upper lid opening of the left eye: 1 open, 0 closed
    open_right: float = 1.0
    lower_raise_left: float = 0.0  # lower lid raise: 0 rest, 1 half way up the eye
    lower_raise_right: float = 0.0
    upper_extra: float = 0.0  # extra rise of both upper lids, metres (wide eyes)


def eye_envelope(x, side: int) -> np.ndarray:
    """Opening profile of the eye slit of one side (+1 left, -1 right) at canonical x."""
    return bump((x - side * EYE_CENTER[0]) / EYE_HALF_WIDTH, 0.7)


def mouth_envelope(x) -> np.ndarray:
    """Opening profile of the mouth slit at canonical x."""
    return bump(x / MOUTH_HALF_WIDTH, 0.5)


def front_mask(u) -> np.ndarray:
    """1 on the face side of the head (azimuth near 0), 0 on the sides and back."""
    return smoothstep(np.cos(u), 0.25, 0.6)


def _relief(x, y):
    """Forward (+z) relief of the face: nose, brows, sockets, cheeks, lips, chin."""
    # Nose: a ridge whose height and width follow the height y.
    ky = np.array([-0.031, -0.023, -0.016, -0.010, 0.000, 0.014, 0.027, 0.040])
    kh = np.array([0.000, 0.004, 0.015, 0.021, 0.017, 0.011, 0.005, 0.000])
    kw = np.array([0.010, 0.011, 0.011, 0.009, 0.0075, 0.0065, 0.0065, 0.007])
    yc = np.clip(y, ky[0], ky[-1])
    h = PchipInterpolator(ky, kh)(yc) * (y > ky[0]) * (y < ky[-1])
    w = PchipInterpolator(ky, kw)(yc)
    nose = h * np.exp(-0.5 * (x / w) ** 2)
    alae = 0.006 * (gauss(x, y, 0.015, -0.017, 0.005, 0.005) + gauss(x, y, -0.015, -0.017, 0.005, 0.005))
    brow = 0.005 * np.exp(-0.5 * ((y - 0.046) / 0.007) ** 2) * smoothstep(np.abs(x), 0.062, 0.045)
    ex = EYE_CENTER[0]
    sockets = -0.009 * (gauss(x, y, ex, 0.028, 0.016, 0.012) + gauss(x, y, -ex, 0.028, 0.016, 0.012))
    cheeks = 0.005 * (gauss(x, y, 0.045, -0.002, 0.014, 0.014) + gauss(x, y, -0.045, -0.002, 0.014, 0.014))
    lips = 0.0045 * gauss(x, y, 0.0, MOUTH_Y + 0.0045, 0.020, 0.0035) + 0.0045 * gauss(
        x, y, 0.0, MOUTH_Y - 0.0060, 0.018, 0.0045
    )
    mouth_sides = -0.003 * (gauss(x, y, 0.032, MOUTH_Y, 0.006, 0.010) + gauss(x, y, -0.032, MOUTH_Y, 0.006, 0.010))
    chin = 0.006 * gauss(x, y, 0.0, -0.077, 0.016, 0.010)
    return nose + alae + brow + sockets + cheeks + lips + mouth_sides + chin


def build_surface(grid: Grid, lids: LidState = LidState()) -> np.ndarray:
    """Head-surface vertices [V, 3] (poles and grid rows) for one lid state."""
    fy, fw, ff, fb = _profile()
    s = grid.s
    y_row, w_row, f_row, b_row = fy(s), fw(s), ff(s), fb(s)  # [R]
    u = grid.u[None, :]  # [1, C]
    x = w_row[:, None] * np.sin(u)
    depth = np.where(np.cos(u) >= 0, f_row[:, None], b_row[:, None])
    z = depth * np.cos(u)
    y = np.broadcast_to(y_row[:, None], x.shape).copy()  # [R, C]
    fm = np.broadcast_to(front_mask(u), x.shape)

    # Face relief (forward) and ears (sideways).
    z = z + fm * _relief(x, y)
    side = np.sign(x)
    ears = 0.011 * np.exp(-0.5 * (((y - EAR_CENTER_Y) / 0.020) ** 2 + ((z - EAR_CENTER_Z) / 0.011) ** 2))
    x = x + side * ears * smoothstep(np.abs(x), 0.05, 0.07)

    # Slit warps: open the eyes (rows above the eye line go up, rows below go down).
    y_can = y.copy()
    for sgn, open_, raise_ in ((1, lids.open_left, lids.lower_raise_left), (-1, lids.open_right, lids.lower_raise_right)):
        env = eye_envelope(x, sgn) * fm
        up = LID_OPEN_UP * open_ - LID_OPEN_DOWN * (1.0 - open_) + lids.upper_extra
        up = up - 0.35 * LID_OPEN_UP * raise_ * open_
        down = LID_OPEN_DOWN - 0.5 * (LID_OPEN_DOWN + LID_OPEN_UP) * raise_ * 0.8
        d = y_can - EYE_CENTER[1]
        y = y + np.where(d > 0, up * np.exp(-d / LID_FALLOFF), -down * np.exp(d / LID_FALLOFF)) * env
    # Lids wrap the eyeballs: push the surface in front of each eyeball sphere.
    for sgn in (1, -1):
        cx, cy, cz = sgn * EYE_CENTER[0], EYE_CENTER[1], EYE_CENTER[2]
        r2 = (x - cx) ** 2 + (y - cy) ** 2
        wrap_r = EYE_RADIUS + LID_CLEARANCE
        z_ball = cz + np.sqrt(np.clip(wrap_r**2 - r2, 0.0, None))
        soft = 0.0004
        push = soft * np.logaddexp(0.0, (z_ball - z) / soft)
        z = z + fm * smoothstep(np.sqrt(r2), 0.022, 0.016) * push

    xyz = np.stack([x, y, z], axis=-1)  # [R, C, 3]

    # Pockets: rows between the slit edges fold back into the head.
    for kind, depth_max in ((1, EYE_POCKET_DEPTH), (2, MOUTH_POCKET_DEPTH)):
        rows = np.flatnonzero(grid.row_kind == kind)
        up_row, lo_row = grid.row_upper[rows[0]], grid.row_lower[rows[0]]
        top, bot = xyz[up_row], xyz[lo_row]  # [C, 3]
        if kind == 1:
            env = (eye_envelope(top[:, 0], 1) + eye_envelope(top[:, 0], -1)) * fm[0]
        else:
            env = np.sqrt(mouth_envelope(top[:, 0])) * fm[0]
        for r in rows:
            t = grid.row_t[r]
            p = (1 - t) * top + t * bot
            p[:, 2] -= depth_max * env * np.sin(np.pi * t)
            xyz[r] = p

    top_pole = np.array([[0.0, fy(0.0), 0.0]])
    bottom_pole = np.array([[0.0, fy(1.0), 0.0]])
    return np.concatenate([top_pole, xyz.reshape(-1, 3), bottom_pole], axis=0)


def eyeball_directions() -> np.ndarray:
    """Unit vectors [E, 3] of one eyeball's vertices: front pole, rings, back pole."""
    dirs = [(0.0, 0.0, 1.0)]
    phi = 2 * np.pi * np.arange(EYE_COLUMNS) / EYE_COLUMNS
    for a in EYE_RING_ANGLES:
        for p in phi:
            dirs.append((np.sin(a) * np.cos(p), np.sin(a) * np.sin(p), np.cos(a)))
    dirs.append((0.0, 0.0, -1.0))
    return np.asarray(dirs)


def eye_centers() -> np.ndarray:
    """Eyeball centres [2, 3]: left (+x) then right."""
    cx, cy, cz = EYE_CENTER
    return np.array([[cx, cy, cz], [-cx, cy, cz]])


@dataclass(frozen=True)
class HeadMesh:
    """The rest mesh with all the bookkeeping the model derivation needs."""

    grid: Grid
    vertices: np.ndarray  # [N, 3] template: head surface, left eyeball, right eyeball
    faces: np.ndarray  # [F, 3]
    canonical: np.ndarray  # [N, 3] positions used to evaluate fields (pockets: their slit edge)
    front: np.ndarray  # [N] front mask (0 on eyeballs)
    surface_count: int  # vertices of the head surface (the eyeballs follow)
    eye_slices: tuple[slice, slice]  # left, right eyeball vertex ranges
    eye_dirs: np.ndarray  # [E, 3] unit directions of an eyeball's vertices


def build_mesh(lids: LidState = LidState()) -> HeadMesh:
    """Build the full mesh (surface + eyeballs) for one lid state."""
    grid = build_grid()
    surface = build_surface(grid, lids)
    n_s = len(surface)
    dirs = eyeball_directions()
    centers = eye_centers()
    eyes = [c + EYE_RADIUS * dirs for c in centers]
    vertices = np.concatenate([surface] + eyes, axis=0)
    n_rings = len(EYE_RING_ANGLES)
    faces = [grid_faces(grid)]
    for k in range(2):
        f = sphere_faces(n_rings, EYE_COLUMNS, n_s + k * len(dirs))
        faces.append(_orient_outward(f, vertices))
    faces[0] = _orient_outward(faces[0], vertices)
    # Canonical positions: pocket vertices take their upper slit edge's (for smooth fields).
    canonical = vertices.copy()
    n_c = len(grid.u)
    for r in np.flatnonzero(grid.row_kind > 0):
        up, lo = grid.row_upper[r], grid.row_lower[r]
        t = grid.row_t[r]
        rows_up = surface[1 + up * n_c : 1 + (up + 1) * n_c]
        rows_lo = surface[1 + lo * n_c : 1 + (lo + 1) * n_c]
        canonical[1 + r * n_c : 1 + (r + 1) * n_c] = (1 - t) * rows_up + t * rows_lo
    front = np.zeros(len(vertices))
    u_all = np.concatenate([[np.pi], np.tile(grid.u, grid.n_rows), [np.pi]])
    front[:n_s] = front_mask(u_all)
    e = len(dirs)
    return HeadMesh(
        grid, vertices, np.concatenate(faces, axis=0), canonical, front, n_s, (slice(n_s, n_s + e), slice(n_s + e, n_s + 2 * e)), dirs
    )


def _orient_outward(faces: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Flip a closed component's faces if its signed volume is negative."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    return faces if volume > 0 else faces[:, ::-1].copy()


# ============================================================================ fields
def _front(p: np.ndarray) -> np.ndarray:
    """Front mask of arbitrary points [M, 3] (cosine of their azimuth about the y axis)."""
    cos_u = p[:, 2] / np.maximum(np.hypot(p[:, 0], p[:, 2]), 1e-9)
    return smoothstep(cos_u, 0.25, 0.6)


def _eye_plateau(p: np.ndarray, side: int) -> np.ndarray:
    """1 within 16 mm of one eyeball centre, 0 beyond 30 mm (smooth)."""
    r = np.linalg.norm(p - eye_centers()[0 if side > 0 else 1], axis=1)
    return smoothstep(r, 0.030, 0.016)


def _ear_center(p: np.ndarray) -> np.ndarray:
    """The ear centre on the side of each point [M, 3]."""
    c = np.zeros_like(p)
    c[:, 0] = np.sign(p[:, 0]) * 0.080
    c[:, 1], c[:, 2] = EAR_CENTER_Y, EAR_CENTER_Z
    return c


def _field(dx=0.0, dy=0.0, dz=0.0, n=None) -> np.ndarray:
    return np.stack([np.broadcast_to(dx, n), np.broadcast_to(dy, n), np.broadcast_to(dz, n)], axis=1).astype(np.float64)


def identity_field(name: str, p: np.ndarray) -> np.ndarray:
    """Displacement [M, 3] (metres) of identity component ``name`` at canonical points ``p``.

    Each field is one plausible standard deviation of that trait.
    """
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    n = len(p)
    f = _front(p)
    sx = np.sign(x)
    lips_y = MOUTH_Y
    if name == "head_width":
        return _field(dx=0.045 * x, n=n)
    if name == "head_height":
        return _field(dy=0.05 * y * smoothstep(y, -0.02, 0.03), n=n)
    if name == "head_depth":
        return _field(dz=0.06 * z * smoothstep(z, 0.0, -0.04), n=n)
    if name == "face_width":
        return _field(dx=0.06 * x * f * smoothstep(y, 0.07, 0.04) * smoothstep(y, -0.13, -0.10), n=n)
    if name == "face_length":
        w = smoothstep(y, 0.03, -0.09) * smoothstep(y, -0.14, -0.10) * smoothstep(z, -0.03, 0.02)
        return _field(dy=-0.007 * w, n=n)
    if name == "forehead_height":
        return _field(dy=0.006 * smoothstep(y, 0.045, 0.095) * smoothstep(z, 0.0, 0.06), n=n)
    if name == "forehead_slope":
        return _field(dz=0.007 * smoothstep(y, 0.05, 0.10) * smoothstep(z, 0.0, 0.06), n=n)
    if name == "brow_ridge":
        return _field(dz=0.003 * np.exp(-0.5 * ((y - 0.046) / 0.007) ** 2) * smoothstep(np.abs(x), 0.06, 0.04) * f, n=n)
    if name == "eye_spacing":
        return _field(dx=0.0025 * (_eye_plateau(p, 1) - _eye_plateau(p, -1)), n=n)
    if name == "eye_size":
        out = np.zeros((n, 3))
        for side, c in ((1, eye_centers()[0]), (-1, eye_centers()[1])):
            out += 0.08 * (p - c) * smoothstep(np.linalg.norm(p - c, axis=1), 0.030, 0.018)[:, None]
        return out
    if name == "eye_height":
        return _field(dy=0.003 * (_eye_plateau(p, 1) + _eye_plateau(p, -1)), n=n)
    if name == "eye_depth":
        return _field(dz=-0.003 * (_eye_plateau(p, 1) + _eye_plateau(p, -1)), n=n)
    if name == "nose_length":
        return _field(dy=-0.004 * gauss(x, y, 0.0, -0.013, 0.018, 0.012) * f, n=n)
    if name == "nose_width":
        return _field(dx=0.25 * x * gauss(x, y, 0.0, -0.014, 0.022, 0.010) * f, n=n)
    if name == "nose_projection":
        return _field(dz=0.0045 * gauss(x, y, 0.0, -0.008, 0.012, 0.012) * f, n=n)
    if name == "nose_bridge":
        return _field(dz=0.003 * gauss(x, y, 0.0, 0.018, 0.008, 0.012) * f, n=n)
    if name == "cheekbones":
        g = gauss(np.abs(x), y, 0.050, 0.000, 0.015, 0.015)
        return _field(dx=0.003 * sx * g, dz=0.003 * g * f, n=n)
    if name == "cheek_fullness":
        g = gauss(np.abs(x), y, 0.040, -0.030, 0.016, 0.016) * f
        return _field(dx=0.002 * sx * g, dz=0.004 * g, n=n)
    if name == "jaw_width":
        g = gauss(np.abs(x), y, 0.055, -0.060, 0.020, 0.025) * smoothstep(z, -0.05, 0.0)
        return _field(dx=0.006 * sx * g, n=n)
    if name == "chin_projection":
        return _field(dz=0.005 * gauss(x, y, 0.0, -0.080, 0.020, 0.015), n=n)
    if name == "chin_height":
        return _field(dy=-0.005 * gauss(x, y, 0.0, -0.088, 0.030, 0.015) * smoothstep(z, 0.0, 0.04), n=n)
    if name == "lip_thickness":
        g = gauss(x, y, 0.0, lips_y, 0.022, 0.008) * f
        return _field(dy=0.0015 * np.tanh((y - lips_y) / 0.003) * g, dz=0.0025 * g, n=n)
    if name == "mouth_width":
        return _field(dx=0.15 * x * gauss(x, y, 0.0, lips_y, 0.030, 0.012) * f, n=n)
    if name == "mouth_height":
        return _field(dy=0.003 * gauss(x, y, 0.0, lips_y, 0.030, 0.015) * f, n=n)
    if name == "ear_size":
        c = _ear_center(p)
        return 0.15 * (p - c) * np.exp(-0.5 * (np.linalg.norm(p - c, axis=1) / 0.022) ** 2)[:, None]
    if name == "ear_protrusion":
        c = _ear_center(p)
        return _field(dx=0.004 * sx * np.exp(-0.5 * (np.linalg.norm(p - c, axis=1) / 0.020) ** 2), n=n)
    if name == "neck_width":
        w = smoothstep(y, -0.09, -0.115)
        return _field(dx=0.06 * x * w, dz=0.06 * (z - NECK_JOINT[2]) * w, n=n)
    raise KeyError(name)


def expression_field(name: str, p: np.ndarray) -> tuple[np.ndarray, LidState]:
    """Displacement [M, 3] of expression ``name`` at coefficient 1, and the lid state it rebuilds."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    n = len(p)
    f = _front(p)
    sx = np.sign(x)
    m = MOUTH_Y
    zero = np.zeros((n, 3))
    if name == "smile":
        g = gauss(np.abs(x), y, MOUTH_HALF_WIDTH, m, 0.012, 0.012) * f
        c = gauss(np.abs(x), y, 0.042, -0.008, 0.014, 0.014) * f
        d = _field(dx=0.006 * sx * g, dy=0.006 * g + 0.003 * c, dz=-0.003 * g + 0.003 * c, n=n)
        return d, LidState(lower_raise_left=0.3, lower_raise_right=0.3)
    if name == "blink_left":
        return zero, LidState(open_left=0.0)
    if name == "blink_right":
        return zero, LidState(open_right=0.0)
    if name == "brow_raise":
        d = y - 0.047
        w = np.where(d < 0, np.exp(-0.5 * (d / 0.006) ** 2), np.exp(-0.5 * (d / 0.03) ** 2))
        return _field(dy=0.007 * w * smoothstep(np.abs(x), 0.07, 0.05) * f, n=n), LidState()
    if name == "brow_frown":
        g = gauss(np.abs(x), y, 0.018, 0.045, 0.011, 0.009) * f
        return _field(dx=-0.004 * sx * g, dy=-0.004 * g, dz=0.001 * g, n=n), LidState(lower_raise_left=0.15, lower_raise_right=0.15)
    if name == "mouth_pucker":
        g = gauss(x, y, 0.0, m, 0.020, 0.012) * f
        return _field(dx=-0.4 * x * g, dy=-0.2 * (y - m) * g, dz=0.008 * g, n=n), LidState()
    if name == "lip_stretch":
        g = gauss(x, y, 0.0, m, 0.030, 0.012) * f
        return _field(dx=0.3 * x * g, dy=-0.3 * (y - m) * g, dz=-0.002 * g, n=n), LidState()
    if name == "squint":
        c = gauss(np.abs(x), y, 0.040, 0.002, 0.015, 0.012) * f
        return _field(dy=0.002 * c, dz=0.001 * c, n=n), LidState(lower_raise_left=1.0, lower_raise_right=1.0)
    if name == "cheek_puff":
        g = gauss(np.abs(x), y, 0.042, -0.028, 0.016, 0.016) * f
        return _field(dx=0.006 * sx * g, dz=0.006 * g, n=n), LidState()
    if name == "sneer":
        g = gauss(np.abs(x), y, 0.011, m + 0.010, 0.010, 0.008) * f
        a = gauss(np.abs(x), y, 0.015, -0.017, 0.008, 0.008) * f
        return _field(dy=0.004 * g + 0.003 * a, dz=0.001 * a, n=n), LidState(lower_raise_left=0.2, lower_raise_right=0.2)
    if name == "mouth_left":
        return _field(dx=0.008 * gauss(x, y, 0.0, m, 0.025, 0.015) * f, n=n), LidState()
    if name == "mouth_right":
        return _field(dx=-0.008 * gauss(x, y, 0.0, m, 0.025, 0.015) * f, n=n), LidState()
    if name == "lip_press":
        g = gauss(x, y, 0.0, m, 0.024, 0.010) * f
        return _field(dy=-0.35 * (y - m) * g, dz=-0.003 * g, n=n), LidState()
    if name == "eyes_wide":
        return zero, LidState(upper_extra=0.003)
    raise KeyError(name)


def identity_displacement(mesh: HeadMesh, name: str) -> np.ndarray:
    """Identity field on the mesh [N, 3]: surface at canonical points, eyeballs rigid (eye_size scales them)."""
    out = np.zeros_like(mesh.vertices)
    n_s = mesh.surface_count
    out[:n_s] = identity_field(name, mesh.canonical[:n_s])
    centers = eye_centers()
    for k, sl in enumerate(mesh.eye_slices):
        out[sl] = identity_field(name, centers[k : k + 1])
        if name == "eye_size":
            out[sl] += identity_field(name, mesh.vertices[sl]) - identity_field(name, centers[k : k + 1])
    return out


def expression_displacement(mesh: HeadMesh, name: str) -> np.ndarray:
    """Expression blendshape [N, 3] at coefficient 1 (eyeballs never move with expressions)."""
    field, lids = expression_field(name, mesh.canonical[: mesh.surface_count])
    rebuilt = build_surface(mesh.grid, lids)
    out = np.zeros_like(mesh.vertices)
    out[: mesh.surface_count] = rebuilt - mesh.vertices[: mesh.surface_count] + field
    return out


# ============================================================================ rig
def skinning_weights(mesh: HeadMesh) -> np.ndarray:
    """LBS weights [N, 5] (global, neck, jaw, left eye, right eye), rows summing to 1."""
    n_s = mesh.surface_count
    p = mesh.canonical[:n_s]
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    beyond = np.maximum(np.abs(x) - 0.8 * MOUTH_HALF_WIDTH, 0.0)
    y_line = MOUTH_Y + 0.9 * np.maximum(np.abs(x) - MOUTH_HALF_WIDTH, 0.0)
    width = 0.00005 + 0.6 * beyond
    d = y - y_line
    jaw = np.where(d > 0, 0.5 * np.exp(-np.abs(d) / width), 1.0 - 0.5 * np.exp(-np.abs(d) / width))
    # Pocket rows: between their edges' weights (upper half with the head, lower half with the jaw).
    grid, n_c = mesh.grid, len(mesh.grid.u)
    for r in np.flatnonzero(grid.row_kind > 0):
        t = smoothstep(grid.row_t[r], 0.3, 0.7)
        up = jaw[1 + grid.row_upper[r] * n_c : 1 + (grid.row_upper[r] + 1) * n_c]
        lo = jaw[1 + grid.row_lower[r] * n_c : 1 + (grid.row_lower[r] + 1) * n_c]
        jaw[1 + r * n_c : 1 + (r + 1) * n_c] = (1 - t) * up + t * lo
    jaw = jaw * smoothstep(z, -0.035, 0.0) * smoothstep(y, -0.112, -0.098) * smoothstep(y, 0.005, -0.010)
    root = smoothstep(y, -0.115, -0.140)
    jaw = np.minimum(jaw, 1.0 - root)
    weights = np.zeros((len(mesh.vertices), len(JOINT_NAMES)))
    weights[:n_s, 0] = root
    weights[:n_s, 2] = jaw
    weights[:n_s, 1] = 1.0 - root - jaw
    weights[mesh.eye_slices[0], 3] = 1.0
    weights[mesh.eye_slices[1], 4] = 1.0
    return weights


def vertex_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """A third of the area of the triangles around each vertex [N]."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    out = np.zeros(len(vertices))
    for k in range(3):
        np.add.at(out, faces[:, k], area / 3.0)
    return out


def _regressor_row(vertices: np.ndarray, areas: np.ndarray, candidates: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Weights over ``candidates`` closest to area weighting whose weighted mean is exactly ``target``."""
    v = vertices[candidates]  # [M, 3]
    a = np.concatenate([v.T, np.ones((1, len(v)))], axis=0)  # [4, M]
    b = np.concatenate([target, [1.0]])
    w0 = areas[candidates] / areas[candidates].sum()
    # Minimise sum((w - w0)^2 / w0): the correction is proportional to each vertex's own weight.
    w = w0 * (1.0 + a.T @ np.linalg.solve((a * w0) @ a.T, b - a @ w0))
    if w.min() < 0:
        raise AssertionError(f"joint regressor needs negative weights for target {target}; choose other rings")
    return w


def joint_regressor(mesh: HeadMesh) -> np.ndarray:
    """Dense [5, N] regressor: each joint a weighted mean of vertex rings around it."""
    grid = mesh.grid
    n_c = len(grid.u)
    areas = vertex_areas(mesh.vertices, mesh.faces)
    y_rows = np.array([mesh.vertices[grid.index(r, 0), 1] for r in range(grid.n_rows)])
    regular = np.flatnonzero(grid.row_kind == 0)
    reg = np.zeros((len(JOINT_NAMES), len(mesh.vertices)))
    for j, target in ((0, ROOT_JOINT), (1, NECK_JOINT), (2, JAW_JOINT)):
        order = regular[np.argsort(np.abs(y_rows[regular] - target[1]))][:2]
        cand = np.concatenate([np.arange(grid.index(r, 0), grid.index(r, 0) + n_c) for r in order])
        reg[j, cand] = _regressor_row(mesh.vertices, areas, cand, np.asarray(target, dtype=np.float64))
    for k, sl in enumerate(mesh.eye_slices):
        cand = np.arange(sl.start, sl.stop)
        reg[3 + k, cand] = _regressor_row(mesh.vertices, areas, cand, eye_centers()[k])
    return reg


# ============================================================================ landmarks
def _outer_faces(mesh: HeadMesh) -> np.ndarray:
    """Boolean [F]: faces of the visible head surface (not in a slit pocket, not on an eyeball)."""
    n_c = len(mesh.grid.u)
    row_of = np.concatenate([[-1], np.repeat(np.arange(mesh.grid.n_rows), n_c), [-1]])
    kind = np.where(row_of >= 0, mesh.grid.row_kind[np.maximum(row_of, 0)], 0)
    in_surface = mesh.faces < mesh.surface_count
    return in_surface.all(axis=1) & (kind[np.minimum(mesh.faces, mesh.surface_count - 1)] == 0).all(axis=1)


def _ray_cast(mesh: HeadMesh, x: float, y: float, outer: np.ndarray) -> tuple[int, np.ndarray]:
    """Frontmost outer face hit by the ray along -z through (x, y), and the barycentrics there."""
    tri = mesh.vertices[mesh.faces]  # [F, 3, 3]
    a, b, c = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
    p = np.array([x, y])

    def cross2(u, v):
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    area = cross2(b - a, c - a)
    with np.errstate(divide="ignore", invalid="ignore"):
        l1 = cross2(c - b, p - b) / area
        l2 = cross2(a - c, p - c) / area
    l3 = 1.0 - l1 - l2
    inside = outer & (area > 0) & (l1 >= -1e-9) & (l2 >= -1e-9) & (l3 >= -1e-9)
    idx = np.flatnonzero(inside)
    if len(idx) == 0:
        raise AssertionError(f"no face of the head under landmark position ({x}, {y})")
    bary = np.stack([l1[idx], l2[idx], l3[idx]], axis=1)
    depth = np.einsum("ij,ij->i", bary, tri[idx, :, 2])
    k = int(np.argmax(depth))
    return int(idx[k]), bary[k]


def _on_row(mesh: HeadMesh, row: int, x: float, outer: np.ndarray) -> tuple[int, np.ndarray]:
    """A landmark on grid row ``row`` (a slit edge) at x: a point of the edge between two columns."""
    grid = mesh.grid
    n_c = len(grid.u)
    front_cols = np.flatnonzero(np.cos(grid.u) > 0)
    xs = np.array([mesh.vertices[grid.index(row, c), 0] for c in range(n_c)])
    for c in front_cols:
        c2 = (c + 1) % n_c
        if xs[c] <= x <= xs[c2]:
            break
    else:
        raise AssertionError(f"x={x} is not on the front of row {row}")
    alpha = (x - xs[c]) / (xs[c2] - xs[c])
    va, vb = grid.index(row, c), grid.index(row, c2)
    both = np.flatnonzero((mesh.faces == va).any(axis=1) & (mesh.faces == vb).any(axis=1) & outer)
    f = int(both[0])
    bary = np.where(mesh.faces[f] == va, 1.0 - alpha, 0.0) + np.where(mesh.faces[f] == vb, alpha, 0.0)
    return f, bary


def landmark_embedding(mesh: HeadMesh) -> tuple[np.ndarray, np.ndarray]:
    """The 68 iBUG landmarks as (face index [68], barycentrics [68, 3]) on the template."""
    outer = _outer_faces(mesh)
    eye_up, eye_lo = mesh.grid.eye_rows
    mouth_up, mouth_lo = mesh.grid.mouth_rows
    ex, hw = EYE_CENTER[0], EYE_HALF_WIDTH
    third = hw / 3.0
    spec: list[tuple] = []  # ("ray", x, y) or ("row", row, x)
    for i in range(17):  # jaw contour, subject's right ear to chin to left ear
        theta = np.pi * i / 16
        spec.append(("ray", -0.066 * np.cos(theta), 0.018 - 0.1045 * np.sin(theta)))
    brow_x = (0.056, 0.047, 0.037, 0.027, 0.017)
    brow_y = (0.046, 0.051, 0.053, 0.052, 0.049)
    spec += [("ray", -bx, by) for bx, by in zip(brow_x, brow_y)]  # right brow, outer to inner
    spec += [("ray", bx, by) for bx, by in zip(brow_x[::-1], brow_y[::-1])]  # left brow, inner to outer
    spec += [("ray", 0.0, yy) for yy in (0.029, 0.017, 0.005, -0.008)]  # nose bridge to tip
    spec += [("ray", xx, yy) for xx, yy in ((-0.011, -0.019), (-0.006, -0.0215), (0.0, -0.0225), (0.006, -0.0215), (0.011, -0.019))]
    for side in (-1, 1):  # right eye (image left) then left eye
        outer_x, inner_x = side * (ex + hw * 0.97), side * (ex - hw * 0.97)
        ring = [
            ("row", eye_up, outer_x) if side < 0 else ("row", eye_up, inner_x),
            ("row", eye_up, side * ex - third),
            ("row", eye_up, side * ex + third),
            ("row", eye_up, inner_x) if side < 0 else ("row", eye_up, outer_x),
            ("row", eye_lo, side * ex + third),
            ("row", eye_lo, side * ex - third),
        ]
        spec += ring
    m, mw = MOUTH_Y, MOUTH_HALF_WIDTH
    spec.append(("row", mouth_up, -(mw + 0.0008)))  # 48, right corner
    spec += [("ray", xx, m + yy) for xx, yy in ((-0.016, 0.0062), (-0.0065, 0.0082), (0.0, 0.0076), (0.0065, 0.0082), (0.016, 0.0062))]
    spec.append(("row", mouth_up, mw + 0.0008))  # 54, left corner
    spec += [("ray", xx, m - yy) for xx, yy in ((0.016, 0.0085), (0.0065, 0.0105), (0.0, 0.011), (-0.0065, 0.0105), (-0.016, 0.0085))]
    spec.append(("row", mouth_up, -0.021))  # 60
    spec += [("row", mouth_up, xx) for xx in (-0.009, 0.0, 0.009)]
    spec.append(("row", mouth_up, 0.021))  # 64
    spec += [("row", mouth_lo, xx) for xx in (0.009, 0.0, -0.009)]
    assert len(spec) == lmk.N_LANDMARKS, len(spec)
    faces_idx, bary = [], []
    for item in spec:
        f, b = _ray_cast(mesh, item[1], item[2], outer) if item[0] == "ray" else _on_row(mesh, item[1], item[2], outer)
        faces_idx.append(f)
        bary.append(b)
    return np.asarray(faces_idx, dtype=np.int64), np.asarray(bary, dtype=np.float64)


# ============================================================================ appearance regions
REGIONS = ("skin", "lips", "brows", "iris", "pupil", "sclera", "mouth_interior", "teeth")


def appearance_regions(mesh: HeadMesh) -> dict[str, np.ndarray]:
    """Per-vertex region weights [N, len(REGIONS)] (rows sum to 1), hair height [N] and blush [N]."""
    n = len(mesh.vertices)
    n_s = mesh.surface_count
    grid, n_c = mesh.grid, len(mesh.grid.u)
    w = np.zeros((n, len(REGIONS)))
    p = mesh.canonical[:n_s]
    x, y = p[:, 0], p[:, 1]
    ax = np.abs(x)
    f = mesh.front[:n_s]
    row_of = np.concatenate([[-1], np.repeat(np.arange(grid.n_rows), n_c), [-1]])
    kind = np.where(row_of >= 0, grid.row_kind[np.maximum(row_of, 0)], 0)
    t = np.where(row_of >= 0, grid.row_t[np.maximum(row_of, 0)], 0.0)
    # Lips: vermilion between the lip outlines above and below the mouth line.
    env = np.sqrt(mouth_envelope(x))
    d = y - MOUTH_Y
    up_h, lo_h = 0.0072 * env + 0.0008, 0.0100 * env + 0.0008
    lips = smoothstep(d, up_h + 0.0008, up_h - 0.0008) * smoothstep(d, -lo_h - 0.0008, -lo_h + 0.0008)
    lips *= smoothstep(ax, MOUTH_HALF_WIDTH + 0.003, MOUTH_HALF_WIDTH - 0.001) * f * (kind == 0)
    # Brows: an arched band above each eye.
    arch = 0.047 + 0.006 * bump((ax - 0.034) / 0.026, 1.0)
    half = 0.0036 * smoothstep(ax, 0.062, 0.040) + 0.0010
    brows = smoothstep(np.abs(y - arch), half + 0.001, half - 0.001)
    brows *= smoothstep(ax, 0.011, 0.016) * smoothstep(ax, 0.063, 0.056) * f * (kind == 0)
    # Slit pockets: the mouth cavity (teeth near the lips in the middle), eye sockets.
    mouth_env = np.sqrt(mouth_envelope(x)) * f
    inside = (kind == 2) * smoothstep(mouth_env, 0.0, 0.35)
    teeth = inside * ((t <= 0.2) | (t >= 0.8)) * smoothstep(ax, 0.020, 0.013)
    socket = (kind == 1) * smoothstep((eye_envelope(x, 1) + eye_envelope(x, -1)) * f, 0.0, 0.3)
    w[:n_s, 1] = lips
    w[:n_s, 2] = brows * (1 - lips)
    w[:n_s, 7] = teeth
    w[:n_s, 6] = np.clip(inside + socket - teeth, 0.0, 1.0)
    w[:n_s, 0] = 1.0 - w[:n_s].sum(axis=1)
    # Eyeballs: pupil, iris, sclera by the angle from the gaze axis.
    angle = np.arccos(np.clip(mesh.eye_dirs[:, 2], -1.0, 1.0))
    pupil = smoothstep(angle, PUPIL_ANGLE + 0.03, PUPIL_ANGLE - 0.03)
    iris = smoothstep(angle, IRIS_ANGLE + 0.04, IRIS_ANGLE - 0.04) - pupil
    for sl in mesh.eye_slices:
        w[sl, 4], w[sl, 3], w[sl, 5] = pupil, iris, 1.0 - pupil - iris
    # Hair: height above a hairline that is high on the forehead, lower at the temples, low at the nape.
    u_abs = np.abs(np.arctan2(p[:, 0], p[:, 2]))
    hairline = 0.074 - 0.040 * smoothstep(u_abs, 0.55, 1.35) - 0.115 * smoothstep(u_abs, 1.75, 2.6)
    hair = np.full(n, -1.0)
    hair[:n_s] = np.where(kind == 0, y - hairline, -1.0)
    blush = np.zeros(n)
    blush[:n_s] = gauss(ax, y, 0.045, -0.010, 0.013, 0.011) * f * (kind == 0)
    return {"region_weights": w, "hair_height": hair, "blush": blush}
