"""Run each benchmark case in a fresh process, so that its peak memory (``ru_maxrss``) is its own.

``tracemalloc`` does not see torch's allocations; the peak resident set size of a process that ran
only one case does. Processes are forked from a ``forkserver`` that has imported torch and the
benchmark modules once, so a case does not pay the import again; its peak therefore includes the
imported libraries, which the ``baseline`` case (a process that runs nothing) measures alone.

A case that needs other environment variables (``OMP_WAIT_POLICY``, read by the OpenMP runtime
when torch is imported) runs in a freshly spawned interpreter started with them instead.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Mapping, Optional

import torch

from benchmarks.timing import peak_rss_mb
from benchmarks.worlds import Settings

PRELOAD = ["torch", "benchmarks.cases", "benchmarks.driving", "benchmarks.training", "benchmarks.profiling", "benchmarks.gpu"]


@functools.lru_cache(maxsize=None)
def _context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _call(case: Callable[[Settings], dict], settings: Settings) -> dict:
    """In the child: set the threads, run the case, add its wall time and peak memory."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    try:
        result = case(settings)
    except Exception as error:  # reported by the parent with the traceback; the suite goes on
        return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    result["case_wall_s"] = time.perf_counter() - start
    result["peak_rss_mb"] = peak_rss_mb()
    result["torch_threads"] = torch.get_num_threads()
    return result


def baseline(settings: Settings) -> dict:
    """A case that runs nothing: the peak memory of the imports alone."""
    return {}


def _set_environment(env: Mapping[str, Optional[str]]) -> None:
    """Set each variable of ``env`` in ``os.environ``; a value of None removes it."""
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def environment(env: Mapping[str, Optional[str]]) -> Iterator[None]:
    """``os.environ`` updated with ``env`` for the block, a value of None removing its variable (a child
    started inside inherits the result)."""
    saved = {key: os.environ.get(key) for key in env}
    _set_environment(env)
    try:
        yield
    finally:
        _set_environment(saved)


def run_isolated(case: Callable[[Settings], dict], settings: Settings,
                 env: Optional[Mapping[str, Optional[str]]] = None) -> dict:
    """``case(settings)`` in a fresh child process; its result with ``peak_rss_mb`` and ``case_wall_s``.

    With ``env``, the child is a new interpreter (``spawn``) started with those variables set (None: unset).
    """
    context = _context() if env is None else multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        with environment(env or {}):
            future = pool.submit(_call, case, settings)  # the worker process starts here
        result = future.result()
    if env:
        result["environment"] = dict(env)
        result["peak_rss_note"] = "a spawned interpreter: its imports alone take more memory than a forked case's"
    return result
