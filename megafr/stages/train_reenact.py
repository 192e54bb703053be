"""Stage ``train_reenact``: E_FR (paper section 3.3) for every variant ``encoder:condition``, then scored.

The stage's config is E_FR's training config (:class:`~megafr.reenact.train.ReenactConfig`, which
checkpoints record and the ``reenact`` command checks) plus what the stage does around training:
which variants, how many train at a time on a CPU, and the pairs and refinement steps they are scored on.
"""

from __future__ import annotations

import dataclasses

from megafr import stages
from megafr.config import require
from megafr.reenact.stage import parse_steps, parse_variants
from megafr.reenact.train import ReenactConfig

STAGE = "train_reenact"


@dataclasses.dataclass(frozen=True)
class TrainReenactConfig(ReenactConfig):
    variants: str  # variants trained, comma-separated encoder:condition (e4e:render is MegaFR (e4e))
    eval_dir: str  # cross-reenactment pairs the variants are scored on (source, target, truth .npy)
    eval_pairs: int  # first pairs of it scored
    refine_steps: str  # refinement steps scored, comma-separated (0: one application of F)
    variant_workers: int  # variants trained at a time, in CPU processes sharing the cores (1 on a GPU)
    run_dir: str = ""  # set by a sweep: checkpoints, metrics and figures go under <run_dir>/ instead

    def __post_init__(self):
        super().__post_init__()
        parse_variants(self.variants)
        parse_steps(self.refine_steps)
        require(self.eval_pairs >= 1, f"train_reenact.eval_pairs must be >= 1, got {self.eval_pairs}")
        require(self.variant_workers >= 1, f"train_reenact.variant_workers must be >= 1, got {self.variant_workers}")

    def training(self) -> ReenactConfig:
        """E_FR's training config (what checkpoints record), its ``out_dir`` under ``run_dir`` for a sweep run."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(ReenactConfig)}
        if self.run_dir:
            values["out_dir"] = f"{self.run_dir}/{STAGE}"
        return ReenactConfig(**values)


CONFIG = TrainReenactConfig
SHARED = {"profile": "profile", "seed": "seed", "model_path": "flame.model_path",
          "landmark_path": "flame.landmark_path"}
PRODUCTS = {"out_dir": "data/train_reenact"}
load_config = stages.loader(__name__)
