"""``python -m megafr reenact``: reenact one source photo by one target photo from the command line.

The networks are the ones the ``train_reenact`` stage trained, with the values ``dvc repro`` runs it
with: its config read from ``params.yaml`` (``megafr.stages.train_reenact``). On the paper
profile real photos are first aligned the FFHQ way (dlib landmarks); on mini and smoke the inputs
are SynthHeads images, already framed, of the world's size.

Everything a user can get wrong is checked before the networks run, cheapest first, and reported
as one :class:`~megafr.errors.MegaFRError` naming the problem and the fix: the output path
(extension, not a folder, not one of the inputs, writable), both input images (readable, not empty,
tiny or huge; greyscale, alpha, palette and 16-bit files are converted, see ``megafr.imageio``), the
external files of the paper profile (all missing ones at once, ``megafr.preflight``), and the
trained E_FR checkpoint (present, readable, trained with the current settings and profile, finished). The
output is written atomically, so a failure never leaves a partial file behind.

Faces (paper profile): a photo with no face is refused; with several faces the command refuses
too, unless ``largest_face`` is set, which reenacts the largest face and warns (a silent pick of
the wrong person is worse than an error).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

from megafr.config import PARAMS_FILE, load_params, study_root
from megafr.errors import CheckpointError, InputError, NoFaceError
from megafr.fileio import ensure_writable
from megafr.imageio import image_size, image_to_tensor, load_image, output_format, save_image, tensor_to_image
from megafr.reenact.inference import Reenactor
from megafr.reenact.train import ReenactConfig, checkpoint_path, read_checkpoint
from megafr.stages import train_reenact

STAGE = "train_reenact"


class FaceChoiceWarning(UserWarning):
    """A photo held several faces and the largest was reenacted (``largest_face=True``)."""


def stage_config(root: str | os.PathLike | None = None) -> ReenactConfig:
    """The ``train_reenact`` training configuration exactly as ``dvc repro`` runs it, from ``params.yaml``."""
    root = Path(root) if root is not None else study_root()
    if not (root / "dvc.yaml").is_file():
        raise InputError(f"no dvc.yaml in {Path.cwd()} or above; run `python -m megafr reenact` inside the study "
                         "folder (the one holding dvc.yaml and params.yaml)")
    return train_reenact.load_config(root / PARAMS_FILE).training()


def check_output(out: str | os.PathLike, inputs: tuple[str | os.PathLike, ...]) -> Path:
    """Refuse an output path that cannot be written as an image, that is one of the inputs, or where no file
    can be created (permissions, a parent that is a file, a name too long): proven by a probe write."""
    out = ensure_writable(out)
    output_format(out)
    for given in inputs:
        if Path(given).exists() and out.exists() and out.resolve() == Path(given).resolve():
            raise InputError(f"--out {out} is also an input image and would be overwritten; choose another name")
    return out


def load_reenactor(cfg: ReenactConfig) -> Reenactor:
    """The trained MegaFR of ``cfg``; refuses a checkpoint that is missing, unreadable, unfinished or stale."""
    path = checkpoint_path(cfg)
    fix = f"run `dvc repro {STAGE}` to (re)train it with the current params.yaml"
    data = read_checkpoint(path)  # MissingFileError / CheckpointError name the file
    saved = data["config"] if isinstance(data["config"], dict) else {}
    if saved.get("profile") not in (None, cfg.profile):
        raise CheckpointError(f"{path} was trained on the {saved['profile']} profile but params.yaml is the "
                              f"{cfg.profile} profile; switch back with `python -m megafr profile {saved['profile']}`, "
                              f"or {fix}")
    if data["config"] != dataclasses.asdict(cfg):
        differ = sorted(k for k in set(saved) | set(dataclasses.asdict(cfg))
                        if saved.get(k) != getattr(cfg, k, None))
        raise CheckpointError(f"{path} was trained with other settings than params.yaml (differing: "
                              f"{', '.join(differ[:6])}); {fix}")
    step = data.get("step")
    if not isinstance(step, int) or step < cfg.steps:
        raise CheckpointError(f"{path} stopped at step {step} of {cfg.steps} (an interrupted training); {fix}")
    try:
        return Reenactor.from_config(cfg, data)
    except RuntimeError as error:  # load_state_dict: weights of another architecture or size
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines[:2])  # "Error(s) in loading state_dict for X:" and the first mismatch
        raise CheckpointError(f"{path} does not fit the networks it is loaded into ({detail}); {fix}") from error


def prepare_image(path: str | os.PathLike, image, size: int, profile: str, aligner=None,
                  largest_face: bool = False):
    """An input image as a tensor [1, 3, size, size]: aligned (paper) or checked for the world's size (mini)."""
    if aligner is not None:
        detections = aligner.detect_faces(image)
        faces = [d for d in detections if d.size >= aligner.min_face_size]
        if len(faces) > 1:
            if not largest_face:
                raise NoFaceError(f"{len(faces)} faces found in {path}; crop the photo to one face, or pass "
                                  "--largest-face to reenact the largest one")
            warnings.warn(f"{len(faces)} faces found in {path}; reenacting the largest one",
                          FaceChoiceWarning, stacklevel=2)
        face = aligner.select_face(faces if faces else detections, str(path))
        image = aligner.align_landmarks(image, face.landmarks, source=str(path)).image
    elif image.shape[:2] != (size, size):
        raise _other_world(path, image.shape[1], image.shape[0], size, profile)
    return image_to_tensor(image).unsqueeze(0)


