"""The study's pipeline stages, one module each, named after its ``dvc.yaml`` stage, in pipeline order.

A stage module says which frozen dataclass configures the stage (``CONFIG``) and where each of its
fields comes from, so that a value lives in one place only:

- every key of the params block named after the stage (``train_face3d:`` in ``params.yaml``);
- ``SHARED``: fields read from elsewhere in the params file, ``{field: "dotted.key"}`` (the profile
  name, the seed, the head model's files, ``prepare.image_size`` ...);
- ``PRODUCTS``: paths of products that are code, not parameters (where ``prepare`` writes ...);
- the field defaults of the dataclass (``out_dir``) and ``run_dir``, which a sweep sets.

:func:`load_config` builds one stage's config from a params file and optional overrides (field
names); :func:`validate` builds every stage's and refuses keys that no stage reads, so a bad value
anywhere is refused, naming the key, before any stage runs or deletes anything.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

from megafr.config import PARAMS_FILE, build_config, closest, load_params, unknown_key_message
from megafr.errors import InputError

ORDER = ("prepare", "train_face3d", "train_idnet", "train_generator", "train_inversion", "train_reenact",
         "evaluate", "figures")
NOTEBOOKS_DIR = "notebooks"
EXECUTED_DIR = "data/executed"
RUN_DIR = "run_dir"  # the field a sweep sets: the run writes under data/sweeps/<sweep>/<run>/
PREPARE_DIR = "data/prepare"  # the prepare stage's products, which every later stage reads


def module(stage: str) -> ModuleType:
    """The module ``megafr.stages.<stage>``; an unknown name is refused with the closest stage suggested."""
    if stage not in ORDER:
        suggestion = closest(stage, ORDER)
        hint = f"did you mean {suggestion}? " if suggestion else ""
        raise InputError(f"no stage {stage!r}; {hint}stages: {', '.join(ORDER)}")
    return importlib.import_module(f"{__name__}.{stage}")


def notebook(stage: str) -> str:
    """The stage's notebook, numbered in pipeline order: ``notebooks/03_train_idnet.ipynb``."""
    module(stage)
    return f"{NOTEBOOKS_DIR}/{ORDER.index(stage) + 1:02d}_{stage}.ipynb"


def executed_notebook(stage: str) -> str:
    """Where ``dvc repro`` keeps the executed notebook, the record of the run: ``data/executed/<name>``."""
    return f"{EXECUTED_DIR}/{Path(notebook(stage)).name}"


def code_fields(stage: str) -> set[str]:
    """Fields that are not parameters: products' paths, dataclass defaults and ``run_dir``."""
    stage_module = module(stage)
    defaults = {f.name for f in dataclasses.fields(stage_module.CONFIG)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return set(stage_module.PRODUCTS) | defaults | {RUN_DIR}


def block_fields(stage: str) -> list[str]:
    """The keys the stage's own params block must hold: the fields that are neither shared nor code."""
    stage_module = module(stage)
    taken = set(stage_module.SHARED) | code_fields(stage)
    return [f.name for f in dataclasses.fields(stage_module.CONFIG) if f.name not in taken]


def params_keys(stage: str) -> list[str]:
    """The params-file keys the stage reads (``dvc.yaml`` lists them under the stage's ``params``)."""
    return [*module(stage).SHARED.values(), stage]


def _lookup(params: Mapping[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise InputError(f"params file has no key {dotted}; restore it from profiles/ "
                             f"(`python -m megafr profile <name>`)")
        value = value[part]
    return value


def _block(params: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The stage's params block, its keys checked: a shared or code field set here is refused."""
    block = params.get(stage)
    if not isinstance(block, Mapping):
        raise InputError(f"params file has no `{stage}:` block of keys; restore it from profiles/")
    stage_module = module(stage)
    for key in block:
        if key in stage_module.SHARED:
            raise InputError(f"{stage}.{key} is read from `{stage_module.SHARED[key]}` for this stage; "
                             f"remove {stage}.{key} from params.yaml")
        if key in code_fields(stage):
            raise InputError(f"{stage}.{key} is set by the code (or by a sweep), not by a profile; "
                             f"remove it from params.yaml")
    return dict(block)


def config_from(stage: str, params: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                run_dir: str = ""):
    """The stage's config from loaded ``params``, with ``overrides`` (field names) applied last."""
    stage_module = module(stage)
    values = {field: _lookup(params, key) for field, key in stage_module.SHARED.items()}
    keys = dict(stage_module.SHARED)
    block = _block(params, stage)
    values.update(block)
    keys.update({name: f"{stage}.{name}" for name in [*block_fields(stage), *block]})
    values.update(stage_module.PRODUCTS)
    values[RUN_DIR] = run_dir
    _check_overrides(stage, overrides or {})
    values.update(overrides or {})
    keys.update({name: f"override {name}" for name in overrides or {}})
    return build_config(stage_module.CONFIG, values, keys)


def _check_overrides(stage: str, overrides: Mapping[str, Any]) -> None:
    """Refuse an override that names no field of the stage's config, suggesting the closest field."""
    fields = [f.name for f in dataclasses.fields(module(stage).CONFIG)]
    for name in overrides:
        if name not in fields:
            raise InputError(f"{unknown_key_message(f'override {name}', closest(name, fields))}: stage {stage} has "
                             f"no such field; its fields: {', '.join(fields)}")


def load_config(stage: str, params_file: str | os.PathLike = PARAMS_FILE,
                overrides: Mapping[str, Any] | None = None, run_dir: str = ""):
    """The stage's config from ``params_file`` (relative: under the study root), with ``overrides``."""
    return config_from(stage, load_params(params_file), overrides, run_dir)


def loader(module_name: str) -> Callable[..., Any]:
    """``load_config(params_file, overrides, run_dir)`` of the stage module ``module_name``."""
    stage = module_name.rpartition(".")[2]

    def load(params_file: str | os.PathLike = PARAMS_FILE, overrides: Mapping[str, Any] | None = None,
             run_dir: str = ""):
        return load_config(stage, params_file, overrides, run_dir)

    load.__doc__ = f"The ``{stage}`` stage's config from ``params_file`` with ``overrides`` (see :func:`load_config`)."
    return load


def read_keys() -> set[str]:
    """Every params key some stage reads: the shared dotted keys and each stage's block."""
    return {key for stage in ORDER for key in params_keys(stage)}


def _leaf_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys += _leaf_keys(value, name + ".") if isinstance(value, Mapping) else [name]
    return keys


def _check_keys(params: Mapping[str, Any]) -> None:
    """Refuse keys outside the stage blocks that no stage reads (``sed: 0``, ``flame.modle_path``)."""
    known = read_keys()
    for key in _leaf_keys({k: v for k, v in params.items() if k not in ORDER}):
        if key not in known:
            suggestion = closest(key, [k for k in known if "." in k or k not in ORDER])
            raise InputError(f"{unknown_key_message(key, suggestion)}; no stage reads it; fix or remove it in "
                             "params.yaml")


def validate(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every stage's config from ``params`` (so every key, value and range is checked); raise the first error."""
    _check_keys(params)
    return {stage: config_from(stage, params) for stage in ORDER}
