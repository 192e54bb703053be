"""The ``evaluate`` stage (notebook 07): the paper's Tables 1 and 2 rebuilt, and the ablations.

- :mod:`megafr.evaluate.external`: the paper's own metrics (FID with clean-fid's Inception, LPIPS
  AlexNet, ID similarity with ArcFace IR-SE50), each computed only where its weights are on the
  machine and otherwise reported as "n/a" with the reason;
- :mod:`megafr.evaluate.linear`: the linear-latent-direction baseline (InterFaceGAN-style);
- :mod:`megafr.evaluate.registry`: table rows by registration (``register_method``); the rows
  themselves live in :mod:`megafr.evaluate.rows`, one module per row family;
- :mod:`megafr.evaluate.tables`: Table 1 (cross reenactment) and Table 2 (frontalization): their
  scores, and the paper's published numbers kept apart;
- :mod:`megafr.evaluate.ablations`: E_FR re-trained with one loss weight at zero, with other
  W+ layer groups, fed raw FLAME parameters instead of the rendering, and evaluated at 0-3
  refinement steps, each once per seed (mean and std over seeds);
- :mod:`megafr.evaluate.claims`: the paper's claims judged on the per-seed ablations (signed
  effects, mean and std over seeds, a verdict by one rule);
- :mod:`megafr.evaluate.stage`: the stage's configuration and the glue the notebook calls.

Metric definitions are pinned in ``docs/metrics.md``.
"""
