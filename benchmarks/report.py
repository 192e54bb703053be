"""The README's benchmark table, printed from ``data/benchmarks.json`` (``python -m benchmarks --markdown``).

Reads only what the suite wrote; a section that is missing (a partial run) or failed is left out
of the table, and a quick run says so in the machine line.
"""

from __future__ import annotations

from typing import Optional

MS_BELOW_S = 1.0  # durations under a second are shown in milliseconds
MB_PER_GB = 1024.0
TOP_OPS_SHOWN = 5  # operators listed per profiled workload
TOP_FUNCTIONS_SHOWN = 3  # megafr functions listed per profiled workload
STAGE_LABELS = {  # JSON name -> (table label, pipeline stage)
    "face3d": ("3D face network (train_face3d)", "train_face3d"),
    "idnet": ("identity network (train_idnet)", "train_idnet"),
    "generator_autoencoder": ("generator + e4e autoencoder (train_generator)", "train_generator"),
    "inversion_psp": ("pSp inversion (train_inversion)", "train_inversion"),
    "reenact_efr": ("E_FR (train_reenact)", "train_reenact"),
}
PHASE_LABELS = {
    "inversion_encoder": "e4e inversion", "inversion_generator": "G(w_s)", "face3d_net_x2": "3D net (source, target)",
    "targets_flame_and_render": "FLAME + rendering r_t", "e_fr_encoder": "E_FR", "generator": "G(w_f)",
}


def seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < MS_BELOW_S else f"{value:.2f} s"


def per_s(value: float, unit: str = "images/s") -> str:
    return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def memory(result: dict) -> str:
    mb = result.get("peak_rss_mb")
    if mb is None:
        return ""
    return f"{mb / MB_PER_GB:.2f} GB" if mb >= MB_PER_GB else f"{mb:.0f} MB"


def _ok(section: Optional[dict]) -> bool:
    return isinstance(section, dict) and "error" not in section


def _measured(section: dict) -> list[dict]:
    """The rows of a section with several rows that were measured (not recorded as errors)."""
    return [row for row in section.values() if _ok(row)]


def machine_line(result: dict) -> str:
    m = result["machine"]
    threads = m.get("torch_threads")
    load = m.get("load_average_start") or []
    baseline = result.get("memory_baseline", {}).get("peak_rss_mb")
    parts = [f"{m['cpu_model']}, {m['usable_cores']} cores", f"torch {m['torch']}",
             f"{threads} torch thread{'s' if threads != 1 else ''} per case", f"device {m['device']}"]
    if load:
        parts.append(f"load average {load[0]:g} at the start (shared machine)")
    sizes = result.get("sizes", {})
    line = (f"Measured on {'; '.join(parts)}. Sizes of the `{sizes.get('profile', '?')}` profile, random weights; "
            f"medians of {result['settings']['repeats']} after a warm-up call; `{result['suite']}`, {result['date'][:10]}.")
    if baseline:
        line += f" Peak memory is each case's own process (imports alone: {baseline:.0f} MB)."
    kept = result.get("kept_sections")
    if kept:
        by_date: dict[str, list[str]] = {}
        for name, date in sorted(kept.items()):
            by_date.setdefault(date, []).append(name)
        line += " Sections kept from earlier runs (`--merge`): " + "; ".join(
            f"{', '.join(names)} measured {date}" for date, names in sorted(by_date.items())) + "."
    if result.get("quick"):
        line = "**Quick run (tiny sizes, for tests), not for the README.** " + line
    return line


def _rendering_rows(section: dict) -> list[list[str]]:
    rows = []
    ordered = sorted(section["rows"].items(), key=lambda item: (item[1]["image_size"], item[0]))
    for name, row in ordered:
        mesh = "FLAME-sized mesh" if name.startswith("flame_sized") else "head mesh"
        mode = row["mode"] + (", forward + backward" if row["backward"] else "")
        rows.append([f"Renderer, {mesh} ({row['faces']} faces), {mode}", f"{row['image_size']} px, batch {row['batch']}",
                     f"{seconds(row['seconds_per_batch_median'])} / batch", per_s(row["images_per_s"]), ""])
    return rows


def _flame_rows(section: dict) -> list[list[str]]:
    labels = {"synthetic_head": "FLAME layer, synthetic head model",
              "flame_sized_paper_coefficients": "FLAME layer, FLAME 2020 size"}
    return [[f"{labels[name]} ({row['vertices']} vertices, {row['n_shape']}+{row['n_expr']} coefficients)",
             f"batch {row['batch']}", f"{seconds(row['median_s'])} / batch", per_s(row["meshes_per_s"], "meshes/s"), ""]
            for name, row in section.items() if name in labels]


