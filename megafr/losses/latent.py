"""Losses on W+ codes: the latent discriminator's game (MegaFR eq. 8; e4e Sec. 4.1) and code regularisers.

- ``latent_loss`` (eq. 8): the paper writes ``-D_latent(w_f)``; the study uses its non-saturating
  form ``softplus(-D_latent(w))``, the form e4e trains its encoder with: same gradient direction,
  bounded below. MegaFR's E_FR and the mini e4e encoder train against it.
- ``discriminator_loss``: a discriminator's non-saturating logistic loss with R1 on real samples
  (D_latent's here, the mini generator's image discriminator too).
- ``latent_d_loss``: D_latent's own non-saturating logistic loss, ``mapping(z)`` real and encoder
  codes fake, with the R1 penalty on real codes (e4e's recipe).
- ``mapping_loss``: ``softplus(D(mapping(z)))``, which moves the mapping network's outputs to where
  D puts the encoder's codes (the mini generator's mapping learns this way).
- ``delta_loss``: e4e's delta regularisation, mean over entries i >= 1 of ``|w_i - w_0|_2``.
- ``w_norm_loss``: pSp's ``w_norm``, the squared norm of the codes' offsets from ``latent_avg``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_codes(name: str, codes: torch.Tensor) -> None:
    if codes.ndim != 3:
        raise ValueError(f"{name} needs W+ codes [B, L, D], got {tuple(codes.shape)}")


def latent_loss(discriminator: torch.nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """Eq. 8 in non-saturating form: ``softplus(-D_latent(w))`` over every W+ entry of codes [B, L, D], averaged."""
    _check_codes("latent_loss", codes)
    scores = discriminator(codes.reshape(-1, codes.shape[-1]))
    return F.softplus(-scores).mean()


def discriminator_loss(discriminator: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                       r1_gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, R1) of a discriminator: the non-saturating logistic loss on ``real`` vs ``fake`` [N, ...], plus
    ``r1_gamma / 2`` times R1 (Mescheder et al. 2018), the squared gradient norm on the real samples summed over
    all but the batch dimension and averaged over the batch (0 when ``r1_gamma`` is 0)."""
    real = real.detach().requires_grad_(r1_gamma > 0)
    real_pred, fake_pred = discriminator(real), discriminator(fake.detach())
    loss = F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()
    r1 = real.new_zeros(())
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(real_pred.sum(), real, create_graph=True)
        r1 = grad.square().sum(tuple(range(1, grad.ndim))).mean()
        loss = loss + r1_gamma / 2 * r1
    return loss, r1


def latent_d_loss(discriminator: torch.nn.Module, real_w: torch.Tensor, fake_w: torch.Tensor,
                  r1_gamma: float) -> tuple[torch.Tensor, dict]:
    """Non-saturating logistic loss of D_latent on mapping(z) [N, D] vs encoder codes [M, D], + R1 on real."""
    loss, r1 = discriminator_loss(discriminator, real_w, fake_w, r1_gamma)
    return loss, {"d_latent": float(loss.detach()), "r1": float(r1.detach())}


def mapping_loss(discriminator: torch.nn.Module, w: torch.Tensor) -> torch.Tensor:
    """The mapping network's adversarial term: softplus(D(w)), pushing mapping(z) [N, D] to where D puts the
    encoder's codes (D's "fake" side; the encoder is pushed the other way by :func:`latent_loss`)."""
    return F.softplus(discriminator(w)).mean()


def delta_loss(codes: torch.Tensor) -> torch.Tensor:
    """e4e's delta regularisation: mean over entries i >= 1 of |w_i - w_0|_2. codes [B, n_latent, D]"""
    return (codes[:, 1:] - codes[:, :1]).norm(dim=2).mean()


def w_norm_loss(offsets: torch.Tensor) -> torch.Tensor:
    """pSp's w_norm: squared norm per W+ entry of the offsets from ``latent_avg`` [B, n_latent, D], averaged."""
    return offsets.square().sum(2).mean()
