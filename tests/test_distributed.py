"""Training E_FR on two processes (gloo, CPU) ends with the weights of one process at the doubled batch."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from megafr import distributed
from megafr.reenact import train as rt
from tests import conftest

STEPS, BATCH, N_IMAGES = 3, 2, 12


class _Folders:
    """Stands in for pytest's tmp_path_factory where the conftest fixture is called directly: its folders lie
    under ``root`` (the test's tmp_path), so pytest removes them with it (the head model is 47 MB)."""

    def __init__(self, root):
        self.root = Path(root)

    def mktemp(self, name):
        return Path(tempfile.mkdtemp(prefix=name, dir=self.root))


def _frozen(root):
    return conftest.tiny_frozen.__wrapped__(_Folders(root))  # the same seeded random networks in every process


def _config(out_dir: str, batch_size: int, input_cache: str = "") -> rt.ReenactConfig:
    return rt.ReenactConfig(profile="smoke", seed=3, steps=STEPS, batch_size=batch_size, lr=1e-3,
                            lr_schedule="constant", encoder="e4e",
                            condition="render", edit_groups="coarse,medium", lambda_id=1.0, lambda_lmk=1.0,
                            lambda_pair=1.0, lambda_cyc=1.0, lambda_self=1.0, lambda_latent=0.1, lambda_l2=1.0,
                            lambda_lpips=0.0, lambda_rec_id=0.5, checkpoint_every=2, generator_path="", e4e_path="",
                            psp_path="", face3d_path="", idnet_path="", model_path="", landmark_path="",
                            train_images="", out_dir=out_dir, cpu_bf16=False, input_cache=input_cache)


def _rank(rank: int, world: int, port: int, out_dir: str, images: str, input_cache: str = "") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MEGAFR_DEVICE="cpu")
    torch.set_num_threads(1)
    try:
        rt.train(_config(out_dir, BATCH, input_cache), _frozen(Path(images).parent), np.load(images), progress=False)
    finally:
        distributed.shutdown()


def _gradients(cfg: rt.ReenactConfig, images_file: str, here: distributed.World) -> dict[str, torch.Tensor]:
    """E_FR's gradients of step 0 (all-reduced by DDP when distributed), as train() computes them."""
    frozen = _frozen(Path(images_file).parent)
    images = np.load(images_file)
    model = rt.build_model(cfg, frozen)
    model.encoder.train()
    engine = distributed.data_parallel(rt.StepLoss(model, frozen, cfg), model.encoder, here, torch.device("cpu"))
    src, tgt = rt.batch_indices(cfg.seed, 0, len(images), cfg.batch_size * here.size)
    from megafr.imageio import images_to_tensor
    total, _ = engine(images_to_tensor(images[distributed.shard(src, here)]),
                      images_to_tensor(images[distributed.shard(tgt, here)]))
    total.backward()
    return {n: p.grad.clone() for n, p in model.encoder.named_parameters() if p.grad is not None}


def _grad_rank(rank: int, world: int, port: int, images: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MEGAFR_DEVICE="cpu")
    torch.set_num_threads(1)
    try:
        here = distributed.setup()
        grads = _gradients(_config("", BATCH), images, here)
        if here.main:
            torch.save(grads, out)
    finally:
        distributed.shutdown()


def test_shard_and_world_outside_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    here = distributed.world()
    assert (here.rank, here.size, here.main, here.distributed) == (0, 1, True, False)
    assert distributed.setup() == here
    rows = np.arange(8)
    assert list(distributed.shard(rows, here)) == list(rows)
    assert list(distributed.shard(rows, distributed.World(1, 2, 1))) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="does not split"):
        distributed.shard(np.arange(5), distributed.World(0, 2, 0))
    assert distributed.mean_over_ranks({"a": 1.5}, torch.device("cpu")) == {"a": 1.5}


