"""megafr.preflight: the paper profile lists every missing external file before any work; mini and smoke need none.

The paper profile is checked against a scratch study root (a temporary folder) in which the tests
create or leave out each file, with the torch hub cache and clean-fid's Inception folder pointed
into it too, so nothing on this machine decides the outcome.
"""

from __future__ import annotations

import importlib
import json
import shutil
import types

import pytest
import yaml

from megafr import preflight
from megafr.__main__ import main
from megafr.config import load_params, profile_file, study_root
from megafr.errors import InputError, MissingFileError, PreflightError

ROOT = study_root(__file__)
# Every file the paper profile names, as (params key or None, path relative to the scratch root).
PAPER_FILES = {
    "flame_model": "weights/flame/generic_model.pkl",
    "flame_landmarks": "weights/flame/landmark_embedding.npy",
    "arcface": "weights/model_ir_se50.pth",
    "stylegan2": "weights/stylegan2-ffhq-config-f.pt",
    "e4e": "weights/e4e_ffhq_encode.pt",
    "psp": "weights/psp_ffhq_encode.pt",
    "psp_frontalization": "weights/psp_ffhq_frontalization.pt",
}
PHOTOS_DIR = "datasets/ffhq"
TEST_PHOTOS_DIR = "datasets/celebahq"


def _paper() -> dict:
    return load_params(profile_file("paper", ROOT))


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """An empty study root; the hub cache and the Inception folder live inside it; ``lpips`` imports (a stand-in
    module: whether this machine's torchvision loads must not decide the outcome)."""
    _lpips_import(monkeypatch, lambda: types.ModuleType("lpips"))
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(preflight, "INCEPTION_DIR", str(tmp_path / "fid"))
    return tmp_path


def _lpips_import(monkeypatch, outcome) -> None:
    """Make ``import lpips`` inside preflight return ``outcome()`` (or raise what it raises)."""
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: outcome() if name == "lpips" else real(name, *a))


def _broken_torchvision():
    raise RuntimeError("operator torchvision::nms does not exist")


def _fill(root, skip: str | None = None) -> None:
    """Create every file the paper profile needs under ``root``, except the one named ``skip``."""
    for name, relative in PAPER_FILES.items():
        if name != skip:
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(b"weights")
    for folder in (PHOTOS_DIR, TEST_PHOTOS_DIR):
        if skip != "photos" or folder != PHOTOS_DIR:
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / "00001.jpg").write_bytes(b"jpeg")
    if skip != "alexnet":
        (root / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
        (root / "hub" / "checkpoints" / preflight.ALEXNET_FILE).write_bytes(b"alexnet")
    if skip != "inception":
        folder = root / (_paper()["evaluate"].get("inception_dir") or "fid")  # the profile's folder, else clean-fid's
        folder.mkdir(parents=True, exist_ok=True)
        (folder / preflight.INCEPTION_FILE).write_bytes(b"inception")


@pytest.mark.parametrize("name", ["mini", "smoke"])
def test_mini_and_smoke_need_no_external_file(name, scratch):
    params = load_params(profile_file(name, ROOT))
    assert preflight.requirements(params, scratch) == []
    assert preflight.check(params, scratch) == []  # an empty folder: nothing from outside is read
    for stage in preflight.PIPELINE:
        assert preflight.check_stage(stage, params, scratch) == []


@pytest.mark.parametrize("name", ["mini", "smoke"])
def test_mini_and_smoke_name_only_files_the_pipeline_makes(name):
    """Where a mini/smoke key that names an external file on paper applies, it is empty or under data/."""
    params = load_params(profile_file(name, ROOT))
    for rule in preflight.KEY_RULES:
        value = preflight._get(params, rule.key)
        if rule.when(params) and value:
            assert str(value).startswith(preflight.PRODUCTS_DIR + "/"), f"{name}: {rule.key} = {value!r}"


def test_paper_lists_every_missing_file_with_its_source(scratch):
    with pytest.raises(PreflightError) as info:
        preflight.check(_paper(), scratch)
    error = info.value
    assert isinstance(error, MissingFileError) and isinstance(error, FileNotFoundError)
    text = str(error)
    lines = text.splitlines()
    assert lines[0].startswith("paper profile: 11 required files are missing") and len(lines) == 12
    assert len(error.missing) == 11
    for relative in [*PAPER_FILES.values(), PHOTOS_DIR, TEST_PHOTOS_DIR, preflight.ALEXNET_FILE,
                     preflight.INCEPTION_FILE]:
        assert relative in text, relative
    for source in ("flame.is.tue.mpg.de", "yfeng95/DECA", "rosinality/stylegan2-pytorch", "omertov/encoder4editing",
                   "eladrich/pixel2style2pixel", "TreB1eN/InsightFace_Pytorch", "ffhq-dataset",
                   preflight.ALEXNET_URL, preflight.INCEPTION_URL):
        assert source in text, source
    arcface = next(line for line in lines if "model_ir_se50.pth" in line)
    for key in ("train_idnet.official_path", "train_generator.idnet_path", "evaluate.arcface_path"):
        assert key in arcface  # one entry per file, naming every key that points at it


def test_paper_with_every_file_present_passes(scratch):
    _fill(scratch)
    found = preflight.check(_paper(), scratch)
    assert {r.file for r in found} == {*PAPER_FILES, "photos", "dlib", "shape_predictor", "alexnet", "lpips",
                                       "inception"}
    assert [r.stages[0] for r in found] == sorted((r.stages[0] for r in found), key=preflight.CONSUMERS.index)


@pytest.mark.parametrize("missing", [*PAPER_FILES, "photos", "alexnet", "inception"])
def test_each_missing_file_alone_is_named(scratch, missing):
    _fill(scratch, skip=missing)
    with pytest.raises(PreflightError) as info:
        preflight.check(_paper(), scratch)
    assert [p.requirement.file for p in info.value.missing] == [missing]
    assert "1 required file is missing" in str(info.value)


def test_packages_that_are_not_installed_are_listed(scratch, monkeypatch):
    _fill(scratch)
    absent = {"dlib", "face_recognition_models", "lpips"}
    find_spec = preflight.importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec",
                        lambda name, *args: None if name in absent else find_spec(name, *args))
    with pytest.raises(PreflightError) as info:
        preflight.check(_paper(), scratch)
    assert {p.requirement.file for p in info.value.missing} == {"dlib", "shape_predictor", "lpips"}
    text = str(info.value)
    for fix in ("pip install dlib-bin", "pip install face-recognition-models", "pip install lpips"):
        assert fix in text


