"""train_face3d at scale: images read through the DataLoader (a photo set never sits in memory whole), and
two training processes (gloo, CPU) ending with the weights of one process at the doubled batch."""

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from megafr import distributed
from megafr.config import build_config
from megafr.datasets.align import LANDMARK_COLUMNS
from megafr.datasets.loader import ImageRows
from megafr.errors import InputError
from megafr.face3d import headmodel
from megafr.face3d import train as ft
from megafr.imageio import save_image
from tests import conftest

SIZE, INPUT = 32, 16
STEPS, BATCH = 3, 2  # per process; the doubled batch is 4


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("face3d_scale")
    conftest.write_head_world(root, SIZE)
    return root


def _config(root: Path, out: Path, **overrides) -> ft.TrainConfig:
    values = dict(
        profile="smoke", seed=0, model_path=str(root / "head_model" / headmodel.MODEL_FILE),
        landmark_path=str(root / "head_model" / headmodel.LANDMARK_FILE), data_dir=str(root), source="synthetic",
        image_size=SIZE, input_size=INPUT, n_shape=headmodel.N_IDENTITY, n_expr=headmodel.N_EXPRESSION, width=4,
        eye_patch=4, extra_splits="",
        cam_scale_init=8.0, cam_ty_init=0.0, steps=STEPS, batch_size=BATCH, lr=1e-3, lambda_lmk=1.0, lambda_kp=1.0,
        lambda_eye=3.0, lambda_mouth=2.0, lambda_pair=1.0, lambda_sil=0.5, sil_every=2, sil_size=16, sil_batch=2 * BATCH,
        sil_sigma=1.0, lambda_shape=1e-3, lambda_expr=1e-3, lambda_pose=1e-3, checkpoint_every=2, threads=0,
        cpu_bf16=False, out_dir=str(out))
    values.update(overrides)
    return build_config(ft.TrainConfig, values)


# ------------------------------------------------------------------------------------------- data
def test_synthetic_images_are_read_per_row_with_the_whole_arrays_values(world_dir, tmp_path):
    data = ft.load_landmark_set(_config(world_dir, tmp_path), "train")
    assert isinstance(data.images, ImageRows), "the images must stay on disk (memory-mapped), not be loaded"
    whole = ft._resize_uint8(np.load(world_dir / "train" / "images.npy"), INPUT)  # what the array path computed
    assert data.images.shape == whole.shape
    assert np.array_equal(data.images[:len(data)], whole)
    assert np.array_equal(data.images[np.array([5, 1])], whole[[5, 1]])
    in_memory = ft.LandmarkSet(whole, data.landmarks, data.masks, data.table)
    assert in_memory.digest() == data.digest(), "the chunked digest must equal the whole array's"


