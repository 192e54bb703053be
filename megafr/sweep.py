"""Parameter sweeps: run one stage's notebook over a grid of values with papermill.

A run starts from the stage's config as ``dvc repro`` runs it (``params.yaml``) and overrides only
the swept fields, which the notebook applies itself (its ``overrides`` parameter); nothing is read
from ``dvc.yaml``. Every grid point's config is built and checked before the first run starts, so a
misspelled name or a bad value is one error line and no run. Each run writes, under
``data/sweeps/<sweep>/<run>/``, its executed notebook and the stage's metrics, plots and figures
(the notebook's ``run_dir`` parameter redirects them), leaving the canonical pipeline's outputs
alone. Runs whose executed notebook already exists are skipped, so an interrupted sweep resumes
where it stopped; a run that fails keeps its notebook as ``<notebook>.failed.ipynb`` for the
traceback and is retried next time. ``collect`` gathers every run's metrics into ``results.csv``.

DVC's own way, ``dvc exp run --queue -S stage.key=value``, works too; this helper exists for
notebook-level sweeps that must not touch the DVC cache.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import quote, unquote

import pandas as pd
import yaml

from megafr import stages
from megafr.config import PARAMS_FILE, load_params, study_root
from megafr.fileio import atomic_write
from megafr.runner import StageFailed, execute

SWEEPS_DIR = "data/sweeps"
FAILED_SUFFIX = ".failed.ipynb"
NAME_SAFE = ".-_+:"  # characters of a value kept as they are in a run's folder name (letters and digits too)


def grid(axes: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, in a stable order."""
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(list(axes[n]) for n in names))]


def run_name(overrides: Mapping[str, Any]) -> str:
    """Folder name of a run, from its parameters (``lambda_id=0.5,steps=100``). Values are percent-encoded
    where a character would split the name or the folder (``/``, ``,``, ``=``, ``%``): ``release/mini/e4e.pt``
    becomes ``release%2Fmini%2Fe4e.pt``, so distinct values give distinct folders and :func:`collect`
    reads the values back exactly."""
    return ",".join(f"{k}={quote(str(v), safe=NAME_SAFE)}" for k, v in overrides.items()) or "base"


def check_grid(stage: str, axes: Mapping[str, Iterable[Any]], root: Path) -> list[dict[str, Any]]:
    """The grid's points, once each point's config is built (unknown names, types, ranges, finiteness)."""
    params = load_params(root / PARAMS_FILE)
    points = grid(axes)
    for overrides in points:
        stages.config_from(stage, params, overrides)
    return points


def run_sweep(stage: str, name: str, axes: Mapping[str, Iterable[Any]], *, progress: bool = True) -> pd.DataFrame:
    """Run ``stage``'s notebook once per grid point under ``data/sweeps/<name>/`` and return the results table."""
    root = study_root()
    notebook = root / stages.notebook(stage)
    sweep_dir = root / SWEEPS_DIR / name
    for overrides in check_grid(stage, axes, root):
        run_dir = sweep_dir / run_name(overrides)
        executed = run_dir / notebook.name
        if executed.exists():
            continue  # finished earlier: a resumed sweep skips it
        partial = run_dir / (executed.name + ".partial")
        parameters = {"overrides": overrides, "run_dir": str(run_dir.relative_to(root))}
        try:
            execute(notebook, partial, parameters, root=root, progress=progress)
        except StageFailed as error:
            failed = run_dir / (notebook.stem + FAILED_SUFFIX)
            partial.replace(failed)
            raise error.moved(failed.relative_to(root)) from None
        partial.replace(executed)
    return collect(name, stage)


def collect(name: str, stage: str) -> pd.DataFrame:
    """One row per finished run of sweep ``name``: its parameters and flattened metrics; also ``results.csv``."""
    sweep_dir = study_root() / SWEEPS_DIR / name
    rows = []
    for metrics_file in sorted(sweep_dir.glob(f"*/metrics/{stage}.json")):
        run = metrics_file.parent.parent.name
        row = dict(part.split("=", 1) for part in run.split(",") if "=" in part)
        row = {k: yaml.safe_load(unquote(v)) for k, v in row.items()}
        row["run"] = run
        row.update(pd.json_normalize(json.loads(metrics_file.read_text()), sep=".").iloc[0].to_dict())
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        with atomic_write(sweep_dir / "results.csv", "w") as handle:
            table.to_csv(handle, index=False)
    return table