def test_two_ranks_match_one_process_at_the_doubled_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGAFR_DEVICE", "cpu")
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (N_IMAGES, conftest.TINY_SIZE, conftest.TINY_SIZE, 3),
                                                      dtype=np.uint8))
    single = _config(str(tmp_path / "one"), 2 * BATCH)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rt.train(single, _frozen(tmp_path), np.load(images), progress=False)
    finally:
        torch.set_num_threads(previous)
    mp.spawn(_rank, args=(2, conftest.free_port(), str(tmp_path / "two"), str(images)), nprocs=2, join=True)

    one = rt.read_checkpoint(rt.checkpoint_path(single))
    two = rt.read_checkpoint(rt.checkpoint_path(_config(str(tmp_path / "two"), BATCH)))
    assert one["step"] == two["step"] == STEPS
    assert two["config"]["batch_size"] == BATCH
    # Adam turns a gradient of rounding size (a bias the next batch norm cancels) into a step of +-lr, so such
    # weights may differ by up to one step per step; every other weight must agree (unsynced batch statistics
    # make 60 % of them differ, measured).
    learned = [n for n in one["state_dict"] if "running" not in n and "num_batches" not in n]
    a = torch.cat([one["state_dict"][n].float().flatten() for n in learned])
    b = torch.cat([two["state_dict"][n].float().flatten() for n in learned])
    initial = rt.build_model(single, _frozen(tmp_path)).encoder.state_dict()
    start = torch.cat([initial[n].float().flatten() for n in learned])
    assert float((a - start).abs().max()) > 1e-4  # the weights did move
    assert float((a - b).abs().max()) <= 2 * STEPS * single.lr
    assert float(((a - b).abs() > 1e-4).float().mean()) < 0.05
    import pandas as pd

    curve_one = pd.read_csv(tmp_path / "one" / "megafr_e4e_render.curve.csv")
    curve_two = pd.read_csv(tmp_path / "two" / "megafr_e4e_render.curve.csv")  # written by rank 0 alone
    assert list(curve_one.columns) == list(curve_two.columns) and len(curve_one) == len(curve_two) == STEPS
    # step 1 starts from the same weights: the loss averaged over the ranks is the doubled batch's loss
    pd.testing.assert_series_equal(curve_two.iloc[0], curve_one.iloc[0], rtol=1e-4)


def test_two_ranks_share_one_input_cache_that_rank_0_computes(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGAFR_DEVICE", "cpu")
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (N_IMAGES, conftest.TINY_SIZE, conftest.TINY_SIZE, 3),
                                                      dtype=np.uint8))
    cache = tmp_path / "cache"
    assert STEPS * 2 * BATCH >= N_IMAGES  # enough pairs for the cache to be computed
    mp.spawn(_rank, args=(2, conftest.free_port(), str(tmp_path / "plain"), str(images)), nprocs=2, join=True)
    mp.spawn(_rank, args=(2, conftest.free_port(), str(tmp_path / "cached"), str(images), str(cache)), nprocs=2,
             join=True)
    assert [p.name[:4] for p in cache.iterdir()] == ["e4e-"]  # one cache, no temporary folder of another rank
    import pandas as pd

    plain = pd.read_csv(tmp_path / "plain" / "megafr_e4e_render.curve.csv")
    cached = pd.read_csv(tmp_path / "cached" / "megafr_e4e_render.curve.csv")
    pd.testing.assert_series_equal(cached.iloc[0], plain.iloc[0], rtol=1e-2)  # float16-stored inputs


def test_two_ranks_give_the_gradient_of_the_doubled_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGAFR_DEVICE", "cpu")
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(1).integers(0, 256, (N_IMAGES, conftest.TINY_SIZE, conftest.TINY_SIZE, 3),
                                                      dtype=np.uint8))
    one = _gradients(_config("", 2 * BATCH), str(images), distributed.World(0, 1, 0))
    mp.spawn(_grad_rank, args=(2, conftest.free_port(), str(images), str(tmp_path / "grads.pt")), nprocs=2, join=True)
    two = torch.load(tmp_path / "grads.pt")
    assert set(one) == set(two) and len(one) > 10
    scale = max(float(g.abs().max()) for g in one.values())
    for name, grad in one.items():  # a bias cancelled by the next batch norm has a gradient of rounding size only
        assert torch.allclose(two[name], grad, rtol=1e-3, atol=1e-5 * scale), name


def test_the_torchrun_entry_builds_the_stage_config_from_params():
    from megafr.config import load_params, profile_file
    from megafr.reenact.multigpu import reenact_config

    path = profile_file("smoke", conftest.__file__.rsplit("/tests/", 1)[0])
    params = load_params(path)
    cfg, variants = reenact_config(path)
    block = params["train_reenact"]
    assert (cfg.profile, cfg.seed, cfg.batch_size) == (params["profile"], params["seed"], block["batch_size"])
    assert cfg.model_path == params["flame"]["model_path"] and variants == block["variants"]
