"""Linear latent directions: the InterFaceGAN-style baseline (Shen et al., CVPR 2020).

InterFaceGAN fits a linear boundary between latents with and without a binary attribute and
edits a face by moving its latent along the boundary's normal. Yaw, pitch and smile are
continuous here, so the same idea becomes a linear regression of the attribute on the latent:

    a(w) = <c, w> + b                 (w: a W+ code [L, D], flattened)

The edit direction is ``c`` and its length calibrates the step: moving ``w`` by ``t * c``
changes the predicted attribute by ``t * |c|^2``, so reaching the value ``a*`` takes

    w' = w + (a* - a(w)) / |c|^2 * c                                                  (1)

The baseline is fitted on the inversion encoder's W+ codes of the training photos with the
attribute values the world knows (ground truth on mini; on photos, the 3D network's measurements).

Written by hand: a ridge regression of a few thousand rows is one linear solve, and a direction
that edits W+ codes is not something scikit-learn or InterFaceGAN's repository ships as a library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from megafr.errors import CheckpointError, InputError
from megafr.fileio import atomic_path

RIDGE = 10.0  # ridge penalty relative to the mean variance of a latent coordinate; 0.01 gave mini directions the
# generator hardly follows (yaw error 39.7 deg vs 41 unedited), 10 brought it to about 10 deg (evaluate stage)


@dataclass(frozen=True)
class LatentDirection:
    name: str  # the attribute, e.g. "yaw_deg"
    coef: torch.Tensor  # [L, D] regression coefficients c (the edit direction)
    intercept: float  # b
    r2: float  # coefficient of determination on the fitting set (how linear the attribute is)

    def predict(self, w: torch.Tensor) -> torch.Tensor:
        """Attribute a(w) of W+ codes [B, L, D] -> [B]."""
        _check_codes(w, self.coef)
        return (w * self.coef.to(w)).flatten(1).sum(1) + self.intercept

    def edit(self, w: torch.Tensor, value) -> torch.Tensor:
        """Codes [B, L, D] moved along the direction until a(w) equals ``value`` (scalar or [B]); eq. (1)."""
        coef = self.coef.to(w)
        wanted = torch.as_tensor(value, dtype=w.dtype, device=w.device).expand(len(w))
        step = (wanted - self.predict(w)) / coef.square().sum()
        return w + step[:, None, None] * coef

    def shift(self, w: torch.Tensor, delta) -> torch.Tensor:
        """Codes [B, L, D] moved so that a(w) changes by ``delta`` (scalar or [B])."""
        return self.edit(w, self.predict(w) + torch.as_tensor(delta, dtype=w.dtype, device=w.device))


def _check_codes(w: torch.Tensor, coef: torch.Tensor) -> None:
    if w.dim() != 3 or tuple(w.shape[1:]) != tuple(coef.shape):
        raise InputError(f"latent codes must be [B, {coef.shape[0]}, {coef.shape[1]}] W+ codes, got {tuple(w.shape)}")


def fit_direction(name: str, latents: torch.Tensor, values, ridge: float = RIDGE) -> LatentDirection:
    """Ridge regression of attribute ``values`` [N] on W+ codes ``latents`` [N, L, D]."""
    latents = torch.as_tensor(latents, dtype=torch.float64)
    y = torch.tensor(np.array(values, dtype=np.float64))  # a copy: values may be a read-only pandas column
    if latents.dim() != 3 or len(latents) != len(y):
        raise InputError(f"need codes [N, L, D] and N values, got {tuple(latents.shape)} and {tuple(y.shape)}")
    if len(y) < 2 or float(y.std()) == 0.0:
        raise InputError(f"attribute {name!r} needs at least two different values to fit a direction")
    x = latents.flatten(1)
    x_mean, y_mean = x.mean(0), y.mean()
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    penalty = ridge * float(torch.diagonal(gram).mean())
    coef = torch.linalg.solve(gram + penalty * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
    intercept = float(y_mean - coef @ x_mean)
    residual = yc - xc @ coef
    r2 = 1.0 - float(residual.square().sum() / yc.square().sum())
    return LatentDirection(name, coef.reshape(latents.shape[1:]).float(), intercept, r2)


def fit_directions(latents: torch.Tensor, attributes: Mapping[str, np.ndarray],
                   ridge: float = RIDGE) -> dict[str, LatentDirection]:
    """One direction per attribute name -> values [N]."""
    return {name: fit_direction(name, latents, values, ridge) for name, values in attributes.items()}


def save_directions(directions: Mapping[str, LatentDirection], path: str | Path) -> None:
    """Write directions to one ``.pt`` file (atomically)."""
    payload = {name: {"coef": d.coef, "intercept": d.intercept, "r2": d.r2} for name, d in directions.items()}
    with atomic_path(path) as tmp:
        torch.save({"kind": "latent_directions", "directions": payload}, tmp)


def load_directions(path: str | Path) -> dict[str, LatentDirection]:
    """Read a file written by :func:`save_directions`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"latent directions file {path} does not exist; the evaluate stage writes it "
                              "(run `dvc repro evaluate`)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or not a torch file
        raise CheckpointError(f"{path} is not a readable latent directions file ({err}); delete it and re-run") from err
    if not isinstance(data, dict) or data.get("kind") != "latent_directions":
        raise CheckpointError(f"{path} is not a latent directions file (written by save_directions)")
    return {name: LatentDirection(name, d["coef"], float(d["intercept"]), float(d["r2"]))
            for name, d in data["directions"].items()}
