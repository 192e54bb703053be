"""Train every E_FR variant of the active profile on several GPUs: ``torchrun --nproc_per_node N -m megafr.reenact.multigpu``.

Reads the ``train_reenact`` stage's config from ``params.yaml`` through :mod:`megafr.stages` (as the
stage's notebook does) and trains each variant under :mod:`megafr.distributed` (each process a share of the global batch of
``N * batch_size`` pairs; rank 0 writes the checkpoints). The checkpoints are train_reenact's own,
so a following ``dvc repro`` finds them complete (same configuration and inputs) and goes
straight to scoring. Started without torchrun it trains in one process, like the stage.
"""

from __future__ import annotations

import argparse
import dataclasses

from megafr import distributed
from megafr.config import PARAMS_FILE, study_path
from megafr.datasets.loader import open_images
from megafr.reenact.stage import parse_variants
from megafr.reenact.train import ReenactConfig, load_frozen, train
from megafr.stages.train_reenact import load_config


def reenact_config(params_file: str = PARAMS_FILE) -> tuple[ReenactConfig, str]:
    """(E_FR's training config, the variants string) of the ``train_reenact`` stage, read as its notebook reads them."""
    stage = load_config(params_file)
    return stage.training(), stage.variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    here = distributed.setup()
    try:
        cfg, variants = reenact_config(args.params)
        images = open_images(study_path(cfg.train_images))
        for encoder, condition in parse_variants(variants):
            variant = dataclasses.replace(cfg, encoder=encoder, condition=condition)
            train(variant, load_frozen(variant), images, progress=here.main)
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
