"""Preflight: every file from outside the study that a profile needs, checked before any stage works.

The ``mini`` and ``smoke`` profiles build everything they use (the synthetic head model, the
generator, the encoders, the identity network), so they need nothing from outside: optional
extras such as LPIPS's ImageNet backbone are switched off with a log line where absent. The
``paper`` profile needs files that users download themselves (``docs/method.md`` section 7); without
this check the first missing one would surface hours into ``dvc repro``, after the photos are
aligned. Here every one is looked up at once and :class:`~megafr.errors.PreflightError` lists
all the missing ones, each with the parameter that names it, the stages that need it and
where to get it.

What is required on ``paper`` (a key's file only where its condition holds), and who needs it:

- FLAME 2020 model and landmark embedding (``flame.model_path``, ``flame.landmark_path``):
  train_face3d, train_generator, train_reenact and the ``reenact`` command;
- the photos to align (``prepare.photos_dir``, with ``prepare.source: photos``): prepare;
- dlib and its 68-landmark model (the ``dlib-bin`` and ``face-recognition-models`` packages):
  prepare and the ``reenact`` command;
- ``model_ir_se50.pth`` (``train_idnet.official_path``, every ``*.idnet_path``): train_idnet and later;
- ``stylegan2-ffhq-config-f.pt`` and ``e4e_ffhq_encode.pt`` (``train_generator.official_*``,
  ``train_inversion.*``, ``train_reenact.*``): train_generator and later;
- ``psp_ffhq_encode.pt`` (``train_inversion.official_psp``, ``train_reenact.psp_path``): train_inversion, train_reenact;
- LPIPS's ImageNet AlexNet in the torch hub cache and the ``lpips`` package: evaluate (LPIPS of
  Table 2) and every stage whose ``lambda_lpips`` is positive;
- clean-fid's Inception file (in ``evaluate.inception_dir``, else clean-fid's own folder): evaluate (FID);
- optional, checked only when its key is set: the test photos (``prepare.test_photos_dir``, CelebA-HQ):
  prepare; ``psp_ffhq_frontalization.pt`` (``evaluate.psp_frontalization_path``, Table 2's pSp row): evaluate.

Paths under the study's ``data/`` folder are products of stages, not external files, and are
skipped. A notebook calls :func:`check_stage` with its own stage name in its first code cell: the
files of that stage and of every later one are checked (a stage that would succeed only to see
the next one fail is work lost). ``python -m megafr check`` runs the same check from the shell.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megafr.config import PARAMS_FILE, PROFILES, load_params, study_root
from megafr.errors import InputError, PreflightError
from megafr.stages import ORDER

# Stages in pipeline order (dvc.yaml); check_stage(s) checks s and what follows.
PIPELINE = ORDER
# Consumer name of the `python -m megafr reenact` command (not a pipeline stage).
REENACT_CLI = "reenact"
CONSUMERS = PIPELINE + (REENACT_CLI,)
# The only profile that reads files from outside the study.
EXTERNAL_PROFILE = "paper"
# Folder of stage products: paths inside it are made by the pipeline, never downloaded.
PRODUCTS_DIR = "data"
# File suffixes counted as photos when a photos folder is checked (what load_image decodes).
PHOTO_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})
# clean-fid ("clean" mode) loads NVIDIA's TorchScript Inception from this file and downloads it there
# when absent (cleanfid.features.feature_extractor: /tmp on POSIX, the working folder on Windows).
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_DIR = "." if os.name == "nt" else "/tmp"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
# torchvision's ImageNet AlexNet (AlexNet_Weights.IMAGENET1K_V1), the backbone LPIPS(net="alex") loads
# from the torch hub cache; megafr.losses.perceptual.lpips_status looks for the same name prefix.
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_PREFIX = "alexnet-owt"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

# Where to get each file (docs/method.md section 7 and the releases' READMEs).
SOURCES = {
    "flame_model": "register and download FLAME 2020 (licence) at https://flame.is.tue.mpg.de; "
                   "generic_model.pkl is in the archive",
    "flame_landmarks": "download data/landmark_embedding.npy from DECA, https://github.com/yfeng95/DECA",
    "photos": "put the photos to align there: FFHQ (https://github.com/NVlabs/ffhq-dataset), CelebA-HQ "
              "(https://github.com/tkarras/progressive_growing_of_gans) or your own",
    "dlib": "`pip install dlib-bin` (prebuilt dlib wheels)",
    "shape_predictor": "`pip install face-recognition-models` (ships shape_predictor_68_face_landmarks.dat)",
    "arcface": "model_ir_se50.pth from https://github.com/TreB1eN/InsightFace_Pytorch (README, 'IR-SE50'), "
               "also linked as the ID-loss model in https://github.com/eladrich/pixel2style2pixel (README, "
               "'Pretrained Models')",
    "stylegan2": "stylegan2-ffhq-config-f.pt from https://github.com/rosinality/stylegan2-pytorch (README, "
                 "'Pretrained Checkpoints'), also linked in https://github.com/eladrich/pixel2style2pixel",
    "e4e": "e4e_ffhq_encode.pt from https://github.com/omertov/encoder4editing (README, 'Pretrained Models')",
    "psp": "psp_ffhq_encode.pt from https://github.com/eladrich/pixel2style2pixel (README, 'Pretrained Models')",
    "psp_frontalization": "psp_ffhq_frontalization.pt from https://github.com/eladrich/pixel2style2pixel (README, "
                          "'Pretrained Models', face frontalization)",
    "alexnet": f"download {ALEXNET_URL} into that folder (or run `python -c \"import torchvision; "
               f"torchvision.models.alexnet(weights='IMAGENET1K_V1')\"` once on a machine online)",
    "lpips": "`pip install lpips` (ships its linear layers, weights/v0.1/alex.pth)",
    "inception": f"download {INCEPTION_URL} to that path",
}

WHAT = {
    "flame_model": "FLAME 2020 model (generic_model.pkl)",
    "flame_landmarks": "FLAME landmark embedding (landmark_embedding.npy)",
    "photos": "folder of photos to align",
    "dlib": "dlib (Python package)",
    "shape_predictor": "dlib 68-landmark model (shape_predictor_68_face_landmarks.dat)",
    "arcface": "ArcFace IR-SE50 (model_ir_se50.pth)",
    "stylegan2": "StyleGAN2 FFHQ 1024 generator (stylegan2-ffhq-config-f.pt)",
    "e4e": "e4e FFHQ encoder (e4e_ffhq_encode.pt)",
    "psp": "pSp FFHQ encoder (psp_ffhq_encode.pt)",
    "psp_frontalization": "pSp FFHQ frontalization (psp_ffhq_frontalization.pt, optional)",
    "alexnet": "LPIPS backbone: ImageNet AlexNet weights",
    "lpips": "LPIPS linear layers (lpips package)",
    "inception": "Inception for clean-fid (FID)",
}

Condition = Callable[[Mapping[str, Any]], bool]


def _get(params: Mapping[str, Any], key: str) -> Any:
    """``params["a"]["b"]`` for key ``"a.b"``; None where any level is absent."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _always(params: Mapping[str, Any]) -> bool:
    return True


