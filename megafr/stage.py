"""What every stage writes at the end: DVC metrics (JSON with numeric leaves) and plot records (CSV).

Paths follow ``dvc.yaml``: ``data/metrics/<stage>.json``, ``data/plots/<stage>_<name>.csv`` and
``data/figures/<stage>_<name>.png``. A sweep run passes ``run_dir`` and gets the same layout under
``data/sweeps/<sweep>/<run>/`` instead, so the canonical pipeline's outputs stay untouched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from megafr.config import study_path
from megafr.fileio import atomic_write, write_json



def numeric_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Check that every leaf of a metrics tree is a finite number (``dvc metrics`` shows only those)."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            numeric_leaves(value, name + ".")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"metric {name} must be a number, got {value!r}")
        elif not math.isfinite(value):
            raise ValueError(f"metric {name} is {value}; a stage must not report non-finite metrics")
    return dict(tree)


def _folder(kind: str, run_dir: str) -> Path:
    """Canonical ``data/<kind>`` folder, or ``<run_dir>/<kind>`` for a sweep run."""
    return study_path(run_dir) / kind if run_dir else study_path(f"data/{kind}")


def figure_path(stage: str, name: str, run_dir: str = "") -> Path:
    """``data/figures/<stage>_<name>.png`` (or under ``run_dir`` for a sweep run)."""
    return _folder("figures", run_dir) / f"{stage}_{name}.png"


def write_outputs(
    stage: str, metrics: Mapping[str, Any], plots: Mapping[str, pd.DataFrame] | None = None, run_dir: str = ""
) -> list[Path]:
    """Write ``data/metrics/<stage>.json`` and ``data/plots/<stage>_<name>.csv`` (or the same under
    ``run_dir`` for a sweep run, leaving the canonical outputs alone); return the paths."""
    written = [_folder("metrics", run_dir) / f"{stage}.json"]
    write_json(written[0], numeric_leaves(metrics))
    for name, table in (plots or {}).items():
        path = _folder("plots", run_dir) / f"{stage}_{name}.csv"
        with atomic_write(path, "w") as handle:
            table.to_csv(handle, index=False, float_format="%.6g")
        written.append(path)
    return written
