"""Training E_FR on tiny random frozen networks: every term logged, frozen parts untouched, exact resume."""

import dataclasses

import numpy as np
import pytest
import torch

from megafr import devices, training
from megafr.errors import InputError
from megafr.fileio import file_digest
from megafr.reenact import train as rt
from tests.conftest import TINY_SIZE as SIZE


def _config(tmp_path, **overrides):
    values = dict(profile="smoke", seed=0, steps=3, batch_size=2, lr=1e-3, lr_schedule="constant", encoder="e4e",
                  condition="render",
                  edit_groups="coarse,medium", lambda_id=1.0, lambda_lmk=1.0, lambda_pair=1.0, lambda_cyc=1.0,
                  lambda_self=1.0, lambda_latent=0.1, lambda_l2=1.0, lambda_lpips=0.0, lambda_rec_id=0.5,
                  checkpoint_every=1, generator_path="", e4e_path="", psp_path="", face3d_path="",
                  idnet_path="", model_path="", landmark_path="", train_images="", out_dir=str(tmp_path),
                  cpu_bf16=False, input_cache="")
    values.update(overrides)
    return rt.ReenactConfig(**values)


def _images(n=6):
    return np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_one_training_run_logs_every_term_and_leaves_frozen_nets_alone(tiny_frozen, tmp_path):
    frozen = tiny_frozen
    before = {name: {k: v.clone() for k, v in m.state_dict().items()}
              for name, m in frozen._asdict().items() if m is not None}
    model, curve = rt.train(_config(tmp_path), frozen, _images(), progress=False)
    assert set(curve.columns) == {"step", "id", "lmk", "pair", "cyc", "self", "latent", "total"}
    assert len(curve) == 3 and np.isfinite(curve.to_numpy()).all()
    for name, m in frozen._asdict().items():
        if m is not None:
            assert all(torch.equal(before[name][k], v) for k, v in m.state_dict().items()), name
            assert all(p.grad is None for p in m.parameters()), name
    assert rt.checkpoint_path(_config(tmp_path)).is_file()


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_equals_uninterrupted(tiny_frozen, tmp_path, schedule):
    frozen = tiny_frozen
    full, _ = rt.train(_config(tmp_path / "a", steps=4, lr_schedule=schedule), frozen, _images(), progress=False)
    rt.train(_config(tmp_path / "b", steps=2, lr_schedule=schedule), frozen, _images(), progress=False)
    # a run with steps=4 over a finished steps=2 checkpoint of another config starts over; emulate an
    # interruption instead: rewrite the step-2 checkpoint as if it belonged to the steps=4 run
    path_b = rt.checkpoint_path(_config(tmp_path / "b", steps=2, lr_schedule=schedule))
    data = torch.load(path_b, weights_only=False)
    data["config"] = dataclasses.asdict(_config(tmp_path / "b", steps=4, lr_schedule=schedule))
    torch.save(data, path_b)
    resumed, curve = rt.train(_config(tmp_path / "b", steps=4, lr_schedule=schedule), frozen, _images(), progress=False)
    assert list(curve["step"]) == [1, 2, 3, 4]
    for a, b in zip(full.encoder.state_dict().values(), resumed.encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_cosine_schedule_sets_the_rate_of_each_step(tiny_frozen, tmp_path, monkeypatch):
    rates = []
    real_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    rt.train(_config(tmp_path / "cos", steps=4, lr=1e-3, lr_schedule="cosine"), tiny_frozen, _images(), progress=False)
    rt.train(_config(tmp_path / "const", steps=4, lr=1e-3), tiny_frozen, _images(), progress=False)
    assert rates[:4] == pytest.approx([training.cosine_lr(1e-3, k, 4) for k in range(4)])
    assert rates[0] == pytest.approx(1e-3) and rates[3] < 0.3e-3  # a one-step warm-up, then the decay
    assert rates[4:] == pytest.approx([1e-3] * 4)


def test_checkpoint_of_other_frozen_networks_is_not_resumed(tiny_frozen, tmp_path):
    generator_file = tmp_path / "stylegan2.pt"
    generator_file.write_bytes(b"generator, first version")
    cfg = _config(tmp_path / "run", steps=2, generator_path=str(generator_file))
    rt.train(cfg, tiny_frozen, _images(), progress=False)
    path = rt.checkpoint_path(cfg)
    assert torch.load(path, weights_only=False)["upstream"] == rt.upstream_digest(cfg)
    _, curve = rt.train(cfg, tiny_frozen, _images(), progress=False)  # same files: the finished run is reused
    assert list(curve["step"]) == [1, 2]
    stamp = path.stat().st_mtime_ns
    generator_file.write_bytes(b"generator, retrained")  # an earlier stage re-ran
    assert rt.upstream_digest(cfg) != torch.load(path, weights_only=False)["upstream"]
    with pytest.warns(UserWarning, match="other frozen networks"):
        _, curve = rt.train(cfg, tiny_frozen, _images(), progress=False)
    assert list(curve["step"]) == [1, 2]  # trained again from step 0
    assert path.stat().st_mtime_ns != stamp
    assert torch.load(path, weights_only=False)["upstream"] == rt.upstream_digest(cfg)


def test_upstream_digest_reads_contents_not_names(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert file_digest([str(a)]) == file_digest([str(b)])
    assert file_digest([str(a)]) != file_digest([""]) != file_digest([str(tmp_path / "missing.pt")])


def test_a_settled_files_digest_is_kept_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
    import hashlib
    import os

    from megafr import fileio

    path = tmp_path / "net.pt"
    path.write_bytes(b"first")
    assert file_digest([str(path)]) == hashlib.md5(b"first").hexdigest()
    path.write_bytes(b"other")  # rewritten in place at once, same size: the mtime cannot be trusted yet
    assert file_digest([str(path)]) == hashlib.md5(b"other").hexdigest()
    old = path.stat().st_mtime_ns - 10 ** 10
    os.utime(path, ns=(old, old))  # settled: unchanged for 10 s
    reads, md5 = [], hashlib.md5
    monkeypatch.setattr(fileio.hashlib, "md5", lambda: (reads.append(1), md5())[1])
    assert file_digest([str(path), ""]) == file_digest([str(path), ""]) != file_digest([str(path)])
    assert len(reads) == 2  # [path, ""] read once, then kept; [path] once
    monkeypatch.undo()
    path.write_bytes(b"third")  # the same size, a new mtime: read again, not taken from what was kept
    assert file_digest([str(path)]) == hashlib.md5(b"third").hexdigest()


def test_params_baseline_feeds_parameters(tiny_frozen, tmp_path):
    frozen = tiny_frozen
    model, curve = rt.train(_config(tmp_path, condition="params", steps=1), frozen, _images(), progress=False)
    assert model.condition_channels == rt.condition_width(frozen.face)
    assert len(curve) == 1


def test_bad_config_is_refused(tmp_path):
    with pytest.raises(InputError, match="condition"):
        _config(tmp_path, condition="audio")
    with pytest.raises(InputError, match="lambda_cyc"):
        _config(tmp_path, lambda_cyc=-1.0)
    with pytest.raises(InputError, match="edit_groups"):
        _config(tmp_path, edit_groups="coarse,mouth")
    with pytest.raises(InputError, match="edit_groups"):
        _config(tmp_path, edit_groups="coarse,16")
    assert _config(tmp_path, edit_groups="coarse,16px").groups == ("coarse", "16px")
    with pytest.raises(InputError, match="lr_schedule"):
        _config(tmp_path, lr_schedule="step")


def test_unreadable_leftover_checkpoint_starts_afresh(tiny_frozen, tmp_path):
    cfg = _config(tmp_path, steps=1)
    path = rt.checkpoint_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="afresh"):
        model, curve = rt.train(cfg, tiny_frozen, _images(), progress=False)
    assert rt.read_checkpoint(path)["step"] == 1 and len(curve) == 1


def test_checkpoint_of_other_training_code_is_not_resumed(tiny_frozen, tmp_path, monkeypatch):
    from megafr import training

    cfg = _config(tmp_path, steps=1)
    rt.train(cfg, tiny_frozen, _images(), progress=False)
    assert torch.load(rt.checkpoint_path(cfg), weights_only=False)["code"] == training.code_digest(rt.TRAINING_CODE)
    monkeypatch.setattr(training, "code_digest", lambda folders: "edited code")
    with pytest.warns(UserWarning, match="other training code"):
        _, curve = rt.train(cfg, tiny_frozen, _images(), progress=False)
    assert list(curve["step"]) == [1]  # trained again from step 0


def test_refine_steps_parse_a_list_or_a_single_int():
    from megafr.errors import InputError
    from megafr.reenact.stage import parse_steps

    assert parse_steps("0,1,2") == (0, 1, 2)
    assert parse_steps(0) == (0,)  # `-p refine_steps 0` arrives as an int
    assert parse_steps("2") == (2,)
    with pytest.raises(InputError, match="refine steps"):
        parse_steps("-1")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_trains_in_bfloat16_only_where_the_cpu_has_it(tiny_frozen, tmp_path, monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: native)
    seen = []
    real_step = rt.step_losses

    def recording_step(*args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(rt, "step_losses", recording_step)
    plain, _ = rt.train(_config(tmp_path / "fp32", steps=2), tiny_frozen, _images(), progress=False)
    mixed, curve = rt.train(_config(tmp_path / "bf16", steps=2, cpu_bf16=True), tiny_frozen, _images(), progress=False)
    assert seen == [torch.float32] * 2 + [torch.bfloat16 if native else torch.float32] * 2
    assert np.isfinite(curve.to_numpy()).all()
    same = all(torch.equal(a, b) for a, b in zip(plain.encoder.state_dict().values(), mixed.encoder.state_dict().values()))
    assert same is not native  # bfloat16 steps move the weights differently; without native bf16 nothing changes
    assert rt.read_checkpoint(rt.checkpoint_path(_config(tmp_path / "bf16", cpu_bf16=True)))["config"]["cpu_bf16"]


def test_checkpoint_written_before_cpu_bf16_reads_as_float32(tiny_frozen, tmp_path):
    cfg = _config(tmp_path, steps=1)
    rt.train(cfg, tiny_frozen, _images(), progress=False)
    path = rt.checkpoint_path(cfg)
    data = torch.load(path, weights_only=False)
    del data["config"]["cpu_bf16"]
    torch.save(data, path)
    assert rt.read_checkpoint(path)["config"]["cpu_bf16"] is False
    with pytest.raises(InputError, match="cpu_bf16"):
        _config(tmp_path, cpu_bf16="yes")


def test_autocast_dtype_on_the_cpu_follows_the_request_the_instructions_and_the_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: True)
    assert devices.autocast_dtype(cpu, training=True) is None  # not asked for: float32, as every other stage
    assert devices.autocast_dtype(cpu, training=True, cpu_bf16=True) == torch.bfloat16
    monkeypatch.setenv(devices.AUTOCAST_VARIABLE, "0")
    assert devices.autocast_dtype(cpu, training=True, cpu_bf16=True) is None
    monkeypatch.delenv(devices.AUTOCAST_VARIABLE)
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: False)
    assert devices.autocast_dtype(cpu, training=True, cpu_bf16=True) is None
    with devices.autocast(cpu, training=True, cpu_bf16=True):
        assert not torch.is_autocast_enabled("cpu")


