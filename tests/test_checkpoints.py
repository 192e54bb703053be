"""Checkpoint loaders: round trips, official layouts without ``config``, and clear errors."""

import pytest
import torch

from megafr.errors import CheckpointError, MissingFileError
from megafr.nets.checkpoints import (
    infer_generator_config,
    load_arcface,
    load_e4e,
    load_latent_discriminator,
    load_psp,
    load_stylegan2,
    load_stylegan2_discriminator,
    save_arcface,
    save_encoder,
    save_stylegan2,
)
from megafr.nets.encoders import MINI_ENCODER, EncoderConfig, Encoder4Editing, GradualStyleEncoder, InversionNet, LatentCodesDiscriminator, expand_input_channels
from megafr.nets.irse import MINI_ARCFACE, ArcFace
from megafr.nets.stylegan2 import Discriminator, Generator, GeneratorConfig


def _mini_gan(seed=0):
    torch.manual_seed(seed)
    g = Generator(32, 64, 2, channel_multiplier=2, max_channels=64)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.05)
    return g, Discriminator(32, 2, max_channels=64)


def _inversion(cls, seed=1, input_nc=3):
    torch.manual_seed(seed)
    cfg = EncoderConfig(**{**MINI_ENCODER.__dict__, "input_nc": input_nc})
    g = Generator(64, 128, 2, max_channels=32)
    return InversionNet(cls(cfg), torch.randn(10, 128), g).eval()


def test_stylegan2_round_trip(tmp_path):
    g, d = _mini_gan()
    avg = torch.randn(64)
    save_stylegan2(tmp_path / "sg.pt", g, avg, g=g, d=d)
    g2, avg2 = load_stylegan2(tmp_path / "sg.pt")
    d2 = load_stylegan2_discriminator(tmp_path / "sg.pt")
    assert g2.config == g.config and torch.equal(avg2, avg) and not g2.training
    z = torch.randn(4, 64)
    noise = g.make_noise()
    with torch.no_grad():
        assert torch.equal(g2([z], noise=noise)[0], g.eval()([z], noise=noise)[0])
        x = torch.randn(4, 3, 32, 32)
        assert torch.equal(d2(x), d(x))


def test_stylegan2_official_layout_without_config(tmp_path):
    g, _ = _mini_gan(2)
    torch.save({"g_ema": g.state_dict(), "latent_avg": torch.zeros(64)}, tmp_path / "official.pt")
    g2, _ = load_stylegan2(tmp_path / "official.pt")
    assert {k: v.shape for k, v in g2.state_dict().items()} == {k: v.shape for k, v in g.state_dict().items()}
    noise = g.make_noise()
    z = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(g2([z], noise=noise)[0], g.eval()([z], noise=noise)[0])


def test_infer_config_f_from_shapes():
    with torch.device("meta"):
        g = Generator(1024, 512, 8, channel_multiplier=2)
    assert infer_generator_config(g.state_dict()) == GeneratorConfig(1024, 512, 8, 2, 512)


@pytest.mark.parametrize("cls,save_kind,loader", [(Encoder4Editing, "e4e", load_e4e), (GradualStyleEncoder, "psp", load_psp)])
def test_encoder_round_trip(tmp_path, cls, save_kind, loader):
    net = _inversion(cls)
    ld = LatentCodesDiscriminator(128).eval()
    save_encoder(tmp_path / f"{save_kind}.pt", net, opts={"lambda_id": 0.1}, discriminator=ld)
    net2 = loader(tmp_path / f"{save_kind}.pt")
    assert isinstance(net2.encoder, cls) and net2.opts["lambda_id"] == 0.1
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net2.encode(x), net.encode(x))
        assert torch.equal(net2(x)[0], net(x)[0])
        ld2 = load_latent_discriminator(tmp_path / f"{save_kind}.pt")
        w = torch.randn(5, 128)
        assert torch.equal(ld2(w), ld(w))


