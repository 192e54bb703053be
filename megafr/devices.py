"""Where tensors live: one device per run, chosen once, and mixed precision where it pays.

The device is :func:`megafr.config.torch_device` (``$MEGAFR_DEVICE``, else CUDA when present, else
the CPU). Networks are moved there when loaded; every function that receives a batch moves it to
the device of the network it feeds (:func:`module_device`), and results come back to the CPU only
where they are written or turned into numbers (:func:`to_cpu`).

Mixed precision (:func:`autocast`): on CUDA, the forward passes run under ``torch.autocast`` in
bfloat16 where the GPU supports it (Ampere and later), else float16 for inference only (float16
training would also need a gradient scaler, so training stays in float32 there). On the CPU
autocast is off, so the CPU numbers of every stage are unchanged. ``$MEGAFR_AUTOCAST=0`` turns it
off everywhere (e.g. to compare a GPU run with a CPU one). Geometry (FLAME, the renderer, landmark
losses) stays in float32 inside those regions (:func:`full_precision`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

AUTOCAST_VARIABLE = "MEGAFR_AUTOCAST"  # "0" turns mixed precision off on every device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a network's first parameter (or buffer); the CPU for a network without either."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def to_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy (or the tensor itself when it is one already): what gets written or counted."""
    return tensor.detach().float().cpu()


def autocast_dtype(device: torch.device, training: bool = False) -> Optional[torch.dtype]:
    """The autocast dtype on ``device``: bfloat16 on CUDA with bf16 support, float16 on older CUDA
    for inference, None (full precision) on the CPU, for float16 training, or with ``$MEGAFR_AUTOCAST=0``."""
    if device.type != "cuda" or os.environ.get(AUTOCAST_VARIABLE, "1").strip() == "0":
        return None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None if training else torch.float16


def autocast(device: torch.device, training: bool = False):
    """``torch.autocast`` on ``device`` in :func:`autocast_dtype`'s precision, or a no-op context."""
    dtype = autocast_dtype(torch.device(device), training)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def full_precision(device: torch.device):
    """A block that runs in float32 inside an autocast region (geometry: FLAME, rendering, landmarks); a no-op off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)
