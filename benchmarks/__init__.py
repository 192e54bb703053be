"""MegaFR's benchmark suite: ``python -m benchmarks`` writes ``data/benchmarks.json``.

See :mod:`benchmarks.suite` for what is measured and how; ``bench_render.py`` and ``bench_nets.py``
remain runnable on their own (``python benchmarks/bench_render.py``).
"""
