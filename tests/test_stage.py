"""Stage outputs (finite metrics, sweep runs under their own folder) and the runner that validates first."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from megafr import stage


def _env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def test_numeric_leaves_rejects_strings_and_nan():
    assert stage.numeric_leaves({"a": 1, "b": {"c": 2.5}}) == {"a": 1, "b": {"c": 2.5}}
    with pytest.raises(TypeError, match="b.c"):
        stage.numeric_leaves({"b": {"c": "x"}})
    with pytest.raises(ValueError, match="non-finite"):
        stage.numeric_leaves({"a": math.nan})


def test_write_outputs_to_a_run_dir(tmp_path):
    paths = stage.write_outputs("demo", {"x": 1}, {"curve": pd.DataFrame({"step": [0, 1], "loss": [2.0, 1.0]})},
                                run_dir=str(tmp_path / "run"))
    assert paths[0] == tmp_path / "run" / "metrics" / "demo.json"
    assert json.loads(paths[0].read_text()) == {"x": 1}
    assert pd.read_csv(paths[1])["loss"].tolist() == [2.0, 1.0]
    assert stage.figure_path("demo", "grid", str(tmp_path / "run")) == tmp_path / "run" / "figures" / "demo_grid.png"


# ------------------------------------------------------------------------------------------ the runner
def test_run_validates_the_whole_params_file_before_running_the_notebook(tmp_path, monkeypatch):
    import shutil

    import yaml

    from megafr import runner
    from megafr.config import load_params, profile_file, study_root
    from megafr.errors import InputError

    root = study_root(__file__)
    shutil.copy(root / "dvc.yaml", tmp_path / "dvc.yaml")
    params = load_params(profile_file("smoke", root))
    params["figures"]["fsp"] = 8  # a typo in the last stage's block stops the first stage too
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "execute", lambda *a, **k: pytest.fail("the notebook ran despite a bad value"))
    with pytest.raises(InputError, match=r"unknown parameter figures.fsp \(did you mean figures.fps\?\)"):
        runner.run_stage("prepare")


def test_a_failing_cell_is_one_line_naming_the_record(tmp_path):
    from megafr.runner import StageFailed

    user = StageFailed("01_prepare.ipynb", 4, "InputError", "prepare.photos_dir is not a folder", tmp_path / "x.ipynb")
    bug = StageFailed("01_prepare.ipynb", 4, "ZeroDivisionError", "division by zero", tmp_path / "x.ipynb")
    assert user.user_error and not bug.user_error
    assert str(bug) == ("01_prepare.ipynb failed in cell 4: ZeroDivisionError: division by zero "
                        f"(traceback in {tmp_path / 'x.ipynb'})")


@pytest.mark.slow
def test_a_bad_value_leaves_the_last_good_outputs_in_place(tmp_path):
    """dvc repro on a copy of the study (smoke): a bad value stops the pipeline in the validate stage,
    before DVC deletes the outputs of the stage that reads it; fixing it runs nothing else again."""
    import hashlib

    import yaml

    from tests.test_pipeline import _copy_study, _run

    study = _copy_study(tmp_path)
    _run(["dvc", "repro", "prepare"], study, timeout=600)
    products = sorted(p for p in (study / "data").rglob("*") if p.is_file() and "prepare" in str(p))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in products}
    assert any("data/prepare/" in str(p) for p in before) and (study / "data/metrics/prepare.json") in before
    good = (study / "params.yaml").read_text()
    for key, value, words in (("max_yaw_deg", "abc", "prepare.max_yaw_deg must be float, got 'abc'"),
                              ("max_yaw_deg", float("inf"), "prepare.max_yaw_deg must be a finite number"),
                              ("max_yaw_dg", 30.0, "did you mean prepare.max_yaw_deg?")):
        params = yaml.safe_load(good)
        params["prepare"][key] = value
        (study / "params.yaml").write_text(yaml.safe_dump(params))
        result = subprocess.run(["dvc", "repro", "prepare"], cwd=study, capture_output=True, text=True,
                                env=_env(), timeout=600)
        assert result.returncode != 0 and words in result.stdout + result.stderr, result.stderr[-2000:]
        assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in products if p.exists()} == before
    (study / "params.yaml").write_text(good)
    again = _run(["dvc", "repro", "prepare"], study, timeout=600)
    assert "Running stage 'validate'" in again and "Running stage 'prepare'" not in again, again