def _network_rows(section: dict, label: str) -> list[list[str]]:
    rows = []
    entries = [(name, entry) for name, entry in section.items()
               if isinstance(entry, dict) and ("batch_1" in entry or "skipped" in entry)]
    entries.sort(key=lambda item: item[1].get("config", {}).get("size", 0))  # by output size where known
    for name, entry in entries:
        what = f"{label}, {name.replace('_', ' ')}"
        if "skipped" in entry:
            rows.append([what, "", f"skipped ({entry['skipped']})", "", ""])
            continue
        batched = sorted((k for k in entry if k.startswith("batch_")), key=lambda k: (entry[k]["batch"], len(k)))
        note = " (one measurement)" if "note" in entry else ""
        for key in batched:
            row = entry[key]
            setting = f"batch {row['batch']}" + (", one call per image" if key.endswith("_one_call_per_image") else "")
            rows.append([what, setting, f"{seconds(row['s_per_image'])} / image{note}", per_s(row["images_per_s"]), ""])
    return rows


def _reenactment_rows(section: dict) -> list[list[str]]:
    """Batch sizes in increasing order, then the variants of the largest batch; the largest batch's rows say
    whether they reach the suite's target."""
    rows = []
    target = section["target_images_per_s"]
    ordered = sorted(section["rows"].items(), key=lambda item: (item[1]["batch"], len(item[0])))
    for name, row in ordered:
        setting = f"{section['image_size']} px, batch {row['batch']}"
        if "chunk" in row:
            setting += f" as {row['batch'] // row['chunk']} calls of {row['chunk']}"
        if "generator_chunk" in row:
            setting += f", G synthesising {row['generator_chunk']} at a time"
        result = per_s(row["images_per_s"])
        if row["batch"] == section["target_batch"]:
            result += f" (target {target:g}: {'met' if row['images_per_s'] >= target else 'not met'})"
        main = name == f"batch_{section['target_batch']}"
        rows.append([f"Full reenactment (inversion, 3D net, FLAME + render, E_FR + G, {section['refine_steps']} refinement)",
                     setting, f"{seconds(row['median_s'])} / batch", result, memory(section) if main else ""])
    return rows


def _driving_rows(section: dict) -> list[list[str]]:
    what = (f"Driving video, end to end (decode, 3D net, {section['smoothing']}, reenact with "
            f"{section['refine_steps']} refinement, encode MP4)")
    rows = [[what, f"{section['image_size']} px, {section['frames']} frames, batch {row['batch']}",
             f"{seconds(row['median_s'])} / clip", per_s(row["frames_per_s"], "frames/s"), ""]
            for row in sorted(section["rows"].values(), key=lambda r: r["batch"])]
    measure = section["decode_and_measure"]
    rows.append(["Driving video: decode + 3D net only", f"{section['image_size']} px, {section['frames']} frames",
                 f"{seconds(measure['median_s'])} / clip", per_s(measure["frames_per_s"], "frames/s"), ""])
    paste = section["paste_back"]
    rows.append(["Paste-back (warp + soft mask blend)", f"{paste['crop']} px crop into {paste['photo'][0]}x"
                 f"{paste['photo'][1]} photo", f"{seconds(paste['median_s'])} / frame",
                 per_s(paste["frames_per_s"], "frames/s"), ""])
    return rows


def _training_rows(section: dict) -> list[list[str]]:
    rows = []
    for name, (label, _) in STAGE_LABELS.items():
        row = section.get(name)
        if not _ok(row):
            continue
        rows.append([f"Training step, {label}", f"batch {row['batch_size']} ({row['images_per_step']} images)",
                     f"{seconds(row['seconds_per_step'])} / step", per_s(row["images_per_s"]), memory(row)])
    return rows


def _thread_rows(section: dict) -> list[list[str]]:
    rows = []
    for row in _measured(section):
        if "threads_1" not in row:
            continue
        passive = (row.get("environment") or {}).get("OMP_WAIT_POLICY") == "PASSIVE"
        policy = "OMP_WAIT_POLICY=PASSIVE" if passive else "default OpenMP wait policy"
        t1, t2 = row["threads_1"]["median_s"], row["threads_2"]["median_s"]
        rows.append([f"1 vs 2 torch threads, {row['workload']}", policy,
                     f"{seconds(t1)} vs {seconds(t2)}", f"2 threads: {t1 / t2:.2f}x the speed of 1", ""])
    row = section.get("efr_train_processes")
    if _ok(row):
        pair = " and ".join(seconds(t) for t in row["two_processes_1_thread_s_per_step"])
        rows.append([f"one 2-thread process vs two 1-thread processes at once, {row['workload']}",
                     "OMP_WAIT_POLICY=PASSIVE", f"{seconds(row['one_process_2_threads_s_per_step'])} vs {pair} / step",
                     f"{per_s(row['steps_per_s_one_process'], 'steps/s')} vs "
                     f"{per_s(row['steps_per_s_two_processes'], 'steps/s')} ({row['two_over_one']:.2f}x)", memory(row)])
    return rows


