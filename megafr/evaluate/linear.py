"""The linear-latent-direction baseline (InterFaceGAN-style) as a reenactment and frontalization method.

Directions for yaw, pitch and smile (:mod:`megafr.reenact.directions`) are fitted once on the
inversion encoder's W+ codes of the training photos against the attribute values the world knows:
the ground-truth columns ``yaw_deg``, ``pitch_deg``, ``expr_smile`` of the training table on
mini and smoke; on photos without ground truth, the 3D face network's measurements. The ridge
penalty is chosen on held-out training photos by how well the edited images reach the wanted
values (:func:`choose_ridge`): the best-fitting direction (smallest ridge) is one the generator
hardly follows on mini.

A source is edited by moving its code the shortest way (minimum norm) that makes every fitted
attribute take its wanted value at once:

    w' = w + C^T (C C^T)^-1 (a* - a(w))        C: [k, L*D], the k directions' coefficients   (2)

which is eq. (1) of :mod:`megafr.reenact.directions` when k = 1. Attributes without a wanted value
keep their predicted one (a* = a(w)). Cross reenactment wants the target's yaw, pitch and smile
as the 3D face network measures them on the target photo; frontalization wants yaw = pitch = 0.
Unlike MegaFR, the baseline cannot follow any other expression component or the jaw.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from megafr.config import comma_list
from megafr.devices import to_cpu
from megafr.errors import InputError
from megafr.face3d import headmodel
from megafr.face3d.pose import head_pose_degrees
from megafr.face3d.recon import FaceParams
from megafr.imageio import images_to_tensor
from megafr.reenact.directions import LatentDirection, fit_directions
from megafr.reenact.train import Frozen, frozen_device

ENCODE_BATCH = 64  # images per inversion-encoder pass while collecting training codes
POSE_ATTRIBUTES = ("yaw_deg", "pitch_deg", "roll_deg")  # head angles, degrees, in head_pose_degrees' order
EXPRESSION_PREFIX = "expr_"  # expr_<component>: a named expression coefficient of the synthetic head model
FRONTAL = {"yaw_deg": 0.0, "pitch_deg": 0.0}  # what frontalization asks of the baseline
HOLDOUT = 128  # training images kept out of the fit to choose the ridge penalty


def parse_attributes(text: str) -> tuple[str, ...]:
    """``"yaw_deg,pitch_deg,expr_smile"`` -> names, each a pose angle or ``expr_<synthetic component>``."""
    names = comma_list(text)
    known = POSE_ATTRIBUTES + tuple(EXPRESSION_PREFIX + c for c in headmodel.EXPRESSION_COMPONENTS)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise InputError(f"direction attributes must be a non-empty subset of {known}, got {text!r}")
    return names


def measured_attributes(params: FaceParams, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Attribute values [B] of faces from the 3D face network's parameters."""
    angles = head_pose_degrees(params.pose)  # [B, 3]
    values = {}
    for name in names:
        if name in POSE_ATTRIBUTES:
            values[name] = angles[:, POSE_ATTRIBUTES.index(name)]
            continue
        if params.expression.shape[1] != headmodel.N_EXPRESSION:
            raise InputError(f"attribute {name!r} is a component of the synthetic head model; this 3D network "
                             f"regresses {params.expression.shape[1]} FLAME coefficients, which have no names "
                             "(use only yaw_deg,pitch_deg in evaluate.direction_attributes)")
        values[name] = params.expression[:, headmodel.EXPRESSION_COMPONENTS.index(name[len(EXPRESSION_PREFIX):])]
    return values


@torch.no_grad()
def training_codes(frozen: Frozen, images: np.ndarray, measure: bool) -> tuple[torch.Tensor, Optional[FaceParams]]:
    """W+ codes [N, L, D] of uint8 images [N, S, S, 3] by the frozen inversion encoder and, if
    ``measure``, the 3D face network's parameters of the same photos (worlds without ground truth);
    both on the CPU (the directions are fitted there)."""
    codes, measured = [], []
    device = frozen_device(frozen)
    for start in range(0, len(images), ENCODE_BATCH):
        x = images_to_tensor(images[start:start + ENCODE_BATCH]).to(device)
        codes.append(to_cpu(frozen.inversion.encode(x)))
        if measure:
            measured.append(FaceParams(*(to_cpu(t) for t in frozen.face.net(x))))
    params = FaceParams(*(torch.cat(parts) for parts in zip(*measured))) if measure else None
    return torch.cat(codes), params


def parse_ridges(text: str) -> tuple[float, ...]:
    """``"0.01,1,100"`` -> candidate ridge penalties, each > 0."""
    ridges = tuple(float(part) for part in comma_list(text))
    if not ridges or min(ridges) <= 0:
        raise InputError(f"direction ridges must be positive numbers, got {text!r}")
    return ridges


@torch.no_grad()
def edit_error(frozen: Frozen, directions: Mapping[str, LatentDirection], codes: torch.Tensor,
               wanted: Mapping[str, torch.Tensor], scale: Mapping[str, float]) -> float:
    """How far edited faces land from the wanted attributes, as the 3D face network measures them:
    mean over attributes of mean |measured - wanted| / scale (scale: the attribute's spread)."""
    generator = frozen.generator
    device = frozen_device(frozen)
    noise = generator.stored_noise()
    wanted = {n: v.to(device) for n, v in wanted.items()}
    edited = generator.synthesis(edit_codes(directions, codes.to(device), wanted), noise=noise).clamp(-1, 1)
    got = measured_attributes(frozen.face.net(edited), list(wanted))
    return float(np.mean([float((got[n] - wanted[n]).abs().mean()) / scale[n] for n in wanted]))


