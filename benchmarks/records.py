"""Per-stage wall time of the last ``dvc repro``, read from what the pipeline leaves behind (nothing is run).

Two sources, each labelled in the output with the file it came from:

- ``data/logs/<stage>.json``: the training loop's wall time, step count and seconds per step, written
  by the pretraining stages (``megafr.pretrain.common.write_run_record``) outside their tracked outputs;
- ``data/executed/<NN>_<stage>.ipynb``: papermill's record of the whole notebook
  (``metadata.papermill``: ``duration`` in seconds, start and end time, whether it raised).

A stage whose notebook is still running (or was killed) has no duration yet; it is listed
without one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RUN_RECORDS = "data/logs/*.json"  # megafr.training.run_log_path of each stage
EXECUTED_DIR = Path("data/executed")
NOTEBOOK_NAME = re.compile(r"^\d+_(?P<stage>.+)$")  # 02_train_face3d -> train_face3d


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def run_records(root: Path) -> dict[str, dict]:
    """``{stage: {numeric fields of data/logs/<stage>.json, "source": path}}``."""
    out = {}
    for path in sorted(root.glob(RUN_RECORDS)):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "train_seconds" not in numbers:
            continue  # not one training loop's record (the ablations' log holds one time per ablation)
        out[path.stem] = {**numbers, "source": _relative(path, root)}
    return out


def notebook_records(root: Path) -> dict[str, dict]:
    """``{stage: {"duration_s", "start_time", "end_time", "finished", "source"}}`` from papermill's metadata."""
    out = {}
    for path in sorted((root / EXECUTED_DIR).glob("*.ipynb")):
        try:
            meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        except (OSError, json.JSONDecodeError):
            continue
        match = NOTEBOOK_NAME.match(path.stem)
        stage = match.group("stage") if match else path.stem
        duration = meta.get("duration")
        record = {"start_time": meta.get("start_time"), "end_time": meta.get("end_time"),
                  "finished": duration is not None and not meta.get("exception"), "source": _relative(path, root)}
        if duration is not None:
            record["duration_s"] = float(duration)
        out[stage] = record
    return out


def pipeline_records(root: Path) -> dict:
    """Both sources, and the sum of the finished notebooks' durations."""
    notebooks = notebook_records(root)
    finished = [r["duration_s"] for r in notebooks.values() if r["finished"]]
    return {
        "note": "read from the last dvc repro's records, not measured by this suite",
        "notebooks": notebooks,
        "training_loops": run_records(root),
        "finished_notebooks": len(finished),
        "finished_notebooks_total_s": sum(finished),
    }