def test_encoder_official_layout_without_config(tmp_path):
    """A file in the release layout (no ``config``) is read by inferring every shape."""
    net = _inversion(Encoder4Editing, 3)
    obj = {"state_dict": net.state_dict(), "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 64}, "latent_avg": net.latent_avg}
    torch.save(obj, tmp_path / "e4e.pt")
    net2 = load_e4e(tmp_path / "e4e.pt")
    assert net2.encoder.config == net.encoder.config
    # every width is capped here, so any multiplier fits; the shapes are what must agree
    assert {k: v.shape for k, v in net2.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net2.encode(x), net.encode(x))
    with pytest.raises(CheckpointError, match="load_e4e"):
        load_psp(tmp_path / "e4e.pt")
    with pytest.raises(CheckpointError, match="discriminator_state_dict"):
        load_latent_discriminator(tmp_path / "e4e.pt")


def test_six_channel_encoder_saved_and_inferred(tmp_path):
    net3 = _inversion(GradualStyleEncoder, 4)
    net6 = _inversion(GradualStyleEncoder, 5, input_nc=6)
    net6.encoder.load_state_dict(expand_input_channels(net3.encoder.state_dict(), 6))
    obj = {"state_dict": net6.state_dict(), "opts": {}, "latent_avg": net6.latent_avg}
    torch.save(obj, tmp_path / "efr.pt")
    net = load_psp(tmp_path / "efr.pt")
    assert net.encoder.config.input_nc == 6
    assert torch.count_nonzero(net.encoder.input_layer[0].weight[:, 3:]) == 0


def test_arcface_round_trip_and_plain_state_dict(tmp_path):
    torch.manual_seed(6)
    net = ArcFace(MINI_ARCFACE).eval()
    save_arcface(tmp_path / "af.pt", net)
    plain = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(plain, tmp_path / "af_plain.pt")  # as an old-torch TreB1eN file: no num_batches_tracked
    x = torch.randn(2, 3, 64, 64)
    for name in ("af.pt", "af_plain.pt"):
        net2 = load_arcface(tmp_path / name)
        assert net2.config == net.config and not net2.training
        with torch.no_grad():
            assert torch.equal(net2(x), net(x))


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(MissingFileError, match="stylegan2-ffhq-config-f.pt"):
        load_stylegan2(tmp_path / "nope.pt")
    with pytest.raises(MissingFileError, match="model_ir_se50.pth"):
        load_arcface(tmp_path / "nope.pth")
    g, _ = _mini_gan()
    save_stylegan2(tmp_path / "sg.pt", g, torch.zeros(64))
    data = (tmp_path / "sg.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*truncated"):
        load_stylegan2(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_e4e(tmp_path / "junk.pt")


def test_wrong_file_kind_names_keys(tmp_path):
    save_arcface(tmp_path / "af.pt", ArcFace(MINI_ARCFACE))
    with pytest.raises(CheckpointError) as err:
        load_stylegan2(tmp_path / "af.pt")
    msg = str(err.value)
    assert "af.pt" in msg and "g_ema" in msg and "body.0" in msg and "rosinality" in msg
    g, _ = _mini_gan()
    save_stylegan2(tmp_path / "sg.pt", g, torch.zeros(64))
    with pytest.raises(CheckpointError, match="state_dict"):
        load_psp(tmp_path / "sg.pt")
    with pytest.raises(CheckpointError, match="output_layer"):
        load_arcface(tmp_path / "sg.pt")


def test_config_and_weights_disagree(tmp_path):
    g, _ = _mini_gan()
    obj = {"g_ema": g.state_dict(), "latent_avg": torch.zeros(64), "config": {"generator": {**g.config.to_dict(), "max_channels": 32}}}
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_stylegan2(tmp_path / "bad.pt")
    state = dict(g.state_dict())
    del state["to_rgbs.2.bias"]
    torch.save({"g_ema": state, "latent_avg": torch.zeros(64)}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="to_rgbs.2.bias"):
        load_stylegan2(tmp_path / "partial.pt")


def test_evaluate_names_an_e_fr_checkpoint_whose_weights_or_config_do_not_fit(tmp_path, monkeypatch, tiny_frozen):
    """The evaluate stage wraps load_state_dict's RuntimeError (and a foreign config) into CheckpointError."""
    import dataclasses
    from types import SimpleNamespace

    from megafr.evaluate import stage
    from tests.test_reenact_train import _config

    monkeypatch.setattr(stage, "load_frozen", lambda cfg: tiny_frozen)
    cfg = SimpleNamespace(reenact_dir=str(tmp_path), variants="e4e:render", seed=0)
    path = tmp_path / "megafr_e4e_render.pt"
    config = dataclasses.asdict(_config(tmp_path))
    torch.save({"state_dict": {"body.0.weight": torch.zeros(3)}, "config": config, "step": 3}, path)
    with pytest.raises(CheckpointError) as err:
        stage.load_trained(cfg)
    message = str(err.value)
    assert str(path) in message and "do not fit" in message and "dvc repro train_reenact" in message
    assert "Missing key" in message and "\n" not in message
    torch.save({"state_dict": {}, "config": {**config, "lambda_old": 1.0}, "step": 3}, path)
    with pytest.raises(CheckpointError, match="recorded configuration does not fit.*lambda_old"):
        stage.load_trained(cfg)


def test_write_checkpoint_refuses_non_finite_weights_and_keeps_the_last_good_file(tmp_path):
    """training.write_checkpoint is where every training checkpoint is saved: it checks the weights first."""
    from megafr import training

    net = torch.nn.Linear(3, 2)
    path = tmp_path / "checkpoint.pt"
    training.write_checkpoint(path, {"state_dict": net.state_dict(), "step": 4}, "train_idnet", {"net": net})
    before = path.read_bytes()
    with torch.no_grad():
        net.bias[1] = float("inf")
    with pytest.raises(training.NonFiniteLossError) as info:
        training.write_checkpoint(path, {"state_dict": net.state_dict(), "step": 6}, "train_idnet", {"net": net})
    assert (info.value.stage, info.value.term, info.value.step) == ("train_idnet", "weights", 6)
    assert "weights of net (bias)" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_write_checkpoint_gives_the_same_bytes_for_the_same_payload(tmp_path):
    """Saved under the target's own name inside a temporary folder: the archive holds no random name."""
    from megafr import training

    net = torch.nn.Linear(3, 2)
    for folder in ("a", "b"):
        training.write_checkpoint(tmp_path / folder / "checkpoint.pt", {"state_dict": net.state_dict(), "step": 1},
                                  "train_face3d", {"network": net})
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == (tmp_path / "b" / "checkpoint.pt").read_bytes()
