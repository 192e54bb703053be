"""Train every E_FR variant of the active profile on several GPUs: ``torchrun --nproc_per_node N -m megafr.reenact.multigpu``.

Reads ``params.yaml`` (the ``train_reenact`` block, with ``profile``, ``seed`` and the ``flame``
files), builds the same :class:`ReenactConfig` per variant as the stage's notebook does, and trains
each under :mod:`megafr.distributed` (each process a share of the global batch of
``N * batch_size`` pairs; rank 0 writes the checkpoints). The checkpoints are train_reenact's own,
so a following ``dvc repro`` finds them complete (same configuration and inputs) and goes
straight to scoring. Started without torchrun it trains in one process, like the stage.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from megafr import distributed
from megafr.config import PARAMS_FILE, build_config, load_params, study_path
from megafr.datasets.loader import open_images
from megafr.reenact.stage import parse_variants
from megafr.reenact.train import ReenactConfig, load_frozen, train

STAGE_ONLY_KEYS = ("variants", "eval_dir", "eval_pairs", "refine_steps", "run_dir")  # notebook parameters, not config


def reenact_config(params: dict[str, Any]) -> tuple[ReenactConfig, str]:
    """(the base config, the variants string) from a params mapping laid out like ``params.yaml``."""
    block = dict(params.get("train_reenact") or {})
    variants = str(block.get("variants", "e4e:render"))
    values = {k: v for k, v in block.items() if k not in STAGE_ONLY_KEYS}
    flame = params.get("flame") or {}
    values.setdefault("profile", params.get("profile"))
    values.setdefault("seed", params.get("seed"))
    values.setdefault("model_path", flame.get("model_path"))
    values.setdefault("landmark_path", flame.get("landmark_path"))
    values.setdefault("out_dir", "data/train_reenact")
    return build_config(ReenactConfig, values), variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    here = distributed.setup()
    try:
        cfg, variants = reenact_config(load_params(args.params))
        images = open_images(study_path(cfg.train_images))
        for encoder, condition in parse_variants(variants):
            variant = dataclasses.replace(cfg, encoder=encoder, condition=condition)
            train(variant, load_frozen(variant), images, progress=here.main)
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
