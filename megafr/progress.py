"""Progress of long loops: a tqdm bar where someone watches the loop, and one status line now and then
in the terminal that runs ``dvc repro`` when the loop runs inside a stage notebook.

Why the bar alone is not enough: every stage is a notebook that papermill executes in an ipykernel
subprocess. The kernel sends ``sys.stdout`` and ``sys.stderr`` (and, since ipykernel 6, whatever is
written to file descriptors 1 and 2) to the notebook, so a tqdm bar appears in JupyterLab and in the
executed notebook but never in the terminal of ``dvc repro`` / ``make study``, which shows only
papermill's cell counter. ipykernel keeps a duplicate of the process's original standard error (the
one the kernel inherited from papermill, and papermill from ``dvc repro``) and hands it out as
``sys.stderr.fileno()`` (so that subprocesses can write to the real terminal). :func:`progress_bar`
writes its status lines to that descriptor: they reach the terminal with no help from the process
that starts papermill, as long as it leaves papermill's standard error connected to the terminal
(papermill's command line and ``papermill.execute_notebook`` both do). A runner that captures the
kernel's standard error instead must print what it reads.

A status line looks like ``[megafr] train_face3d: step 1200/3200 (38%), 4:05 elapsed, ETA 6:40``;
one is written at most every :data:`DEFAULT_SECONDS` seconds (``MEGAFR_PROGRESS_SECONDS`` overrides),
plus one when the loop ends, so a 15-minute stage writes about 30 lines and a log is not flooded.

Where the lines go (``MEGAFR_PROGRESS``):

- ``auto`` (default): in a kernel, to the inherited standard error as above; in a plain Python
  process nowhere (the tqdm bar is already on the terminal's standard error);
- ``lines``: also in a plain process, to standard error (for logs of runs without a terminal);
- ``off``: no status lines (the bar is unchanged).

When standard error is not a terminal (a CI log) and no notebook shows the bar, tqdm redraws at
most once per status interval instead of ten times a second.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Optional, TypeVar

from tqdm.auto import tqdm

MODE_VARIABLE = "MEGAFR_PROGRESS"  # auto | lines | off
SECONDS_VARIABLE = "MEGAFR_PROGRESS_SECONDS"  # seconds between status lines
MODES = ("auto", "lines", "off")
DEFAULT_SECONDS = 30.0  # a status line at most this often
PREFIX = "[megafr]"  # marks the study's lines among papermill's and DVC's output
ERASE_LINE = "\x1b[K"  # ANSI: erase to the end of the line (terminals only)

T = TypeVar("T")


def _mode() -> str:
    mode = os.environ.get(MODE_VARIABLE, "auto").strip().lower() or "auto"
    return mode if mode in MODES else "auto"


def status_interval() -> float:
    """Seconds between status lines (``MEGAFR_PROGRESS_SECONDS``, else DEFAULT_SECONDS; never negative)."""
    try:
        return max(0.0, float(os.environ.get(SECONDS_VARIABLE, DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _in_kernel() -> bool:
    """Whether sys.stderr has been replaced by a Jupyter kernel's stream (a notebook, under papermill or JupyterLab)."""
    return sys.stderr is not None and sys.stderr is not sys.__stderr__ and type(sys.stderr).__module__.startswith(
        "ipykernel")


def terminal_fd() -> Optional[int]:
    """File descriptor of the terminal that status lines go to, or None (module docstring: where and when)."""
    mode = _mode()
    if mode == "off":
        return None
    if _in_kernel():
        try:
            return sys.stderr.fileno()  # ipykernel: the duplicate of the original standard error
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation: fd capture is off, fd 2 is free
            return sys.__stderr__.fileno() if sys.__stderr__ is not None else None
    if mode == "lines" and sys.stderr is not None:
        try:
            return sys.stderr.fileno()
        except (OSError, ValueError, AttributeError):
            return None
    return None


def _clock(seconds: float) -> str:
    return tqdm.format_interval(max(0.0, seconds))


def status_line(desc: str, n: int, total: Optional[int], elapsed: float, done_here: int, unit: str = "step") -> str:
    """``[megafr] <desc>: step n/total (p%), m:ss elapsed, ETA m:ss``; ``done_here`` counts the steps of this
    run (a resumed loop starts at ``initial``), which set the rate behind the estimate."""
    if not total:
        return f"{PREFIX} {desc}: {unit} {n}, {_clock(elapsed)} elapsed"
    percent = 100.0 * n / total
    text = f"{PREFIX} {desc}: {unit} {n}/{total} ({percent:.0f}%), {_clock(elapsed)} elapsed"
    if n >= total:
        return text + ", done"
    if done_here > 0 and elapsed > 0:
        return text + f", ETA {_clock((total - n) * elapsed / done_here)}"
    return text


class StatusWriter:
    """Throttled status lines of one loop to a file descriptor (every ``interval`` seconds and at the end)."""

    def __init__(self, fd: int, desc: str, total: Optional[int], initial: int = 0, unit: str = "step",
                 interval: Optional[float] = None):
        self.fd = fd  # where the lines go (terminal_fd)
        self.desc = desc  # the loop's name in each line
        self.total = total  # steps of the whole loop (None: unknown)
        self.initial = initial  # step the loop starts from (a resumed run)
        self.unit = unit  # what one iteration is called
        self.interval = status_interval() if interval is None else interval  # seconds between lines
        self.started = time.monotonic()
        self.last = self.started
        self.n = initial  # steps done
        self.written = None  # steps done at the last line written
        self.tty = _fd_isatty(fd)  # a terminal (not a log file or pipe)

    def update(self, n: int) -> None:
        """Record that ``n`` steps are done; write a line if the interval has passed."""
        self.n = n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._write(now)

    def close(self) -> None:
        """The final line (the loop ended, or stopped early: the line says where), unless it is written already."""
        if self.written != self.n:
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        self.written = self.n
        line = status_line(self.desc, self.n, self.total, now - self.started, self.n - self.initial, self.unit)
        # "\r" first: the line replaces papermill's cell counter, which has no newline (a terminal also gets
        # "erase to the end of the line"); papermill redraws its counter below at its next update
        text = "\r" + line + (ERASE_LINE if self.tty else "") + "\n"
        try:
            os.write(self.fd, text.encode("utf-8", "replace"))
        except OSError:  # the terminal went away (closed pipe): progress is not worth failing a stage
            pass


def progress_bar(iterable: Iterable[T], desc: str, total: Optional[int] = None, initial: int = 0,
                 disable: bool = False, leave: bool = False, unit: str = "step") -> Iterator[T]:
    """Iterate ``iterable`` with a tqdm bar (JupyterLab, terminals) and status lines in the terminal of
    ``dvc repro`` (module docstring). Arguments as tqdm's; ``disable`` turns off both."""
    if total is None and hasattr(iterable, "__len__"):
        total = initial + len(iterable)  # type: ignore[arg-type]
    fd = None if disable else terminal_fd()
    quiet_log = not _in_kernel() and not _isatty(sys.stderr)
    bar = tqdm(iterable, desc=desc, total=total, initial=initial, disable=disable, leave=leave, unit=unit,
               mininterval=status_interval() if quiet_log else 0.1)
    status = StatusWriter(fd, desc, total, initial, unit) if fd is not None else None
    n = initial
    try:
        for item in bar:
            yield item
            n += 1
            if status is not None:
                status.update(n)
    finally:
        bar.close()
        if status is not None:
            status.close()


def _fd_isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _isatty(stream: Optional[IO]) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False