def _optimizer_rows(section: dict) -> list[list[str]]:
    default, fused = section["default"]["median_s"], section["fused"]["median_s"]
    return [[f"Default vs fused Adam, {section['workload']}", f"{section['parameters'] / 1e6:.1f} M parameters",
             f"{seconds(default)} vs {seconds(fused)}", f"fused: {default / fused:.2f}x the speed", ""]]


def _memory_format_rows(section: dict) -> list[list[str]]:
    rows = []
    for row in _measured(section):
        for threads in (1, 2):
            run = row[f"threads_{threads}"]
            base, nhwc = run["contiguous"]["median_s"], run["channels_last"]["median_s"]
            rows.append([f"Default layout vs channels_last, {row['workload']}", f"{threads} torch thread{'s' * (threads > 1)}",
                         f"{seconds(base)} vs {seconds(nhwc)}", f"channels_last: {base / nhwc:.2f}x the speed", ""])
    return rows


def _precision_rows(section: dict) -> list[list[str]]:
    rows = []
    for row in _measured(section):
        full, half = row["float32"]["median_s"], row["cpu_bf16"]["median_s"]
        native = "native bf16" if row["native_bf16"] else "no bf16 instructions: float32 both"
        rows.append([f"float32 vs `cpu_bf16`, {row['workload']}", native, f"{seconds(full)} vs {seconds(half)}",
                     f"cpu_bf16: {full / half:.2f}x the speed", ""])
    return rows


def _input_cache_rows(section: dict) -> list[list[str]]:
    rows = []
    for row in _measured(section):
        computed, cached = row["computed"]["median_s"], row["cached"]["median_s"]
        rows.append([f"E_FR inputs computed in the step vs read from `input_cache`, {row['workload']}",
                     f"cache of {row['images']} images: {row['cache_build_s_per_image'] * 1000:.1f} ms / image to compute",
                     f"{seconds(computed)} vs {seconds(cached)}", f"cached: {computed / cached:.2f}x the speed", ""])
    return rows


def _scoring_rows(section: dict) -> list[list[str]]:
    separately, chain = section["separately"]["median_s"], section["one_chain"]["median_s"]
    same = "same outputs" if section["same_outputs"] else "OUTPUTS DIFFER"
    return [[f"scoring's outputs, one reenactment per refinement step vs one chain, {section['workload']}", same,
             f"{seconds(separately)} vs {seconds(chain)}", f"one chain: {separately / chain:.2f}x the speed", ""]]


def _render_worker_rows(section: dict) -> list[list[str]]:
    rows = []
    for row in _measured(section):
        one, pool = row["one_process"]["median_s"], row["worker_processes"]["median_s"]
        same = "same images" if row["identical_images"] else "IMAGES DIFFER"
        rows.append([f"one process vs {row['workers']} worker processes, {row['workload']}",
                     f"{row['threads']} torch threads vs 1 per worker; {same}", f"{seconds(one)} vs {seconds(pool)}",
                     f"workers: {one / pool:.2f}x the speed", ""])
    return rows


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main_table(result: dict) -> str:
    builders = (("rendering", _rendering_rows), ("flame_layer", _flame_rows),
                ("generator", lambda s: _network_rows(s, "StyleGAN2 synthesis")),
                ("e4e", lambda s: _network_rows(s, "e4e encoder")), ("reenactment", _reenactment_rows),
                ("driving", _driving_rows),
                ("training", _training_rows), ("threads", _thread_rows), ("optimizer", _optimizer_rows),
                ("precision", _precision_rows), ("memory_format", _memory_format_rows),
                ("render_workers", _render_worker_rows), ("input_cache", _input_cache_rows),
                ("scoring", _scoring_rows))
    rows = []
    for name, build in builders:
        if _ok(result.get(name)):
            rows += build(result[name])
    return table(rows, ["Benchmark", "Setting", "Time", "Throughput", "Peak memory"])


