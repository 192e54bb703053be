"""The benchmark suite as one command: ``python -m benchmarks [--quick] [--out PATH] [--markdown]``.

Runs every case in its own process (:mod:`benchmarks.runner`) and writes one JSON file
(atomically, ``megafr.fileio.write_json``; default ``data/benchmarks.json``):

- ``machine``: CPU model, cores, torch version and threads, device, load average before and after;
- ``rendering``, ``flame_layer``, ``generator``, ``e4e``: building blocks, forward only;
- ``reenactment``: one full reenactment per image at the mini size, batched, against the suite's
  target of 20 images/s, and its phases;
- ``scoring``: the outputs train_reenact scores per batch (inversion only, refine 0, 1, 2), one reenactment
  per refinement step vs one chain (``Reenactor.reenact_steps``), side by side;
- ``training``: step time, images/s and peak memory of each training stage;
- ``threads``: the batched reenactment, an E_FR step and a train_face3d step with 1 vs 2 torch threads side
  by side, with OpenMP's default wait policy (``OMP_WAIT_POLICY`` unset, whatever the suite's environment
  says) and with ``OMP_WAIT_POLICY=PASSIVE``; and E_FR steps per second of one 2-thread process against two
  single-thread processes at once (the stages' ``*_workers``);
- ``driving``: ``reenact --driving`` end to end (decode, measure, smooth, reenact, encode) in frames/s at the
  mini size, and paste-back alone at the paper's crop size;
- ``optimizer``: one Adam step over the mini e4e encoder, torch's default update vs the fused one;
- ``profile``: top operators and megafr functions of a reenactment and of an E_FR step;
- ``gpu``: the paper-size cases on a CUDA device, or why they were skipped;
- ``data_pipeline``: indexing and streaming a synthetic folder of 1024 px photos through the training
  DataLoader, 1,000 vs 10,000 files: images/s and peak memory (flat in the folder size);
- ``pipeline``: per-stage wall time of the last ``dvc repro``, read from its records;
- ``errors``: every case that failed (the command then exits with status 1).

``--quick`` uses the smoke profile's sizes and one repeat (the tests); ``--sections a,b`` runs only
those sections and writes only them; ``--markdown`` prints the README table of an existing file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Optional

from benchmarks import cases, data_pipeline, driving, gpu, profiling, records, report, runner, training
from benchmarks.timing import load_average, machine
from benchmarks.worlds import Settings, sizes, write_head_model
from megafr.config import study_root
from megafr.fileio import write_json

DEFAULT_OUT = "data/benchmarks.json"
FULL_REPEATS, QUICK_REPEATS = 3, 1  # timed repeats per measurement (median reported)
# One torch thread unless told otherwise: on the shared 2-core development machine, 2 OpenMP threads
# spin-waiting on each other made whole cases several times (up to ~70x) slower whenever other jobs
# held a core (the threads section measures it in every run); one thread gives numbers that can be
# compared between runs.
DEFAULT_THREADS = 1

PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}  # OpenMP threads sleep instead of spinning while they wait
OPENMP_DEFAULT = {"OMP_WAIT_POLICY": None}  # unset: they spin a while first (the runtime's default)


@dataclass(frozen=True)
class Row:
    case: Callable[[Settings], dict]  # run in its own process
    env: Optional[dict] = None  # environment variables of that process (None: the suite's own)


# section name -> {row name: Row}; a section with one row named "" is that case's result itself
SECTIONS: dict[str, dict[str, Row]] = {
    "memory_baseline": {"": Row(runner.baseline)},
    "rendering": {"": Row(cases.rendering)},
    "flame_layer": {"": Row(cases.flame_layer)},
    "generator": {"": Row(cases.generator_forward)},
    "e4e": {"": Row(cases.e4e_forward)},
    "reenactment": {"": Row(cases.reenactment)},
    "scoring": {"": Row(cases.scoring)},
    "driving": {"": Row(driving.driving)},
    "training": {name: Row(case) for name, (case, _) in training.STAGES.items()},
    "threads": {"reenactment": Row(cases.reenactment_threads, OPENMP_DEFAULT),
                "reenactment_omp_passive": Row(cases.reenactment_threads, PASSIVE),
                "efr_train_step": Row(training.efr_step_threads, OPENMP_DEFAULT),
                "efr_train_step_omp_passive": Row(training.efr_step_threads, PASSIVE),
                "face3d_train_step": Row(training.face3d_step_threads, OPENMP_DEFAULT),
                "face3d_train_step_omp_passive": Row(training.face3d_step_threads, PASSIVE),
                "efr_train_processes": Row(training.efr_step_processes, PASSIVE)},
    "optimizer": {"": Row(training.adam_step)},
    "precision": {"efr_train_step": Row(training.efr_step_precision, PASSIVE),
                  "face3d_train_step": Row(training.face3d_step_precision, OPENMP_DEFAULT)},
    "input_cache": {"efr_train_step": Row(training.efr_step_input_cache, PASSIVE)},
    "memory_format": {"face3d_train_step": Row(training.face3d_memory_format, PASSIVE)},
    "render_workers": {"synthheads": Row(cases.synthheads_workers, PASSIVE)},
    "profile": {"reenactment": Row(profiling.profile_reenactment), "efr_train_step": Row(profiling.profile_efr_step)},
    "gpu": {"": Row(gpu.gpu)},
    "data_pipeline": {"files_1k": Row(data_pipeline.small_folder), "files_10k": Row(data_pipeline.large_folder)},
}
PIPELINE = "pipeline"  # read from the pipeline's records in this process
ALL_SECTIONS = (*SECTIONS, PIPELINE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"JSON file to write (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="smoke-profile sizes, one repeat (tests)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed repeats per measurement (default {FULL_REPEATS}; {QUICK_REPEATS} with --quick)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"torch threads of every case (default {DEFAULT_THREADS}; 0: torch's default); "
                             "the threads section compares 1 and 2 whatever this is")
    parser.add_argument("--sections", default=",".join(ALL_SECTIONS),
                        help=f"comma-separated subset of: {', '.join(ALL_SECTIONS)} (writes only those)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the sections of an existing --out file that this run does not measure "
                             "(their earlier run dates go under 'kept_sections')")
    parser.add_argument("--markdown", action="store_true", help="print the README table of --out and exit")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(ALL_SECTIONS))
    if unknown or not chosen:
        parser.error(f"unknown or no sections {unknown}; choose from {', '.join(ALL_SECTIONS)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    args.sections = chosen
    return args


def _log(message: str, began: float) -> None:
    print(f"[{time.perf_counter() - began:6.1f} s] {message}", file=sys.stderr, flush=True)


def run_section(name: str, settings: Settings, errors: list[dict], began: float) -> dict:
    """Every row of one section, each in its own process; failures go to ``errors``."""
    out = {}
    for row, spec in SECTIONS[name].items():
        label = f"{name}.{row}" if row else name
        _log(f"{label} ...", began)
        result = runner.run_isolated(spec.case, settings, spec.env)
        if "error" in result:
            errors.append({"case": label, "error": result["error"], "traceback": result.get("traceback", "")})
            _log(f"{label} FAILED: {result['error']}", began)
        if not row:
            return result
        out[row] = result
    return out


def nested_errors(tree: dict, path: str = "") -> list[dict]:
    """Rows that recorded an error inside a section that ran (the guarded GPU rows)."""
    found = []
    for key, value in tree.items():
        if isinstance(value, dict):
            if "error" in value and path:
                found.append({"case": f"{path}{key}", "error": value["error"]})
            found += nested_errors(value, f"{path}{key}.")
    return found


def run_suite(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    began = time.perf_counter()
    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    errors: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="megafr-bench-") as scratch:
        head = write_head_model(Path(scratch) / "head_model")
        settings = Settings(quick=args.quick, repeats=repeats, threads=args.threads, head_dir=str(head),
                            work_dir=str(Path(scratch) / "work"))
        result = {
            "suite": "python -m benchmarks" + (" --quick" if args.quick else ""),
            "quick": args.quick,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {**machine(), "torch_threads": args.threads or "torch default",
                        "load_average_start": load_average()},
            "settings": {"repeats": repeats, "threads": args.threads or "torch default",
                         "isolation": "one forked process per case (peak memory = ru_maxrss)"},
            "sizes": sizes(settings),
        }
        for name in args.sections:
            if name == PIPELINE:
                result[PIPELINE] = records.pipeline_records(study_root())
            else:
                result[name] = run_section(name, settings, errors, began)
    errors += [e for e in nested_errors({k: v for k, v in result.items() if k in SECTIONS})
               if e["case"] not in {x["case"] for x in errors}]
    result["machine"]["load_average_end"] = load_average()
    result["errors"] = errors
    result["total_s"] = time.perf_counter() - began
    return result, errors


def merge_results(old: dict, new: dict) -> dict:
    """``new`` plus the sections of ``old`` that ``new`` lacks, each recorded in ``kept_sections`` with the
    date of the run that measured it; errors of kept sections are kept with them."""
    merged = dict(new)
    kept = {name: date for name, date in old.get("kept_sections", {}).items() if name not in new}
    for name in ALL_SECTIONS:
        if name in old and name not in new:
            merged[name] = old[name]
            kept.setdefault(name, old.get("date", "unknown"))
    merged["kept_sections"] = kept
    merged["errors"] = new.get("errors", []) + [e for e in old.get("errors", [])
                                                if e["case"].split(".")[0] in kept]
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(report.markdown(json.loads(Path(args.out).read_text())))
        return 0
    result, errors = run_suite(args)
    if args.merge and Path(args.out).is_file():
        result = merge_results(json.loads(Path(args.out).read_text()), result)
    path = write_json(args.out, result)
    print(f"wrote {path} in {result['total_s']:.0f} s")
    if "reenactment" in result and "rows" in result["reenactment"]:
        r = result["reenactment"]
        best = r["rows"][f"batch_{r['target_batch']}"]["images_per_s"]
        verdict = "met" if r["target_met"] else "NOT met"
        print(f"reenactment at {r['image_size']} px, batch {r['target_batch']}: {best:.1f} images/s "
              f"(target {r['target_images_per_s']:g}: {verdict})")
    for error in errors:
        print(f"ERROR in {error['case']}: {error['error']}", file=sys.stderr)
        if error.get("traceback"):
            print(error["traceback"], file=sys.stderr)
    return 1 if errors else 0
