"""Release networks of a synthetic world: train the pretrained stages once, for hours, and ship small files.

The paper world starts from released files (ArcFace IR-SE50, StyleGAN2, e4e, pSp) that nobody
retrains. The mini world makes its own stand-ins, and training them well takes hours on a CPU, so it
releases them the same way: ``python -m megafr release`` trains ``train_idnet``, ``train_generator``
and ``train_inversion`` with the recipe of the active profile (or ``--params``; ``--set`` changes single
values for one run, so a chain of releases is a few command lines) with their ``mode`` forced to ``train``,
each stage reading the previous one's fresh products, in ``data/release/<profile>/`` (an interrupted
run resumes from its checkpoints there). When the generator's recipe trains with the 3D face network's
perceptual distance (``finetune_face3d``), ``train_face3d`` is trained there first, with the study's
recipe; that network shapes the release but is not part of it (the study trains its own, identically).
It then writes, to ``release/<profile>/``:

- the products in their official layouts (``arcface.pt``, ``stylegan2.pt``, ``e4e.pt``, ``psp.pt``)
  with every floating-point tensor stored as float16 (the loaders cast back to float32);
- each stage's training curve (``<stage>_curve.csv``), which the stages show in release mode;
- ``release.json``: the recipe (each stage's config), wall time, machine, the training runs'
  metrics, and every file's size and SHA-256.

A profile uses the files with ``mode: release`` and the ``official_*`` fields naming them: the stages
then load them through the official loaders, copy them to their usual products and evaluate them as
a trained run would (``megafr.pretrain.common``). The smoke profile keeps ``mode: train``, so CI keeps
training; ``tests/test_pipeline.py`` runs this command on it.

Why by hand: DVC's frozen stages would skip the stages entirely (no evaluation, no figures on a fresh
clone) and would tie the release to one profile's ``dvc.lock``; a release is a set of files, like the
paper's.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
import yaml

from megafr import stages
from megafr.config import PARAMS_FILE, load_params, study_path, study_relative, study_root
from megafr.errors import InputError
from megafr.fileio import atomic_path, write_json
from megafr.pretrain import common
from megafr.runner import execute
from megafr.training import run_log_path

STAGES = ("train_idnet", "train_generator", "train_inversion")  # the stages whose products are released
FACE3D = "train_face3d"  # trained first when the generator's recipe reads the 3D network (not released)
RELEASED = {  # stage -> {released file: the config field that names it in release (and official) mode}
    "train_idnet": {"arcface.pt": "official_path"},
    "train_generator": {"stylegan2.pt": "official_stylegan2", "e4e.pt": "official_e4e"},
    "train_inversion": {"psp.pt": "official_psp"},
}
RECORD = common.RELEASE_RECORD
Settings = Mapping[str, Mapping[str, Any]] | None  # {stage: {field: value}} replacing the params file's (--set)
DONE_DIR = "done"  # <run_dir>/done/<stage>.json: a finished stage's config, code and input digests
VALIDATED = "data/validate.json"  # the validate stage's record: the profile whose data data/prepare holds
RUNS_DIR = "data/release"
RELEASE_DIR = "release"
PREPARE_PRODUCT = "data/prepare/train/images.npy"  # present once the prepare stage has run


def run_folder(profile: str) -> str:
    """Where the release's training runs happen (study-relative): ``data/release/<profile>``."""
    return f"{RUNS_DIR}/{profile}"


def release_folder(profile: str) -> str:
    """Where the released files go (study-relative): ``release/<profile>``."""
    return f"{RELEASE_DIR}/{profile}"


def face3d_product(run_dir: str) -> str:
    """The 3D face network a release run trains (when its generator recipe needs one)."""
    from megafr.face3d.train import CHECKPOINT_FILE

    return f"{run_dir}/{FACE3D}/{CHECKPOINT_FILE}"


CONTROLLED = ("mode", "idnet_path", "face3d_path", "stylegan2_path", "e4e_path", "profile")  # set by the command
YAML_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-3: a float to YAML 1.2, a string to PyYAML