# ----------------------------------------------------------------------------- the per-image input cache
from megafr.reenact import inputs as ri  # noqa: E402
from megafr.reenact import parallel  # noqa: E402


def prepare_caches(cfgs, progress=True):
    """What train_many does before it starts the trainings that read a cache."""
    parallel.build_caches(parallel.check_caches(parallel.caches_to_build(cfgs)), progress)


class _NoImages(torch.utils.data.Dataset):
    """A training set whose images must not be read (a cached training reads none)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        raise AssertionError("a training with an input cache read an image")


def test_cached_inputs_are_the_steps_own(tiny_frozen, tmp_path):
    images = _images()
    cfg = _config(tmp_path / "run", input_cache=str(tmp_path / "cache"))
    cache = ri.input_cache(cfg, tiny_frozen, images, rt.input_cache_digest(cfg), progress=False)
    assert len(cache) == len(images) and cache.folder.name.startswith("e4e-")
    sources, targets = np.array([4, 1, 1]), np.array([0, 5, 2])
    got = cache.batch(sources, targets, torch.device("cpu"), render=True)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    want = ri.step_inputs(tiny_frozen, x[sources], x[targets])
    for name in ("w_s", "shape", "expression", "pose", "target_expression", "target_pose"):
        assert torch.allclose(getattr(got, name), getattr(want, name), atol=1e-5), name
    assert torch.allclose(got.x_s, want.x_s, atol=2e-3)  # stored in float16
    own = rt.make_targets(tiny_frozen.face, want.shape, want.expression, want.pose, "render").condition
    assert torch.allclose(got.render, own, atol=2e-3)
    assert cache.batch(sources, targets, torch.device("cpu"), render=False).render is None


@pytest.mark.parametrize("condition", ["render", "params"])
def test_a_cached_training_reads_no_image_and_trains_as_an_uncached_one(tiny_frozen, tmp_path, condition,
                                                                         monkeypatch):
    monkeypatch.setattr(ri, "HALF", ())  # float32 storage: the two runs differ only in the order of float operations
    images = _images()
    _, plain_curve = rt.train(_config(tmp_path / "plain", condition=condition), tiny_frozen, images, progress=False)
    cfg = _config(tmp_path / "cached", condition=condition, input_cache=str(tmp_path / "cache"))
    ri.input_cache(cfg, tiny_frozen, images, rt.input_cache_digest(cfg), progress=False)
    _, cached_curve = rt.train(cfg, tiny_frozen, _NoImages(len(images)), progress=False)
    # every loss term of every step; not the weights: Adam turns rounding-sized gradients into whole steps
    assert np.allclose(plain_curve.to_numpy(), cached_curve.to_numpy(), rtol=1e-4, atol=1e-6)
    assert rt.read_checkpoint(rt.checkpoint_path(cfg))["config"]["input_cache"] == str(tmp_path / "cache")


def test_the_cache_is_reused_and_replaced_when_what_it_depends_on_changes(tiny_frozen, tmp_path, monkeypatch):
    cfg = _config(tmp_path / "run", input_cache=str(tmp_path / "cache"))
    first = ri.input_cache(cfg, tiny_frozen, _images(), rt.input_cache_digest(cfg), progress=False).folder

    def no_build(*args):
        raise AssertionError("the cache was computed again")

    monkeypatch.setattr(ri, "_build", no_build)
    assert ri.input_cache(cfg, tiny_frozen, _images(), rt.input_cache_digest(cfg), progress=False).folder == first
    monkeypatch.undo()
    monkeypatch.setattr(rt, "upstream_digest", lambda c: "other networks")
    second = ri.input_cache(cfg, tiny_frozen, _images(), rt.input_cache_digest(cfg), progress=False).folder
    assert second != first and second.is_dir() and not first.exists()  # one cache per encoder
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [second.name]  # no temporary folder left


def test_a_new_cache_leaves_another_running_processs_unfinished_cache_alone(tiny_frozen, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import time

    cfg = _config(tmp_path / "run", input_cache=str(tmp_path / "cache"))
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live process
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        live = tmp_path / "cache" / f"e4e-other{ri.TEMP_MARKER}{writer.pid}"
        stale = tmp_path / "cache" / f"e4e-older{ri.TEMP_MARKER}{dead.pid}"
        reused = tmp_path / "cache" / f"e4e-oldest{ri.TEMP_MARKER}{writer.pid}"  # a live pid, two days old
        old = tmp_path / "cache" / "e4e-older"
        for folder in (live, stale, reused, old):
            folder.mkdir(parents=True)
        two_days_ago = time.time() - 2 * 24 * 3600
        os.utime(reused, (two_days_ago, two_days_ago))
        made = ri.input_cache(cfg, tiny_frozen, _images(), rt.input_cache_digest(cfg), progress=False).folder
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([made.name, live.name])
    finally:
        writer.kill()
        writer.wait()


def test_a_cache_too_large_is_refused_with_the_key_to_change(tiny_frozen, tmp_path, monkeypatch):
    monkeypatch.setattr(ri, "MAX_CACHE_GIB", 1e-6)
    with pytest.raises(InputError, match='input_cache: ""'):
        ri.input_cache(_config(tmp_path, input_cache=str(tmp_path / "cache")), tiny_frozen, _images(), "d",
                       progress=False)
    assert ri.input_cache(_config(tmp_path), tiny_frozen, _images(), "d", progress=False) is None  # key empty: no cache


def test_caches_to_build_computes_each_encoders_cache_once_and_skips_finished_trainings(tiny_frozen, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(parallel, "load_frozen", lambda cfg, lpips=True: tiny_frozen)
    np.save(tmp_path / "images.npy", _images())
    built = []
    real = ri._build
    monkeypatch.setattr(ri, "_build", lambda cfg, *rest: (built.append(cfg.condition), real(cfg, *rest)))
    common = dict(input_cache=str(tmp_path / "cache"), train_images=str(tmp_path / "images.npy"))
    finished = _config(tmp_path / "done", steps=1, **common)
    rt.train(dataclasses.replace(finished, input_cache=""), tiny_frozen, _images(), progress=False)
    data = torch.load(rt.checkpoint_path(finished), weights_only=False)
    data["config"] = dataclasses.asdict(finished)  # as if trained with the cache
    torch.save(data, rt.checkpoint_path(finished))
    prepare_caches([finished], progress=False)
    assert built == []  # nothing left to train: no cache
    prepare_caches([_config(tmp_path / "a", condition="render", **common),
                       _config(tmp_path / "b", condition="params", **common)], progress=False)
    assert built == ["render"]


def test_a_cache_is_computed_only_when_the_pairs_drawn_outnumber_the_images(tiny_frozen, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    few = _config(tmp_path / "few", steps=2, batch_size=2, input_cache=str(cache))  # 4 pairs, 6 images
    _, curve = rt.train(few, tiny_frozen, _images(), progress=False)
    assert len(curve) == 2 and not cache.exists()  # the steps computed their own inputs
    monkeypatch.setattr(parallel, "load_frozen", lambda cfg, lpips=True: tiny_frozen)
    np.save(tmp_path / "images.npy", _images())
    few = dataclasses.replace(few, train_images=str(tmp_path / "images.npy"), out_dir=str(tmp_path / "other"))
    prepare_caches([few], progress=False)
    assert not cache.exists()
    prepare_caches([few, dataclasses.replace(few, condition="params")], progress=False)  # 8 pairs together
    assert len(list(cache.iterdir())) == 1
    assert ri.pays(6, 6) and not ri.pays(5, 6)
