"""The benchmark suite: ``python -m benchmarks --quick`` writes a complete, well-formed JSON.

Only the structure is checked (keys present, numbers positive), never a timing threshold: timings
depend on the machine and on what else runs on it.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu, records, report, runner, suite
from benchmarks.cases import chunked_synthesis, thread_comparison
from megafr.nets.stylegan2 import Generator
from benchmarks.worlds import Settings, write_head_model

ROOT = Path(__file__).resolve().parents[1]
# The threads section compares 2 spinning OpenMP threads, which take seconds per call on a busy
# 2-core machine whatever the size; its functions are tested on their own below.
QUICK_SECTIONS = [s for s in suite.ALL_SECTIONS if s != "threads"]
STAGES = ("face3d", "idnet", "generator_autoencoder", "inversion_psp", "reenact_efr")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "benchmarks.json"
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--sections", ",".join(QUICK_SECTIONS)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_machine_block_and_no_errors(quick_run):
    machine = quick_run["machine"]
    for key in ("cpu_model", "cpu_count", "usable_cores", "torch", "torch_threads", "device"):
        assert key in machine, key
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    assert quick_run["quick"] is True and quick_run["errors"] == []
    assert _positive(quick_run["total_s"])


def test_every_section_is_written(quick_run):
    for name in QUICK_SECTIONS:
        assert name in quick_run, name
    assert "threads" not in quick_run  # --sections writes only what it ran


def test_forward_sections_hold_positive_rates(quick_run):
    rows = quick_run["rendering"]["rows"]
    assert len(rows) == 5 and all(_positive(r["images_per_s"]) for r in rows.values())
    flame = quick_run["flame_layer"]
    assert all(_positive(flame[k]["meshes_per_s"]) for k in ("synthetic_head", "flame_sized_paper_coefficients"))
    for section in ("generator", "e4e"):
        entries = [e for e in quick_run[section].values() if isinstance(e, dict) and "batch_1" in e]
        assert entries, section
        assert all(_positive(e["batch_1"]["images_per_s"]) for e in entries)
    assert quick_run["e4e"]["paper_256"] == {"skipped": "--quick"}
    for name in ("memory_baseline", "rendering", "generator", "reenactment"):
        assert _positive(quick_run[name]["peak_rss_mb"]), name


def test_reenactment_reports_rates_target_and_phases(quick_run):
    r = quick_run["reenactment"]
    largest = r["target_batch"]
    chunked = [name for name in r["rows"] if name.startswith(f"batch_{largest}_in_chunks_of_")]
    assert {"batch_1", f"batch_{largest}"} <= set(r["rows"]) and len(chunked) == 1
    assert all(_positive(row["images_per_s"]) for row in r["rows"].values())
    assert isinstance(r["target_met"], bool) and isinstance(r["target_met_in_chunks"], bool)
    assert r["target_images_per_s"] == 20.0 and _positive(r["chunk_speedup"]) and _positive(r["generator_chunk_speedup"])
    phases = r["phases"]
    assert all(_positive(v) for v in phases["seconds"].values())
    assert sum(phases["share"].values()) == pytest.approx(1.0)


def test_training_stages_report_step_time_and_memory(quick_run):
    training = quick_run["training"]
    assert set(training) == set(STAGES)
    for name, row in training.items():
        for key in ("seconds_per_step", "images_per_s", "peak_rss_mb"):
            assert _positive(row[key]), (name, key)


def test_optimizer_section_compares_default_and_fused_adam(quick_run):
    row = quick_run["optimizer"]
    assert row["parameters"] > 0 and _positive(row["default"]["median_s"]) and _positive(row["fused"]["median_s"])
    assert row["time_ratio_default_over_fused"] == row["default"]["median_s"] / row["fused"]["median_s"]
    assert "Default vs fused Adam" in report.markdown(quick_run)


def test_precision_section_compares_float32_and_bfloat16_steps(quick_run):
    for name in ("efr_train_step", "face3d_train_step"):
        row = quick_run["precision"][name]
        full, half = row["float32"]["median_s"], row["cpu_bf16"]["median_s"]
        assert _positive(full) and _positive(half) and isinstance(row["native_bf16"], bool)
        assert row["time_ratio_float32_over_cpu_bf16"] == full / half
    assert "float32 vs `cpu_bf16`, one train_face3d step" in report.markdown(quick_run)


def test_input_cache_section_compares_computed_and_cached_inputs(quick_run):
    row = quick_run["input_cache"]["efr_train_step"]
    computed, cached = row["computed"]["median_s"], row["cached"]["median_s"]
    assert _positive(computed) and _positive(cached) and row["images"] > 0 and _positive(row["cache_build_s"])
    assert row["time_ratio_computed_over_cached"] == computed / cached
    assert "read from `input_cache`" in report.markdown(quick_run)


def test_scoring_section_compares_separate_reenactments_with_one_chain(quick_run):
    row = quick_run["scoring"]
    separately, chain = row["separately"]["median_s"], row["one_chain"]["median_s"]
    assert _positive(separately) and _positive(chain) and row["same_outputs"] is True
    assert row["time_ratio_separately_over_chain"] == separately / chain
    assert "one reenactment per refinement step vs one chain" in report.markdown(quick_run)


def test_memory_format_section_compares_layouts_of_a_face3d_step(quick_run):
    row = quick_run["memory_format"]["face3d_train_step"]
    for threads in (1, 2):
        run = row[f"threads_{threads}"]
        base, nhwc = run["contiguous"]["median_s"], run["channels_last"]["median_s"]
        assert _positive(base) and _positive(nhwc)
        assert run["time_ratio_contiguous_over_channels_last"] == base / nhwc
    assert "Default layout vs channels_last" in report.markdown(quick_run)


def test_render_workers_section_renders_the_same_images_in_worker_processes(quick_run):
    row = quick_run["render_workers"]["synthheads"]
    assert row["identical_images"] is True
    one, pool = row["one_process"]["median_s"], row["worker_processes"]["median_s"]
    assert _positive(one) and _positive(pool) and _positive(row["pool_start_s"])
    assert row["workers_speedup"] == one / pool and row["workers"] == 2
    assert "worker processes, SynthHeads rendering" in report.markdown(quick_run)


def test_profile_lists_ops_and_functions(quick_run):
    for workload in ("reenactment", "efr_train_step"):
        entry = quick_run["profile"][workload]
        ops = entry["top_ops"]["ops"]
        assert ops and all(0 < op["share"] <= 1 and op["op"] for op in ops)
        functions = entry["top_functions"]["functions"]
        assert functions and all(f["function"].startswith("megafr/") for f in functions)


def test_gpu_is_skipped_or_measured(quick_run):
    section = quick_run["gpu"]
    if torch.cuda.is_available():
        assert section["available"] is True
    else:
        assert section["available"] is False and "cuda" in section["skipped"]


def test_markdown_table_has_machine_line_and_rows(quick_run):
    text = report.markdown(quick_run)
    assert text.startswith("**Quick run")
    assert "| Benchmark | Setting | Time | Throughput | Peak memory |" in text
    assert "Full reenactment" in text and "Training step, E_FR (train_reenact)" in text


def test_paper_size_section_code_path_runs_on_cpu(tmp_path):
    settings = Settings(quick=True, repeats=1, threads=1, head_dir=str(write_head_model(tmp_path / "head")),
                        work_dir=str(tmp_path / "work"))
    out = gpu.paper_size_section(settings, "cpu")
    rows = {k: v for k, v in out.items() if isinstance(v, dict)}
    assert set(rows) == {"generator_config_f", "e4e", "rendering", "flame_layer", "reenactment_mini"}
    assert all("error" not in v for v in rows.values()), rows
    assert _positive(rows["reenactment_mini"]["images_per_s"])


def test_process_comparison_times_both_layouts(tmp_path):
    from benchmarks.training import efr_step_processes

    settings = Settings(quick=True, repeats=1, threads=1, head_dir=str(write_head_model(tmp_path / "head")),
                        work_dir=str(tmp_path / "work"))
    out = efr_step_processes(settings)
    assert len(out["two_processes_1_thread_s_per_step"]) == 2
    assert _positive(out["steps_per_s_one_process"]) and _positive(out["two_over_one"])


def test_thread_comparison_restores_threads_and_gives_a_ratio():
    before = torch.get_num_threads()
    out = thread_comparison(lambda: torch.ones(64, 64) @ torch.ones(64, 64), repeats=2)
    assert torch.get_num_threads() == before
    assert _positive(out["time_ratio_1_over_2"]) and out["threads_1"]["repeats"] == 2


def test_face3d_thread_comparison_times_the_stage_step_with_both_thread_counts(tmp_path):
    from benchmarks.training import face3d_step_threads

    settings = Settings(quick=True, repeats=1, threads=1, head_dir=str(write_head_model(tmp_path / "head")),
                        work_dir=str(tmp_path / "work"))
    out = face3d_step_threads(settings)
    assert _positive(out["threads_1"]["median_s"]) and _positive(out["threads_2"]["median_s"])
    assert out["time_ratio_1_over_2"] == out["threads_1"]["median_s"] / out["threads_2"]["median_s"]
    assert "train_face3d step" in out["workload"]


def test_thread_rows_name_the_wait_policy_each_row_ran_under():
    timing = {"threads_1": {"median_s": 0.2}, "threads_2": {"median_s": 0.1}, "workload": "w"}
    section = {"a": {**timing, "environment": {"OMP_WAIT_POLICY": None}},
               "b": {**timing, "environment": {"OMP_WAIT_POLICY": "PASSIVE"}}}
    rows = report._thread_rows(section)
    assert [row[1] for row in rows] == ["default OpenMP wait policy", "OMP_WAIT_POLICY=PASSIVE"]
    assert rows[0][3] == "2 threads: 2.00x the speed of 1"


def test_chunked_synthesis_variant_gives_the_same_images_and_is_removed_after():
    torch.manual_seed(0)
    g = Generator(16, 8, n_mlp=1, channel_multiplier=1, max_channels=8).eval()
    noise = g.stored_noise()
    w = torch.randn(5, g.n_latent, 8)
    with torch.no_grad():
        whole = g.synthesis(w, noise)
        with chunked_synthesis(g, 2):
            chunked = g.synthesis(w, noise=noise)
    assert torch.allclose(whole, chunked, atol=1e-5)
    assert "synthesis" not in vars(g)


def test_a_case_with_its_own_environment_runs_in_a_fresh_process(tmp_path):
    settings = Settings(quick=True, repeats=1, threads=1, head_dir=str(tmp_path), work_dir=str(tmp_path))
    out = runner.run_isolated(runner.baseline, settings, {"OMP_WAIT_POLICY": "PASSIVE"})
    assert out["environment"] == {"OMP_WAIT_POLICY": "PASSIVE"} and _positive(out["peak_rss_mb"])


def _wait_policy(settings: Settings) -> dict:
    return {"policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


def test_a_case_environment_of_none_unsets_the_variable_in_the_child_only(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    settings = Settings(quick=True, repeats=1, threads=1, head_dir=str(tmp_path), work_dir=str(tmp_path))
    assert runner.run_isolated(_wait_policy, settings, {"OMP_WAIT_POLICY": None})["policy"] == "unset"
    assert runner.run_isolated(_wait_policy, settings, {"OMP_WAIT_POLICY": "ACTIVE"})["policy"] == "ACTIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # the suite's own environment is left as it was


def test_pipeline_records_are_read_with_their_sources(tmp_path):
    (tmp_path / "data/logs").mkdir(parents=True)
    (tmp_path / "data/logs/train_idnet.json").write_text(json.dumps({"train_seconds": 12.5, "steps_run": 100}))
    (tmp_path / "data/executed").mkdir()
    notebook = {"metadata": {"papermill": {"duration": 30.0, "exception": None}}, "cells": []}
    (tmp_path / "data/executed/05_train_idnet.ipynb").write_text(json.dumps(notebook))
    running = {"metadata": {"papermill": {"duration": None}}, "cells": []}
    (tmp_path / "data/executed/06_train_reenact.ipynb").write_text(json.dumps(running))
    out = records.pipeline_records(tmp_path)
    assert out["training_loops"]["train_idnet"] == {"train_seconds": 12.5, "steps_run": 100,
                                                    "source": "data/logs/train_idnet.json"}
    assert out["notebooks"]["train_idnet"]["duration_s"] == 30.0
    assert out["notebooks"]["train_reenact"]["finished"] is False
    assert out["finished_notebooks"] == 1 and out["finished_notebooks_total_s"] == 30.0


def test_merge_keeps_the_sections_a_run_did_not_measure():
    old = {"date": "d1", "rendering": {"rows": 1}, "pipeline": {"old": True}, "kept_sections": {"gpu": "d0"},
           "gpu": {"skipped": "x"}, "errors": [{"case": "rendering", "error": "e"}, {"case": "pipeline", "error": "p"}]}
    new = {"date": "d2", "pipeline": {"new": True}, "errors": []}
    merged = suite.merge_results(old, new)
    assert merged["pipeline"] == {"new": True} and merged["rendering"] == {"rows": 1} and merged["date"] == "d2"
    assert merged["kept_sections"] == {"gpu": "d0", "rendering": "d1"}
    assert merged["errors"] == [{"case": "rendering", "error": "e"}]
    line = report.machine_line({"machine": {"cpu_model": "cpu", "usable_cores": 2, "torch": "t", "torch_threads": 1,
                                            "device": "cpu"}, "settings": {"repeats": 3}, "suite": "s",
                                "date": "2026-01-02T00:00:00", "kept_sections": merged["kept_sections"]})
    assert "Sections kept from earlier runs (`--merge`): gpu measured d0; rendering measured d1." in line


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        suite.parse_args(["--sections", "nonsense"])
    with pytest.raises(SystemExit):
        suite.parse_args(["--repeats", "0"])


def test_data_pipeline_streams_both_folders(quick_run):
    from benchmarks import report

    section = quick_run["data_pipeline"]
    small, large = section["files_1k"], section["files_10k"]
    assert large["files"] == 10 * small["files"] and small["images_streamed"] == large["images_streamed"] > 0
    assert _positive(small["images_per_s"]) and _positive(large["peak_rss_mb"])
    assert "Data pipeline at" in report.markdown(quick_run)
