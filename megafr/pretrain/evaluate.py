"""Evaluation and figures of the generator and inversion stages, on the *test identities* only.

- inversion: PSNR and SSIM (``megafr.metrics``) and ID similarity
  (``megafr.nets.identity.identity_similarity``, the function MegaFR's L_ID uses) of ``G(E(x))``
  against ``x``;
- samples: FD-id between ``G(mapping(z))`` and real test images in the identity network's space;
- the layer swap (``megafr.pretrain.latent_structure``) on test pairs whose right answer is rendered;
- grids: inversions (real / reconstruction rows), samples, and swaps (A, B, G(mix), truth).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch

from megafr import plots
from megafr.metrics import fd_id, psnr, ssim
from megafr.nets.identity import identity_similarity
from megafr.pretrain import common
from megafr.pretrain.latent_structure import PoseMeasure, layer_swap_report, mix_codes, pose_table_degrees, swap_pairs

EVAL_BATCH = 64  # images per forward pass during evaluation
SAMPLE_SEED = 12345  # z of the sample grid and FD-id samples (fixed: comparable across runs)
GRID_COLUMNS = 8  # images per row in the figures
TRUNCATION = 1.0  # no truncation for FD-id samples (the distribution as trained)


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])


def invert(encode: Callable[[torch.Tensor], torch.Tensor], generator, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [N, n_latent, D], reconstructions [N, 3, S, S]) with the generator's fixed noise."""
    noise = generator.stored_noise()
    codes = _batched(encode, x)
    recon = _batched(lambda w: generator.synthesis(w, noise), codes)
    return codes, recon


