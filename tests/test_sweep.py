"""The sweep helper: stage parameters from dvc.yaml, grids, run names, result collection."""

import json

import pytest

from megafr import sweep
from megafr.config import load_params, study_root
from megafr.errors import InputError

ROOT = study_root(__file__)


def test_stage_command_resolves_params_like_dvc():
    notebook, executed, values = sweep.stage_command("prepare", ROOT)
    params = load_params(ROOT / "params.yaml")
    assert notebook == "notebooks/01_prepare.ipynb"
    assert executed == "data/executed/01_prepare.ipynb"
    assert values["image_size"] == params["prepare"]["image_size"]
    assert values["seed"] == params["seed"]
    assert values["model_path"] == params["flame"]["model_path"]
    with pytest.raises(InputError, match="no stage"):
        sweep.stage_command("no_such_stage", ROOT)


def test_grid_and_run_names():
    points = sweep.grid({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(points) == 6 and points[0] == {"a": 1, "b": "x"} and points[-1] == {"a": 2, "b": "z"}
    assert sweep.run_name({"lambda_id": 0.5, "steps": 10}) == "lambda_id=0.5,steps=10"


def test_collect_gathers_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "study_root", lambda: tmp_path)
    for value in (1, 2):
        folder = tmp_path / sweep.SWEEPS_DIR / "demo" / f"seed={value}" / "metrics"
        folder.mkdir(parents=True)
        (folder / "prepare.json").write_text(json.dumps({"counts": {"train_images": 10 * value}}))
    table = sweep.collect("demo", "prepare")
    assert list(table["seed"]) == [1, 2]
    assert list(table["counts.train_images"]) == [10, 20]
    assert (tmp_path / sweep.SWEEPS_DIR / "demo" / "results.csv").is_file()
