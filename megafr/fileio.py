"""Atomic file output shared by every module that writes results.

A pipeline stage that is killed half-way (Ctrl-C, out of memory, a DVC timeout)
must not leave a truncated ``metrics.json``, PNG or checkpoint behind that a later
stage would read as valid. :func:`atomic_write` writes to a temporary file in the
target's folder and moves it over the target with :func:`os.replace`, which POSIX
and Windows both make atomic within one file system; on any exception (including
``KeyboardInterrupt``) the temporary file is removed and the target is untouched.

Reproducible bytes: two runs that write the same data write the same bytes. Temporary
names are random, so nothing a writer derives from its file name may depend on them:
``torch.save`` records the file's stem as the folder name inside its zip archive, so
:func:`atomic_path` hands out a file with the target's own name inside a fresh hidden
temporary folder (a checkpoint saved through it is byte-identical to one saved
directly). Paths written into products are stored relative to the study root
(:func:`megafr.config.study_relative`), so two clones of the study write the same files.

Temporary names fit any legal target name: they keep at most
:data:`TEMP_NAME_KEEP` bytes of the target's name, so a 255-byte name (the usual
``NAME_MAX``) still gets a legal temporary name. :func:`ensure_writable` proves, before
any work, that a file can be created at a path.

Hand-written rather than taken from a library: the standard library has no atomic
writer, and the usual third-party one (``atomicwrites``) is unmaintained; the
whole mechanism is ``open`` + ``fsync`` + ``os.replace``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from megafr.errors import InputError

# Permission bits asked for when the temporary file is created; the process umask
# is applied by the OS, so the result matches what a plain ``open(path, "w")`` gives.
NEW_FILE_MODE = 0o666
# Length in bytes of the random part of a temporary file name (hex: twice as many characters).
TEMP_TOKEN_BYTES = 8
# Bytes of the target's name kept in a temporary name: ".<kept>.<16 hex>.tmp" is then at most
# 64 + 22 bytes, legal wherever the target's name is (NAME_MAX is 255 bytes on common file systems).
TEMP_NAME_KEEP = 64
# Suffix marking temporary files, so that a crash (power loss) leaves recognisable debris.
TEMP_SUFFIX = ".tmp"
# Indentation of :func:`write_json` output (the DVC example project's style).
JSON_INDENT = 2


def _temp_name(target: Path) -> Path:
    """A fresh hidden name next to ``target``: ``.<name, cut to TEMP_NAME_KEEP bytes>.<random>.tmp``."""
    name = target.name
    if len(os.fsencode(name)) > TEMP_NAME_KEEP:
        name = os.fsencode(name)[:TEMP_NAME_KEEP].decode("utf-8", "ignore")  # no half characters
    return target.with_name(f".{name}.{secrets.token_hex(TEMP_TOKEN_BYTES)}{TEMP_SUFFIX}")


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entry table so the rename survives a power loss (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (network mounts) refuse fsync on folders; the rename itself is done
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with the target's name; move it onto ``path`` when the block succeeds.

    For writers that insist on a file name rather than a file object (video
    encoders, ``torch.save`` with zip files, external tools). The yielded path is
    ``<hidden temporary folder>/<name of path>`` in the target's folder, so a writer
    that records its file name (``torch.save`` names its zip archive after it) writes
    what it would write to ``path`` itself. The file does not exist when the block
    starts; if the block raises, or leaves no file there, nothing is moved and the
    temporary folder is deleted.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = _temp_name(target)
    folder.mkdir()
    temp = folder / target.name
    try:
        yield temp
        if not temp.is_file():
            raise InputError(f"atomic_path({target}): the block wrote nothing to the temporary path {temp}; "
                             f"write the output to the yielded path")
        os.replace(temp, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; replace ``path`` with it on success.

    ``mode`` is ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise) or ``"wb"``
    (binary). Parent folders are created. On success the data is flushed and
    fsync'ed before the rename, so ``path`` holds either the old content or the
    complete new one, never a mixture; on an exception the temporary file is
    deleted and the exception propagates.
    """
    if mode not in ("w", "wb"):
        raise InputError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}; appending cannot be atomic")
    binary = mode == "wb"
    if binary and (encoding is not None or newline is not None):
        raise InputError("atomic_write: encoding/newline only apply to text mode 'w'")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_name(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), NEW_FILE_MODE)
    try:
        if binary:
            handle = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
    except BaseException:
        os.close(fd)
        temp.unlink()
        raise
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    _fsync_dir(target.parent)


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists (the folder where a write would first create something)."""
    for folder in path.parents:
        if folder.exists():
            return folder
    return Path(path.anchor or ".")


def ensure_writable(path: str | os.PathLike) -> Path:
    """Prove that a file can be written at ``path`` (as :func:`atomic_write` / :func:`atomic_path` do) before any work.

    Creates and removes a probe (a hidden temporary folder holding a file of the target's
    name) in the nearest existing folder on the way to ``path``, so permissions, read-only
    file systems, a parent that is a file and a name too long for the file system are all
    found the way the real write would meet them; nothing is left behind. Returns ``path``;
    raises :class:`~megafr.errors.InputError` naming the problem and the fix.
    """
    target = Path(path)
    try:
        if target.is_dir():
            raise InputError(f"cannot write {target}: it is a folder; give a file name such as {target / 'out.png'}")
        folder = _existing_ancestor(target)
        if not folder.is_dir():
            raise InputError(f"cannot write {target}: {folder} is a file, not a folder; choose an output path "
                             "inside a folder")
        probe = folder / _temp_name(target).name
        probe.mkdir()
        try:
            (probe / target.name).touch()
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    except OSError as error:
        raise _unwritable(target, error) from error
    return target


def _unwritable(target: Path, error: OSError) -> InputError:
    """The one-line error for an OSError met while probing ``target``."""
    if isinstance(error, PermissionError):
        return InputError(f"cannot write {target}: no permission to create files in "
                          f"{_existing_ancestor(target)}; choose a writable folder (or make this one writable)")
    if error.errno == errno.ENAMETOOLONG:
        return InputError(f"cannot write {target}: its file name is {len(os.fsencode(target.name))} bytes, longer "
                          "than the file system allows; choose a shorter name")
    if error.errno == errno.EROFS:
        return InputError(f"cannot write {target}: it is on a read-only file system; choose another folder")
    if error.errno == errno.ENOTDIR:
        return InputError(f"cannot write {target}: a parent on its path is a file, not a folder; choose an output "
                          "path inside a folder")
    return InputError(f"cannot write {target}: {error.strerror or error}; choose another output path")


def _json_default(value: Any) -> Any:
    """Convert the non-JSON types that metrics code commonly produces."""
    # numpy and torch are imported lazily: this module stays importable without them.
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def _find_non_finite(obj: Any, where: str = "") -> str | None:
    """Key path of the first NaN/inf float in ``obj`` (after conversion), or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "<root>"
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _find_non_finite(value, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _find_non_finite(value, f"{where}[{i}]")
            if found:
                return found
    return None


def to_json_text(obj: Any) -> str:
    """Serialise ``obj`` as write_json does: sorted keys, indent 2, trailing newline, no NaN."""
    try:
        # Round trip through the converter first, so NaN hidden in numpy values is seen too.
        plain = json.loads(json.dumps(obj, default=_json_default))
    except (TypeError, ValueError) as error:
        raise InputError(f"cannot write JSON: {error}; convert the value to a number, string, list or dict") from error
    bad = _find_non_finite(plain)
    if bad is not None:
        raise InputError(f"cannot write JSON: value at {bad} is NaN or infinite, which JSON cannot hold; "
                         f"store None (null) or a finite number instead")
    return json.dumps(plain, sort_keys=True, indent=JSON_INDENT, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` to ``path`` as JSON (sorted keys, indent 2), atomically; returns the path.

    numpy scalars/arrays, torch tensors and paths are converted; NaN or infinity
    raises :class:`~megafr.errors.InputError` before anything is written, because
    DVC metrics files must be valid JSON.
    """
    text = to_json_text(obj)
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return Path(path)


HASH_CHUNK = 1 << 20  # bytes read at a time by file_digest
SETTLED_SECONDS = 2.0  # file_digest keeps the digest of files unchanged for this long (their mtime is trusted)
MAX_KEPT_DIGESTS = 256
_DIGESTS: dict[tuple, str] = {}  # _settled_key -> digest, in this process


def file_digest(paths: Iterable[str | Path]) -> str:
    """MD5 over the contents of the given files, in order (absolute paths, or relative to the working folder).

    An empty path counts as "unset" and a missing file by its name, so a digest can be taken of any
    configuration (resume checks compare the digests of a run's input files). The digest of files that
    have not changed for :data:`SETTLED_SECONDS` is kept for this process, keyed by each file's device, inode,
    size, modification and status-change times (the rule git uses to skip re-reading a file; a copy that keeps
    the old modification time still changes the status-change time): the study's resume checks digest
    the same frozen networks and training images many times over (about 0.2 s each in the mini world).
    A file modified more recently is always read again, so a file rewritten in place within the clock's
    resolution is never taken for its old self."""
    paths = [str(p) if p else "" for p in paths]
    key = _settled_key(paths)
    if key is not None and key in _DIGESTS:
        return _DIGESTS[key]
    digest = hashlib.md5()
    for path in paths:
        if not path or not Path(path).is_file():
            digest.update(f"<{'unset' if not path else 'missing ' + str(path)}>".encode())
            continue
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(HASH_CHUNK), b""):
                digest.update(block)
    value = digest.hexdigest()
    if key is not None:
        if len(_DIGESTS) >= MAX_KEPT_DIGESTS:
            _DIGESTS.clear()
        _DIGESTS[key] = value
    return value


def _settled_key(paths: list[str]) -> tuple | None:
    """``paths`` with each file's identity (device, inode, size, modification and status-change times), or None
    when a file changed too recently to trust its modification time."""
    now, key = time.time_ns(), []
    for path in paths:
        try:
            stat = os.stat(path) if path else None
        except OSError:
            stat = None
        if stat is None:
            key.append((path, None))
            continue
        if now - stat.st_mtime_ns < SETTLED_SECONDS * 1e9:
            return None
        key.append((os.path.abspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns,
                    stat.st_ctime_ns))
    return tuple(key)
