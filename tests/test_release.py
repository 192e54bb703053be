"""Release files: float16 copies in the official layouts load back through the official loaders.

The whole command (train the three pretrained stages, export, evaluate the files in release mode)
runs on the smoke profile in ``tests/test_pipeline.py``.
"""

import json

import pytest
import torch

from megafr import release
from megafr.errors import InputError
from megafr.nets.checkpoints import load_arcface, load_e4e, load_stylegan2, save_arcface, save_encoder, save_stylegan2
from megafr.nets.encoders import InversionNet


def _halve(path):
    torch.save(release.half(torch.load(path, weights_only=False)), path)


def test_half_converts_only_floating_tensors_at_any_depth():
    obj = {"a": torch.ones(2), "b": [torch.arange(3), (torch.zeros(1, dtype=torch.float64),)], "c": "text"}
    out = release.half(obj)
    assert out["a"].dtype == torch.float16 and out["b"][0].dtype == torch.int64
    assert out["b"][1][0].dtype == torch.float16 and out["c"] == "text"


def test_float16_files_load_into_float32_networks_with_close_outputs(tmp_path, tiny_frozen):
    generator, inversion, idnet = tiny_frozen.generator, tiny_frozen.inversion, tiny_frozen.idnet
    paths = {name: tmp_path / f"{name}.pt" for name in ("stylegan2", "e4e", "arcface")}
    save_stylegan2(paths["stylegan2"], generator, inversion.latent_avg[0])
    save_encoder(paths["e4e"], InversionNet(inversion.encoder, inversion.latent_avg, decoder=generator))
    save_arcface(paths["arcface"], idnet)
    for path in paths.values():
        _halve(path)
    g16, _ = load_stylegan2(paths["stylegan2"])
    e16 = load_e4e(paths["e4e"])
    i16 = load_arcface(paths["arcface"])
    assert all(p.dtype == torch.float32 for p in [*g16.parameters(), *e16.parameters(), *i16.parameters()])
    torch.manual_seed(0)
    x = torch.rand(2, 3, generator.size, generator.size) * 2 - 1
    with torch.no_grad():
        codes, codes16 = inversion.encode(x), e16.encode(x)
        assert (codes16 - codes).abs().max() < 1e-2 * codes.abs().max()
        image, _ = generator([codes], input_is_latent=True, randomize_noise=False)
        image16, _ = g16([codes], input_is_latent=True, randomize_noise=False)
        assert (image16 - image).abs().max() < 2e-2
        assert torch.nn.functional.cosine_similarity(i16(x), idnet(x)).min() > 0.999


def test_release_overrides_name_every_released_file():
    overrides = release.release_overrides("release/mini")
    assert overrides["train_generator"] == {"mode": "release", "official_stylegan2": "release/mini/stylegan2.pt",
                                            "official_e4e": "release/mini/e4e.pt"}
    assert {o["mode"] for o in overrides.values()} == {"release"} and set(overrides) == set(release.STAGES)


def test_half_refuses_values_float16_cannot_hold():
    with pytest.raises(OverflowError, match="float16"):
        release.half({"w": torch.tensor([1.0, 1e6])})


@pytest.mark.parametrize("profile, first", [("mini", ("train_face3d",)), ("smoke", ())])
def test_a_release_trains_the_3d_network_first_only_when_the_generator_reads_it(profile, first, monkeypatch):
    """The mini recipe fine-tunes with the 3D network's distance: the run trains train_face3d first and the
    generator reads that run's network; smoke's recipe does not, so its generator measures no pose."""
    from pathlib import Path

    from megafr import stages

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    params = f"profiles/{profile}.yaml"
    order = release.trained_stages(params, "data/release/x")
    assert order == (*first, *release.STAGES)
    generator = stages.load_config("train_generator", root / params,
                                   release.stage_overrides("train_generator", "data/release/x", bool(first)))
    assert generator.face3d_path == (release.face3d_product("data/release/x") if first else "")
    assert generator.uses_face3d == bool(first)


