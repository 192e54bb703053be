"""MegaFR: one-shot megapixel face reenactment (Kang et al., arXiv 2205.13368).

The package holds every model, loss, renderer, data set and metric of the study;
the notebooks under ``notebooks/`` only call into it. Pieces every stage shares live in one place
each: :mod:`megafr.losses` (every training loss), :mod:`megafr.metrics` (every metric) and
:mod:`megafr.training` (data order, optimiser, checkpoints and resume, non-finite checks) and
:mod:`megafr.progress` (the training loops' progress bar and status lines). Method notes:
``docs/method.md``; how the recipes were chosen: ``docs/experiments/``.

Conventions used across modules:
- images between modules are float tensors ``[B, 3, H, W]`` in ``[-1, 1]``
  (the StyleGAN2 / e4e / pSp / LPIPS convention); images on disk are 8-bit RGB PNG;
- the 68 facial landmarks follow the iBUG order (``megafr.face3d.landmarks``);
- every module runs on CPU and GPU: tensors are created on the device of the inputs.
"""

__version__ = "0.1.0"
