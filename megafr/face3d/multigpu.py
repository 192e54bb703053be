"""Train the 3D face reconstruction network on several GPUs: ``torchrun --nproc_per_node N -m megafr.face3d.multigpu``.

Reads the ``train_face3d`` stage's config from ``params.yaml`` (the same config its notebook builds),
opens the training split (images stay on disk and are read per batch) and trains under
:mod:`megafr.distributed`: each process takes its share of the global batch of ``N * batch_size``
images and renders its share of the silhouette images (:func:`megafr.face3d.train.silhouette_share`);
rank 0 writes the checkpoint. It is the stage's own checkpoint, so a
following ``dvc repro`` finds it complete (same configuration and inputs) and goes straight to the
evaluation. Started without torchrun it trains in one process, like the stage.
"""

from __future__ import annotations

import argparse

from megafr import distributed
from megafr.config import PARAMS_FILE
from megafr.face3d.train import load_landmark_set, train_face3d
from megafr.stages.train_face3d import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    here = distributed.setup()
    try:
        cfg = load_config(args.params)
        result = train_face3d(cfg, load_landmark_set(cfg, "train"), progress=here.main)
        if here.main:
            print(f"train_face3d: {result.steps_run} steps on {here.size} processes in {result.seconds:.0f} s "
                  f"(resumed from step {result.resumed_from}); checkpoint {cfg.checkpoint_path}")
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