def optimise_codes(generator, x: torch.Tensor, start: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """W+ codes [N, n_latent, D] fitted to ``x`` by Adam on the pixel L2 of ``generator``'s image (fixed
    noise), from ``start`` (the encoder's codes): how well the generator alone can reconstruct ``x``,
    the upper bound of any encoder of it (Abdal et al. 2019, Image2StyleGAN, without the perceptual term)."""
    noise = generator.stored_noise()
    codes = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([codes], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = (generator.synthesis(codes, noise) - x).pow(2).mean()
        loss.backward()
        optimizer.step()
    return codes.detach()


def wplus_bound(generator, encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, idnet,
                steps: int, lr: float) -> dict:
    """Inversion metrics (:func:`inversion_metrics`) of W+ codes optimised per image against the generator,
    next to the encoder's on the same images: ``{"optimised": ..., "encoder": ...}``."""
    start, recon = invert(encode, generator, x)
    trainable = [p for p in generator.parameters() if p.requires_grad]
    generator.requires_grad_(False)  # only the codes move
    try:
        with torch.enable_grad():
            codes = optimise_codes(generator, x, start, steps, lr)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    _, fitted = invert(lambda w: w, generator, codes)
    return {"optimised": inversion_metrics(x, fitted, idnet), "encoder": inversion_metrics(x, recon, idnet),
            "steps": steps}


def inversion_metrics(x: torch.Tensor, recon: torch.Tensor, idnet: Optional[torch.nn.Module]) -> dict:
    """Mean PSNR (dB), SSIM and ID similarity of reconstructions against the real images.

    Rows of ``x`` are spread over the test split (consecutive rows mostly hold different identities),
    so ``id_similarity_to_other_image`` is a baseline for the ID similarity of unrelated faces.
    """
    out = {"images": len(x), "psnr": float(psnr(recon, x).mean()), "ssim": float(ssim(recon, x).mean())}
    if idnet is not None:
        out["id_similarity"] = float(_batched_pairs(idnet, recon, x).mean())
        # the same against another test image (the next one): the level that says "a different face"
        out["id_similarity_to_other_image"] = float(_batched_pairs(idnet, recon, x.roll(1, dims=0)).mean())
    return out


def _batched_pairs(idnet, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([identity_similarity(idnet, a[i:i + EVAL_BATCH], b[i:i + EVAL_BATCH])
                          for i in range(0, len(a), EVAL_BATCH)])


def samples(generator, n: int, seed: int = SAMPLE_SEED) -> torch.Tensor:
    """``n`` images G(mapping(z)) [n, 3, S, S], z from a fixed seed, fixed noise."""
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    noise = generator.stored_noise()
    with torch.no_grad():
        w = _batched(generator.style, z)  # [n, D]
        codes = w[:, None, :].expand(-1, generator.n_latent, -1).contiguous()
        return _batched(lambda c: generator.synthesis(c, noise), codes)


def sample_fd_id(generator, idnet, real: torch.Tensor, n: int) -> float:
    """FD-id between ``n`` samples and ``n`` real images (the first n of ``real``)."""
    return fd_id(idnet, samples(generator, n), real[:n])


def swap_eval_pairs(seed: int, identity: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Test pairs for the layer-swap measurement (a different stream from the training pool)."""
    return swap_pairs(seed + 1, identity, n)


def layer_swap_eval(encode, generator, test_images: np.ndarray, table: pd.DataFrame, a: np.ndarray, b: np.ndarray,
                    truth: np.ndarray, measure_pose: Optional[PoseMeasure], measure_size: Optional[int] = None
                    ) -> tuple[dict, torch.Tensor]:
    """Layer-swap numbers on test pairs (a, b) with rendered truth uint8 [n, S, S, 3]; also returns G(mix)."""
    xa, xb = common.images_to_tensor(test_images[a]), common.images_to_tensor(test_images[b])
    noise = generator.stored_noise()
    wa = _batched(encode, xa)
    wb = _batched(encode, xb)
    mixed = _batched(lambda w: generator.synthesis(w, noise), mix_codes(wb, wa))
    pose_b = torch.from_numpy(pose_table_degrees(table.iloc[b]))
    report = layer_swap_report(mixed, xb, common.images_to_tensor(truth), pose_b, measure_pose, measure_size)
    return report, mixed


# ------------------------------------------------------------------------------ figures
def inversion_grid(x: torch.Tensor, recon: torch.Tensor, title: str, n: int = GRID_COLUMNS * 2):
    """Figure: rows of real test images followed by their reconstructions."""
    n = min(n, len(x))
    real, rec = common.tensor_to_images(x[:n]), common.tensor_to_images(recon[:n])
    cols = min(GRID_COLUMNS, n)
    tiles, labels = [], []
    for start in range(0, n, cols):
        tiles += [real[start:start + cols], rec[start:start + cols]]
        labels += ["real", "inverted"]
    return plots.image_grid(np.concatenate(tiles), ncols=cols, title=title, row_labels=labels)


def sample_grid(images: torch.Tensor, title: str):
    """Figure: generated samples."""
    return plots.image_grid(common.tensor_to_images(images), ncols=GRID_COLUMNS, title=title)


def swap_grid(xa: np.ndarray, xb: np.ndarray, mixed: torch.Tensor, truth: np.ndarray, title: str, n: int = GRID_COLUMNS):
    """Figure: columns of pairs; rows A (colours), B (geometry), G(mix), rendered truth."""
    n = min(n, len(xa))
    tiles = np.concatenate([xa[:n], xb[:n], common.tensor_to_images(mixed[:n]), truth[:n]])
    return plots.image_grid(tiles, ncols=n, title=title,
                            row_labels=["A (colour)", "B (geometry)", "G(mix)", "truth"])


def loss_columns(curve: pd.DataFrame) -> list[str]:
    """The loss columns of a training curve (``total`` and each term), in order: all but the step and learning rates."""
    return [c for c in curve.columns if c != "step" and not c.startswith("lr")]


def curve_figure(curve: pd.DataFrame, columns: list[str], title: str):
    """Figure: training curves (one panel per column, log scale where positive)."""
    import matplotlib.pyplot as plt

    columns = [c for c in columns if c in curve.columns and curve[c].abs().sum() > 0]
    fig, axes = plt.subplots(1, max(1, len(columns)), figsize=(2.6 * max(1, len(columns)), 2.4), squeeze=False)
    for ax, column in zip(axes[0], columns):
        ax.plot(curve["step"], curve[column], color="#4c72b0")
        if (curve[column] > 0).all():
            ax.set_yscale("log")
        ax.set_title(column, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def generator_figures(out, world: str) -> dict:
    """``{name: figure}`` of the train_generator stage: curve, inversions, samples, swaps."""
    names = ("curve", "inversions", "samples", "swaps")
    if out.g_ema is None:
        return {n: plots.message_figure("official files loaded; nothing trained", f"train_generator ({world} world)") for n in names}
    return {
        "curve": curve_figure(out.curve, loss_columns(out.curve), f"train_generator losses ({world} world)"),
        "inversions": inversion_grid(out.test_x, out.test_recon, f"e4e inversions of test identities ({world} world)"),
        "samples": sample_grid(samples(out.g_ema, GRID_COLUMNS * 2), f"G(mapping(z)) samples ({world} world)"),
        "swaps": swap_grid(out.swap["xa"], out.swap["xb"], out.swap["mixed"], out.swap["truth"],
                           f"layer swap: coarse+medium of B, fine of A ({world} world)"),
    }


def inversion_figures(out, world: str) -> dict:
    """``{name: figure}`` of the train_inversion stage: curve and pSp / e4e inversions."""
    names = ("curve", "inversions")
    if out.net is None:
        return {n: plots.message_figure("official files loaded; nothing trained", f"train_inversion ({world} world)") for n in names}
    n = min(GRID_COLUMNS, len(out.test_x))
    tiles = np.concatenate([common.tensor_to_images(t[:n]) for t in (out.test_x, out.test_recon, out.e4e_recon)])
    grid = plots.image_grid(tiles, ncols=n, title=f"pSp and e4e inversions of test identities ({world} world)",
                            row_labels=["real", "pSp", "e4e"])
    return {"curve": curve_figure(out.curve, loss_columns(out.curve), f"train_inversion losses ({world} world)"),
            "inversions": grid}


def idnet_figures(curve: pd.DataFrame, world: str) -> dict:
    """``{name: figure}`` of the train_idnet stage: the training curve."""
    if curve.empty:
        return {"curve": plots.message_figure("loaded a file without a training curve; nothing trained here",
                                                 f"train_idnet ({world} world)")}
    return {"curve": curve_figure(curve, ["loss", "accuracy"], f"train_idnet ArcFace training ({world} world)")}