def test_an_lpips_package_that_does_not_import_is_not_ok(scratch, monkeypatch, capsys):
    _fill(scratch)
    _lpips_import(monkeypatch, _broken_torchvision)  # installed, but `import lpips` fails as on this CPU machine
    problems = preflight.find_problems(_paper(), scratch)
    assert [p.requirement.file for p in problems] == ["lpips"]
    line = problems[0].line()
    assert "LPIPS linear layers" in line and "torchvision build" in line
    assert "does not import (RuntimeError: operator torchvision::nms" in line
    _scratch_study(scratch, "paper")
    monkeypatch.chdir(scratch)
    assert main(["check"]) == 2
    out = capsys.readouterr()
    assert "ok  LPIPS" not in out.out and "1 required file is missing" in out.err and "does not import" in out.err


def test_empty_files_empty_folders_unset_keys_and_tilde_are_problems(scratch):
    _fill(scratch)
    (scratch / PAPER_FILES["e4e"]).write_bytes(b"")
    (scratch / PHOTOS_DIR / "00001.jpg").unlink()
    (scratch / PHOTOS_DIR / "notes.txt").write_text("not a photo")
    params = _paper()
    params["train_inversion"]["official_psp"] = ""
    params["flame"]["model_path"] = "~/flame/generic_model.pkl"
    with pytest.raises(PreflightError) as info:
        preflight.check(params, scratch)
    problems = {p.requirement.file: p.problem for p in info.value.missing}
    assert "empty" in problems["e4e"] and "download it again" in problems["e4e"]
    assert "holds no photos" in problems["photos"]
    assert "parameter is empty" in problems["psp"]
    assert "'~'" in problems["flame_model"]


def test_stage_products_conditions_and_lpips_switch(scratch):
    _fill(scratch)
    params = _paper()
    params["train_reenact"]["generator_path"] = "data/train_generator/stylegan2.pt"  # made by a stage: not checked
    params["train_generator"]["mode"] = "train"  # trains its own generator: the official files are not needed
    for block in preflight.LPIPS_STAGES:
        params[block]["lambda_lpips"] = 0.0
    found = {r.file: r for r in preflight.check(params, scratch)}
    assert found["alexnet"].stages == found["lpips"].stages == ("evaluate",)  # Table 2's LPIPS only
    assert found["stylegan2"].keys == ("train_inversion.stylegan2_path",)
    assert "train_generator.official_e4e" not in found["e4e"].keys
    del params["train_idnet"]["official_path"]  # a key the params file lacks is left to the stage's config
    assert "train_idnet.official_path" not in {r.file: r for r in preflight.check(params, scratch)}["arcface"].keys


def test_evaluate_block_names_its_inception_folder_and_arcface(scratch):
    _fill(scratch, skip="inception")
    params = {**_paper(), "evaluate": {"inception_dir": "weights/fid", "arcface_path": "weights/other_ir_se50.pth"}}
    with pytest.raises(PreflightError) as info:
        preflight.check_stage("evaluate", params, scratch)
    problems = {p.requirement.file: p.requirement for p in info.value.missing}
    assert set(problems) == {"inception", "arcface"}
    assert problems["inception"].path == scratch / "weights" / "fid" / preflight.INCEPTION_FILE
    assert problems["inception"].keys == ("evaluate.inception_dir",)
    assert problems["arcface"].keys == ("evaluate.arcface_path",)


