"""The ``prepare`` stage (notebook 01): SynthHeads for the mini and smoke profiles, aligned photos for paper.

Output layout under ``out_dir`` (``data/prepare``):

```
head_model/                 synthetic FLAME-format head model (synthetic source only)
train/images.npy            uint8 [N, S, S, 3]
train/masks.npy             uint8 [N, S, S], 1 where the head covers the pixel (silhouette ground truth)
train/meta.parquet          one row per image: identity, shape, expression, pose, camera, light, landmarks
test/...                    test identities, never seen in training
recognition/                images.npy, masks.npy, meta.parquet: the face-recognition training set (see below;
                            train_face3d may also train on it: its extra_splits)
eval/cross/                 source.npy, target.npy, truth.npy, pairs.parquet (cross-reenactment)
eval/self/                  same for self-reenactment
eval/frontal/               source.npy, truth.npy, pairs.parquet
eval/eyes/                  source.npy (closed eyes), truth.npy (opened, source-major), pairs.parquet
eval/talking/               driving.npy, truth.npy, frames.parquet
```

The photos source (paper profile) writes no image arrays: FFHQ alone would be 220 GB of memory.

```
photos/                     photos_dir's photos aligned the FFHQ way: images/, landmarks.parquet, rejects.csv
                            (not written when photos_aligned: the folder is indexed as it is)
photos_test/                the same for test_photos_dir
train/manifest.csv          the training images (megafr.datasets.manifest: paths, sizes, digest of the list)
test/manifest.csv           the test images (test_photos_dir, e.g. CelebA-HQ; else every 10th photo)
eval/cross/pairs.csv        source,target file names of the Table 1 pairs (megafr.datasets.protocol)
eval/frontal/sources.csv    source file names of the Table 2 inputs
```

With ``write_stand_ins`` (the ``paper-ci`` profile: the paper code path on CPU in minutes) the stage
first writes the paper world's external inputs as small stand-ins, then runs the photos source on them:

```
stand_ins/ffhq/, stand_ins/celebahq/   photos_dir and test_photos_dir: scikit-image's astronaut photo in
                                        variants (megafr.datasets.samples), training and test
official/                   random networks at image_size px in the official file layouts (stylegan2,
                            e4e, pSp, pSp frontalization, ArcFace) and a FLAME-format head model
                            (official/flame/), read by the later stages through the official loaders
```

``recognition/`` is the mini world's stand-in for the face-recognition data the paper's ArcFace was
trained on (MS1M, about 85,000 people, a different data set from FFHQ): many more identities than
the train split, with fewer images each (``n_idnet_identities`` x ``idnet_images_per_identity``),
disjoint from the train and the test identities. ``train_idnet`` reads it (what it changed is measured in
``docs/experiments/train_idnet.md``), and ``train_face3d`` where its ``extra_splits`` names it
(``docs/experiments/train_face3d.md``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from megafr.config import require, study_path
from megafr.fileio import atomic_write

SOURCES = ("synthetic", "photos")
STAND_IN_PHOTOS = 4  # sample photos written into each of photos_dir and test_photos_dir (8 variants exist)
STAND_IN_STYLE_DIM = 32  # latent width of the stand-in networks (the released files: 512)
OFFICIAL_DIR = "official"  # under the data folder: the stand-in official-layout files
# Independent random streams, so that adding an evaluation set never changes the training images.
STREAMS = ("train", "test", "cross", "self", "frontal", "eyes", "talking", "recognition")
YAW_BIN_DEG = 10.0


def _inside(path: str, folder: str) -> bool:
    """Whether the relative path ``path`` lies in ``folder`` (both as the profile writes them)."""
    return Path(path).parts[:len(Path(folder).parts)] == Path(folder).parts


@dataclass(frozen=True)
class PrepareConfig:
    profile: str  # which profile produced the data (labels every figure and metric)
    seed: int  # seed of every random choice
    model_path: str  # FLAME-format model file (written here for the synthetic source)
    landmark_path: str  # DECA-layout landmark embedding beside it
    source: str  # "synthetic" (SynthHeads) or "photos" (align a folder of real photos)
    image_size: int  # side of the output images, pixels
    n_train_identities: int  # identities in the training split
    n_test_identities: int  # identities in the test split (disjoint from training)
    images_per_identity: int  # images rendered per identity
    n_idnet_identities: int  # identities of the face-recognition training set (disjoint from train and test)
    idnet_images_per_identity: int  # images rendered per identity of that set
    n_cross_pairs: int  # cross-reenactment evaluation pairs
    n_self_pairs: int  # self-reenactment evaluation pairs
    n_frontal: int  # frontalization evaluation sources
    n_eye_sources: int  # closed-eye sources of the eye-opening set
    talking_frames: int  # frames of the talking-head driving sequence
    max_yaw_deg: float  # yaw drawn from U(-max, max)
    max_pitch_deg: float  # pitch drawn from U(-max, max)
    max_roll_deg: float  # roll drawn from U(-max, max)
    photos_dir: str  # photos source: folder of training photos (FFHQ, or your own)
    test_photos_dir: str  # photos source: folder of test photos (CelebA-HQ); "": every 10th training photo
    photos_aligned: bool  # photos source: the folders hold aligned image_size px crops (FFHQ, CelebA-HQ
    #                       as released): index them instead of aligning
    align_workers: int  # photos source: processes aligning photos (0: one per CPU core)
    write_stand_ins: bool  # photos source: first write sample photos into photos_dir and test_photos_dir and
    #                        small official-layout files into <out_dir>/official (paper-ci; no downloads)
    # synthetic source: processes rendering SynthHeads (0: one per CPU core; 1: in this process). The files
    # are byte-identical whatever the number (megafr.datasets.synthheads.render_pool)
    render_workers: int = dataclasses.field(kw_only=True)
    out_dir: str = "data/prepare"  # where the stage writes
    run_dir: str = ""  # set by a sweep: write everything under <run_dir>/ instead of the canonical places

    def __post_init__(self):
        require(self.source in SOURCES, f"prepare.source must be one of {SOURCES}, got {self.source!r}")
        require(self.render_workers >= 0, f"prepare.render_workers must be >= 0, got {self.render_workers}")
        require(self.image_size >= 16, f"prepare.image_size must be at least 16 px, got {self.image_size}")
        if self.source == "synthetic":
            for name in ("n_train_identities", "n_test_identities"):
                require(getattr(self, name) >= 2, f"prepare.{name} must be at least 2 for SynthHeads")
            require(not self.write_stand_ins, "prepare.write_stand_ins is for the photos source; set it to false")
            require(self.images_per_identity >= 2, "prepare.images_per_identity must be at least 2 (self pairs)")
            require(self.n_idnet_identities >= 2 and self.idnet_images_per_identity >= 2,
                    "prepare.n_idnet_identities and prepare.idnet_images_per_identity must be at least 2 "
                    f"(the identity network learns from pairs), got {self.n_idnet_identities} and "
                    f"{self.idnet_images_per_identity}")
            for name in ("n_cross_pairs", "n_self_pairs", "n_frontal", "n_eye_sources", "talking_frames"):
                require(getattr(self, name) >= 1, f"prepare.{name} must be positive, got {getattr(self, name)}")
            require(0 < self.max_yaw_deg <= 90 and 0 < self.max_pitch_deg < 90 and 0 <= self.max_roll_deg < 90,
                    "prepare.max_*_deg must lie in (0, 90)")
            require(bool(self.run_dir) or Path(self.model_path).parent == Path(self.out_dir) / "head_model",
                    f"flame.model_path must lie in {self.out_dir}/head_model for the synthetic source, "
                    f"got {self.model_path}")
        else:
            require(bool(self.photos_dir), "prepare.photos_dir must name a folder of photos for the photos source")
            require(not (self.write_stand_ins and self.photos_aligned),
                    "prepare.write_stand_ins writes unaligned photos: set prepare.photos_aligned: false")
            for name in ("photos_dir", "test_photos_dir"):
                folder = getattr(self, name)
                if self.write_stand_ins:  # the stage writes the folder: it must be one of its products
                    require(bool(folder) and _inside(folder, self.out_dir),
                            f"prepare.{name} must lie in {self.out_dir}/ with prepare.write_stand_ins "
                            f"(the stage writes the photos there), got {folder!r}")
                    continue
                require(not folder or study_path(folder).is_dir(),
                        f"prepare.{name} {folder!r} is not a folder; download FFHQ / CelebA-HQ "
                        f"(or put your photos there) and set prepare.{name} in params.yaml")
            require(self.align_workers >= 0, f"prepare.align_workers must be >= 0, got {self.align_workers}")
            if self.write_stand_ins:
                for field, wanted in self.stand_in_head_model().items():
                    require(Path(getattr(self, field)) == wanted,
                            f"flame.{field} must be {wanted.as_posix()} with prepare.write_stand_ins (the head model "
                            f"the stage writes), got {getattr(self, field)!r}")

    def stand_in_head_model(self) -> dict[str, Path]:
        """Where ``write_stand_ins`` puts the FLAME-format head model: {field: path under out_dir}."""
        from megafr.face3d import headmodel

        folder = Path(self.out_dir) / OFFICIAL_DIR / "flame"
        return {"model_path": folder / headmodel.MODEL_FILE, "landmark_path": folder / headmodel.LANDMARK_FILE}

    @property
    def data_dir(self) -> Path:
        """Where the data set goes: ``out_dir``, or ``<run_dir>/prepare`` for a sweep run."""
        return study_path(self.run_dir) / "prepare" if self.run_dir else study_path(self.out_dir)

    @property
    def bounds(self) -> tuple[float, float, float]:
        return (self.max_yaw_deg, self.max_pitch_deg, self.max_roll_deg)


def save_array(path: Path, array: np.ndarray) -> None:
    """Write an ``.npy`` file atomically."""
    with atomic_write(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def save_table(path: Path, table: pd.DataFrame) -> None:
    """Write a Parquet table atomically (no index, so the bytes depend only on the data)."""
    with atomic_write(path, "wb") as handle:
        table.to_parquet(handle, index=False)


def _write_set(folder: Path, arrays: dict[str, np.ndarray], table: pd.DataFrame, table_name: str) -> None:
    for name, array in arrays.items():
        save_array(folder / f"{name}.npy", array)
    save_table(folder / table_name, table)


def build_synthheads(cfg: PrepareConfig) -> dict:
    """Write the head model, the train/test splits and the evaluation sets; return a summary."""
    from megafr.datasets import synthheads as sh
    from megafr.face3d import headmodel

    out = cfg.data_dir
    if out.exists():
        shutil.rmtree(out)  # the stage rewrites its outputs whole
    files = headmodel.write_head_model(out / "head_model")
    world = sh.HeadWorld(files.model_path, files.landmark_path, cfg.image_size)
    with sh.render_pool(world, cfg.render_workers or os.cpu_count() or 1) as renderer:
        return _render_synthheads(cfg, world, renderer)


def _render_synthheads(cfg: PrepareConfig, world, renderer) -> dict:
    """build_synthheads' sampling (by ``world``) and rendering (by ``renderer``: the world or a pool of them)."""
    from megafr.datasets import synthheads as sh

    out = cfg.data_dir
    streams = dict(zip(STREAMS, (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(len(STREAMS)))))

    n_split = cfg.n_train_identities + cfg.n_test_identities
    splits = {  # split: (identity labels, images per identity, write masks)
        "train": (np.arange(cfg.n_train_identities), cfg.images_per_identity, True),
        "test": (cfg.n_train_identities + np.arange(cfg.n_test_identities), cfg.images_per_identity, True),
        "recognition": (n_split + np.arange(cfg.n_idnet_identities), cfg.idnet_images_per_identity, True),
    }
    tables: dict[str, pd.DataFrame] = {}
    test_params = None
    for split, (identities, per_identity, with_masks) in splits.items():
        params = sh.sample_split(world, streams[split], identities, per_identity, cfg.bounds)
        rendered = renderer.render(params, progress=f"render {split}")
        tables[split] = sh.scene_table(params, rendered, split)
        arrays = {"images": rendered["images"], **({"masks": rendered["masks"]} if with_masks else {})}
        _write_set(out / split, arrays, tables[split], "meta.parquet")
        if split == "test":
            test_params, test_images = params, rendered["images"]

    counts = {f"{split}_images": len(t) for split, t in tables.items()}
    counts.update({f"{split}_identities": int(t["identity"].nunique()) for split, t in tables.items()})

    # Reenactment pairs: source and target from the test split; truth rendered.
    identity = test_params.identity
    for name, sampler, n in (("cross", sh.cross_pairs, cfg.n_cross_pairs), ("self", sh.self_pairs, cfg.n_self_pairs)):
        source, target = sampler(streams[name], identity, n)
        truth = sh.reenact_truth(test_params, source, target)
        rendered = renderer.render(truth, progress=f"render {name} truth")
        table = sh.scene_table(truth, rendered, f"eval_{name}").assign(source_row=source, target_row=target)
        arrays = {"source": test_images[source], "target": test_images[target], "truth": rendered["images"]}
        _write_set(out / "eval" / name, arrays, table, "pairs.parquet")
        counts[f"eval_{name}_pairs"] = n

    source = streams["frontal"].integers(0, len(identity), cfg.n_frontal)
    truth = sh.frontal_truth(test_params, source)
    rendered = renderer.render(truth, progress="render frontal truth")
    table = sh.scene_table(truth, rendered, "eval_frontal").assign(source_row=source)
    _write_set(out / "eval" / "frontal", {"source": test_images[source], "truth": rendered["images"]}, table,
               "pairs.parquet")
    counts["eval_frontal"] = cfg.n_frontal

    source = streams["eyes"].choice(len(identity), cfg.n_eye_sources, replace=cfg.n_eye_sources > len(identity))
    closed, opened = sh.eye_opening_set(test_params, source)
    closed_images = renderer.render(closed)["images"]
    rendered = renderer.render(opened, progress="render eye truth")
    degree = np.tile(np.asarray(sh.EYE_DEGREES, dtype=np.float32), len(source))
    table = sh.scene_table(opened, rendered, "eval_eyes").assign(
        source_index=np.repeat(np.arange(len(source)), len(sh.EYE_DEGREES)), degree=degree)
    _write_set(out / "eval" / "eyes", {"source": closed_images, "truth": rendered["images"]}, table, "pairs.parquet")
    counts["eval_eye_sources"] = cfg.n_eye_sources

    first = np.flatnonzero(identity == identity[0])[0]
    driver = np.flatnonzero(identity != identity[0])[0]
    driving, truth = sh.talking_sequence(test_params, int(first), int(driver), cfg.talking_frames)
    driving_images = renderer.render(driving, progress="render driving")["images"]
    rendered = renderer.render(truth, progress="render talking truth")
    table = sh.scene_table(truth, rendered, "eval_talking").assign(frame=np.arange(cfg.talking_frames))
    _write_set(out / "eval" / "talking", {"driving": driving_images, "truth": rendered["images"]}, table,
               "frames.parquet")
    counts["eval_talking_frames"] = cfg.talking_frames

    return {"counts": counts, "rejects": {}, "distribution": pose_distribution(tables["train"])}


