"""End to end: a copy of the study runs `dvc repro` on the smoke profile through every stage in dvc.yaml.

This is what a new user does after cloning; it also checks that a second `dvc repro` has
nothing to do, that the metrics files are what the stages promise, and that two runs from a
clean state write identical metrics (determinism).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megafr import stages
from megafr.config import study_root

ROOT = study_root(__file__)
pytestmark = pytest.mark.slow


def _run(args, cwd, **kwargs):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def _copy_study(dest: Path) -> Path:
    """Copy the tracked and not-ignored files of the study (no data, no venv) into a fresh git repository."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file() and (not name.startswith("data/") or name.endswith(".gitkeep")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    _run(["git", "init", "-q"], dest)
    _run([sys.executable, "-m", "megafr", "profile", "smoke"], dest)
    return dest


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    study = _copy_study(tmp_path_factory.mktemp("study"))
    _run(["dvc", "repro"], study, timeout=900)
    return study


def _stages(study: Path) -> list[str]:
    """The stages that write metrics: every stage but ``validate``, which only checks params.yaml."""
    pipeline = yaml.safe_load((study / "dvc.yaml").read_text())["stages"]
    return [name for name, spec in pipeline.items() if "metrics" in spec]


def test_every_stage_writes_its_metrics(smoke_study):
    assert _stages(smoke_study) == list(stages.ORDER)
    for stage in _stages(smoke_study):
        metrics = json.loads((smoke_study / "data" / "metrics" / f"{stage}.json").read_text())
        assert metrics, f"stage {stage} wrote empty metrics"
        assert (smoke_study / stages.executed_notebook(stage)).is_file()
    prepare = json.loads((smoke_study / "data" / "metrics" / "prepare.json").read_text())
    smoke = yaml.safe_load((smoke_study / "params.yaml").read_text())["prepare"]
    assert prepare["counts"]["train_images"] == smoke["n_train_identities"] * smoke["images_per_identity"]
    assert prepare["counts"]["test_identities"] == smoke["n_test_identities"]


def test_second_repro_has_nothing_to_do(smoke_study):
    status = _run(["dvc", "status"], smoke_study)
    assert "up to date" in status, status


def test_changing_one_parameter_dirties_only_the_stages_that_read_it(smoke_study, tmp_path):
    params_file = smoke_study / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    stages = _stages(smoke_study)
    if "train_face3d" not in stages:
        pytest.skip("needs the train_face3d stage")
    params["train_face3d"]["lr"] = params["train_face3d"]["lr"] * 2
    try:
        params_file.write_text(yaml.safe_dump(params))
        changed = json.loads(_run(["dvc", "status", "--json"], smoke_study))
    finally:
        params_file.write_text(original)
    dirty = {name for name in changed if name in stages}
    assert "train_face3d" in dirty and "prepare" not in dirty, changed


def test_metrics_and_plots_show(smoke_study):
    shown = _run(["dvc", "metrics", "show", "--json"], smoke_study)
    assert "train_images" in shown
    _run(["dvc", "plots", "show", "--json"], smoke_study)


def test_rerun_from_clean_state_gives_identical_metrics(smoke_study, tmp_path):
    again = _copy_study(tmp_path)
    _run(["dvc", "repro"], again, timeout=900)
    for stage in _stages(smoke_study):
        first = (smoke_study / "data" / "metrics" / f"{stage}.json").read_bytes()
        second = (again / "data" / "metrics" / f"{stage}.json").read_bytes()
        assert first == second, f"stage {stage}: metrics differ between two clean runs"