def test_a_chained_release_amounts_to_its_first_recipe_plus_the_fine_tune():
    """A run started from an earlier release's files (init_from, steps 0) is compared with a profile as the
    earlier recipe's first phase and the run's fine-tune phase; other differences are still named."""
    from megafr.pretrain import common

    first = {"steps": 14000, "lr_g": 0.002, "finetune_steps": 0, "finetune_face3d": 0.0, "init_from": ""}
    run = {"steps": 0, "lr_g": 0.002, "finetune_steps": 1800, "finetune_face3d": 0.2, "init_from": "data/release/v1"}
    entry = {"recipe": run, "started_from": {"recipe": first, "source_commit": "abc"}}
    assert common.effective_recipe(entry) == {"steps": 14000, "lr_g": 0.002, "finetune_steps": 1800,
                                              "finetune_face3d": 0.2, "init_from": ""}
    assert common.effective_recipe({"recipe": first}) == first

    class Profile:
        steps, lr_g, finetune_steps, finetune_face3d, init_from = 14000, 0.004, 1800, 0.2, ""

    assert common.recipe_differences(Profile(), common.effective_recipe(entry)) == ["lr_g: 0.004 vs 0.002"]
    # not a plain fine-tune of the earlier files: the run's own recipe is kept, so its differences are named
    for changed in ({"steps": 500}, {"lr_g": 0.001}):
        other = {"recipe": {**run, **changed}, "started_from": {"recipe": first}}
        assert common.effective_recipe(other) == {**run, **changed}
    twice = {"recipe": run, "started_from": {"recipe": {**first, "finetune_steps": 900}}}
    assert common.effective_recipe(twice) == run


def test_export_refuses_to_overwrite_the_files_a_run_started_from(tmp_path):
    (tmp_path / "release.json").write_text('{"stages": {"train_generator": {"recipe": {"steps": 3}}}}')
    with pytest.raises(InputError, match="would be lost"):
        release._starting_release(tmp_path, "train_generator", tmp_path)
    (tmp_path / "stylegan2.pt").write_bytes(b"g")
    (tmp_path / "e4e.pt").write_bytes(b"e")
    entry = release._starting_release(tmp_path, "train_generator", tmp_path / "new")
    assert entry["recipe"] == {"steps": 3} and set(entry["files"]) == {"stylegan2.pt", "e4e.pt"}
    with pytest.raises(InputError, match="no release.json entry for train_inversion"):
        release._starting_release(tmp_path, "train_inversion", tmp_path / "new")


def test_export_refuses_a_params_file_other_than_the_one_the_runs_trained_with(tmp_path):
    """The record names the recipe from the params file, so it must be the one the finished runs used
    (their done-records); paths and evaluation-only values may differ, runs without a record are not checked."""
    from types import SimpleNamespace

    done = tmp_path / "done"
    done.mkdir()
    trained = {"steps": 0, "finetune_steps": 3600, "init_from": "data/release/v2", "threads": 1, "run_dir": "a"}
    (done / "train_generator.json").write_text(json.dumps({"config": trained, "code": "x"}))
    same = SimpleNamespace(**{**trained, "threads": 2, "run_dir": "b"})
    release._check_trained_recipes({"train_generator": same, "train_idnet": SimpleNamespace(steps=5)}, done)
    other = SimpleNamespace(**{**trained, "finetune_steps": 1800})
    with pytest.raises(InputError, match=r"train_generator \(finetune_steps: 1800 vs 3600\)"):
        release._check_trained_recipes({"train_generator": other}, done)


def test_set_replaces_training_values_for_one_run_and_leaves_the_commands_own_alone(monkeypatch):
    """`release --set STAGE.FIELD=VALUE`: YAML values for the named stage (an empty value is "", 1e-3 a
    float), the fields the command controls refused, and the run's stage order follows them (no 3D network without its distance)."""
    from pathlib import Path

    from megafr import stages

    settings = release.parse_settings(["train_generator.finetune_face3d=0", "train_generator.init_from=",
                                       "train_generator.steps=14000", "train_inversion.lr=1e-3"])
    assert settings == {"train_generator": {"finetune_face3d": 0, "init_from": "", "steps": 14000},
                        "train_inversion": {"lr": 0.001}}
    for bad, words in (("train_generator.steps", "STAGE.FIELD=VALUE"), ("steps=3", "STAGE.FIELD=VALUE"),
                       ("train_reenact.steps=3", "not train_reenact"), ("train_generator.mode=train", "not a training"),
                       ("train_generator.data_dir=x", "not a training"), ("train_generator.init_from=a: b: c", "quote it")):
        with pytest.raises(InputError, match=words):
            release.parse_settings([bad])
    overrides = release.stage_overrides("train_generator", "data/release/x", False, settings)
    assert overrides["steps"] == 14000 and overrides["mode"] == "train" and overrides["face3d_path"] == ""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    assert release.trained_stages("profiles/mini.yaml", "data/release/x", settings) == release.STAGES
    config = stages.load_config("train_generator", root / "profiles/mini.yaml", overrides, "data/release/x")
    assert (config.steps, config.init_from, config.finetune_face3d) == (14000, "", 0)