def pose_distribution(table: pd.DataFrame) -> dict:
    """Summary of pose and expression in a split: mean/std/min/max per angle, activation rate per expression."""
    summary = {}
    for column in ("yaw_deg", "pitch_deg", "roll_deg", "jaw_deg"):
        values = table[column].to_numpy(dtype=np.float64)
        summary[column] = {
            "mean": round(float(values.mean()), 4),
            "std": round(float(values.std()), 4),
            "min": round(float(values.min()), 4),
            "max": round(float(values.max()), 4),
        }
    expr_cols = [c for c in table.columns if c.startswith("expr_")]
    summary["expression_active_rate"] = {
        c[len("expr_"):]: round(float((table[c] > 0).mean()), 4) for c in expr_cols
    }
    return summary


def yaw_histogram(table: pd.DataFrame, bin_deg: float = YAW_BIN_DEG) -> pd.DataFrame:
    """Counts of images per yaw bin (bin centres in degrees) for ``dvc plots``."""
    edges = np.arange(-90.0, 90.0 + bin_deg, bin_deg)
    counts, _ = np.histogram(table["yaw_deg"], bins=edges)
    return pd.DataFrame({"yaw_deg": (edges[:-1] + edges[1:]) / 2, "count": counts})


PHOTO_TEST_EVERY = 10  # without a test folder, every 10th photo is a test photo (train_face3d's rule too)


