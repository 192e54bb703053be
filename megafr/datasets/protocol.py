"""The evaluation protocol on photos: which test images are scored, pinned as CSV files of file names.

Tables 1 and 2 of the paper score methods on CelebA-HQ test images without listing the pairs. The
study draws them once, with a fixed seed, from the test manifest (:mod:`megafr.datasets.manifest`)
and writes them as CSV files of file names (relative to the manifest's root), which are small
enough to commit with the study so that everyone scores the same images:

- ``eval/cross/pairs.csv`` (Table 1): ``source,target``; the two differ in identity where the
  manifest's folder comes with identity labels (an ``identities.csv`` of ``path,identity`` beside
  the images, e.g. CelebA's identity file), otherwise they are two different images;
- ``eval/frontal/sources.csv`` (Table 2): ``source``, distinct images.

Draws use ``numpy.random.default_rng(seed)``; a pair is never an image with itself. The synthetic
worlds keep their own arrays with rendered right answers (:mod:`megafr.datasets.prepare`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from megafr.errors import InputError, MissingFileError
from megafr.fileio import atomic_write

IDENTITY_FILE = "identities.csv"  # optional, beside the test images: path,identity
PAIRS_FILE = "pairs.csv"  # eval/cross/
SOURCES_FILE = "sources.csv"  # eval/frontal/


def read_identities(root: str | os.PathLike, paths: list[str]) -> Optional[np.ndarray]:
    """Identity labels of ``paths`` from ``<root>/identities.csv``, or None when the folder has none."""
    file = Path(root) / IDENTITY_FILE
    if not file.is_file():
        return None
    table = pd.read_csv(file, dtype={"path": str})
    labels = dict(zip(table["path"], table["identity"]))
    missing = [p for p in paths if p not in labels]
    if missing:
        raise InputError(f"{file} has no identity for {len(missing)} image(s), e.g. {missing[0]}; list every image")
    return np.asarray([labels[p] for p in paths])


def cross_pairs(paths: list[str], n: int, seed: int, identities: Optional[np.ndarray] = None) -> pd.DataFrame:
    """``n`` (source, target) pairs of different images, of different identities when labels are given."""
    if len(paths) < 2:
        raise InputError(f"cross-reenactment pairs need at least 2 test images, got {len(paths)}")
    if identities is not None and len(np.unique(identities)) < 2:
        raise InputError("cross-reenactment pairs need at least 2 identities among the test images")
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < n:
        source, target = rng.integers(0, len(paths), 2)
        if source == target or (identities is not None and identities[source] == identities[target]):
            continue
        rows.append((paths[source], paths[target]))
    return pd.DataFrame(rows, columns=["source", "target"])


def frontal_sources(paths: list[str], n: int, seed: int) -> pd.DataFrame:
    """``n`` distinct test images (all of them when there are fewer), in draw order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))[:n]
    return pd.DataFrame({"source": [paths[i] for i in order]})


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_write(Path(path), "w") as handle:
        table.to_csv(handle, index=False, lineterminator="\n")


def read_names(path: str | os.PathLike, columns: tuple[str, ...]) -> pd.DataFrame:
    """A protocol CSV with the given file-name columns (clear errors when missing or malformed)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} not found; run the prepare stage on photos")
    table = pd.read_csv(path, dtype=str)
    if list(table.columns) != list(columns) or table.isna().any().any():
        raise InputError(f"{path} must have the columns {list(columns)} and a file name in every cell")
    return table


def test_manifest(eval_folder: str | os.PathLike) -> Path:
    """The test manifest an evaluation folder's names refer to: ``<prepare>/test/manifest.csv`` for
    ``<prepare>/eval/<task>``."""
    return Path(eval_folder).resolve().parent.parent / "test" / "manifest.csv"


def eval_images(eval_folder: str | os.PathLike, columns: tuple[str, ...], limit: int) -> dict:
    """The first ``limit`` rows of a protocol CSV as lazily read images: column -> ImageRows."""
    from megafr.datasets.loader import ImageFiles, ImageRows

    folder = Path(eval_folder)
    table = read_names(folder / (PAIRS_FILE if "target" in columns else SOURCES_FILE), columns).iloc[:limit]
    photos = ImageFiles(test_manifest(folder))
    row_of = {path: i for i, path in enumerate(photos.paths)}
    unknown = sorted(set(table.stack()) - set(row_of))
    if unknown:
        raise InputError(f"{folder}: {len(unknown)} file name(s) are not in {test_manifest(folder)}, e.g. "
                         f"{unknown[0]}; re-run the prepare stage")
    return {c: ImageRows(photos, [row_of[name] for name in table[c]]) for c in columns}


def is_photo_protocol(eval_folder: str | os.PathLike) -> bool:
    """Whether an evaluation folder holds the photos protocol's CSV (else the synthetic worlds' arrays)."""
    folder = Path(eval_folder)
    return (folder / PAIRS_FILE).is_file() or (folder / SOURCES_FILE).is_file()
