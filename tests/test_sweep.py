"""The sweep helper: grids checked before any run, overrides instead of dvc.yaml parsing, result collection."""

import json
import shutil

import pytest

from megafr import sweep
from megafr.__main__ import main
from megafr.config import load_params, profile_file, study_root
from megafr.errors import InputError
from megafr.runner import StageFailed

ROOT = study_root(__file__)


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A scratch study: dvc.yaml, the stage notebooks, params.yaml = the smoke profile."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copy(profile_file("smoke", ROOT), tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_check_grid_builds_every_point_from_params_yaml(study):
    points = sweep.check_grid("prepare", {"max_yaw_deg": [30.0, 45], "seed": [1]}, study)
    assert points == [{"max_yaw_deg": 30.0, "seed": 1}, {"max_yaw_deg": 45, "seed": 1}]
    with pytest.raises(InputError, match=r"override max_yaw \(did you mean max_yaw_deg\?\): stage prepare"):
        sweep.check_grid("prepare", {"max_yaw": [30.0]}, study)
    with pytest.raises(InputError, match="no stage 'prepar'; did you mean prepare"):
        sweep.check_grid("prepar", {"seed": [1]}, study)


@pytest.mark.parametrize("value,words", [("abc", "override max_yaw_deg must be float, got 'abc'"),
                                         (".inf", "override max_yaw_deg must be a finite number, got inf"),
                                         ("120", "prepare.max_*_deg must lie in (0, 90)")])
def test_a_bad_value_is_one_line_exit_2_and_no_run(study, capsys, value, words):
    code = main(["sweep", "prepare", "--name", "bad", "-p", "max_yaw_deg", "30", value])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert not (study / sweep.SWEEPS_DIR).exists()  # no run started, so no .partial notebook


def test_a_failing_run_keeps_its_notebook_as_failed_not_partial(study, monkeypatch):
    def fail(notebook, output, parameters, *, root, progress):
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")
        raise StageFailed(notebook.name, 3, "RuntimeError", "boom", output.relative_to(root))

    monkeypatch.setattr(sweep, "execute", fail)
    with pytest.raises(StageFailed, match=r"01_prepare.ipynb failed in cell 3: RuntimeError: boom") as info:
        sweep.run_sweep("prepare", "demo", {"seed": [1]}, progress=False)
    run = study / sweep.SWEEPS_DIR / "demo" / "seed=1"
    assert sorted(p.name for p in run.iterdir()) == ["01_prepare.failed.ipynb"]
    assert str(info.value).endswith("(traceback in data/sweeps/demo/seed=1/01_prepare.failed.ipynb)")


def test_runs_get_overrides_and_their_run_dir(study, monkeypatch):
    calls = []

    def record(notebook, output, parameters, *, root, progress):
        calls.append((notebook.name, parameters))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")

    monkeypatch.setattr(sweep, "execute", record)
    sweep.run_sweep("train_idnet", "lr", {"lr": [0.1, 0.2]}, progress=False)
    assert calls == [("03_train_idnet.ipynb", {"overrides": {"lr": 0.1}, "run_dir": "data/sweeps/lr/lr=0.1"}),
                     ("03_train_idnet.ipynb", {"overrides": {"lr": 0.2}, "run_dir": "data/sweeps/lr/lr=0.2"})]
    sweep.run_sweep("train_idnet", "lr", {"lr": [0.1, 0.2]}, progress=False)
    assert len(calls) == 2  # finished runs are skipped


def test_grid_and_run_names():
    points = sweep.grid({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(points) == 6 and points[0] == {"a": 1, "b": "x"} and points[-1] == {"a": 2, "b": "z"}
    assert sweep.run_name({"lambda_id": 0.5, "steps": 10}) == "lambda_id=0.5,steps=10"
    assert sweep.run_name({"e4e_path": "release/mini/e4e.pt"}) == "e4e_path=release%2Fmini%2Fe4e.pt"  # one folder
    # values that used to share a folder get their own
    assert sweep.run_name({"path": "a/b"}) != sweep.run_name({"path": "a_b"})


def test_collect_reads_encoded_values_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "study_root", lambda: tmp_path)
    points = [{"e4e_path": "release/mini/e4e.pt", "steps": 10}, {"e4e_path": "a,b=c", "steps": 20}]
    for point in points:
        folder = tmp_path / sweep.SWEEPS_DIR / "demo" / sweep.run_name(point) / "metrics"
        folder.mkdir(parents=True)
        (folder / "prepare.json").write_text(json.dumps({"n": point["steps"]}))
    table = sweep.collect("demo", "prepare").sort_values("steps")
    assert list(table["e4e_path"]) == ["release/mini/e4e.pt", "a,b=c"]
    assert list(table["steps"]) == [10, 20]


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