def _photo_set(cfg: PrepareConfig, folder: str, aligned_dir: Path, key: str) -> tuple[Path, list[str], dict]:
    """(root, image paths under it, alignment counts) of one photo folder: indexed as it is when
    ``photos_aligned``, else aligned into ``aligned_dir`` (in parallel, resuming an interrupted run)."""
    from megafr.datasets.align import align_folder
    from megafr.datasets.manifest import list_images

    if cfg.photos_aligned:
        root = study_path(folder)
        return root, list_images(root), {}
    workers = cfg.align_workers or os.cpu_count() or 1
    report = align_folder(study_path(folder), aligned_dir, cfg.image_size, workers=workers, resume=True)
    counts = {f"{key}_{name}": value for name, value in report.summary().items()}
    return aligned_dir / "images", [f"{Path(name).stem}.png" for name in report.aligned], counts


def _stream_seed(cfg: PrepareConfig, stream: str) -> int:
    """The seed of one named random stream (independent of the others, as the synthetic source's)."""
    return int(np.random.SeedSequence(cfg.seed).spawn(len(STREAMS))[STREAMS.index(stream)].generate_state(1)[0])


def align_photos(cfg: PrepareConfig) -> dict:
    """The photos source: index (or align, then index) the training and test photos, and draw the
    evaluation protocol (cross pairs, frontalization sources) from the test photos. Rejects are
    counted and listed in ``photos/rejects.csv``, never dropped silently."""
    from megafr.datasets import protocol
    from megafr.datasets.manifest import index_folder

    out = cfg.data_dir
    for stale in ("train", "test", "eval"):  # photos/ stays: an interrupted alignment resumes from it
        if (out / stale).exists():
            shutil.rmtree(out / stale)
    root, paths, rejects = _photo_set(cfg, cfg.photos_dir, out / "photos", "photos")
    if cfg.test_photos_dir:
        test_root, test_paths, test_rejects = _photo_set(cfg, cfg.test_photos_dir, out / "photos_test", "test_photos")
        rejects.update(test_rejects)
        train_paths = paths
    else:
        held_out = np.arange(len(paths)) % PHOTO_TEST_EVERY == 0
        test_root, test_paths = root, [p for p, h in zip(paths, held_out) if h]
        train_paths = [p for p, h in zip(paths, held_out) if not h]
    require(len(train_paths) >= 1 and len(test_paths) >= 2,
            f"prepare on photos needs at least 1 training and 2 test photos, got {len(train_paths)} and "
            f"{len(test_paths)} (see photos/rejects.csv for the photos that could not be aligned)")
    index_folder(root, out / "train" / "manifest.csv", cfg.image_size, train_paths)
    index_folder(test_root, out / "test" / "manifest.csv", cfg.image_size, test_paths)
    identities = protocol.read_identities(test_root, test_paths)
    pairs = protocol.cross_pairs(test_paths, cfg.n_cross_pairs, _stream_seed(cfg, "cross"), identities)
    protocol.write_csv(pairs, out / "eval" / "cross" / protocol.PAIRS_FILE)
    sources = protocol.frontal_sources(test_paths, cfg.n_frontal, _stream_seed(cfg, "frontal"))
    protocol.write_csv(sources, out / "eval" / "frontal" / protocol.SOURCES_FILE)
    counts = {"train_images": len(train_paths), "test_images": len(test_paths), "eval_cross_pairs": len(pairs),
              "eval_frontal": len(sources), "test_identities": 0 if identities is None else len(set(identities))}
    return {"counts": counts, "rejects": rejects, "distribution": {}}