def _other_world(path, width: int, height: int, size: int, profile: str) -> InputError:
    return InputError(f"{path} is {width}x{height} px; the {profile} world reenacts "
                      f"{size}x{size} SynthHeads images (data/prepare/...). For real photos use the paper "
                      "profile (`python -m megafr profile paper`), which aligns them first")


def world_image_size(root: str | os.PathLike | None = None) -> int:
    """The image side the study's networks work at: ``prepare.image_size`` of ``params.yaml`` (read alone: the
    prepare stage's whole config would also check its data folders, which the command does not need)."""
    root = Path(root) if root is not None else study_root()
    size = load_params(root / PARAMS_FILE).get("prepare", {}).get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InputError(f"prepare.image_size in {root / PARAMS_FILE} must be a positive integer, got {size!r}; "
                         "restore the profile with `python -m megafr profile <name>`")
    return size


def check_input_header(path: str | os.PathLike, size: int, profile: str) -> None:
    """Refuse an input from its header, before decoding: unreadable, empty, tiny or huge files, and on mini and
    smoke (inputs are not aligned there) an image of another size than the world's."""
    width, height = image_size(path)
    if profile != "paper" and (width, height) != (size, size):
        raise _other_world(path, width, height, size, profile)


def reenact_files(source: str, target: str, out: str, refine_steps: int = 1, pti_steps: int = 0,
                  largest_face: bool = False) -> Path:
    """Reenact ``source`` by ``target`` and write the result to ``out``; return its path (module docstring:
    checks, order, faces)."""
    if refine_steps < 0 or pti_steps < 0:
        raise InputError(f"refine_steps and pti_steps must be >= 0, got {refine_steps} and {pti_steps}")
    out_path = check_output(out, (source, target))
    cfg = stage_config()
    size = world_image_size()
    for path in (source, target):
        check_input_header(path, size, cfg.profile)
    images = [load_image(source), load_image(target)]  # uint8 [H, W, 3] each
    aligner = None
    if cfg.profile == "paper":
        from megafr import preflight
        from megafr.datasets.align import FaceAligner

        preflight.check(stages=(preflight.REENACT_CLI,))
        aligner = FaceAligner(size, multiple="largest")
    # faces are found and aligned (paper) before any network loads
    x_source, x_target = (prepare_image(path, image, size, cfg.profile, aligner, largest_face)
                          for path, image in zip((source, target), images))
    reenactor = load_reenactor(cfg)
    if reenactor.model.generator.size != size:
        raise CheckpointError(f"{checkpoint_path(cfg)}: its generator makes {reenactor.model.generator.size} px "
                              f"images but prepare.image_size is {size}; run `dvc repro {STAGE}` to retrain it "
                              "with the current params.yaml")
    result = reenactor.reenact(x_source, x_target, refine_steps=refine_steps, pti_steps=pti_steps)
    return save_image(out_path, tensor_to_image(result.image[0]))
