"""Where tensors live: one device per run, chosen once, and mixed precision where it pays.

The device is :func:`megafr.config.torch_device` (``$MEGAFR_DEVICE``, else CUDA when present, else
the CPU). Networks are moved there when loaded; every function that receives a batch moves it to
the device of the network it feeds (:func:`module_device`), and results come back to the CPU only
where they are written or turned into numbers (:func:`to_cpu`).

Mixed precision (:func:`autocast`): on CUDA, the forward passes run under ``torch.autocast`` in
bfloat16 where the GPU supports it (Ampere and later), else float16 for inference only (float16
training would also need a gradient scaler, so training stays in float32 there). On the CPU
autocast is off unless a caller asks for it (``cpu_bf16``, which E_FR's training takes from
``train_reenact.cpu_bf16``) and the CPU computes bfloat16 natively (AVX512-BF16 or AMX, where oneDNN's
bfloat16 convolutions are faster than float32; :func:`cpu_bf16_native`); elsewhere, and on every CPU
for the other stages, it stays in float32. ``$MEGAFR_AUTOCAST=0`` turns it off everywhere (e.g. to
compare a GPU run with a CPU one). Geometry (FLAME, the renderer, landmark losses) stays in float32
inside those regions (:func:`full_precision`).
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


def cpu_bf16_native() -> bool:
    """Whether this CPU has bfloat16 arithmetic instructions (AVX512-BF16 or AMX-BF16). Without them
    bfloat16 is emulated and slower than float32, so :func:`autocast_dtype` keeps float32 there."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # absent from older torch releases
    if capabilities is None:
        return False
    found = capabilities()
    return bool(found.get("avx512_bf16") or found.get("amx_bf16"))


def autocast_dtype(device: torch.device, training: bool = False, cpu_bf16: bool = False) -> Optional[torch.dtype]:
    """The autocast dtype on ``device``: bfloat16 on CUDA with bf16 support, float16 on older CUDA
    for inference, bfloat16 on a CPU with native bf16 when ``cpu_bf16``; None (full precision) on
    other CPUs, for float16 training, or with ``$MEGAFR_AUTOCAST=0``."""
    if os.environ.get(AUTOCAST_VARIABLE, "1").strip() == "0":
        return None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16 and cpu_bf16_native() else None
    if device.type != "cuda":
        return None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None if training else torch.float16


def autocast(device: torch.device, training: bool = False, cpu_bf16: bool = False):
    """``torch.autocast`` on ``device`` in :func:`autocast_dtype`'s precision, or a no-op context."""
    dtype = autocast_dtype(torch.device(device), training, cpu_bf16)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def full_precision(device: torch.device):
    """A block that runs in float32 inside an autocast region (geometry: FLAME, rendering, landmarks)."""
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)
