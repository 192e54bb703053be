"""Temporal smoothing of per-frame measurements (head pose, expression) over a video.

A 3D face network measures every frame on its own, so its small frame-to-frame errors show as
jitter in a reenacted video. Two standard filters, applied to each column of a track ``[T, D]``:

- Savitzky-Golay (scipy's ``savgol_filter``): a least-squares polynomial of order ``order`` fitted
  in a centred window of ``window`` frames; it sees the whole clip (offline), keeps peaks better
  than a moving average of the same width, and passes polynomial motion of that order unchanged;
- one-euro (Casiez, Roussel and Vogel, "1 Euro Filter", CHI 2012): a first-order low-pass whose
  cut-off frequency rises with the signal's speed, ``f_c = min_cutoff + beta |dx/dt|`` (Hz), so slow
  motion is smoothed strongly and fast motion lags little; causal (each output sees only the past).

Frames without a measurement (no face found) are filled first by :func:`hold_last`: the last
measured value is held; frames before the first measurement take the first one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from megafr.errors import InputError

METHODS = ("savgol", "one-euro", "none")


@dataclass(frozen=True)
class SmoothingConfig:
    method: str = "savgol"  # "savgol", "one-euro" or "none"
    window: int = 7  # Savitzky-Golay window in frames (odd; shortened to the clip on short clips)
    order: int = 2  # Savitzky-Golay polynomial order (< window)
    min_cutoff: float = 3.0  # one-euro cut-off frequency at rest, Hz (lower: smoother, more lag)
    beta: float = 0.5  # one-euro speed coefficient (higher: less lag on fast motion)
    d_cutoff: float = 1.0  # one-euro cut-off of the speed estimate, Hz (the paper's default)

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"smoothing method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "savgol" and (self.window < 3 or self.window % 2 == 0 or not 0 <= self.order < self.window):
            raise InputError(f"Savitzky-Golay needs an odd window >= 3 and 0 <= order < window, got window "
                             f"{self.window}, order {self.order}; e.g. --smooth-window 7")
        if self.method == "one-euro" and (self.min_cutoff <= 0 or self.beta < 0 or self.d_cutoff <= 0):
            raise InputError(f"one-euro needs min_cutoff > 0, beta >= 0 and d_cutoff > 0, got {self.min_cutoff}, "
                             f"{self.beta}, {self.d_cutoff}")


def check_track(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise InputError(f"a track must be [T >= 1, D], got {list(values.shape)}")
    return values


def hold_last(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """``values`` [T, D] with the rows where ``found`` [T] is False replaced by the last found row
    (the first found row before it); raises InputError when no row is found."""
    values, found = check_track(values), np.asarray(found, dtype=bool)
    if found.shape != (len(values),):
        raise InputError(f"found must be [T={len(values)}], got {list(found.shape)}")
    if not found.any():
        raise InputError("no frame has a measurement to hold")
    source = np.where(found, np.arange(len(found)), -1)
    source = np.maximum.accumulate(source)  # index of the last found row at or before each frame
    source[source < 0] = np.flatnonzero(found)[0]  # leading frames: the first found row
    return values[source]


def savgol(values: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky-Golay along time of a track [T, D]; the window shrinks to the largest odd length <= T
    (a clip shorter than ``order + 2`` frames is returned unchanged)."""
    values = check_track(values)
    window = min(window, len(values) if len(values) % 2 else len(values) - 1)
    if window <= order:
        return values.copy()
    from scipy.signal import savgol_filter  # imported here: the command line's parser imports this module

    return savgol_filter(values, window, order, axis=0, mode="interp")


def _alpha(cutoff: np.ndarray | float, rate: float) -> np.ndarray | float:
    """Smoothing factor of a first-order low-pass with cut-off ``cutoff`` Hz sampled at ``rate`` Hz."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau * rate)


def one_euro(values: np.ndarray, rate: float, min_cutoff: float, beta: float, d_cutoff: float = 1.0) -> np.ndarray:
    """The one-euro filter (module docstring) along time of a track [T, D] sampled at ``rate`` frames/s."""
    values = check_track(values)
    if rate <= 0:
        raise InputError(f"the frame rate must be > 0, got {rate}")
    out = np.empty_like(values)
    out[0] = values[0]
    speed = np.zeros(values.shape[1])
    for t in range(1, len(values)):
        raw_speed = (values[t] - out[t - 1]) * rate
        speed += _alpha(d_cutoff, rate) * (raw_speed - speed)
        alpha = _alpha(min_cutoff + beta * np.abs(speed), rate)
        out[t] = out[t - 1] + alpha * (values[t] - out[t - 1])
    return out


def smooth(values: np.ndarray, cfg: SmoothingConfig, rate: float) -> np.ndarray:
    """A track [T, D] smoothed along time as ``cfg`` says (``rate``: frames per second)."""
    if cfg.method == "savgol":
        return savgol(values, cfg.window, cfg.order)
    if cfg.method == "one-euro":
        return one_euro(values, rate, cfg.min_cutoff, cfg.beta, cfg.d_cutoff)
    return check_track(values).copy()
