"""Parameter sweeps: run one stage's notebook over a grid of values with papermill.

The values a stage runs with are read from its ``cmd`` in ``dvc.yaml`` (its ``-p name ${key}``
pairs resolved against ``params.yaml``), so a sweep starts from exactly what ``dvc repro`` runs
and overrides only the swept names. Each run writes, under ``data/sweeps/<sweep>/<run>/``,
its executed notebook and the stage's metrics, plots and figures (the notebook's ``run_dir``
parameter redirects them), leaving the canonical pipeline's outputs alone. Runs whose executed
notebook already exists are skipped, so an interrupted sweep resumes where it stopped.
``collect`` gathers every run's metrics into one table (``results.csv``).

DVC's own way, ``dvc exp run --queue -S stage.key=value``, works too; this helper exists for
notebook-level sweeps that must not touch the DVC cache.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import yaml

from megafr.config import load_params, study_root
from megafr.errors import InputError
from megafr.fileio import atomic_write

_TEMPLATE = re.compile(r"\$\{([^}]+)\}")
SWEEPS_DIR = "data/sweeps"


def _lookup(params: Mapping[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise InputError(f"dvc.yaml refers to ${{{dotted}}}, which params.yaml does not define")
        value = value[part]
    return value


def stage_command(stage: str, root: Path | None = None) -> tuple[str, str, dict[str, Any]]:
    """The notebook, executed-notebook path and ``-p`` parameters of ``stage`` as ``dvc repro`` runs it."""
    root = root or study_root()
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    stages = pipeline.get("stages", {})
    if stage not in stages:
        raise InputError(f"no stage {stage!r} in dvc.yaml; stages: {', '.join(stages)}")
    params = load_params(root / "params.yaml")
    cmd = _TEMPLATE.sub(lambda m: str(_lookup(params, m.group(1))), stages[stage]["cmd"])
    words = shlex.split(cmd)
    positional = [w for i, w in enumerate(words) if w.endswith(".ipynb")]
    if len(positional) != 2:
        raise InputError(f"stage {stage!r} does not run `papermill <notebook> <executed notebook>`")
    values: dict[str, Any] = {}
    for i, word in enumerate(words):
        if word == "-p":
            values[words[i + 1]] = yaml.safe_load(words[i + 2]) if words[i + 2] != "" else ""
    return positional[0], positional[1], values


def grid(axes: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, in a stable order."""
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(list(axes[n]) for n in names))]


def run_name(overrides: Mapping[str, Any]) -> str:
    """Folder name of a run, from its parameters (``lambda_id=0.5,steps=100``)."""
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"


def run_sweep(stage: str, name: str, axes: Mapping[str, Iterable[Any]], *, progress: bool = True) -> pd.DataFrame:
    """Run ``stage``'s notebook once per grid point under ``data/sweeps/<name>/`` and return the results table."""
    import papermill

    root = study_root()
    notebook, _, base = stage_command(stage, root)
    unknown = sorted(set(axes) - set(base))
    if unknown:
        raise InputError(f"stage {stage!r} has no parameter(s) {unknown}; it takes {sorted(base)}")
    sweep_dir = root / SWEEPS_DIR / name
    for overrides in grid(axes):
        run_dir = sweep_dir / run_name(overrides)
        executed = run_dir / Path(notebook).name
        if executed.exists():
            continue  # finished earlier: a resumed sweep skips it
        run_dir.mkdir(parents=True, exist_ok=True)
        values = {**base, **overrides, "run_dir": str(run_dir.relative_to(root))}
        partial = run_dir / (executed.name + ".partial")
        papermill.execute_notebook(str(root / notebook), str(partial), parameters=values, cwd=str(root),
                                   progress_bar=progress)
        partial.replace(executed)
    return collect(name, stage)


def collect(name: str, stage: str) -> pd.DataFrame:
    """One row per finished run of sweep ``name``: its parameters and flattened metrics; also ``results.csv``."""
    sweep_dir = study_root() / SWEEPS_DIR / name
    rows = []
    for metrics_file in sorted(sweep_dir.glob(f"*/metrics/{stage}.json")):
        run = metrics_file.parent.parent.name
        row = dict(part.split("=", 1) for part in run.split(",") if "=" in part)
        row = {k: yaml.safe_load(v) for k, v in row.items()}
        row["run"] = run
        row.update(pd.json_normalize(json.loads(metrics_file.read_text()), sep=".").iloc[0].to_dict())
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        with atomic_write(sweep_dir / "results.csv", "w") as handle:
            table.to_csv(handle, index=False)
    return table
