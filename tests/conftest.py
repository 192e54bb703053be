"""Shared fixtures: tiny random stand-ins of the frozen networks MegaFR trains against."""

import socket

import pytest
import torch

from megafr.face3d import headmodel
from megafr.face3d.flame import FLAME
from megafr.face3d.recon import FaceModel, ReconConfig
from megafr.nets.encoders import EncoderConfig, Encoder4Editing, InversionNet, LatentCodesDiscriminator
from megafr.nets.irse import ArcFace, ArcFaceConfig, IRSEConfig
from megafr.nets.stylegan2 import Generator
from megafr.reenact import train as rt

TINY_SIZE, TINY_STYLE = 32, 32
TINY_BODY = IRSEConfig(widths=(8, 12, 16, 24), units=(1, 1, 1, 1), stem_channels=8)


def free_port() -> int:
    """A free TCP port on the loopback interface (for a process group of test processes)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_head_world(root, size: int):
    """The synthetic head model and a 3-identity training split of SynthHeads at ``size`` px under ``root``
    (``head_model/``, ``train/images.npy``, ``masks.npy``, ``meta.parquet``: what the smoke prepare writes);
    returns the head model's files."""
    import numpy as np

    from megafr.datasets import synthheads as sh
    from megafr.datasets.prepare import save_array, save_table

    files = headmodel.write_head_model(root / "head_model")
    world = sh.HeadWorld(files.model_path, files.landmark_path, size)
    params = sh.sample_split(world, np.random.default_rng(1), np.arange(3), 4, (40.0, 20.0, 10.0))
    rendered = world.render(params)
    save_array(root / "train" / "images.npy", rendered["images"])
    save_array(root / "train" / "masks.npy", rendered["masks"])
    save_table(root / "train" / "meta.parquet", sh.scene_table(params, rendered, "train"))
    return files


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from threads, and on a busy 2-core machine spinning threads cost a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_frozen(tmp_path_factory):
    """Random 32 px generator, e4e, 3D face network (over the synthetic head model), ID net and latent D."""
    files = headmodel.write_head_model(tmp_path_factory.mktemp("head"))
    torch.manual_seed(0)
    flame = FLAME.from_files(files.model_path, files.landmark_path, headmodel.N_IDENTITY, headmodel.N_EXPRESSION)
    face = FaceModel(ReconConfig(headmodel.N_IDENTITY, headmodel.N_EXPRESSION, TINY_SIZE, input_size=16, width=8), flame)
    generator = Generator(TINY_SIZE, TINY_STYLE, n_mlp=2, channel_multiplier=1, max_channels=32)
    config = EncoderConfig(input_size=TINY_SIZE, n_latent=generator.n_latent, style_dim=TINY_STYLE, body=TINY_BODY)
    inversion = InversionNet(Encoder4Editing(config), torch.randn(generator.n_latent, TINY_STYLE) * 0.1)
    idnet = ArcFace(ArcFaceConfig(input_size=TINY_SIZE, embedding_dim=16, body=TINY_BODY))
    parts = (generator, inversion, face, idnet, LatentCodesDiscriminator(style_dim=TINY_STYLE))
    return rt.Frozen(*(rt._freeze(m) for m in parts), lpips=None)


def write_frozen_files(root, frozen: rt.Frozen, head_files) -> dict[str, str]:
    """The tiny frozen networks saved in their release layouts under ``root`` (pSp's path is e4e's file) ->
    ReenactConfig's file fields, the head model's (``head_files``: ``write_head_model``'s result) included."""
    from megafr.face3d.recon import save_checkpoint_dict
    from megafr.nets.checkpoints import save_arcface, save_encoder, save_stylegan2

    files = {"generator_path": root / "g.pt", "e4e_path": root / "e4e.pt", "psp_path": root / "e4e.pt",
             "face3d_path": root / "face3d.pt", "idnet_path": root / "arcface.pt",
             "model_path": head_files.model_path, "landmark_path": head_files.landmark_path}
    files = {k: str(v) for k, v in files.items()}
    save_stylegan2(files["generator_path"], frozen.generator, torch.zeros(TINY_STYLE))
    save_encoder(files["e4e_path"], frozen.inversion)
    torch.save(save_checkpoint_dict(frozen.face, 0), files["face3d_path"])
    save_arcface(files["idnet_path"], frozen.idnet)
    return files
