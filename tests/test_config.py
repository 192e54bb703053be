"""Profiles, params.yaml and config validation."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from megafr.config import (PROFILES, build_config, comma_list, load_params, profile_file, require, study_root,
                           use_profile)
from megafr.errors import InputError

ROOT = study_root(__file__)


def _keys(tree, prefix=""):
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, prefix + key + ".")
    return keys


def test_comma_list_splits_a_params_value_in_order():
    assert comma_list(" coarse, 16px ,") == ("coarse", "16px")
    assert comma_list("medium,coarse") == ("medium", "coarse")
    assert comma_list(" , ") == ()
    assert comma_list(0) == ("0",)  # a single value that YAML or -p gave as an int


def test_params_yaml_is_a_copy_of_the_profile_it_names():
    params = load_params(ROOT / "params.yaml")
    assert params["profile"] in PROFILES
    assert (ROOT / "params.yaml").read_text() == profile_file(params["profile"], ROOT).read_text()


def test_profiles_define_the_same_keys():
    keys = [_keys(load_params(profile_file(name, ROOT))) for name in PROFILES]
    assert keys[0] == keys[1] == keys[2]


def test_use_profile_rewrites_params(tmp_path):
    (tmp_path / "profiles").mkdir()
    for name in PROFILES:
        (tmp_path / "profiles" / f"{name}.yaml").write_text(profile_file(name, ROOT).read_text())
    use_profile("smoke", tmp_path)
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["profile"] == "smoke"
    use_profile("mini", tmp_path)
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["profile"] == "mini"
    with pytest.raises(InputError, match="unknown profile 'huge'"):
        use_profile("huge", tmp_path)


@dataclass(frozen=True)
class _Toy:
    steps: int  # a count
    rate: float  # a float
    name: str = "x"

    def __post_init__(self):
        require(self.steps >= 0, f"steps must be non-negative, got {self.steps}")


def test_build_config_converts_and_validates():
    cfg = build_config(_Toy, {"steps": 3, "rate": 1})
    assert cfg.rate == 1.0 and isinstance(cfg.rate, float)
    with pytest.raises(InputError, match=r"unknown parameter _Toy.stpes \(did you mean _Toy.steps\?\)"):
        build_config(_Toy, {"steps": 3, "rate": 1.0, "stpes": 4})
    with pytest.raises(InputError, match="must be int"):
        build_config(_Toy, {"steps": "3", "rate": 1.0})
    with pytest.raises(InputError, match="must be int"):
        build_config(_Toy, {"steps": True, "rate": 1.0})
    with pytest.raises(InputError, match="non-negative"):
        build_config(_Toy, {"steps": -1, "rate": 1.0})
    with pytest.raises(InputError, match="missing"):
        build_config(_Toy, {"steps": 1})


def test_torch_device_follows_the_environment(monkeypatch):
    import torch

    from megafr.config import DEVICE_VARIABLE, torch_device

    monkeypatch.setenv(DEVICE_VARIABLE, "cpu")
    assert torch_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_VARIABLE, "tpu-ish")
    with pytest.raises(InputError, match="not a torch device"):
        torch_device()
    monkeypatch.delenv(DEVICE_VARIABLE)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert torch_device().type == expected
    if not torch.cuda.is_available():
        monkeypatch.setenv(DEVICE_VARIABLE, "cuda")
        with pytest.raises(InputError, match="no CUDA device"):
            torch_device()


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_build_config_refuses_non_finite_numbers(value):
    with pytest.raises(InputError, match=r"^block.rate must be a finite number, got"):
        build_config(_Toy, {"steps": 3, "rate": value}, keys={"rate": "block.rate"})


def _scratch(tmp_path, edit) -> Path:
    """A scratch study root: dvc.yaml and params.yaml = the smoke profile, changed by ``edit(params)``."""
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    params = load_params(profile_file("smoke", ROOT))
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


@pytest.mark.parametrize("edit,message", [
    (lambda p: p["train_reenact"].update(lambda_cyk=3.0),
     r"unknown parameter train_reenact.lambda_cyk \(did you mean train_reenact.lambda_cyc\?\)"),
    (lambda p: p.update(sed=1), r"unknown parameter sed \(did you mean seed\?\); no stage reads it"),
    (lambda p: p["flame"].update(modle_path="x"),
     r"unknown parameter flame.modle_path \(did you mean flame.model_path"),
    (lambda p: p["train_face3d"].update(lr=float("inf")), r"train_face3d.lr must be a finite number, got inf"),
    (lambda p: p["train_reenact"].update(lambda_id=float("nan")), r"train_reenact.lambda_id must be a finite number"),
    (lambda p: p["prepare"].update(max_yaw_deg="abc"), r"prepare.max_yaw_deg must be float, got 'abc'"),
    (lambda p: p["train_idnet"].update(seed=3), r"train_idnet.seed is read from `seed`"),
    (lambda p: p["evaluate"].pop("cross_pairs"), r"missing parameter\(s\) evaluate.cross_pairs"),
    (lambda p: p["train_generator"].update(steps=0), r"train_generator.steps must be >= 1, got 0"),
])
def test_the_whole_params_file_is_validated_naming_the_key(tmp_path, monkeypatch, edit, message):
    from megafr import stages

    params_file = _scratch(tmp_path, edit)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        stages.validate(load_params(params_file))
    assert "\n" not in str(info.value)


def test_yaml_infinity_in_a_profile_is_refused(tmp_path, monkeypatch):
    from megafr import stages

    params_file = _scratch(tmp_path, lambda p: None)
    params_file.write_text(params_file.read_text().replace("lr: 0.002\n", "lr: .inf\n", 1))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"train_face3d.lr must be a finite number, got inf"):
        stages.validate(load_params("params.yaml"))


@pytest.mark.parametrize("profile", ["smoke", "mini"])
def test_profiles_are_valid_as_a_whole(profile):
    from megafr import stages

    configs = stages.validate(load_params(profile_file(profile, ROOT)))
    assert list(configs) == list(stages.ORDER)


def test_paper_profile_is_valid_once_the_user_supplies_photos_and_eyelids(tmp_path, monkeypatch):
    from megafr import stages

    params = load_params(profile_file("paper", ROOT))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    for folder in ("photos_dir", "test_photos_dir"):
        (tmp_path / params["prepare"][folder]).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="figures.eye_components must name"):
        stages.validate(params)
    params["figures"]["eye_components"] = "3,4"
    assert stages.validate(params)["figures"].eye_components == "3,4"


def test_a_notebook_in_notebooks_reads_the_params_file_of_the_study_root(tmp_path, monkeypatch):
    from megafr.stages import train_face3d

    monkeypatch.chdir(ROOT / "notebooks")  # where JupyterLab runs a notebook
    cfg = train_face3d.load_config("params.yaml", {"steps": 7})
    params = load_params(ROOT / "params.yaml")
    assert cfg.steps == 7 and cfg.lr == params["train_face3d"]["lr"] and cfg.profile == params["profile"]
    assert cfg.image_size == params["prepare"]["image_size"] and cfg.data_dir == "data/prepare"
