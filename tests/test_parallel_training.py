"""Several E_FR trainings at once in CPU worker processes: the same weights as one after another."""

import dataclasses
import os
import sys

import numpy as np
import pytest
import torch

from megafr import distributed
from megafr.errors import InputError
from megafr.face3d import headmodel
from megafr.reenact import parallel
from megafr.reenact import train as rt
from tests.conftest import TINY_SIZE, write_frozen_files


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_frozen):
    root = tmp_path_factory.mktemp("frozen")
    files = write_frozen_files(root, tiny_frozen, headmodel.write_head_model(root / "head"))
    images = np.random.default_rng(0).integers(0, 256, (6, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    np.save(root / "train.npy", images)
    return {**files, "train_images": str(root / "train.npy")}


def _config(files, out_dir, **changes) -> rt.ReenactConfig:
    values = dict(profile="smoke", seed=0, steps=2, batch_size=2, lr=1e-3, lr_schedule="constant", encoder="e4e",
                  condition="render",
                  edit_groups="coarse,medium", lambda_id=1.0, lambda_lmk=1.0, lambda_pair=1.0, lambda_cyc=1.0,
                  lambda_self=1.0, lambda_latent=0.0, lambda_l2=1.0, lambda_lpips=0.0, lambda_rec_id=0.5,
                  checkpoint_every=1, out_dir=str(out_dir), cpu_bf16=False, input_cache="", **files)
    return dataclasses.replace(rt.ReenactConfig(**values), **changes)


def _weights(cfg):
    return rt.read_checkpoint(rt.checkpoint_path(cfg))["state_dict"]


def test_two_worker_processes_train_what_one_process_trains(files, tmp_path):
    jobs = {"a": _config(files, tmp_path / "par" / "a"), "b": _config(files, tmp_path / "par" / "b", seed=1,
                                                                      condition="params")}
    seconds = parallel.train_many(jobs, workers=2, progress=False)
    assert sorted(seconds) == ["a", "b"] and all(s > 0 for s in seconds.values())
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of the two workers had
    try:
        for name, cfg in jobs.items():
            serial = dataclasses.replace(cfg, out_dir=str(tmp_path / "serial" / name))
            rt.train(serial, rt.load_frozen(serial), np.load(serial.train_images), progress=False)
            expected, got = _weights(serial), _weights(cfg)
            assert expected.keys() == got.keys()
            for key in expected:
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=f"{name}: {key}")
    finally:
        torch.set_num_threads(previous)
    assert rt.read_checkpoint(rt.checkpoint_path(jobs["b"]))["step"] == 2


class _RecordingPool:
    """A worker pool that notes, in ``events``, the output folder of every training submitted to it."""

    def __init__(self, pool, events):
        self.pool, self.events = pool, events

    def submit(self, fn, cfg, *args):
        self.events.append(("start", os.path.basename(cfg.out_dir)))
        return self.pool.submit(fn, cfg, *args)

    def shutdown(self, *args, **kwargs):
        return self.pool.shutdown(*args, **kwargs)


def test_the_cache_is_built_while_the_trainings_that_do_not_read_it_run(files, tmp_path, monkeypatch):
    """Trainings without a cache to wait for start first; the cache is built beside them on the threads they
    leave, then its readers start; each finished training is handed to on_trained with a worker's threads."""
    events = []
    real_pool, real_build = parallel.spawn_pool, parallel.build_caches
    monkeypatch.setattr(parallel, "spawn_pool", lambda n: _RecordingPool(real_pool(n), events))
    monkeypatch.setattr(parallel, "build_caches", lambda builds, progress: (
        events.append(("build", torch.get_num_threads(), len(builds))), real_build(builds, progress)))
    cache = str(tmp_path / "cache")  # 3 steps x 2 pairs = the 6 training images: the cache pays
    jobs = {"plain": _config(files, tmp_path / "plain", steps=3, condition="params"),
            "cached": _config(files, tmp_path / "cached", steps=3, input_cache=cache)}
    handed = []
    with distributed.torch_threads(2):
        seconds = parallel.train_many(jobs, workers=2, progress=False,
                                      on_trained=lambda name: handed.append((name, torch.get_num_threads())))
        assert torch.get_num_threads() == 2
    assert events == [("start", "plain"), ("build", 1, 1), ("start", "cached")]
    assert sorted(name for name, _ in handed) == ["cached", "plain"] and sorted(seconds) == ["cached", "plain"]
    assert [threads for _, threads in handed] == [1, 1]  # a worker's share, the last one too
    assert all(rt.read_checkpoint(rt.checkpoint_path(cfg))["step"] == 3 for cfg in jobs.values())
    assert len(os.listdir(cache)) == 1


def test_a_cache_that_would_not_fit_is_refused_before_any_training_starts(files, tmp_path, monkeypatch):
    """The uncached training would otherwise start first, and the refusal wait for it to end."""
    from megafr.reenact import inputs

    events = []
    real_pool = parallel.spawn_pool
    monkeypatch.setattr(parallel, "spawn_pool", lambda n: _RecordingPool(real_pool(n), events))
    monkeypatch.setattr(inputs, "MAX_CACHE_GIB", 1e-9)
    jobs = {"plain": _config(files, tmp_path / "plain", steps=3, condition="params"),
            "cached": _config(files, tmp_path / "cached", steps=3, input_cache=str(tmp_path / "cache"))}
    with pytest.raises(InputError, match="input_cache: caching 6 images"):
        parallel.train_many(jobs, workers=2, progress=False)
    assert events == []
    assert not rt.checkpoint_path(jobs["plain"]).exists()


def test_worker_counts_are_checked_and_a_gpu_trains_one_at_a_time(monkeypatch, capsys):
    assert distributed.worker_threads(2, 2) == 1 and distributed.worker_threads(2, 1) == 1
    assert distributed.worker_threads(3, 8) == 2
    assert parallel.effective_workers(2, "evaluate.ablation_workers") == 2
    with pytest.raises(InputError, match="evaluate.ablation_workers must be >= 1"):
        parallel.effective_workers(0, "evaluate.ablation_workers")
    monkeypatch.setattr(parallel, "torch_device", lambda: torch.device("cuda"))
    assert parallel.effective_workers(2, "train_reenact.variant_workers") == 1
    assert "one at a time" in capsys.readouterr().out
    with pytest.raises(InputError, match=">= 2 worker processes"):
        parallel.train_many({}, workers=1)


def _pictures(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)


def test_ablations_and_variants_in_two_processes_give_the_rows_of_one(files, tmp_path, one_thread):
    """The stages' parallel path (workers 2) and their in-process path (workers 1) give the same rows."""
    import pandas as pd

    from megafr.evaluate import ablations as abl
    from megafr.evaluate import external, tables
    from megafr.reenact.stage import run_variants

    base = _config(files, tmp_path / "canonical")
    frozen = rt.load_frozen(base)
    reasons = {name: f"{name} n/a: test" for name in external.PAPER_METRICS}
    judge = tables.Judge(frozen, external.PaperMetrics(None, None, None, reasons), _pictures(6, 1))
    cross = tables.EvalSet("cross", _pictures(3, 2), _pictures(3, 3), _pictures(3, 4))
    plan = [a for a in abl.plan(("loss", "refine"), 1) if a.name in ("reference", "lambda_id=0", "refine_steps=0")]
    images = np.load(base.train_images)
    rows = {workers: abl.run_ablations(base, frozen, images, cross, judge, plan, 2, tmp_path / f"abl{workers}", "d",
                                       progress=False, seeds=(0, 1), workers=workers) for workers in (1, 2)}
    pd.testing.assert_frame_equal(rows[1], rows[2])
    assert list(rows[2]["ablation"]) == ["reference", "lambda_id=0", "refine_steps=0"] * 2

    pairs = {"source": cross.source, "target": cross.target, "truth": cross.truth}
    scored = {workers: run_variants(dataclasses.replace(base, out_dir=str(tmp_path / f"var{workers}")),
                                    "e4e:render,e4e:params", pairs, "0,1", progress=False, workers=workers)
              for workers in (1, 2)}
    pd.testing.assert_frame_equal(scored[1][1], scored[2][1])
    for name in ("e4e_render", "e4e_params"):
        pd.testing.assert_frame_equal(scored[1][0][name], scored[2][0][name])


_ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from megafr import distributed
if sys.argv[1] == "watch":  # the study's pools: exit_with_parent, then their own initializer
    pool = distributed.spawn_pool(1, time.sleep, (0,))
else:
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(time.sleep, 120)
time.sleep(120)
"""


def test_a_spawned_pool_runs_its_own_initializer_too():
    pool = distributed.spawn_pool(1, torch.set_num_threads, (3,))
    try:
        assert pool.submit(torch.get_num_threads).result() == 3
    finally:
        pool.shutdown()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting to be reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_ends_when_its_caller_is_killed():
    """A caller killed without a word (SIGKILL: a restarted kernel) takes its training worker with it; a pool
    without the watch leaves the worker running (the control, so that the test can fail)."""
    import signal
    import subprocess
    import time

    survivors = {}
    for mode in ("watch", "no-watch"):
        caller = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, mode], stdout=subprocess.PIPE, text=True)
        worker = int(caller.stdout.readline())
        assert _alive(worker)
        caller.send_signal(signal.SIGKILL)
        caller.wait()
        deadline = time.monotonic() + (20 if mode == "watch" else 3)
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors[mode] = _alive(worker)
        if survivors[mode]:
            os.kill(worker, signal.SIGKILL)
    assert survivors == {"watch": False, "no-watch": True}
