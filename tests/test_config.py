"""Profiles, params.yaml and config validation."""

from dataclasses import dataclass

import pytest
import yaml

from megafr.config import PROFILES, build_config, load_params, profile_file, require, study_root, use_profile
from megafr.errors import InputError

ROOT = study_root(__file__)


def _keys(tree, prefix=""):
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, prefix + key + ".")
    return keys


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
    with pytest.raises(InputError, match="unknown parameter"):
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
