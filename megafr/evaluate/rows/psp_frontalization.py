"""The "pSp frontalization (released)" row of Table 2: the released ``psp_ffhq_frontalization.pt`` (pSp trained
to output frontal faces), ``G(E_pSp(x) + latent_avg)`` with the file's own decoder. Only on the paper profile,
when ``evaluate.psp_frontalization_path`` names the file; the evaluate stage builds the method and hands it in
as ``MethodInputs.psp_frontal``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from megafr.config import study_path
from megafr.evaluate.registry import Method, MethodInputs, register_method
from megafr.reenact.train import Frozen, frozen_device

PSP_FRONTAL_ROW = "pSp frontalization (released)"


def psp_frontalization(path: str | Path, frozen: Frozen) -> Method:
    """The released pSp frontalization network as a method, with the file's own decoder (the FFHQ StyleGAN2;
    the frozen generator if the file has none), on the frozen networks' device."""
    from megafr.nets.checkpoints import load_psp

    net = load_psp(study_path(path)).to(frozen_device(frozen)).requires_grad_(False).eval()
    generator = getattr(net, "decoder", frozen.generator)
    noise = generator.stored_noise()
    return lambda sources, targets: generator.synthesis(net.encode(sources), noise=noise).clamp(-1, 1)


@register_method(PSP_FRONTAL_ROW, rank=40)
def released_psp_frontalization(task: str, inputs: MethodInputs) -> Optional[Method]:
    return inputs.psp_frontal if task == "frontal" else None