def write_stand_ins(cfg: PrepareConfig) -> dict:
    """The paper world's external inputs as small stand-ins made here (no downloads): the sample photos
    (:mod:`megafr.datasets.samples`) into ``photos_dir`` (training) and ``test_photos_dir`` (other variants),
    and random networks at ``image_size`` px in the official layouts with a FLAME-format head model into
    ``<data folder>/official`` (``flame.*`` name that head model); returns counts for the metrics."""
    from megafr.datasets.samples import write_official_layout, write_sample_photos

    for folder in (cfg.photos_dir, cfg.test_photos_dir):
        if study_path(folder).exists():
            shutil.rmtree(study_path(folder))
    train = write_sample_photos(study_path(cfg.photos_dir), STAND_IN_PHOTOS)
    test = write_sample_photos(study_path(cfg.test_photos_dir), STAND_IN_PHOTOS, start=STAND_IN_PHOTOS)
    files = write_official_layout(cfg.data_dir / OFFICIAL_DIR, size=cfg.image_size, style_dim=STAND_IN_STYLE_DIM,
                                  seed=cfg.seed)  # the head model lands where flame.* names it (checked by the config)
    return {"stand_in_photos": len(train) + len(test), "stand_in_files": len(files)}


def run_prepare(cfg: PrepareConfig) -> dict:
    """Run the stage for ``cfg.source``; returns the metrics dict written to ``data/metrics/prepare.json``."""
    if cfg.source == "synthetic":
        return build_synthheads(cfg)
    stand_ins = write_stand_ins(cfg) if cfg.write_stand_ins else {}
    summary = align_photos(cfg)
    summary["counts"].update(stand_ins)
    return summary


