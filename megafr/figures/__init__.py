"""The ``figures`` stage (notebook 08) and the applications of MegaFR, one function per figure.

- :mod:`~megafr.figures.config`: the stage's frozen config, loading a trained MegaFR;
- :mod:`~megafr.figures.inputs`: the examples each figure shows, with right answers where known;
- :mod:`~megafr.figures.panels`: the sources x targets grid, refinement, yaw/pitch control,
  frontalization and eye opening figures;
- :mod:`~megafr.figures.talking`: talking head, its MP4/GIF and landmark jitter;
- :mod:`~megafr.figures.explore`: the slider explorer of ``notebooks/explore.ipynb``;
- :mod:`~megafr.figures.stage`: the stage's metrics and plot records.
"""
