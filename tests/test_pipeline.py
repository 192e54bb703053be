"""End to end: a copy of the study runs `dvc repro` on the smoke profile through every stage in dvc.yaml.

This is what a new user does after cloning; it also checks that a second `dvc repro` has
nothing to do, that the metrics files are what the stages promise, and that two runs from a
clean state write identical metrics (determinism). The same on the paper-ci profile: the paper
code path (photos, official-layout files, manifests, the evaluation protocol) from stand-ins that
the prepare stage writes itself, up to Tables 1 and 2.
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


def _copy_study(dest: Path, profile: str = "smoke") -> Path:
    """Copy the tracked and not-ignored files of the study (no data, no venv) into a fresh git repository
    and activate ``profile``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file() and (not name.startswith("data/") or name.endswith(".gitkeep")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    _run(["git", "init", "-q"], dest)
    _run([sys.executable, "-m", "megafr", "profile", profile], dest)
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


def _released_run(study: Path, stage: str, sweep: str, overrides: dict) -> dict:
    """Run ``stage`` as a one-point sweep with ``overrides``; its flattened metrics."""
    args = [sys.executable, "-m", "megafr", "sweep", stage, "--name", sweep]
    for field, value in overrides.items():
        args += ["-p", field, str(value)]
    _run(args, study, timeout=900)
    (run,) = (study / "data" / "sweeps" / sweep).glob("*/metrics")
    return json.loads((run / f"{stage}.json").read_text())


def test_release_command_trains_exports_and_the_files_score_as_trained(smoke_study):
    """`python -m megafr release` on smoke: the three stages train under data/release/smoke, their float16
    files land in release/smoke, and evaluated in release mode they score as the training run did."""
    from megafr import release

    printed = _run([sys.executable, "-m", "megafr", "release"], smoke_study, timeout=900)
    record = json.loads((smoke_study / "release" / "smoke" / "release.json").read_text())
    assert {"arcface.pt", "stylegan2.pt", "e4e.pt", "psp.pt"} <= set(record["files"]) and "total" in printed
    assert record["stages"]["train_generator"]["recipe"]["mode"] == "train"
    assert record["stages"]["train_generator"]["run"]["train_seconds"] > 0
    import torch

    state = torch.load(smoke_study / "release" / "smoke" / "stylegan2.pt", weights_only=False)["g_ema"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    overrides = release.release_overrides("release/smoke")
    trained = json.loads((smoke_study / "data/release/smoke/metrics/train_inversion.json").read_text())
    released = _released_run(smoke_study, "train_inversion", "released_psp", {
        **overrides["train_inversion"], "idnet_path": "release/smoke/arcface.pt",
        "stylegan2_path": "release/smoke/stylegan2.pt", "e4e_path": "release/smoke/e4e.pt"})
    assert released["trained"] == 0 and released["released"] == 1 and released["steps"] == trained["steps"]
    for encoder in ("inversion_psp", "inversion_e4e"):
        assert abs(released[encoder]["psnr"] - trained[encoder]["psnr"]) < 0.05, encoder  # float16 storage only
        assert abs(released[encoder]["ssim"] - trained[encoder]["ssim"]) < 0.01, encoder
    trained = json.loads((smoke_study / "data/release/smoke/metrics/train_generator.json").read_text())
    released = _released_run(smoke_study, "train_generator", "released_gan", {
        **overrides["train_generator"], "idnet_path": "release/smoke/arcface.pt"})
    assert released["released"] == 1 and "wplus_optimised" in released
    assert abs(released["inversion_e4e"]["psnr"] - trained["inversion_e4e"]["psnr"]) < 0.05
    trained = json.loads((smoke_study / "data/release/smoke/metrics/train_idnet.json").read_text())
    released = _released_run(smoke_study, "train_idnet", "released_id", overrides["train_idnet"])
    assert abs(released["test"]["genuine_cos_mean"] - trained["test"]["genuine_cos_mean"]) < 0.01
    status = _run(["dvc", "status"], smoke_study)
    assert "up to date" in status, status  # a release run leaves the pipeline's outputs alone


def test_rerun_from_clean_state_gives_identical_metrics(smoke_study, tmp_path):
    again = _copy_study(tmp_path)
    _run(["dvc", "repro"], again, timeout=900)
    for stage in _stages(smoke_study):
        first = (smoke_study / "data" / "metrics" / f"{stage}.json").read_bytes()
        second = (again / "data" / "metrics" / f"{stage}.json").read_bytes()
        assert first == second, f"stage {stage}: metrics differ between two clean runs"


# ------------------------------------------------------------------------------------------------ paper-ci
PAPER_COLUMNS = ("fid", "lpips", "id_similarity", "aed", "apd")  # the paper's columns and the motion errors
OFFICIAL_PRODUCTS = {  # stage product -> the official-layout file that official mode copies there
    "train_idnet/arcface.pt": "model_ir_se50.pth",
    "train_generator/stylegan2.pt": "stylegan2-ffhq-config-f.pt",
    "train_generator/e4e.pt": "e4e_ffhq_encode.pt",
    "train_inversion/psp.pt": "psp_ffhq_encode.pt",
}


@pytest.fixture(scope="module")
def paper_ci_study(tmp_path_factory):
    study = _copy_study(tmp_path_factory.mktemp("paper_ci"), "paper-ci")
    _run(["dvc", "repro"], study, timeout=900)
    return study


def test_paper_ci_runs_every_stage_from_a_fresh_copy(paper_ci_study):
    assert _stages(paper_ci_study) == list(stages.ORDER)
    for stage in stages.ORDER:
        assert json.loads((paper_ci_study / "data" / "metrics" / f"{stage}.json").read_text()), stage
        assert (paper_ci_study / stages.executed_notebook(stage)).is_file()
    counts = json.loads((paper_ci_study / "data" / "metrics" / "prepare.json").read_text())["counts"]
    assert counts["train_images"] == 4 and counts["test_images"] == 4 and counts["eval_cross_pairs"] == 4
    prepared = paper_ci_study / "data" / "prepare"
    assert (prepared / "train" / "manifest.csv").is_file() and (prepared / "eval" / "cross" / "pairs.csv").is_file()
    assert not (prepared / "train" / "images.npy").exists()  # photos are read through manifests, not arrays
    for product, official in OFFICIAL_PRODUCTS.items():  # official mode exposes the files later stages read
        assert (paper_ci_study / "data" / product).read_bytes() == (prepared / "official" / official).read_bytes()
    assert "up to date" in _run(["dvc", "status"], paper_ci_study)


def test_paper_ci_writes_tables_1_and_2_on_photos(paper_ci_study):
    import pandas as pd

    folder = paper_ci_study / "data" / "evaluate"
    for key, rows in (("table1_cross", "MegaFR (e4e)"), ("table2_frontal", "pSp frontalization (released)")):
        table = pd.read_csv(folder / f"{key}.csv", na_values=["n/a"]).set_index("method")
        assert {"MegaFR (e4e)", "MegaFR (pSp)", rows} <= set(table.index), key
        assert set(PAPER_COLUMNS) <= set(table.columns), key
        for column in ("id_similarity", "aed", "apd"):  # computed on photos without a right answer
            assert table[column].notna().all(), (key, column)
        assert table[["l1", "psnr", "ssim"]].isna().all().all(), key  # no right answer on photos
        text = (folder / f"{key}.md").read_text()
        assert "id_similarity: ID similarity on:" in text and "not comparable" in text  # the stand-in ArcFace
        for column in ("fid", "lpips"):  # n/a only with the reason printed (their weights are not on this machine)
            assert table[column].notna().all() or f"{column}: n/a" in text, (key, column)