def load_split(cfg: PrepareConfig, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Images uint8 [N, S, S, 3] and the ground-truth table of a SynthHeads split
    (``train``, ``test`` or ``recognition``)."""
    folder = cfg.data_dir / split
    return np.load(folder / "images.npy"), pd.read_parquet(folder / "meta.parquet")


def _sample_rows(table: pd.DataFrame, n: int) -> np.ndarray:
    """``n`` rows spread evenly over a table (one per identity first), for figures."""
    firsts = table.drop_duplicates("identity").index.to_numpy()
    rows = firsts if len(firsts) >= n else np.arange(len(table))
    return rows[np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int)]


N_SAMPLES = 48  # images in the samples figure
SAMPLE_COLUMNS = 12


def samples_figure(cfg: PrepareConfig):
    """A grid of training images (one per identity, SynthHeads) or of aligned photos (photos source)."""
    from megafr import plots

    if cfg.source == "synthetic":
        images, table = load_split(cfg, "train")
        rows = _sample_rows(table, N_SAMPLES)
        titles = [f"id {i:.0f} yaw {y:+.0f}" for i, y in table.loc[rows, ["identity", "yaw_deg"]].to_numpy()]
        return plots.image_grid(images[rows], SAMPLE_COLUMNS, f"SynthHeads training samples ({cfg.profile} world)",
                                cell_titles=titles)
    from megafr.datasets.loader import ImageFiles, image_batch

    photos = ImageFiles(cfg.data_dir / "train" / "manifest.csv")
    rows = np.arange(min(N_SAMPLES, len(photos)))
    images = image_batch(photos, rows) if len(rows) else np.zeros((0, 8, 8, 3), np.uint8)
    return plots.image_grid(images, SAMPLE_COLUMNS, f"Aligned training photos ({cfg.profile} profile)",
                            cell_titles=[Path(photos.paths[i]).stem for i in rows])


def poses_figure(cfg: PrepareConfig):
    """Histograms of the sampled head poses (SynthHeads); photos have no pose ground truth."""
    from megafr import plots

    if cfg.source != "synthetic":
        return plots.message_figure("Pose ground truth exists only in the synthetic worlds (mini, smoke).")
    _, table = load_split(cfg, "train")
    return plots.pose_histograms(table, title=f"SynthHeads training poses ({cfg.profile} world)")


def head_model_figure(cfg: PrepareConfig):
    """The synthetic head model: identities x expressions x yaw, photo and geometry mode."""
    from megafr import plots
    from megafr.face3d import headmodel

    if cfg.source != "synthetic":
        return plots.message_figure("The synthetic head model belongs to the mini and smoke worlds; "
                                    "the paper profile uses FLAME 2020.")
    folder = cfg.data_dir / "head_model"
    files = headmodel.HeadModelFiles(folder / headmodel.MODEL_FILE, folder / headmodel.LANDMARK_FILE,
                                     folder / headmodel.APPEARANCE_FILE)
    return headmodel.head_model_figure(files)


def yaw_table(cfg: PrepareConfig) -> pd.DataFrame:
    """Yaw histogram records of the training split for ``dvc plots`` (empty for photos)."""
    if cfg.source != "synthetic":
        return pd.DataFrame({"yaw_deg": [], "count": []})
    return yaw_histogram(load_split(cfg, "train")[1])