def _official(block: str) -> Condition:
    return lambda params: _get(params, f"{block}.mode") == "official"


def _photos(params: Mapping[str, Any]) -> bool:
    return _get(params, "prepare.source") == "photos"


def _set(key: str) -> Condition:
    """An optional file: needed only when its key names one."""
    return lambda params: bool(_get(params, key))


def _encoder_is(name: str) -> Condition:
    return lambda params: _get(params, "train_reenact.encoder") == name


@dataclass(frozen=True)
class _KeyRule:
    """A params key naming an external file, who reads it, and when it is needed."""

    key: str  # dotted params key
    file: str  # key of SOURCES / WHAT
    stages: tuple[str, ...]  # consumers (CONSUMERS)
    when: Condition = _always  # the file is needed only where this holds
    folder: bool = False  # the key names a folder of photos


_FLAME_USERS = ("train_face3d", "train_generator", "train_reenact", "figures", REENACT_CLI)
KEY_RULES = (
    _KeyRule("flame.model_path", "flame_model", _FLAME_USERS),
    _KeyRule("flame.landmark_path", "flame_landmarks", _FLAME_USERS),
    _KeyRule("prepare.photos_dir", "photos", ("prepare",), _photos, folder=True),
    _KeyRule("prepare.test_photos_dir", "photos", ("prepare",), lambda p: _photos(p) and _set("prepare.test_photos_dir")(p),
             folder=True),
    _KeyRule("train_idnet.official_path", "arcface", ("train_idnet",), _official("train_idnet")),
    _KeyRule("train_generator.official_stylegan2", "stylegan2", ("train_generator",), _official("train_generator")),
    _KeyRule("train_generator.official_e4e", "e4e", ("train_generator",), _official("train_generator")),
    _KeyRule("train_generator.idnet_path", "arcface", ("train_generator",)),
    _KeyRule("train_inversion.stylegan2_path", "stylegan2", ("train_inversion",)),
    _KeyRule("train_inversion.e4e_path", "e4e", ("train_inversion",)),
    _KeyRule("train_inversion.idnet_path", "arcface", ("train_inversion",)),
    _KeyRule("train_inversion.official_psp", "psp", ("train_inversion",), _official("train_inversion")),
    _KeyRule("train_reenact.generator_path", "stylegan2", ("train_reenact", "figures", REENACT_CLI)),
    _KeyRule("train_reenact.e4e_path", "e4e", ("train_reenact", "figures", REENACT_CLI)),
    _KeyRule("train_reenact.psp_path", "psp", ("train_reenact", "figures")),
    _KeyRule("train_reenact.psp_path", "psp", (REENACT_CLI,), _encoder_is("psp")),
    _KeyRule("train_reenact.idnet_path", "arcface", ("train_reenact", "figures", REENACT_CLI)),
    _KeyRule("evaluate.arcface_path", "arcface", ("evaluate",)),
    _KeyRule("evaluate.psp_frontalization_path", "psp_frontalization", ("evaluate",),
             _set("evaluate.psp_frontalization_path")),
)
# Stage blocks whose lambda_lpips switches LPIPS on; the evaluate stage reports LPIPS (Table 2) regardless.
LPIPS_STAGES = ("train_generator", "train_inversion", "train_reenact")
LPIPS_ALWAYS = ("evaluate",)


