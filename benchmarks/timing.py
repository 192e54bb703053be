"""Timing, memory and machine facts shared by every benchmark case.

Timings are medians over a few repeats after an untimed warm-up call (the first call of a torch
network allocates its buffers and picks kernels). Comparisons (1 vs 2 threads, batch sizes) run
their variants in alternating order within one process, so that load from other jobs on a shared
machine falls on both sides alike; only ratios measured this way are worth quoting.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable, Mapping, Optional

import torch

WARMUP_CALLS = 1  # untimed calls before the timed ones
KIB_PER_MIB = 1024  # Linux reports ru_maxrss in KiB
CPUINFO = "/proc/cpuinfo"


def _sample(fn: Callable[[], object], sync: Optional[Callable[[], None]]) -> float:
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start


def summary(samples: list[float]) -> dict:
    """Median, minimum and count of a list of durations in seconds."""
    return {"median_s": statistics.median(samples), "min_s": min(samples), "repeats": len(samples)}


def timed(fn: Callable[[], object], repeats: int, warmup: int = WARMUP_CALLS,
          sync: Optional[Callable[[], None]] = None) -> dict:
    """``fn`` called ``warmup`` times untimed, then ``repeats`` times timed -> :func:`summary`.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs inside each timed call, so that queued device
    work is counted.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    return summary([_sample(fn, sync) for _ in range(repeats)])


def side_by_side(variants: Mapping[str, Callable[[], object]], repeats: int,
                 warmup: int = WARMUP_CALLS) -> dict[str, dict]:
    """Each variant warmed up, then timed ``repeats`` times in alternating order -> {name: summary}.

    A variant may change process-wide settings (torch threads) at its start; it must set
    everything it depends on, since the previous variant ran just before it.
    """
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            samples[name].append(_sample(variants[name], None))
    return {name: summary(values) for name, values in samples.items()}


def rate(items: int, seconds: float) -> float:
    """Items per second."""
    return items / seconds


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open(CPUINFO) as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (empty where the OS has none): how busy the machine was."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return []


def machine() -> dict:
    """What the numbers were measured on."""
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "cuda_available": torch.cuda.is_available(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
