"""Where the time goes: torch.profiler (operators) and a Python-level tracer (megafr functions).

Two workloads, each called once untimed first: one reenactment at the profile's size and the
largest reenactment batch, and one E_FR training step. For each:

- ``top_ops``: the torch operators with the largest self CPU time, as a share of the total self
  CPU time of the profiled call (``torch.profiler``, CPU activity only);
- ``top_functions``: the functions of the ``megafr`` package that spend the most time themselves
  (their own lines and the library calls they make, not counting other megafr functions they call),
  as a share of the traced call (``sys.setprofile``; cProfile cannot attribute time spent inside
  ``nn.Module.__call__`` or decorators to the megafr function that made the call).

The two profilers run on separate calls, so that one's overhead does not distort the other.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

from torch.profiler import ProfilerActivity, profile

from benchmarks.cases import REENACT_BATCHES, no_grad_call, reenact_call, build_reenactor, pick
from benchmarks.training import efr_step
from benchmarks.worlds import Settings, image_size

TOP_OPS = 12  # operators listed per workload
TOP_FUNCTIONS = 12  # megafr functions listed per workload
PACKAGE = "megafr"  # functions whose file lies in this package are listed
US_PER_MS = 1000.0


def top_ops(fn: Callable[[], object], n: int = TOP_OPS) -> dict:
    """The ``n`` operators with the largest self CPU time in one call of ``fn``."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:n]
    return {
        "profiled_wall_s": wall,
        "total_self_cpu_ms": total / US_PER_MS,
        "ops": [{"op": event.key, "share": event.self_cpu_time_total / total,
                 "self_cpu_ms": event.self_cpu_time_total / US_PER_MS, "calls": event.count} for event in ranked],
    }


def _package_relative(filename: str) -> str | None:
    """``megafr/...`` part of a source path, or None for files outside the package."""
    parts = Path(filename).parts
    if PACKAGE not in parts:
        return None
    return "/".join(parts[len(parts) - parts[::-1].index(PACKAGE) - 1:])


class _OwnTime:
    """A ``sys.setprofile`` hook charging every interval to the innermost megafr function on the stack.

    Library code (torch modules' ``__call__``, decorators, C functions) is transparent: its time goes to
    the megafr function that called it, so a function's ``own_s`` is its own lines plus the library calls
    it makes, without the megafr functions it calls.
    """

    def __init__(self):
        self.owners: list[Optional[str]] = [None]  # innermost megafr function of each active frame
        self.own: dict[Optional[str], float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.last = time.perf_counter()

    def __call__(self, frame, event, arg):
        now = time.perf_counter()
        self.own[self.owners[-1]] += now - self.last
        if event == "call":
            where = _package_relative(frame.f_code.co_filename)
            label = None if where is None else f"{where}:{frame.f_code.co_firstlineno}({frame.f_code.co_name})"
            self.owners.append(label or self.owners[-1])
            if label:
                self.calls[label] += 1
        elif event == "return" and len(self.owners) > 1:
            self.owners.pop()
        self.last = time.perf_counter()


def top_functions(fn: Callable[[], object], n: int = TOP_FUNCTIONS) -> dict:
    """The ``n`` megafr functions that spend the most time themselves in one call of ``fn`` (see ``_OwnTime``).

    Shares are of the traced call's total; the tracer slows Python-heavy code more than torch-heavy
    code, so they are indicative.
    """
    tracer = _OwnTime()
    sys.setprofile(tracer)
    try:
        fn()
    finally:
        sys.setprofile(None)
    total = sum(tracer.own.values())
    rows = [{"function": label, "share": own / total, "own_s": own, "calls": tracer.calls[label]}
            for label, own in tracer.own.items() if label is not None]
    rows.sort(key=lambda row: row["own_s"], reverse=True)
    return {"traced_s": total, "outside_megafr_share": tracer.own.get(None, 0.0) / total, "functions": rows[:n]}


def _workload_profile(fn: Callable[[], object]) -> dict:
    fn()  # warm-up
    return {"top_ops": top_ops(fn), "top_functions": top_functions(fn)}


def profile_reenactment(settings: Settings) -> dict:
    """Profile one reenactment at the largest batch."""
    batch, size = pick(REENACT_BATCHES, settings)[-1], image_size(settings)
    call = no_grad_call(reenact_call(build_reenactor(settings), batch, size, "cpu"))
    return {"workload": f"one reenactment, {size} px, batch {batch}, refine 1", **_workload_profile(call)}


def profile_efr_step(settings: Settings) -> dict:
    """Profile one E_FR training step at train_reenact's batch size."""
    step, cfg = efr_step(settings)
    return {"workload": f"one E_FR training step, batch {cfg.batch_size}", **_workload_profile(step)}