@dataclass(frozen=True)
class Requirement:
    """One external file (or folder, or package) a profile needs."""

    file: str  # key of SOURCES / WHAT
    path: Path | None  # where it must be; None for a Python package
    keys: tuple[str, ...]  # params keys that name it (empty for fixed locations)
    stages: tuple[str, ...]  # who needs it, in pipeline order
    folder: bool = False  # a folder of photos rather than a file
    value: str = ""  # the params value as written (relative paths are relative to the study root)

    @property
    def what(self) -> str:
        return WHAT[self.file]

    @property
    def source(self) -> str:
        return SOURCES[self.file]


@dataclass(frozen=True)
class Problem:
    """A requirement that is not met, and why."""

    requirement: Requirement
    problem: str  # "not found", "empty file", ...

    def line(self) -> str:
        """One line: what, where, which parameter, who needs it, why it fails and where to get it."""
        req = self.requirement
        where = f" at {req.value or req.path}" if req.path is not None else ""
        named = f"{', '.join(req.keys)}; " if req.keys else ""
        users = ", ".join(f"`python -m megafr {s}`" if s == REENACT_CLI else s for s in req.stages)
        return f"{req.what}{where} ({named}needed by {users}): {self.problem}; fix: {req.source}"


def _order(stages: Iterable[str]) -> tuple[str, ...]:
    found = set(stages)
    return tuple(s for s in CONSUMERS if s in found)


def _resolve(value: str, root: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


def _is_product(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in the study's data/ folder (made by a stage)."""
    try:
        path.resolve().relative_to((root / PRODUCTS_DIR).resolve())
    except ValueError:
        return False
    return True


def _check_profile(params: Mapping[str, Any]) -> str:
    if not isinstance(params, Mapping):
        raise InputError(f"params must be a mapping of stage blocks, got {type(params).__name__}; "
                         f"restore {PARAMS_FILE} with `python -m megafr profile mini`")
    profile = params.get("profile")
    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r} in params; choose one of {', '.join(PROFILES)} "
                         f"(e.g. `python -m megafr profile mini`)")
    return profile


