"""The training losses of every stage, one small module per kind, shared by pretraining and reenactment.

- :mod:`~megafr.losses.identity`: ``1 - cos`` of identity features (MegaFR eq. 3; pSp/e4e's ID loss);
- :mod:`~megafr.losses.perceptual`: LPIPS, where its backbone weights are on the machine;
- :mod:`~megafr.losses.face_features`: a perceptual distance from the study's 3D face network (mini world);
- :mod:`~megafr.losses.pixel`: the Laplacian-pyramid L1 and L_rec (MegaFR eq. 6-7);
- :mod:`~megafr.losses.latent`: the latent discriminator's terms (MegaFR eq. 8; e4e) and the code regularisers;
- :mod:`~megafr.losses.landmarks`: 3D landmark and eyelid/lip gap losses (MegaFR eq. 4-5) and the
  weighted 2D landmark and silhouette terms of the 3D face network;
- :func:`weighted_total`: ``sum_k lambda_k L_k`` and the ``{name: float}`` log of every term.

Method notes behind these choices: ``docs/method.md``.
"""

from megafr.losses.face_features import FaceFeatureDistance
from megafr.losses.identity import id_loss
from megafr.losses.landmarks import landmark_loss, pair_gaps, pair_loss, silhouette_loss, weighted_landmark_loss
from megafr.losses.latent import delta_loss, discriminator_loss, latent_d_loss, latent_loss, mapping_loss, w_norm_loss
from megafr.losses.perceptual import LpipsLoss, load_lpips, lpips_status
from megafr.losses.pixel import laplacian_l1, reconstruction_loss
from megafr.losses.total import weighted_total

__all__ = ["FaceFeatureDistance", "id_loss", "landmark_loss", "pair_gaps", "pair_loss", "silhouette_loss", "weighted_landmark_loss",
           "delta_loss", "discriminator_loss", "latent_d_loss", "latent_loss", "mapping_loss", "w_norm_loss",
           "LpipsLoss", "load_lpips",
           "lpips_status", "laplacian_l1", "reconstruction_loss", "weighted_total"]
