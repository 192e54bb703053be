"""Configuration of the ``figures`` stage and loading the trained MegaFR it shows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megafr.config import build_config, comma_list, require, require_at_least, study_path
from megafr.datasets.prepare import SOURCES
from megafr.errors import CheckpointError
from megafr.face3d import headmodel
from megafr.reenact.inference import Reenactor
from megafr.reenact.train import ReenactConfig, checkpoint_path, read_checkpoint

NETWORK_FILES = ("generator_path", "e4e_path", "psp_path", "face3d_path", "idnet_path", "model_path", "landmark_path")


@dataclass(frozen=True)
class FiguresConfig:
    profile: str  # world the networks were trained in; every figure title names it
    checkpoint: str  # E_FR checkpoint shown (train_reenact's megafr_<encoder>_<condition>.pt)
    generator_path: str  # StyleGAN2 file (rosinality layout)
    e4e_path: str  # e4e file
    psp_path: str  # pSp file (used when the checkpoint's encoder is psp)
    face3d_path: str  # train_face3d checkpoint (measures yaw, pitch, landmarks of every output)
    idnet_path: str  # ArcFace file
    model_path: str  # FLAME-format model
    landmark_path: str  # its landmark embedding
    directions_path: str  # linear latent directions (evaluate stage): the yaw/pitch baseline
    eval_dir: str  # prepare's evaluation sets: cross/, frontal/, eyes/, talking/
    test_dir: str  # prepare's test split (images.npy, meta.parquet): grid and sweep inputs
    source: str  # prepare.source: "synthetic" (right answers of any edit re-rendered by the world) or "photos" (none)
    refine_steps: int  # extra refinement steps of every output but the refinement figure's
    grid_sources: int  # rows of the sources x targets grid
    grid_targets: int  # its columns
    extreme_pairs: int  # rows of the refinement figure (largest target yaw, then largest jaw)
    max_refine: int  # the refinement figure shows refine 0 .. max_refine
    control_sources: int  # sources averaged in the requested-vs-measured angle plots
    control_angles: int  # angles per yaw or pitch sweep (evenly spaced, symmetric around 0)
    yaw_max_deg: float  # the yaw sweep spans -yaw_max_deg .. +yaw_max_deg
    pitch_max_deg: float  # the pitch sweep spans -pitch_max_deg .. +pitch_max_deg
    frontal_inputs: int  # inputs of the frontalization figure, spread over the yaws of the set
    eye_sources: int  # closed-eye sources of the eye-opening figure
    eye_components: str | int  # expression components of the eyelids: head model names or indices, comma-separated (one index may be an int)
    eye_closed_value: float  # their value with the eyes closed (degree 0)
    eye_open_value: float  # their value with the eyes fully open (degree 1)
    talking_frames: int  # frames of the talking-head sequence used (0: all)
    fps: int  # frame rate of the talking-head MP4 and GIF
    video_scale: int  # nearest-neighbour enlargement of the video frames
    threads: int  # torch intra-op threads (0: torch's default)
    run_dir: str = ""  # set by a sweep: figures, metrics and plots go under <run_dir>/ instead

    def __post_init__(self):
        require_at_least("figures", self, (("grid_sources", 1), ("grid_targets", 1), ("extreme_pairs", 1),
                                           ("control_sources", 1), ("frontal_inputs", 1), ("eye_sources", 1),
                                           ("fps", 1), ("video_scale", 1), ("refine_steps", 0), ("max_refine", 0),
                                           ("talking_frames", 0), ("threads", 0)))
        require(self.source in SOURCES, f"figures.source must be one of {SOURCES} (prepare.source), got {self.source!r}")
        require(self.control_angles >= 2, f"figures.control_angles must be >= 2, got {self.control_angles}")
        require(0 < self.yaw_max_deg <= 90 and 0 < self.pitch_max_deg <= 90,
                f"figures.yaw_max_deg and pitch_max_deg must be in (0, 90], got {self.yaw_max_deg}, {self.pitch_max_deg}")
        require(self.talking_frames == 0 or self.talking_frames >= 3,
                f"figures.talking_frames must be 0 (all) or >= 3 (jitter needs a second difference), got {self.talking_frames}")
        require(self.eye_closed_value != self.eye_open_value,
                "figures.eye_closed_value and eye_open_value must differ (they define the opening degree)")
        parse_components(self.eye_components)

    @property
    def render_truth(self) -> bool:
        """Whether right answers can be rendered: only the synthetic world knows every scene's parameters."""
        return self.source == "synthetic"

    @property
    def network_files(self) -> dict[str, str]:
        """The frozen networks' files, as keyword arguments of :func:`load_reenactor`."""
        return {name: getattr(self, name) for name in NETWORK_FILES}

    def world(self) -> str:
        """``"mini world"``, ``"smoke world"`` or ``"paper world"``: the label every figure title carries."""
        return f"{self.profile} world"


def parse_components(text: str | int, names: tuple[str, ...] = headmodel.EXPRESSION_COMPONENTS) -> tuple[int, ...]:
    """``"blink_left,blink_right"`` (names of the synthetic head model), ``"1,2"`` or ``1`` (a single index, as
    ``-p eye_components 1`` arrives) -> expression indices."""
    indices = []
    for item in comma_list(text):
        if item.isdigit():
            indices.append(int(item))
        else:
            require(item in names, f"expression component {item!r} is not a head model component; "
                                   f"use an index or one of {', '.join(names)}")
            indices.append(names.index(item))
    require(bool(indices), "figures.eye_components must name at least one expression component that closes the eyes "
                           "(the synthetic head model's blink_left,blink_right; FLAME 2020's PCA expression space has "
                           "no eyelid component, so on the paper profile give the indices that do it in your model)")
    return tuple(indices)


def load_reenactor(checkpoint: str | Path, *, generator_path: str, e4e_path: str, psp_path: str, face3d_path: str,
                   idnet_path: str, model_path: str, landmark_path: str) -> Reenactor:
    """A trained MegaFR ready for inference, from its E_FR checkpoint and the frozen networks' files.

    The checkpoint's recorded config gives the encoder, condition and edited W+ groups; the file
    paths given here replace the recorded ones (so a study that moved still loads), and the
    latent discriminator and LPIPS, which only training needs, are not loaded.
    """
    path = study_path(checkpoint)
    data = read_checkpoint(path)
    values = {**data["config"], "generator_path": generator_path, "e4e_path": e4e_path, "psp_path": psp_path,
              "face3d_path": face3d_path, "idnet_path": idnet_path, "model_path": model_path,
              "landmark_path": landmark_path, "out_dir": str(path.parent), "lambda_latent": 0.0, "lambda_lpips": 0.0}
    try:
        cfg = build_config(ReenactConfig, values)
    except Exception as error:
        raise CheckpointError(f"{path}: its recorded config does not fit this code's ReenactConfig ({error})") from error
    if checkpoint_path(cfg).resolve() != path.resolve():
        raise CheckpointError(f"{path}: a checkpoint of encoder {cfg.encoder!r} and condition {cfg.condition!r} must be "
                              f"named {checkpoint_path(cfg).name} (train_reenact's naming); rename it or pass that file")
    return Reenactor.from_config(cfg, data)


def use_threads(threads: int) -> int:
    """Set torch's intra-op threads (0 leaves the default); return the number in use."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