def test_the_mini_profile_is_the_recipe_of_the_committed_release(monkeypatch):
    """The study warns when the active profile's recipe differs from the one release/mini was trained with;
    the committed profile and files must agree (run with the overrides the release command used)."""
    from pathlib import Path

    from megafr import stages
    from megafr.pretrain import common

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    record = json.loads((root / "release/mini/release.json").read_text())
    face3d = "trained_with" in record
    for stage in release.STAGES:
        recipe = common.effective_recipe(record["stages"][stage])
        as_released = stages.load_config(stage, root / "profiles/mini.yaml",
                                         release.stage_overrides(stage, record["run_dir"], face3d), record["run_dir"])
        as_the_study_reads_it = stages.load_config(stage, root / "profiles/mini.yaml")  # other product paths
        for config in (as_released, as_the_study_reads_it):
            assert common.recipe_differences(config, recipe) == [], stage


def _make_settings(name: str) -> list[str]:
    """The ``--set`` values of a Makefile variable (continued lines joined)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith(f"{name} :="))
    words = line.partition(":=")[2].split()
    return [words[i + 1] for i, word in enumerate(words) if word == "--set"]


def test_make_release_mini_retrains_the_chain_the_committed_release_records(monkeypatch):
    """`make release-mini` runs the profile with the Makefile's --set values for the first three runs; the
    committed release.json holds the chain (started_from), and each run's recipe is the one recorded. The
    first three train pSp for one step only, since no later run starts from their pSp.
    (Older runs' records predate later fields, such as finetune_ssim: those are 'not recorded', not different.)"""
    from pathlib import Path

    from megafr import stages
    from megafr.pretrain import common

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    entry = json.loads((root / "release/mini/release.json").read_text())["stages"]["train_generator"]
    third = entry["started_from"]
    second = third["started_from"]
    first = second["started_from"]
    for variable, recorded in (("MINI_THIRD", third), ("MINI_SECOND", second), ("MINI_FIRST", first)):
        settings = release.parse_settings(_make_settings(variable))
        config = stages.load_config("train_generator", root / "profiles/mini.yaml",
                                    release.stage_overrides("train_generator", "data/release/mini", True, settings))
        differences = [d for d in common.recipe_differences(config, recorded["recipe"]) if "not recorded" not in d]
        assert differences == [], variable
        assert settings["train_inversion"] == {"steps": 1}, variable  # a one-step pSp, which no later run reads:
    started = [stage for stage in release.STAGES  # only the generator starts from the run before's files
               if hasattr(stages.load_config(stage, root / "profiles/mini.yaml"), common.INIT_FIELD)]
    assert started == ["train_generator"]


def test_a_run_refuses_an_init_from_without_its_release_record_before_training(tmp_path, monkeypatch):
    """The files a chained run starts from must come with the release.json its export will read: refused
    before any stage trains (the check needs no prepared data past the profile's own)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    monkeypatch.setattr(release, "_require_trainable", lambda *args: None)  # no prepared data on CI
    monkeypatch.setattr(release, "execute", lambda *args, **kwargs: pytest.fail("a stage ran"))
    (tmp_path / "stylegan2.pt").write_bytes(b"g")
    (tmp_path / "e4e.pt").write_bytes(b"e")
    settings = release.parse_settings([f"train_generator.init_from={tmp_path}", "train_generator.finetune_face3d=0"])
    with pytest.raises(InputError, match="lacks release.json"):
        release.train("profiles/mini.yaml", str(tmp_path / "run"), settings=settings, progress=False)
