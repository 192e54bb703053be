"""Command-line flags of ``python -m megafr reenact`` for driving videos and paste-back.

Kept apart from :mod:`megafr.reenact.drive` so that building the command line's parser imports
no torch (``megafr.smoothing`` needs numpy only).
"""

from __future__ import annotations

import argparse

from megafr.smoothing import METHODS, SmoothingConfig


def add_arguments(reenact: argparse.ArgumentParser) -> None:
    """The driving-video and paste-back flags of ``reenact``."""
    smoothing = SmoothingConfig()
    reenact.add_argument("--paste-back", action="store_true",
                         help="warp the result back into the source photo (its size) with a soft face mask")
    reenact.add_argument("--relative", action="store_true",
                         help="--driving: apply the clip's change from its first frame to the source's own pose "
                              "and expression (default: take the clip's pose and expression as they are)")
    reenact.add_argument("--smooth", choices=METHODS, default=smoothing.method,
                         help="--driving: temporal filter of the measured pose and expression "
                              f"(default {smoothing.method})")
    reenact.add_argument("--smooth-window", type=int, default=smoothing.window,
                         help=f"Savitzky-Golay window in frames, odd (default {smoothing.window})")
    reenact.add_argument("--smooth-order", type=int, default=smoothing.order,
                         help=f"Savitzky-Golay polynomial order (default {smoothing.order})")
    reenact.add_argument("--min-cutoff", type=float, default=smoothing.min_cutoff,
                         help=f"one-euro cut-off at rest in Hz; lower is smoother (default {smoothing.min_cutoff:g})")
    reenact.add_argument("--beta", type=float, default=smoothing.beta,
                         help=f"one-euro speed coefficient; higher lags less (default {smoothing.beta:g})")
    reenact.add_argument("--batch-size", type=int,
                         help="--driving: frames reenacted per forward pass (default: DriveConfig's)")
    reenact.add_argument("--half", action="store_true", help="float16 autocast on CUDA (ignored on the CPU)")
    reenact.add_argument("--no-progress", action="store_true", help="no progress bars")


def drive_config(args: argparse.Namespace, pti_steps: int):
    """The :class:`~megafr.reenact.drive.DriveConfig` the flags describe."""
    from megafr.reenact.drive import DriveConfig

    smoothing = SmoothingConfig(method=args.smooth, window=args.smooth_window, order=args.smooth_order,
                                min_cutoff=args.min_cutoff, beta=args.beta)
    batch = {} if args.batch_size is None else {"batch_size": args.batch_size}
    return DriveConfig(**batch, refine_steps=args.refine_steps, pti_steps=pti_steps,
                       relative=args.relative, paste_back=args.paste_back, half=args.half,
                       largest_face=args.largest_face, smoothing=smoothing, progress=not args.no_progress)