def parse_settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["train_generator.steps=0", ...]`` (the command's ``--set``) -> ``{stage: {field: value}}``: training
    values that replace the params file's for one run, so that each run of a chain of releases (each starting
    from the previous one's files) is one command line. Values are read as YAML (``0.2``, ``true``); an empty
    value is the empty string."""
    settings: dict[str, dict[str, Any]] = {}
    for item in items:
        key, equals, text = item.partition("=")
        stage, dot, field = key.partition(".")
        if not (equals and dot and field):
            raise InputError(f"--set {item}: write STAGE.FIELD=VALUE, e.g. --set train_generator.finetune_steps=1800")
        if stage not in (FACE3D, *STAGES):
            raise InputError(f"--set {item}: a release trains {', '.join((FACE3D, *STAGES))}, not {stage}")
        if field in CONTROLLED or field in stages.code_fields(stage):
            raise InputError(f"--set {item}: {field} is not a training value; the release command sets the stages' "
                             "modes, folders and the products they read from each other")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as error:
            raise InputError(f"--set {item}: the value is not YAML ({str(error).splitlines()[0]}); quote it") from None
        settings.setdefault(stage, {})[field] = float(value) if isinstance(value, str) and YAML_FLOAT.fullmatch(value) else value
    return settings


def stage_overrides(stage: str, run_dir: str, face3d: bool = False, settings: Settings = None) -> dict[str, Any]:
    """The fields a release run changes: ``settings`` (the command's ``--set``), train mode, and the upstream
    products read from the run itself (the generator's identity term uses the identity network trained
    before it, not the study's; with ``face3d``, its fine-tune reads the 3D network the run trained first)."""
    product = {"train_idnet": f"{run_dir}/train_idnet/arcface.pt",
               "train_generator": f"{run_dir}/train_generator"}
    fixed = {
        FACE3D: {},
        "train_idnet": {"mode": "train"},
        # without the perceptual distance the 3D network is not trained here: the layer swap's pose is then
        # measured only when the study evaluates the released files
        "train_generator": {"mode": "train", "idnet_path": product["train_idnet"],
                            "face3d_path": face3d_product(run_dir) if face3d else ""},
        "train_inversion": {"mode": "train", "idnet_path": product["train_idnet"],
                            "stylegan2_path": f"{product['train_generator']}/stylegan2.pt",
                            "e4e_path": f"{product['train_generator']}/e4e.pt"},
    }[stage]
    return {**(settings or {}).get(stage, {}), **fixed}


def _require_trainable(params: Mapping[str, Any], run_dir: str, root: Path) -> None:
    """Refuse a release run that would train on the wrong data or overwrite the pipeline's outputs."""
    profile = params["profile"]
    if params["prepare"]["source"] != "synthetic":
        raise InputError(f"profile {profile} prepares photos: a release is trained in a synthetic world (mini); the "
                         "paper profile uses the official files")
    if Path(run_dir) == Path("data"):
        raise InputError("--run-dir data would overwrite the pipeline's own products; use another folder")
    if not (root / PREPARE_PRODUCT).is_file():
        raise InputError(f"{PREPARE_PRODUCT} is missing: run `dvc repro prepare` first (a release trains on the "
                         "prepare stage's data)")
    validated = _read_json(root / VALIDATED).get("profile", profile)
    if validated != profile:
        raise InputError(f"data/prepare holds the {validated} profile's data, not {profile}'s: activate {profile} "
                         f"(`python -m megafr profile {profile}`) and run `dvc repro prepare` first")


def _done_record(stage: str, config) -> dict:
    """What a finished stage of a release run was trained with: config, code and input files."""
    from megafr.face3d.train import TRAINING_CODE
    from megafr.fileio import to_json_text
    from megafr.training import PRETRAIN_CODE, code_digest

    if stage == FACE3D:  # its code is its own; its inputs: the prepared splits and the head model
        from megafr.config import study_files_digest

        data = study_files_digest([config.model_path, config.landmark_path,
                                   *(f for split in ("train", "test") for f in common.split_files(config.data_dir, split))])
        return json.loads(to_json_text({"config": vars(config), "code": code_digest(TRAINING_CODE), "upstream": data}))
    return json.loads(to_json_text({"config": vars(config), "code": code_digest(PRETRAIN_CODE),
                                    "upstream": config.upstream_digest()}))


def _products(stage: str, config) -> list[Path]:
    """The files a finished stage of a release run leaves."""
    return [config.checkpoint_path] if stage == FACE3D else [config.folder / name for name in RELEASED[stage]]


def trained_stages(params_file: str, run_dir: str, settings: Settings = None) -> tuple[str, ...]:
    """The stages a release run trains, in order: ``train_face3d`` first when the generator's recipe reads
    the 3D network, then the released ones."""
    probe = stages.load_config("train_generator", study_root() / params_file,
                               stage_overrides("train_generator", run_dir, True, settings), run_dir)
    return ((FACE3D,) if probe.uses_face3d else ()) + STAGES


def train(params_file: str = PARAMS_FILE, run_dir: str = "", *, settings: Settings = None,
          progress: bool = True) -> str:
    """Run the three stages' notebooks in train mode under ``run_dir`` (default ``data/release/<profile>``),
    with the params file's values changed by ``settings`` (:func:`parse_settings`), and return ``run_dir``.
    Every stage's values are checked before the first one trains; a stage that finished earlier with the
    same config, code and input files is skipped, and an interrupted one resumes from its checkpoint, so
    running the command again continues where it stopped."""
    root = study_root()
    params = load_params(root / params_file)
    stages.validate(params)
    run_dir = run_dir or run_folder(params["profile"])
    _require_trainable(params, run_dir, root)
    order = trained_stages(params_file, run_dir, settings)
    if settings and FACE3D in settings and FACE3D not in order:
        raise InputError(f"--set {FACE3D}.*: this run does not train the 3D network (its generator recipe has "
                         "finetune_face3d: 0); drop those settings")
    overrides = {stage: stage_overrides(stage, run_dir, FACE3D in order, settings) for stage in order}
    configs = {stage: stages.load_config(stage, root / params_file, overrides[stage], run_dir)
               for stage in order}  # every value checked before hours of training
    start = configs["train_generator"].init_from
    if start:  # its files, and the record export will need, before anything trains
        from megafr.pretrain.autoencoder import require_release_files

        require_release_files(study_path(start), (RECORD,))  # the export reads the release.json it started from
    for stage, config in configs.items():
        done = root / run_dir / DONE_DIR / f"{stage}.json"
        record = _done_record(stage, config)  # its input files are the earlier stages' finished products
        if _read_json(done) == record and all(path.is_file() for path in _products(stage, config)):
            print(f"{stage}: finished earlier with the same recipe, code and inputs ({done.relative_to(root)})")
            continue
        executed = root / run_dir / "executed" / Path(stages.notebook(stage)).name
        execute(root / stages.notebook(stage), executed, {"params_file": params_file, "overrides": overrides[stage],
                                                          "run_dir": run_dir}, root=root, progress=progress)
        write_json(done, record)
    return run_dir


def half(obj: Any) -> Any:
    """``obj`` with every floating-point tensor (in dicts, lists and tuples) stored as float16; a finite
    value beyond float16's range raises OverflowError instead of becoming infinite."""
    if torch.is_tensor(obj):
        if not obj.is_floating_point():
            return obj
        out = obj.half()
        if not torch.isfinite(out).all() and torch.isfinite(obj).all():
            raise OverflowError(f"a tensor of shape {tuple(obj.shape)} holds values beyond float16's range (|x| > 65504)")
        return out
    if isinstance(obj, Mapping):
        return type(obj)((k, half(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(half(v) for v in obj)
    return obj


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_commit(root: Path) -> str:
    """The commit of the code, ``+changes`` when tracked files differ from it (``unknown`` outside git)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "megafr"], cwd=root).returncode != 0
    return head.stdout.strip() + ("+changes" if dirty else "")


def machine() -> dict[str, Any]:
    """The machine a release was trained on, for its record."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _finished_configs(params_file: str, run_dir: str, face3d: bool, settings: Settings = None) -> dict:
    """``{stage: config}`` of a finished release run under ``run_dir`` (``config.folder``: its products;
    ``face3d``: the run trained the 3D network), or an error naming what is missing."""
    base, problems, configs = study_path(run_dir), [], {}
    for stage in STAGES:
        config = configs[stage] = stages.load_config(stage, study_root() / params_file,
                                                     stage_overrides(stage, run_dir, face3d, settings),
                                                     "" if run_dir == "data" else run_dir)
        problems += [f"{config.folder / name} is missing" for name in RELEASED[stage]
                     if not (config.folder / name).is_file()]
        if config.checkpoint_path.is_file():
            problems.append(f"{stage} has an unfinished run ({study_relative(config.checkpoint_path)})")
        if _read_json(base / "metrics" / f"{stage}.json").get("trained") != 1:
            problems.append(f"{base / 'metrics' / f'{stage}.json'} does not record a trained run")
    if problems:
        raise InputError(f"cannot export the release from {run_dir}: {'; '.join(problems)}; "
                         "`python -m megafr release` trains (or finishes) it")
    return configs


def _check_trained_recipes(configs: dict, done_dir: Path) -> None:
    """Refuse to export when a stage's finished run (its ``done/<stage>.json``) was trained with other training
    values than the params file describes: the record would name a recipe the files were not made with.
    Runs without a done-record (the study's own products) are not checked."""
    problems = []
    for stage, config in configs.items():
        trained = _read_json(done_dir / f"{stage}.json").get("config")
        if trained is None:
            continue
        differ = common.recipe_differences(config, trained)  # the comparison release mode warns with
        if differ:
            problems.append(f"{stage} ({'; '.join(differ)})")
    if problems:
        raise InputError(f"the params file's recipe is not the one the runs under {done_dir.parent} were trained "
                         f"with: {', '.join(problems)} (params vs trained); export with the params file they "
                         "were trained with (`--params`), or train again with this one")


def _save_half(source: Path, target: Path) -> None:
    try:
        obj = half(torch.load(source, map_location="cpu", weights_only=False))
    except OverflowError as error:
        raise InputError(f"{source}: {error}; it cannot be released as float16") from None
    with atomic_path(target) as temp:
        torch.save(obj, temp)


def export(params_file: str = PARAMS_FILE, run_dir: str = "", out: str = "", settings: Settings = None) -> Path:
    """Write the float16 release of the products under ``run_dir`` (default ``data/release/<profile>``;
    ``"data"``: the study's own products, when its stages trained) to ``out`` (default ``release/<profile>``)
    with the curves and ``release.json``; returns the record's path. ``settings``: the ones the runs were
    trained with. Nothing is written unless every stage's run is finished."""
    root = study_root()
    params = load_params(root / params_file)
    run_dir = run_dir or run_folder(params["profile"])
    out_dir = study_path(out or release_folder(params["profile"]))
    face3d = FACE3D in trained_stages(params_file, run_dir, settings)
    configs = _finished_configs(params_file, run_dir, face3d, settings)
    base = study_path(run_dir)
    _check_trained_recipes(configs, base / DONE_DIR)
    started = {stage: _starting_release(study_path(config.init_from), stage, out_dir) for stage, config in configs.items()
               if getattr(config, common.INIT_FIELD, "")}  # read before anything is written
    record: dict[str, Any] = {"profile": params["profile"], "source_commit": _source_commit(root),
                              "exported": datetime.date.today().isoformat(), "machine": machine(),
                              "run_dir": run_dir, "stages": {}, "files": {}}
    for stage, config in configs.items():
        for name in RELEASED[stage]:
            _save_half(config.folder / name, out_dir / name)
        curve, copy = base / "plots" / common.curve_file(stage), out_dir / common.curve_file(stage)
        copy.unlink(missing_ok=True)  # never keep an older release's curve
        if curve.is_file():
            pd.read_csv(curve).to_csv(copy, index=False, float_format="%.6g")
        record["stages"][stage] = {"recipe": _recipe(config), "run": _read_json(run_log_path(config.folder)),
                                   "metrics": _read_json(base / "metrics" / f"{stage}.json")}
        if stage in started:
            record["stages"][stage]["started_from"] = started[stage]
    if face3d:  # shaped the generator; recorded, not released
        config = stages.load_config(FACE3D, root / params_file, stage_overrides(FACE3D, run_dir, settings=settings),
                                    "" if run_dir == "data" else run_dir)
        record["trained_with"] = {FACE3D: {"recipe": _recipe(config),
                                           "metrics": _read_json(base / "metrics" / f"{FACE3D}.json")}}
    written = [name for stage in STAGES for name in [*RELEASED[stage], common.curve_file(stage)]]
    for path in (out_dir / name for name in written):
        if path.is_file():
            record["files"][path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    record["total_bytes"] = sum(f["bytes"] for f in record["files"].values())
    return write_json(out_dir / RECORD, record)


def _recipe(config) -> dict:
    """A stage config's training fields as the record keeps them (its folders left out)."""
    return {f: v for f, v in vars(config).items() if f not in ("out_dir", "run_dir", "data_dir")}


def _starting_release(folder: Path, stage: str, out_dir: Path | None = None) -> dict:
    """The record of the release a run started from (its ``init_from`` folder's ``release.json`` entry of
    ``stage``, its commit and the SHA-256 of the files the run read), so the chain stays traceable; refused
    when the export would overwrite that folder (``out_dir``)."""
    if out_dir is not None and folder.resolve() == out_dir.resolve():
        raise InputError(f"the generator's init_from is {folder}, the folder this export writes: the files the run "
                         "started from would be lost; copy them (with their release.json) to another folder, point "
                         "init_from there and train again, or export with --out elsewhere")
    earlier = _read_json(folder / RECORD)
    entry = earlier.get("stages", {}).get(stage)
    if not entry:
        raise InputError(f"{folder} has no {RECORD} entry for {stage}: a run that starts from released files is "
                         "exported only when their record is there (copy it next to them)")
    files = {name: _sha256(folder / name) for name in RELEASED[stage]}
    return {**entry, "source_commit": earlier.get("source_commit", "unknown"), "files": files}


def release_overrides(profile_folder: str) -> dict[str, dict[str, str]]:
    """``{stage: {field: path}}``: the release-mode values that make a profile use ``profile_folder``'s files."""
    return {stage: {"mode": "release", **{field: f"{profile_folder}/{name}" for name, field in files.items()}}
            for stage, files in RELEASED.items()}


def describe(record_path: Path) -> str:
    """One line per released file and the total, for the command's output."""
    record = _read_json(record_path)
    lines = [f"{study_relative(record_path.parent / name)}: {info['bytes'] / 1e6:.2f} MB"
             for name, info in record["files"].items()]
    return "\n".join([*lines, f"total {record['total_bytes'] / 1e6:.2f} MB ({record_path})"])