def phases_line(result: dict) -> str:
    section = result.get("reenactment")
    if not _ok(section) or "phases" not in section:
        return ""
    p = section["phases"]
    shares = sorted(p["share"].items(), key=lambda item: item[1], reverse=True)
    parts = ", ".join(f"{PHASE_LABELS.get(k, k)} {v:.0%}" for k, v in shares)
    return f"Where a reenactment's time goes (batch {p['batch']}, F applied {p['passes_of_F']} times): {parts}."


def pipeline_table(result: dict) -> str:
    section = result.get("pipeline")
    if not isinstance(section, dict) or not section.get("notebooks"):
        return ""
    rows = []
    loops = section.get("training_loops", {})
    for stage, record in section["notebooks"].items():
        wall = seconds(record["duration_s"]) if "duration_s" in record else "not finished"
        loop = loops.get(stage, {})
        rows.append([stage, wall, seconds(loop["train_seconds"]) if "train_seconds" in loop else "",
                     f"{loop['seconds_per_step'] * 1000:.0f} ms" if "seconds_per_step" in loop else ""])
    text = table(rows, ["Pipeline stage (last `dvc repro`)", "Notebook wall time", "Training loop",
                        "Per step (pipeline's threads)"])
    return text + ("\n\nRead from `data/executed/*.ipynb` (papermill's `duration`) and "
                   "`data/logs/<stage>.json` (not in git), not measured by the suite.")


def profile_lines(result: dict) -> str:
    section = result.get("profile")
    if not isinstance(section, dict):
        return ""
    lines = []
    for entry in section.values():
        if not _ok(entry):
            continue
        ops = ", ".join(f"`{op['op']}` {op['share']:.0%}" for op in entry["top_ops"]["ops"][:TOP_OPS_SHOWN])
        functions = ", ".join(f"`{f['function']}` {f['share']:.0%}"
                              for f in entry["top_functions"]["functions"][:TOP_FUNCTIONS_SHOWN])
        lines.append(f"- {entry['workload']}: operators {ops}; megafr functions (own time) {functions}.")
    return "\n".join(lines)


def gpu_table(result: dict) -> str:
    """The paper-size rows on the GPU, when the suite found one."""
    gpu = result.get("gpu")
    if not isinstance(gpu, dict) or not gpu.get("available"):
        return ""
    rows = []
    if _ok(gpu.get("generator_config_f")):
        rows += _network_rows({"config_f": gpu["generator_config_f"]}, "StyleGAN2 synthesis")
    if _ok(gpu.get("e4e")):
        rows += _network_rows({f"{gpu['e4e']['input_size']}_px": gpu["e4e"]}, "e4e encoder")
    if _ok(gpu.get("rendering")):
        rows += _rendering_rows({"rows": gpu["rendering"]})
    if _ok(gpu.get("flame_layer")):
        rows += _flame_rows({"flame_sized_paper_coefficients": gpu["flame_layer"]})
    if _ok(gpu.get("reenactment_mini")):
        r = gpu["reenactment_mini"]
        rows.append(["Full reenactment (mini networks)", f"{r['image_size']} px, batch {r['batch']}",
                     f"{seconds(r['median_s'])} / batch", per_s(r["images_per_s"]), ""])
    return f"On the GPU ({gpu['device_name']}):\n\n" + table(rows, ["Benchmark", "Setting", "Time", "Throughput", ""])


def data_pipeline_line(result: dict) -> str:
    """One line per synthetic folder of the data pipeline: files, images/s of the stream, peak memory."""
    section = result.get("data_pipeline")
    if not isinstance(section, dict):
        return ""
    rows = [r for r in section.values() if _ok(r)]
    if not rows:
        return ""
    cells = [f"{r['files']:,} files: {per_s(r['images_per_s'])}, peak {memory(r)} (one array of them: "
             f"{r['array_equivalent_gb']:.1f} GB)" for r in sorted(rows, key=lambda r: r["files"])]
    size = rows[0]["image_size"]
    return (f"Data pipeline at {size} px (index a folder, stream batches of {rows[0]['batch']} through the "
            f"training DataLoader, {rows[0]['loader_workers']} workers): " + "; ".join(cells) + ".")


def markdown(result: dict) -> str:
    """The machine line, the main table, the phases, the pipeline table and the profile, as Markdown."""
    parts = [machine_line(result), main_table(result), phases_line(result), gpu_table(result),
             pipeline_table(result), data_pipeline_line(result), profile_lines(result)]
    gpu = result.get("gpu")
    if isinstance(gpu, dict) and not gpu.get("available", True):
        parts.append(f"GPU section skipped: {gpu['skipped']}.")
    return "\n\n".join(part for part in parts if part)