def choose_ridge(frozen: Frozen, codes: torch.Tensor, values: Mapping[str, np.ndarray], ridges: Sequence[float],
                 holdout: int = HOLDOUT) -> tuple[float, pd.DataFrame]:
    """The ridge whose directions edit held-out training faces best.

    Fits on all but the last ``holdout`` training codes, moves each held-out code to the attribute
    values of the next held-out image, and measures the result (:func:`edit_error`). A small ridge
    fits the codes best (high R^2) yet can find a direction the generator barely follows; this
    picks by what the edit does to the image. Only training images are used.
    """
    if len(codes) < 2 * holdout:
        holdout = len(codes) // 2
    fit = {n: v[:-holdout] for n, v in values.items()}
    wanted = {n: torch.as_tensor(np.roll(v[-holdout:], 1), dtype=torch.float32) for n, v in values.items()}
    scale = {n: float(np.std(v)) or 1.0 for n, v in values.items()}
    rows = [{"ridge": r, "edit_error": edit_error(frozen, fit_directions(codes[:-holdout], fit, r), codes[-holdout:],
                                                   wanted, scale)} for r in ridges]
    table = pd.DataFrame(rows)
    return float(table.loc[table["edit_error"].idxmin(), "ridge"]), table


def fit_baseline(frozen: Frozen, images: np.ndarray, names: Sequence[str], ridges: Sequence[float],
                 truth: Optional[pd.DataFrame] = None) -> tuple[dict[str, LatentDirection], pd.DataFrame]:
    """Directions fitted on the training photos' codes with the ridge chosen by :func:`choose_ridge`;
    attribute values from ``truth`` (one row per image, columns named like the attributes) when
    given, else measured by the 3D face network. Returns the directions and the ridge search table."""
    codes, params = training_codes(frozen, images, measure=truth is None)
    if truth is not None:
        missing = [n for n in names if n not in truth.columns]
        if missing or len(truth) != len(images):
            raise InputError(f"the ground-truth table needs one row per training image and columns {list(names)}; "
                             f"it has {len(truth)} rows for {len(images)} images, missing {missing}")
        values = {n: truth[n].to_numpy(np.float64) for n in names}
    else:
        values = {n: v.numpy().astype(np.float64) for n, v in measured_attributes(params, names).items()}
    ridge, search = choose_ridge(frozen, codes, values, ridges)
    return fit_directions(codes, values, ridge), search


def edit_codes(directions: Mapping[str, LatentDirection], w: torch.Tensor,
               wanted: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    """Codes [B, L, D] moved by eq. (2): named attributes reach ``wanted``, the others keep their value."""
    unknown = sorted(set(wanted) - set(directions))
    if unknown:
        raise InputError(f"no fitted direction for {unknown}; fitted: {sorted(directions)}")
    names = list(directions)
    coef = torch.stack([directions[n].coef.to(w).flatten() for n in names])  # [k, L*D]
    current = torch.stack([directions[n].predict(w) for n in names], dim=1)  # [B, k]
    goal = current.clone()
    for k, name in enumerate(names):
        if name in wanted:
            goal[:, k] = torch.as_tensor(wanted[name], dtype=w.dtype, device=w.device).expand(len(w))
    gram, change = coef @ coef.T, (goal - current).T  # [k, k], [k, B]
    step, info = torch.linalg.solve_ex(gram, change)  # [k, B]
    if int(info) != 0:  # dependent directions (e.g. one fitted to a constant attribute): least-norm step instead
        step = torch.linalg.pinv(gram) @ change
    return w + (step.T @ coef).reshape(w.shape)


class LinearBaseline:
    """Edits sources with the fitted directions and decodes them with the frozen generator."""

    def __init__(self, directions: Mapping[str, LatentDirection], frozen: Frozen,
                 ridge_search: Optional[pd.DataFrame] = None):
        self.directions = dict(directions)
        self.frozen = frozen
        self.ridge_search = ridge_search  # the table choose_ridge returned (None if the ridge was given)

    @torch.no_grad()
    def edit(self, sources: torch.Tensor, wanted: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
        """Images [B, 3, S, S] of sources whose codes were moved to the wanted attribute values (on the
        networks' device)."""
        w = edit_codes(self.directions, self.frozen.inversion.encode(sources.to(frozen_device(self.frozen))), wanted)
        generator = self.frozen.generator
        noise = generator.stored_noise()
        return generator.synthesis(w, noise=noise).clamp(-1, 1)

    @torch.no_grad()
    def reenact(self, sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sources moved to the targets' yaw, pitch and smile as the 3D face network measures them."""
        targets = targets.to(frozen_device(self.frozen))
        wanted = measured_attributes(self.frozen.face.net(targets), list(self.directions))
        return self.edit(sources, wanted)

    def frontalize(self, sources: torch.Tensor) -> torch.Tensor:
        """Sources moved to yaw = pitch = 0 (the other fitted attributes kept)."""
        return self.edit(sources, {k: v for k, v in FRONTAL.items() if k in self.directions})

    def fit_report(self) -> pd.DataFrame:
        """R^2 of each direction on its fitting set (how linear the attribute is in W+)."""
        return pd.DataFrame([{"attribute": n, "r2": d.r2} for n, d in self.directions.items()])
