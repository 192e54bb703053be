"""Profiles, parameters and stage configurations.

The study has one pipeline and three profiles of it (``profiles/<name>.yaml``):

- ``smoke``: tiny sizes and a few steps per stage; what the tests and CI run;
- ``mini``: the default, the synthetic world at 64 px trained from scratch on CPU;
- ``paper``: 1024 px on FFHQ / CelebA-HQ with the official weight files, on a GPU.

``params.yaml`` is the active profile: a copy of one profile file, written by
``python -m megafr profile <name>``. DVC reads ``params.yaml``, so switching
profile is a params change and re-runs exactly the stages whose values differ.

A parameter's value lives in the profile only. Each stage reads its frozen config dataclass from
the params file (``megafr.stages``) through :func:`build_config`, which refuses unknown names (with
the closest valid one), wrong types and non-finite numbers; ranges are checked by each dataclass's
``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from megafr.errors import InputError
from megafr.fileio import atomic_write, file_digest

PROFILES = ("smoke", "mini", "paper", "paper-ci")
DEVICE_VARIABLE = "MEGAFR_DEVICE"  # environment variable overriding the device choice ("cpu", "cuda", "cuda:1")
PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"


def profile_file(name: str, root: str | os.PathLike = ".") -> Path:
    """Path of the profile file ``profiles/<name>.yaml`` under the study root."""
    if name not in PROFILES:
        raise InputError(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILES)} "
            f"(e.g. `python -m megafr profile mini`)"
        )
    path = Path(root) / PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"profile file {path} is missing; restore it from the repository (git checkout {path})")
    return path


def use_profile(name: str, root: str | os.PathLike = ".") -> Path:
    """Make profile ``name`` the active one by copying its file onto ``params.yaml``."""
    source = profile_file(name, root)
    text = source.read_text()
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict) or loaded.get("profile") != name:
        raise InputError(f"{source} must be a mapping with `profile: {name}`; restore it from the repository")
    target = Path(root) / PARAMS_FILE
    with atomic_write(target, "w") as handle:
        handle.write(text)
    return target


def study_root(start: str | os.PathLike | None = None) -> Path:
    """The study's root folder: the nearest ancestor of ``start`` (default: the working directory) holding
    ``dvc.yaml``. Notebooks opened in JupyterLab run in ``notebooks/``; their relative paths resolve here."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


def study_path(path: str | os.PathLike) -> Path:
    """``path`` if absolute, else ``path`` under :func:`study_root`."""
    path = Path(path)
    return path if path.is_absolute() else study_root() / path


def study_relative(path: str | os.PathLike) -> str:
    """``path`` as products record it: relative to the study root (POSIX form) when it lies inside the
    study, else unchanged. Products then carry no checkout path, and two clones write the same bytes;
    readers resolve relative paths with :func:`study_path`."""
    given = Path(path)
    if not given.is_absolute():
        return given.as_posix()
    root = study_root()
    try:
        return given.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(given)


def study_files_digest(paths: typing.Iterable[str]) -> str:
    """``fileio.file_digest`` of study paths (relative ones under the study root); an empty path counts as unset."""
    return file_digest([study_path(p) if p else "" for p in paths])


def load_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """Read a params file (``params.yaml`` or a profile; a relative path is under the study root) as a dict."""
    path = study_path(path)
    if not path.is_file():
        raise InputError(f"params file {path} not found; run from the study root or `python -m megafr profile mini`")
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise InputError(f"{path} must hold a YAML mapping of stage blocks, found {type(loaded).__name__}")
    return loaded


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits a simple field annotation (int, float, str, bool, Optional/Union, tuple)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (tuple, list))
    return True


def closest(name: str, known: typing.Iterable[str]) -> str | None:
    """The known name closest to a misspelled ``name``, or None when none is close."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_message(key: str, suggestion: str | None) -> str:
    """``unknown parameter K (did you mean S?)``: one unknown name and the closest valid one."""
    return f"unknown parameter {key}" + (f" (did you mean {suggestion}?)" if suggestion else "")


def build_config(cls: type, values: dict[str, Any], keys: typing.Mapping[str, str] | None = None):
    """Build the frozen dataclass ``cls`` from ``values``, with clear errors for bad names and types.

    Unknown names (with the closest known one suggested) and missing names are both errors (a typo
    must not run the unchanged experiment); non-finite floats (``.inf``, ``.nan``) are refused; ints
    are accepted for float fields and converted; lists become tuples. ``keys`` maps field names to
    the params-file keys that messages name (default ``<Class>.<field>``). Range checks live in each
    dataclass's ``__post_init__``.
    """
    keys = keys or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = {name: keys.get(name, f"{cls.__name__}.{name}") for name in set(fields) | set(values)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        named = [unknown_key_message(where[name], where.get(closest(name, fields) or "")) for name in unknown]
        raise InputError(f"{'; '.join(named)}; fix or remove it in params.yaml (or the override)")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if not _type_ok(value, annotation):
            raise InputError(
                f"{where[name]} must be {getattr(annotation, '__name__', annotation)}, "
                f"got {value!r} ({type(value).__name__}); fix it in params.yaml or the override"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where[name]} must be a finite number, got {value!r}; fix it in params.yaml "
                             "or the override")
        if annotation is float and isinstance(value, int):
            value = float(value)
        if isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    missing = [where[name] for name, f in fields.items() if name not in kwargs and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{cls.__name__}: missing parameter(s) {', '.join(missing)}; add them to every profile "
                         "(profiles/*.yaml) and params.yaml")
    return cls(**kwargs)


def comma_list(text: str | int) -> tuple[str, ...]:
    """``" coarse, 16px ,"`` -> ("coarse", "16px"): the items of a comma-separated params value, in order, each
    stripped, blanks dropped; a single value may arrive as an int (``-p refine_steps 0``)."""
    return tuple(item.strip() for item in str(text).split(",") if item.strip())


def require(condition: bool, message: str) -> None:
    """Raise :class:`InputError` with ``message`` unless ``condition`` holds (for ``__post_init__`` checks)."""
    if not condition:
        raise InputError(message)


def require_at_least(block: str, cfg, lows: tuple[tuple[str, int], ...]) -> None:
    """``cfg.<name> >= low`` for each ``(name, low)``, else InputError naming ``<block>.<name>``."""
    for name, low in lows:
        value = getattr(cfg, name)
        require(value >= low, f"{block}.{name} must be >= {low}, got {value}; fix it in params.yaml")


def torch_device():
    """The device the reenactment networks run on: ``$MEGAFR_DEVICE`` if set, else CUDA when present, else CPU."""
    import torch

    name = os.environ.get(DEVICE_VARIABLE, "").strip()
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise InputError(f"{DEVICE_VARIABLE}={name!r} is not a torch device; use cpu, cuda or cuda:N") from error
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"{DEVICE_VARIABLE}={name!r} but torch sees no CUDA device; unset it to run on the CPU")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
