"""LPIPS (Zhang et al. 2018, AlexNet backbone), used only where its weights are already on the machine.

The ``lpips`` package needs torchvision's ImageNet AlexNet (or VGG16) weights from the torch hub
cache; nothing is ever downloaded. :func:`lpips_status` says whether LPIPS can run here and why not,
and every user logs that line: the pretraining losses (pSp's and e4e's LPIPS term), MegaFR's L_rec
(eq. 6-7) and the paper's LPIPS column of the evaluation tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt", "vgg": "vgg16-"}  # torchvision weight file prefixes in the hub cache


def lpips_status() -> tuple[bool, str]:
    """Whether LPIPS can run offline here: its torchvision backbone weights must already be in the hub cache.

    Never downloads. Returns ``(available, message)``; the message is what the stage logs.
    """
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(p.name for p in folder.glob("*.pth")) if folder.is_dir() else []
    have = [net for net, prefix in LPIPS_BACKBONE_FILES.items() if any(f.startswith(prefix) for f in found)]
    if not have:
        return False, (f"LPIPS off: no AlexNet/VGG16 ImageNet weights in {folder} (lpips needs torchvision's "
                       "pretrained backbone; nothing is downloaded); the pixel L2 term carries the reconstruction")
    try:
        import lpips  # noqa: F401  (imports torchvision)
    except Exception as error:  # a broken torchvision install raises RuntimeError on import
        return False, f"LPIPS off: the lpips package does not import ({type(error).__name__}: {error})"
    return True, f"LPIPS on: {have[0]} backbone found in {folder}"


def load_lpips() -> tuple[Optional[torch.nn.Module], str]:
    """Frozen LPIPS (AlexNet) in eval mode when it can run here, else None -> (net or None, the status line)."""
    available, message = lpips_status()
    if not available:
        return None, message
    import lpips

    return lpips.LPIPS(net="alex", verbose=False).eval().requires_grad_(False), message


class LpipsLoss:
    """LPIPS as a loss term: the mean distance of a batch; a zero when the weight is 0 or LPIPS cannot run."""

    def __init__(self, weight: float):
        if weight > 0:
            self.net, self.message = load_lpips()
        else:
            self.net, self.message = None, lpips_status()[1]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS of images [B, 3, S, S] in [-1, 1] (a zero scalar when off)."""
        if self.net is None:
            return x.new_zeros(())
        return self.net(x, y).mean()