def _package_file(package: str, *parts: str) -> Path | None:
    """Path of a data file inside an installed package, found without importing the package; None if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def _torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def requirements(params: Mapping[str, Any], root: str | os.PathLike | None = None) -> list[Requirement]:
    """Every external file ``params`` needs (none for mini and smoke), merged by path, in pipeline order."""
    profile = _check_profile(params)
    if profile != EXTERNAL_PROFILE:
        return []
    root = Path(root) if root is not None else study_root()
    merged: dict[tuple[str, str], dict] = {}

    def add(file: str, path: Path | None, stages: Iterable[str], key: str = "", value: str = "",
            folder: bool = False) -> None:
        slot = merged.setdefault((file, str(path)), {"path": path, "keys": [], "stages": set(), "folder": folder,
                                                     "value": value})
        if key and key not in slot["keys"]:
            slot["keys"].append(key)
        slot["stages"].update(stages)

    for rule in KEY_RULES:
        if not rule.when(params):
            continue
        value = _get(params, rule.key)
        if value is None:
            continue  # a key of a stage this params file does not have (yet): its config will ask for it
        value = str(value)
        path = _resolve(value, root) if value else None
        if path is not None and _is_product(path, root):
            continue  # a stage of the pipeline writes it
        add(rule.file, path if path is not None else Path(f"<{rule.key} not set>"), rule.stages, rule.key, value,
            rule.folder)
    add("dlib", None, ("prepare", REENACT_CLI))
    predictor = _package_file("face_recognition_models", "models", "shape_predictor_68_face_landmarks.dat")
    add("shape_predictor", predictor, ("prepare", REENACT_CLI))
    lpips_on = tuple(stage for stage in LPIPS_STAGES if (_get(params, f"{stage}.lambda_lpips") or 0) > 0)
    add("alexnet", _torch_hub_checkpoints() / ALEXNET_FILE, lpips_on + LPIPS_ALWAYS)
    add("lpips", _package_file("lpips", "weights", "v0.1", "alex.pth"), lpips_on + LPIPS_ALWAYS)
    inception_dir = _get(params, "evaluate.inception_dir")  # megafr.evaluate.external: "" means clean-fid's own
    folder = _resolve(str(inception_dir), root) if inception_dir else Path(INCEPTION_DIR)
    add("inception", folder / INCEPTION_FILE, ("evaluate",), "evaluate.inception_dir" if inception_dir else "",
        str(folder / INCEPTION_FILE) if inception_dir else "")

    found = [Requirement(file, slot["path"], tuple(slot["keys"]), _order(slot["stages"]), slot["folder"],
                         slot["value"]) for (file, _), slot in merged.items()]
    files = list(WHAT)  # declaration order
    return sorted(found, key=lambda r: (CONSUMERS.index(r.stages[0]), files.index(r.file), str(r.path)))


def _problem(req: Requirement) -> str | None:
    """Why ``req`` is not met, or None if it is."""
    if req.file == "dlib":
        return None if importlib.util.find_spec("dlib") is not None else "the package is not installed"
    if req.path is None:  # a package data file whose package is absent
        return "its package is not installed"
    if req.keys and not req.value:
        return "the parameter is empty; set it to the file's path in profiles/paper.yaml"
    if req.value.startswith("~"):
        return f"{req.value!r} starts with '~', which the study does not expand; write the full path"
    if req.file == "alexnet":  # any AlexNet ImageNet file in the hub cache will do (lpips_status agrees)
        folder = req.path.parent
        if folder.is_dir() and any(p.name.startswith(ALEXNET_PREFIX) for p in folder.glob("*.pth")):
            return None
        return "not in the torch hub cache (nothing is downloaded while the study runs)"
    if req.folder:
        if not req.path.is_dir():
            return "no such folder"
        if not any(p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES for p in req.path.iterdir()):
            return f"the folder holds no photos ({', '.join(sorted(PHOTO_SUFFIXES))})"
        return None
    if req.file == "lpips" and req.path.is_file():
        return _import_problem("lpips")
    if not req.path.exists():
        return "not found"
    if not req.path.is_file():
        return "it is a folder, not a file"
    if req.path.stat().st_size == 0:
        return "the file is empty (an interrupted download?); download it again"
    return None


def _import_problem(package: str) -> str | None:
    """Why an installed package cannot be imported (lpips imports torchvision, whose compiled operators fail to
    load when its build does not match torch's), or None when it imports."""
    try:
        importlib.import_module(package)
    except Exception as error:  # noqa: BLE001 - a broken dependency raises RuntimeError, OSError, ImportError, ...
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return (f"the package is installed but does not import ({type(error).__name__}: {first}); install a "
                "torchvision build that matches torch (the same CUDA or CPU variant), then check again")
    return None


def find_problems(params: Mapping[str, Any], root: str | os.PathLike | None = None,
                  stages: Iterable[str] | None = None) -> list[Problem]:
    """Unmet requirements of ``params``, restricted to the files ``stages`` need (None: every stage)."""
    wanted = None if stages is None else set(stages)
    if wanted is not None and not wanted <= set(CONSUMERS):
        raise InputError(f"unknown stage(s) {sorted(wanted - set(CONSUMERS))}; known: {', '.join(CONSUMERS)}")
    problems = []
    for req in requirements(params, root):
        if wanted is not None and not wanted & set(req.stages):
            continue
        why = _problem(req)
        if why is not None:
            problems.append(Problem(req, why))
    return problems


def _message(problems: list[Problem], profile: str) -> str:
    n = len(problems)
    head = (f"{profile} profile: {n} required file{'s are' if n > 1 else ' is'} missing, so nothing was run. "
            f"Get each one, put it at the path shown (or change the path in profiles/{profile}.yaml and run "
            f"`python -m megafr profile {profile}`), then check with `python -m megafr check`:")
    return "\n".join([head, *(f"  - {p.line()}" for p in problems)])


def check(params: Mapping[str, Any] | None = None, root: str | os.PathLike | None = None,
          stages: Iterable[str] | None = None) -> list[Requirement]:
    """Raise :class:`PreflightError` listing every missing external file; else return the requirements checked.

    ``params`` defaults to the study's ``params.yaml``; ``stages`` restricts the check to the files
    those consumers need (None: all of them).
    """
    root = Path(root) if root is not None else study_root()
    if params is None:
        params = load_params(root / PARAMS_FILE)
    stages = None if stages is None else tuple(stages)
    problems = find_problems(params, root, stages)
    if problems:
        raise PreflightError(_message(problems, params["profile"]), problems)
    return [r for r in requirements(params, root) if stages is None or set(stages) & set(r.stages)]


def stages_from(stage: str) -> tuple[str, ...]:
    """``stage`` and every pipeline stage after it."""
    if stage not in PIPELINE:
        raise InputError(f"unknown stage {stage!r}; known: {', '.join(PIPELINE)}")
    return PIPELINE[PIPELINE.index(stage):]


def check_stage(stage: str, params: Mapping[str, Any] | None = None,
                root: str | os.PathLike | None = None) -> list[Requirement]:
    """For a notebook's first cell: the files ``stage`` and every later stage need (paper profile only).

    Raises :class:`PreflightError` listing all the missing ones before the stage does any work;
    mini and smoke need nothing external and pass (mini's released files are part of the study; the
    stages check them). Returns the requirements found.
    """
    return check(params, root, stages_from(stage))


def report(requirements_found: list[Requirement], profile: str, out=None) -> None:
    """Print what was checked (for ``python -m megafr check``)."""
    out = out or sys.stdout
    if not requirements_found:
        print(f"profile {profile}: needs no external files (the pipeline builds everything it uses)", file=out)
        return
    print(f"profile {profile}: all {len(requirements_found)} external files found", file=out)
    for req in requirements_found:
        where = f" {req.path}" if req.path is not None else ""
        print(f"  ok  {req.what}{where}", file=out)
