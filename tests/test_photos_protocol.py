"""The photos source of prepare on real photos (scikit-image's astronaut variants): alignment in worker
processes with resume, manifests instead of arrays, the evaluation protocol's CSV files, and the
evaluation sets read from them without a right answer."""

import numpy as np
import pandas as pd
import pytest
import torch

from megafr.config import build_config
from megafr.datasets import manifest, protocol
from megafr.datasets import prepare as prep
from megafr.datasets.loader import ImageFiles, ImageRows, StepBatches, batch_loader, open_images, to_model_input
from megafr.datasets.samples import write_sample_photos
from megafr.errors import InputError
from megafr.evaluate.tables import load_eval_set
from megafr.imageio import images_to_tensor
from megafr.reenact.stage import load_eval_pairs

SIZE = 64


def _config(tmp_path, photos, test_photos="", aligned=False, out="prepare"):
    return build_config(prep.PrepareConfig, dict(
        profile="paper", seed=0, model_path="", landmark_path="", source="photos", image_size=SIZE,
        n_train_identities=0, n_test_identities=0, images_per_identity=0, n_idnet_identities=0,
        idnet_images_per_identity=0, n_cross_pairs=7, n_self_pairs=0, n_frontal=2, n_eye_sources=0,
        talking_frames=0, max_yaw_deg=60.0, max_pitch_deg=30.0, max_roll_deg=15.0, photos_dir=str(photos),
        out_dir=str(tmp_path / out), test_photos_dir=str(test_photos), photos_aligned=aligned, align_workers=2, render_workers=1, write_stand_ins=False))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_sample_photos(root / "train", 4)
    write_sample_photos(root / "test", 4, start=4)
    (root / "train" / "notes.txt").write_text("not a photo")  # listed as a reject, never dropped silently
    cfg = _config(root, root / "train", root / "test")
    return root, cfg, prep.run_prepare(cfg)


def test_prepare_on_photos_writes_manifests_and_the_protocol(prepared):
    root, cfg, summary = prepared
    out = cfg.data_dir
    assert summary["counts"]["train_images"] == 4 and summary["counts"]["test_images"] == 4
    assert summary["rejects"]["photos_rejected"] == 1 and summary["counts"]["eval_cross_pairs"] == 7
    assert not list(out.rglob("*.npy"))  # no image arrays
    train = manifest.read_manifest(out / "train" / "manifest.csv")
    assert list(train["path"]) == [f"astronaut_{k}.png" for k in range(4)]
    assert train.attrs["image_size"] == SIZE and len(train.attrs["digest"]) == 32
    pairs = pd.read_csv(out / "eval" / "cross" / protocol.PAIRS_FILE)
    assert list(pairs.columns) == ["source", "target"] and len(pairs) == 7
    assert (pairs["source"] != pairs["target"]).all()
    assert set(pairs.stack()) <= {f"astronaut_{k}.png" for k in range(4, 8)}  # test photos only
    sources = pd.read_csv(out / "eval" / "frontal" / protocol.SOURCES_FILE)
    assert len(sources) == 2 and sources["source"].is_unique


def test_the_protocol_is_pinned_by_the_seed(prepared, tmp_path):
    root, cfg, _ = prepared
    again = _config(tmp_path, root / "train", root / "test")
    prep.run_prepare(again)
    for name in ("eval/cross/pairs.csv", "eval/frontal/sources.csv"):
        assert (again.data_dir / name).read_bytes() == (cfg.data_dir / name).read_bytes()
    labels = np.array([0, 0, 1, 1])
    drawn = protocol.cross_pairs(["a", "b", "c", "d"], 20, seed=3, identities=labels)
    assert all(labels["abcd".index(s)] != labels["abcd".index(t)] for s, t in drawn.to_numpy())
    with pytest.raises(InputError, match="2 identities"):
        protocol.cross_pairs(["a", "b"], 1, seed=0, identities=np.array([5, 5]))


def test_evaluation_sets_on_photos_have_no_right_answer(prepared):
    _, cfg, _ = prepared
    cross = load_eval_set(cfg.data_dir / "eval" / "cross", "cross", 5)
    assert cross.truth is None and len(cross) == 5 and isinstance(cross.source, ImageRows)
    assert cross.source[:3].shape == (3, SIZE, SIZE, 3) and cross.target.shape == (5, SIZE, SIZE, 3)
    frontal = load_eval_set(cfg.data_dir / "eval" / "frontal", "frontal", 10)
    assert len(frontal) == 2 and frontal.target is None
    pairs = load_eval_pairs(cfg.data_dir / "eval" / "cross", 4)
    assert pairs["truth"] is None and len(pairs["source"]) == 4


def test_alignment_resumes_and_aligned_folders_are_indexed_as_they_are(prepared, tmp_path, monkeypatch):
    root, cfg, _ = prepared
    from megafr.datasets import align

    def refuse(*args):
        raise AssertionError("a photo aligned by the earlier run was aligned again")

    monkeypatch.setattr(align, "_align_file", refuse)
    again = prep.run_prepare(cfg)  # every photo is in photos/ already: nothing is realigned
    assert again["counts"]["train_images"] == 4
    monkeypatch.undo()
    indexed = _config(tmp_path, cfg.data_dir / "photos" / "images", cfg.data_dir / "photos_test" / "images",
                      aligned=True, out="indexed")
    summary = prep.run_prepare(indexed)
    assert summary["rejects"] == {} and summary["counts"]["test_images"] == 4
    assert not (indexed.data_dir / "photos").exists()  # nothing copied
    assert (manifest.read_manifest(indexed.data_dir / "train" / "manifest.csv").attrs["digest"]
            == manifest.read_manifest(cfg.data_dir / "train" / "manifest.csv").attrs["digest"])
    with pytest.raises(InputError, match="aligned 32 px"):
        manifest.index_folder(root / "train", tmp_path / "m.csv", 32, ["astronaut_0.png"])


def test_loader_reads_the_same_values_as_the_arrays(prepared, tmp_path):
    _, cfg, _ = prepared
    photos = open_images(cfg.data_dir / "train" / "manifest.csv")
    assert isinstance(photos, ImageFiles) and len(photos) == 4
    batches = list(batch_loader(photos, StepBatches(lambda step: np.array([step, 3 - step]), 0, 2), torch.device("cpu")))
    stacked = np.stack([photos[0], photos[3]])
    assert np.array_equal(batches[0].numpy(), stacked)
    assert np.array_equal(to_model_input(batches[0], "cpu").numpy(), images_to_tensor(stacked).numpy())
