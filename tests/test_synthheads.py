"""SynthHeads: splits by identity, full ground truth, evaluation sets with the right answer, determinism."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from megafr.config import build_config, load_params, study_root
from megafr.datasets.prepare import PrepareConfig, load_split, run_prepare
from megafr.errors import InputError

ROOT = study_root(__file__)


def _config(out_dir: Path, **overrides) -> PrepareConfig:
    smoke = load_params(ROOT / "profiles" / "smoke.yaml")
    values = dict(smoke["prepare"], profile="smoke", seed=0, out_dir=str(out_dir),
                  model_path=str(out_dir / "head_model" / "head_model.pkl"),
                  landmark_path=str(out_dir / "head_model" / "landmark_embedding.npy"))
    values.update(overrides)
    return build_config(PrepareConfig, values)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("synth") / "prepare", talking_frames=8)
    summary = run_prepare(cfg)
    return cfg, summary


def test_splits_are_disjoint_by_identity(built):
    cfg, summary = built
    train_images, train = load_split(cfg, "train")
    test_images, test = load_split(cfg, "test")
    assert set(train["identity"]).isdisjoint(set(test["identity"]))
    assert train_images.shape == (cfg.n_train_identities * cfg.images_per_identity, cfg.image_size, cfg.image_size, 3)
    assert train_images.dtype == np.uint8 and len(test_images) == len(test)
    assert summary["counts"]["train_identities"] == cfg.n_train_identities


def test_recognition_set_holds_other_identities(built):
    cfg, summary = built
    images, table = load_split(cfg, "recognition")
    _, train = load_split(cfg, "train")
    _, test = load_split(cfg, "test")
    labels = set(table["identity"])
    assert len(labels) == cfg.n_idnet_identities and labels.isdisjoint(set(train["identity"]) | set(test["identity"]))
    assert (table.groupby("identity").size() == cfg.idnet_images_per_identity).all()
    assert images.shape == (len(table), cfg.image_size, cfg.image_size, 3)
    shape = table[[c for c in table.columns if c.startswith("shape_")]].to_numpy()
    assert len(np.unique(shape, axis=0)) == cfg.n_idnet_identities  # one head shape per identity, none shared
    others = np.concatenate([t[[c for c in t.columns if c.startswith("shape_")]].to_numpy() for t in (train, test)])
    assert not (shape[:, None, :] == others[None, :, :]).all(-1).any()  # and none of them a train or test head
    assert summary["counts"]["recognition_images"] == len(table)


def test_table_holds_the_full_ground_truth(built):
    cfg, _ = built
    _, table = load_split(cfg, "train")
    for prefix in ("shape_", "expr_", "pose_", "cam_t_", "sh_", "appearance_", "lmk2d_x_", "lmk3d_z_"):
        assert any(c.startswith(prefix) for c in table.columns), prefix
    assert table["yaw_deg"].abs().max() <= cfg.max_yaw_deg + 1e-3
    # projected landmarks of frontal-ish faces lie inside the image
    xs = table[[f"lmk2d_x_{i}" for i in range(68)]].to_numpy()
    assert (xs > 0).mean() > 0.95 and (xs < cfg.image_size).mean() > 0.95


def test_cross_truth_has_source_identity_and_target_motion(built):
    cfg, _ = built
    _, test = load_split(cfg, "test")
    pairs = pd.read_parquet(cfg.data_dir / "eval" / "cross" / "pairs.parquet")
    src, tgt = pairs["source_row"].to_numpy(), pairs["target_row"].to_numpy()
    assert (test["identity"].to_numpy()[src] != test["identity"].to_numpy()[tgt]).all()
    expr = [c for c in test.columns if c.startswith("expr_")]
    shape = [c for c in test.columns if c.startswith("shape_")]
    np.testing.assert_array_equal(pairs[expr].to_numpy(), test[expr].to_numpy()[tgt])
    np.testing.assert_array_equal(pairs[shape].to_numpy(), test[shape].to_numpy()[src])
    truth = np.load(cfg.data_dir / "eval" / "cross" / "truth.npy")
    assert truth.shape == (cfg.n_cross_pairs, cfg.image_size, cfg.image_size, 3)


def test_frontal_eyes_and_talking_sets(built):
    cfg, _ = built
    frontal = pd.read_parquet(cfg.data_dir / "eval" / "frontal" / "pairs.parquet")
    assert np.allclose(frontal[["yaw_deg", "pitch_deg", "roll_deg"]].to_numpy(), 0.0, atol=1e-3)
    eyes = pd.read_parquet(cfg.data_dir / "eval" / "eyes" / "pairs.parquet")
    opened = eyes[eyes["degree"] == 1.0]
    assert np.allclose(opened[["expr_blink_left", "expr_blink_right"]].to_numpy(), 0.0)
    closed = eyes[eyes["degree"] == 0.0]
    assert np.allclose(closed[["expr_blink_left", "expr_blink_right"]].to_numpy(), 1.0)
    frames = pd.read_parquet(cfg.data_dir / "eval" / "talking" / "frames.parquet")
    assert frames["identity"].nunique() == 1 and len(frames) == 8
    assert np.abs(np.diff(frames["yaw_deg"])).max() < 25.0


def test_same_params_give_byte_identical_files_in_worker_processes_too(built, tmp_path, monkeypatch):
    """The fixture rendered in the stage's process; this run renders in two spawned workers, in chunks of 8
    scenes (smaller than a render batch, so the batches differ too: each image is rendered on its own)."""
    from megafr.datasets import synthheads as sh

    cfg, _ = built
    assert cfg.render_workers == 1
    monkeypatch.setattr(sh, "POOL_CHUNK", 8)
    again = _config(tmp_path / "prepare", talking_frames=8, render_workers=2)
    run_prepare(again)
    assert _digests(cfg.data_dir) == _digests(again.data_dir)


def test_recognition_set_size_leaves_the_other_sets_unchanged(built, tmp_path):
    cfg, _ = built
    bigger = _config(tmp_path / "prepare", talking_frames=8, n_idnet_identities=cfg.n_idnet_identities + 3)
    run_prepare(bigger)
    before, after = _digests(cfg.data_dir), _digests(bigger.data_dir)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"recognition/images.npy", "recognition/masks.npy", "recognition/meta.parquet"}


def test_bad_params_are_refused(tmp_path):
    with pytest.raises(InputError, match="image_size"):
        _config(tmp_path, image_size=8)
    with pytest.raises(InputError, match="source"):
        _config(tmp_path, source="video")
    with pytest.raises(InputError, match="photos_dir"):
        _config(tmp_path, source="photos", photos_dir=str(tmp_path / "missing"))
    with pytest.raises(InputError, match="n_idnet_identities"):
        _config(tmp_path, n_idnet_identities=1)
    with pytest.raises(InputError, match="render_workers"):
        _config(tmp_path, render_workers=-1)


def test_each_pixel_averages_its_samples(built):
    """Images are rendered at SUPERSAMPLE x SUPERSAMPLE samples per pixel and averaged; a mask pixel is head when at
    least half its samples are: the head's outline is shaded by coverage, not cut at whole pixels."""
    from megafr.datasets import synthheads as sh

    cfg, _ = built
    _, table = load_split(cfg, "test")
    params = sh.table_to_params(table.iloc[:4]).take(np.arange(4))  # take: contiguous rows, as render batches them
    world = sh.HeadWorld(cfg.model_path, cfg.landmark_path, cfg.image_size)
    rendered = world.render(params)
    _, _, samples = world.render_samples(params)
    k = sh.SUPERSAMPLE
    assert k >= 2 and samples.image.shape[-1] == cfg.image_size * k
    blocks = samples.image.unflatten(2, (cfg.image_size, k)).unflatten(4, (cfg.image_size, k))  # [B, 3, S, k, S, k]
    expected = ((blocks.mean(dim=(3, 5)).clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    assert np.abs(rendered["images"].astype(np.float64) - expected).max() <= 0.5 + 1e-3
    mask = samples.mask[:, 0].float().unflatten(1, (cfg.image_size, k)).unflatten(3, (cfg.image_size, k))  # [B, S, k, S, k]
    coverage = mask.mean(dim=(2, 4))
    np.testing.assert_array_equal(rendered["masks"], (coverage >= 0.5).numpy().astype(np.uint8))
    partial = ((coverage > 0) & (coverage < 1)).sum().item()
    assert partial > 0  # pixels the outline crosses: blended, neither head nor background