def _write_photos(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        save_image(root / "photos" / "images" / f"p{i:03d}.png", rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        rows.append({"file": f"raw/p{i:03d}.jpg", **dict(zip(LANDMARK_COLUMNS, rng.uniform(4, SIZE - 4, 136)))})
    pd.DataFrame(rows).to_parquet(root / "photos" / "landmarks.parquet")


def test_a_photo_set_holds_file_names_not_images(world_dir, tmp_path):
    _write_photos(tmp_path, 12)
    cfg = _config(world_dir, tmp_path / "out", data_dir=str(tmp_path), source="photos", lambda_sil=0.0)
    data = ft.load_landmark_set(cfg, "train")
    assert len(data) == 10 and data.masks is None  # every 10th photo is held out
    assert isinstance(data.images, ImageRows) and isinstance(data.images.dataset.images, ft.PhotoFiles)
    held = [value for value in vars(data).values() if isinstance(value, np.ndarray)]
    assert sum(value.nbytes for value in held) < len(data) * INPUT * INPUT * 3, "no image array may be held"
    from megafr.imageio import load_image

    expected = ft._resize_uint8(load_image(tmp_path / "photos" / "images" / "p001.png")[None], INPUT)[0]
    assert np.array_equal(data.images[0], expected)  # the first training photo (p000 is held out)
    digest = data.digest()
    save_image(tmp_path / "photos" / "images" / "p001.png", np.zeros((SIZE, SIZE, 3), np.uint8))  # other size on disk
    assert ft.load_landmark_set(cfg, "train").digest() != digest, "the list of names and sizes identifies the photos"
    result = ft.train_face3d(replace(cfg, steps=2), data, progress=False)
    assert result.steps_run == 2


# ----------------------------------------------------------------------------------- processes
def test_the_silhouette_share_rule():
    cfg = ft.TrainConfig.__new__(ft.TrainConfig)
    object.__setattr__(cfg, "sil_batch", 8)
    object.__setattr__(cfg, "batch_size", 16)
    assert ft.silhouette_share(cfg, distributed.World(0, 1, 0)) == 8  # one process: the first sil_batch
    assert ft.silhouette_share(cfg, distributed.World(1, 2, 1)) == 4  # two: 4 from the front of each share
    object.__setattr__(cfg, "batch_size", 2)
    assert ft.silhouette_share(cfg, distributed.World(0, 2, 0)) == 2  # capped by the global batch of 4
    object.__setattr__(cfg, "sil_batch", 3)
    with pytest.raises(InputError, match="multiple of 2"):
        ft.silhouette_share(cfg, distributed.World(0, 2, 0))


def _rank(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MEGAFR_DEVICE="cpu")
    torch.set_num_threads(1)
    try:
        cfg = _config(Path(root), Path(out))
        ft.train_face3d(cfg, ft.load_landmark_set(cfg, "train"), progress=False)
    finally:
        distributed.shutdown()


def test_two_ranks_match_one_process_at_the_doubled_batch(world_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEGAFR_DEVICE", "cpu")
    single = _config(world_dir, tmp_path / "one", batch_size=2 * BATCH)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_run = ft.train_face3d(single, ft.load_landmark_set(single, "train"), progress=False)
    finally:
        torch.set_num_threads(previous)
    mp.spawn(_rank, args=(2, conftest.free_port(), str(world_dir), str(tmp_path / "two")), nprocs=2, join=True)

    one = ft.read_checkpoint(single.checkpoint_path)
    two = ft.read_checkpoint(_config(world_dir, tmp_path / "two").checkpoint_path)  # written by rank 0 alone
    assert one["step"] == two["step"] == STEPS and two["processes"] == 2 and one["processes"] == 1
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in one_run.model.net.modules()), "the test covers batch norm"
    names = list(one["state_dict"])
    learned = [n for n in names if "num_batches" not in n]
    a = torch.cat([one["state_dict"][n].float().flatten() for n in learned])
    b = torch.cat([two["state_dict"][n].float().flatten() for n in learned])
    start = torch.cat([ft.build_model(single).net.state_dict()[n].float().flatten() for n in learned])
    assert float((a - start).abs().max()) > 1e-4  # the weights did move
    # Adam turns a gradient of rounding size (a bias the next batch norm cancels) into a step of up to lr, so
    # such weights may differ by up to one step per step; every other weight (and running statistic) must agree.
    assert float((a - b).abs().max()) <= 2 * STEPS * single.lr
    assert float(((a - b).abs() > 1e-4).float().mean()) < 0.05
    curve_one, curve_two = pd.DataFrame(one["curve"]), pd.DataFrame(two["curve"])
    assert list(curve_one.columns) == list(curve_two.columns) and "sil" in curve_one.columns
    pd.testing.assert_frame_equal(curve_two, curve_one, rtol=1e-3)  # the loss terms averaged over the ranks


def test_the_torchrun_entry_trains_the_stage_config(world_dir, tmp_path, monkeypatch):
    from megafr.face3d import multigpu

    monkeypatch.setenv("MEGAFR_DEVICE", "cpu")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    cfg = _config(world_dir, tmp_path / "entry", steps=1)
    seen = {}
    monkeypatch.setattr(multigpu, "load_config", lambda params: seen.setdefault("cfg", cfg))
    assert multigpu.main(["--params", str(tmp_path / "params.yaml")]) == 0
    assert ft.read_checkpoint(cfg.checkpoint_path)["step"] == 1 and seen["cfg"] is cfg
