"""Stand-ins for the paper world's external inputs, small enough for CPU tests of the paper code path.

- :func:`sample_photos`: real photos from an installed package. scikit-image's ``astronaut()``
  (Eileen Collins, a NASA photo in the public domain, as scikit-image's data README states) in
  deterministic variants: mirrored, turned a few degrees, cropped closer, brighter or darker. One
  identity only; the cross-reenactment pairs then pair different images (the protocol's rule when
  no identity labels exist). insightface's bundled sample images are not used: the package states
  no licence for them.
- :func:`write_official_layout`: random networks at a small resolution written in the release
  layouts by the study's own writers (:mod:`megafr.nets.checkpoints`): the rosinality StyleGAN2
  file, e4e and pSp files (encoder + decoder + ``latent_avg``, e4e with its latent discriminator),
  a TreB1eN ArcFace state dict, and a FLAME-format head model
  (:func:`megafr.face3d.headmodel.write_head_model`). Their loaders are the ones the paper profile
  uses on the downloaded files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from megafr.imageio import save_image

VARIANTS = (  # (mirror, degrees, zoom, brightness) of each astronaut variant, in order
    (False, 0.0, 1.0, 1.0), (True, 0.0, 1.0, 1.0), (False, 8.0, 1.0, 1.0), (False, -8.0, 1.0, 0.85),
    (True, 4.0, 1.0, 1.1), (False, 0.0, 1.2, 1.15), (True, -6.0, 1.1, 0.9), (False, 3.0, 1.05, 1.2),
)
FACE_CENTRE = (0.45, 0.25)  # the astronaut's face centre as fractions of width and height (zoom keeps it in view)


def _variant(photo: Image.Image, mirror: bool, degrees: float, zoom: float, brightness: float) -> np.ndarray:
    image = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else photo
    centre = (FACE_CENTRE[0] * image.width if not mirror else (1 - FACE_CENTRE[0]) * image.width,
              FACE_CENTRE[1] * image.height)
    image = image.rotate(degrees, resample=Image.Resampling.BICUBIC, center=centre)
    if zoom != 1.0:
        w, h = image.width / zoom, image.height / zoom
        left = min(max(centre[0] - w / 2, 0), image.width - w)
        top = min(max(centre[1] - h / 2, 0), image.height - h)
        image = image.resize(photo.size, Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    return np.asarray(ImageEnhance.Brightness(image).enhance(brightness), dtype=np.uint8)


def sample_photos(n: int = len(VARIANTS)) -> list[np.ndarray]:
    """``n`` (at most ``len(VARIANTS)``) uint8 photos [512, 512, 3] of scikit-image's astronaut."""
    from skimage.data import astronaut

    photo = Image.fromarray(astronaut())
    return [_variant(photo, *spec) for spec in VARIANTS[:n]]


def write_sample_photos(folder: str | os.PathLike, n: int = len(VARIANTS), start: int = 0) -> list[Path]:
    """Write variants ``start .. start + n - 1`` as ``astronaut_<k>.png`` under ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photos = sample_photos(start + n)[start:]
    paths = [folder / f"astronaut_{start + k}.png" for k in range(len(photos))]
    for path, photo in zip(paths, photos):
        save_image(path, photo)
    return paths


def write_official_layout(folder: str | os.PathLike, size: int = 64, style_dim: int = 64, seed: int = 0) -> dict:
    """Random networks at ``size`` px in the official file layouts under ``folder``; returns name -> path.

    Names: ``stylegan2`` (stylegan2-ffhq-config-f.pt), ``e4e`` (e4e_ffhq_encode.pt), ``psp``
    (psp_ffhq_encode.pt), ``psp_frontalization`` (psp_ffhq_frontalization.pt), ``arcface``
    (model_ir_se50.pth), ``flame_model`` and ``flame_landmarks`` (FLAME-format head model).
    """
    from megafr.face3d import headmodel
    from megafr.nets.checkpoints import save_arcface, save_encoder, save_stylegan2
    from megafr.nets.encoders import EncoderConfig, Encoder4Editing, GradualStyleEncoder, InversionNet, \
        LatentCodesDiscriminator
    from megafr.nets.irse import ArcFace, ArcFaceConfig, IRSEConfig
    from megafr.nets.stylegan2 import Generator

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    body = IRSEConfig(widths=(8, 12, 16, 24), units=(1, 1, 1, 1), stem_channels=8)
    generator = Generator(size, style_dim, n_mlp=2, channel_multiplier=1, max_channels=32).eval()
    latent_avg = generator.mean_latent(256).reshape(-1)
    config = EncoderConfig(input_size=size, n_latent=generator.n_latent, style_dim=style_dim, body=body)
    avg = latent_avg.reshape(1, -1).expand(generator.n_latent, -1).clone()
    paths = {"stylegan2": folder / "stylegan2-ffhq-config-f.pt", "e4e": folder / "e4e_ffhq_encode.pt",
             "psp": folder / "psp_ffhq_encode.pt", "psp_frontalization": folder / "psp_ffhq_frontalization.pt",
             "arcface": folder / "model_ir_se50.pth"}
    save_stylegan2(paths["stylegan2"], generator, latent_avg)
    save_encoder(paths["e4e"], InversionNet(Encoder4Editing(config), avg, generator),
                 discriminator=LatentCodesDiscriminator(style_dim=style_dim))
    save_encoder(paths["psp"], InversionNet(GradualStyleEncoder(config), avg, generator))
    save_encoder(paths["psp_frontalization"], InversionNet(GradualStyleEncoder(config), avg, generator))
    save_arcface(paths["arcface"], ArcFace(ArcFaceConfig(input_size=size, embedding_dim=32, body=body)))
    files = headmodel.write_head_model(folder / "flame")
    return {**{k: str(v) for k, v in paths.items()}, "flame_model": str(files.model_path),
            "flame_landmarks": str(files.landmark_path)}