def test_check_stage_checks_that_stage_and_the_later_ones(scratch):
    params = _paper()
    with pytest.raises(PreflightError) as info:
        preflight.check_stage("train_reenact", params, scratch)
    files = {p.requirement.file for p in info.value.missing}
    assert "photos" not in files and "flame_model" in files and "inception" in files
    with pytest.raises(PreflightError) as info:
        preflight.check_stage("prepare", params, scratch)
    assert "photos" in {p.requirement.file for p in info.value.missing}
    with pytest.raises(InputError, match="unknown stage 'train_everything'"):
        preflight.check_stage("train_everything", params, scratch)
    with pytest.raises(InputError, match="unknown profile 'huge'"):
        preflight.check({**params, "profile": "huge"}, scratch)


def _scratch_study(root, profile: str) -> None:
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(ROOT / "profiles", root / "profiles")
    shutil.copy(ROOT / "profiles" / f"{profile}.yaml", root / "params.yaml")


def test_command_line_check(scratch, monkeypatch, capsys):
    _scratch_study(scratch, "smoke")
    monkeypatch.chdir(scratch)
    assert main(["check"]) == 0
    assert "profile smoke: needs no external files" in capsys.readouterr().out
    assert main(["check", "--profile", "paper"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: paper profile: 11 required files are missing") and "generic_model.pkl" in err
    assert main(["check", "--profile", "paper", "--stage", "train_inversion"]) == 2
    err = capsys.readouterr().err
    assert "psp_ffhq_encode.pt" in err and PHOTOS_DIR not in err and "generic_model.pkl" in err
    _fill(scratch)
    assert main(["check", "--profile", "paper"]) == 0
    assert "profile paper: all 14 external files found" in capsys.readouterr().out
    assert main(["check", "--stage", "nowhere"]) == 2
    assert "unknown stage 'nowhere'" in capsys.readouterr().err


def _stages_of_notebooks() -> dict[str, str]:
    from megafr import stages

    dvc_stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {stages.notebook(stage): stage for stage in stages.ORDER if stage in dvc_stages}


def test_pipeline_order_follows_dvc_yaml():
    dvc_stages = list(_stages_of_notebooks().values())
    assert set(dvc_stages) <= set(preflight.PIPELINE)
    assert dvc_stages == [s for s in preflight.PIPELINE if s in dvc_stages]  # "later stages" means what it says


def _first_code_cell(notebook: str) -> str:
    cells = json.loads((ROOT / notebook).read_text())["cells"]
    cell = next(c for c in cells if c["cell_type"] == "code")
    assert "parameters" not in cell["metadata"].get("tags", [])
    return "".join(cell["source"])


@pytest.mark.parametrize("notebook,stage", sorted(_stages_of_notebooks().items()))
def test_each_notebook_refuses_the_paper_profile_in_its_first_cell(notebook, stage, scratch, monkeypatch):
    source = _first_code_cell(notebook)
    assert f'preflight.check_stage("{stage}")' in source
    _scratch_study(scratch, "paper")
    monkeypatch.chdir(scratch)
    with pytest.raises(PreflightError, match="paper profile: .* missing"):
        exec(compile(source, notebook, "exec"), {})
    shutil.copy(ROOT / "profiles" / "smoke.yaml", scratch / "params.yaml")
    exec(compile(source, notebook, "exec"), {})  # smoke: nothing to check, the cell runs through
    assert sorted(p.name for p in scratch.iterdir()) == ["dvc.yaml", "params.yaml", "profiles"]  # nothing written



def test_optional_files_are_checked_only_when_named(scratch):
    _fill(scratch)
    paper = _paper()
    unset = {**paper, "prepare": {**paper["prepare"], "test_photos_dir": ""},
             "evaluate": {**paper["evaluate"], "psp_frontalization_path": ""}}
    (scratch / PAPER_FILES["psp_frontalization"]).unlink()
    shutil.rmtree(scratch / TEST_PHOTOS_DIR)
    preflight.check_stage("prepare", unset, scratch)  # neither optional key set: nothing more is needed
    params = {**paper, "prepare": {**paper["prepare"], "test_photos_dir": "datasets/celebahq_test"}}
    with pytest.raises(PreflightError) as info:
        preflight.check_stage("prepare", params, scratch)
    problems = {p.requirement.keys: p.requirement for p in info.value.missing}
    assert set(problems) == {("prepare.test_photos_dir",), ("evaluate.psp_frontalization_path",)}
    assert problems[("evaluate.psp_frontalization_path",)].file == "psp_frontalization"
    assert "optional" in preflight.WHAT["psp_frontalization"]
