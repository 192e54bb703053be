"""Manifests: an image folder indexed once (file names and sizes), never copied into one array.

FFHQ (70,000 images) and CelebA-HQ (30,000) come already aligned at 1024 px; as one uint8 array
FFHQ alone would take 220 GB of memory. ``prepare`` therefore writes a manifest per folder, a CSV
the loaders read (:class:`megafr.datasets.loader.ImageFiles`)::

    # megafr image manifest
    # root: /data/ffhq
    # image_size: 1024
    # digest: 5d41402abc4b2a76b9719d911017c592
    path,bytes
    00000/00000.png,1488737
    ...

``root`` is absolute (or relative to the manifest's folder); ``path`` is relative to the root, in
sorted order; ``digest`` is the MD5 of the ``path,bytes`` lines: it changes when a file is added,
removed, renamed or changes size, and is cheap (no pixel is read). The image size is checked on
every file's header (Pillow reads only the header), so a folder with a non-aligned image is refused
when it is indexed, not hours into training.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd
from PIL import Image

from megafr.errors import InputError, MissingFileError
from megafr.fileio import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # files a folder index picks up
MAGIC = "# megafr image manifest"


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted POSIX paths relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"image folder {folder} not found; put the aligned images there or fix the path "
                               "in params.yaml")
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise InputError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return found


def list_digest(paths: Iterable[str], sizes: Iterable[int]) -> str:
    """MD5 of the ``path,bytes`` lines (what identifies a folder's content without reading pixels)."""
    digest = hashlib.md5()
    for path, size in zip(paths, sizes):
        digest.update(f"{path},{int(size)}\n".encode())
    return digest.hexdigest()


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header only."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:  # unreadable header: name the file
        raise InputError(f"{path} is not a readable image ({type(error).__name__}); remove or replace it") from error


def index_folder(folder: str | os.PathLike, manifest: str | os.PathLike, image_size: int,
                 paths: Optional[list[str]] = None) -> pd.DataFrame:
    """Write the manifest of ``folder`` (or of ``paths`` in it) to ``manifest``; every image must be
    ``image_size`` px square. Returns the table (``attrs``: root, image_size, digest)."""
    folder = Path(folder).resolve()
    paths = list_images(folder) if paths is None else list(paths)
    sizes = []
    for name in paths:
        file = folder / name
        if not file.is_file():
            raise MissingFileError(f"{file} listed but not found")
        width, height = header_size(file)
        if (width, height) != (image_size, image_size):
            raise InputError(f"{file} is {width}x{height} px; the folder must hold aligned {image_size} px crops "
                             "(FFHQ / CelebA-HQ as released, or photos aligned by prepare)")
        sizes.append(file.stat().st_size)
    table = pd.DataFrame({"path": paths, "bytes": sizes})
    table.attrs.update(root=str(folder), image_size=image_size, digest=list_digest(paths, sizes))
    write_manifest(table, manifest)
    return table


def write_manifest(table: pd.DataFrame, manifest: str | os.PathLike) -> None:
    """The manifest file of a table with columns path, bytes and attrs root, image_size, digest."""
    header = [MAGIC] + [f"# {key}: {table.attrs[key]}" for key in ("root", "image_size", "digest")]
    with atomic_write(Path(manifest), "w") as handle:
        handle.write("\n".join(header) + "\n")
        table[["path", "bytes"]].to_csv(handle, index=False, lineterminator="\n")


def read_manifest(manifest: str | os.PathLike) -> pd.DataFrame:
    """A manifest as a table (columns path, bytes; attrs root (resolved), image_size, digest)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise MissingFileError(f"image manifest {manifest} not found; run the prepare stage")
    attrs = {}
    with open(manifest) as handle:
        if handle.readline().rstrip("\n") != MAGIC:
            raise InputError(f"{manifest} is not a megafr image manifest; re-run the prepare stage")
        for line in handle:
            if not line.startswith("# "):
                break
            key, _, value = line[2:].rstrip("\n").partition(": ")
            attrs[key] = value
    table = pd.read_csv(manifest, comment="#", dtype={"path": str, "bytes": "int64"})
    root = Path(attrs.get("root", "."))
    table.attrs.update(root=str(root if root.is_absolute() else manifest.parent / root),
                       image_size=int(attrs.get("image_size", 0)), digest=attrs.get("digest", ""))
    return table


def manifest_digest(manifest: str | os.PathLike) -> str:
    """The digest recorded in a manifest (what training's resume check compares instead of every pixel)."""
    return read_manifest(manifest).attrs["digest"]
