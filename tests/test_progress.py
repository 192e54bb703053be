"""megafr.progress: tqdm bars in the notebook, throttled status lines in the terminal that runs papermill.

The end-to-end test executes a tiny notebook with papermill in a subprocess, as ``dvc repro`` runs a
stage, and reads what reaches that subprocess's standard error: the terminal of ``dvc repro``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megafr import progress
from megafr.config import study_root

ROOT = study_root(__file__)


def _notebook(path: Path, loop: str) -> Path:
    """A two-cell notebook (the study's kernelspec) that runs ``loop`` with megafr.progress."""
    cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
             for source in ("import time\nfrom megafr.progress import progress_bar", loop)]
    notebook = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                             "language_info": {"name": "python"}}}
    path.write_text(json.dumps(notebook))
    return path


def _papermill(tmp_path: Path, loop: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    source = _notebook(tmp_path / "loop.ipynb", loop)
    variables = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}{os.pathsep}"
                     f"{os.environ['PATH']}", **env)
    variables.pop(progress.MODE_VARIABLE, None) if "MEGAFR_PROGRESS" not in env else None
    result = subprocess.run([sys.executable, "-m", "papermill", "--log-level", "WARNING", str(source),
                             str(tmp_path / "out.ipynb")], env=variables, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((tmp_path / "out.ipynb").read_text())


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(progress.PREFIX)]


def test_papermill_terminal_sees_throttled_status_lines_and_the_notebook_keeps_the_bar(tmp_path):
    loop = "for step in progress_bar(range(2, 8), desc='demo', initial=2, total=8):\n    time.sleep(0.3)"
    result, executed = _papermill(tmp_path, loop, MEGAFR_PROGRESS_SECONDS="0.5")
    lines = _lines(result.stderr)
    assert lines[-1].startswith("[megafr] demo: step 8/8 (100%),") and lines[-1].endswith("elapsed, done"), lines
    middle = lines[:-1]
    assert middle and all("ETA" in line and "elapsed" in line for line in middle), lines
    assert len(lines) <= 5, lines  # 6 steps of 0.3 s with a 0.5 s interval: throttled, not one per step
    outputs = json.dumps(executed["cells"][1]["outputs"])  # a widget bar (text/plain copy) or text
    assert "demo" in outputs and "[megafr]" not in outputs  # the bar in the notebook, the lines only outside


def test_status_lines_can_be_switched_off(tmp_path):
    loop = "for step in progress_bar(range(3), desc='quiet'):\n    pass"
    result, _ = _papermill(tmp_path, loop, MEGAFR_PROGRESS="off")
    assert _lines(result.stderr) == []


def test_status_line_format_and_estimate():
    line = progress.status_line("train_idnet", 1200, 3200, 245.0, 600)
    assert line == "[megafr] train_idnet: step 1200/3200 (38%), 04:05 elapsed, ETA 13:36"  # 2000 steps at 0.41 s
    assert progress.status_line("x", 5, 5, 10.0, 5).endswith("(100%), 00:10 elapsed, done")
    assert progress.status_line("x", 3, None, 1.0, 3) == "[megafr] x: step 3, 00:01 elapsed"


def test_writer_throttles_and_always_writes_the_last_line(tmp_path):
    read, write = os.pipe()
    writer = progress.StatusWriter(write, "loop", 100, interval=3600.0)
    for n in range(1, 51):
        writer.update(n)
    writer.close()  # stopped early (an error): the last line says where
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read().decode()
    assert text.count("\n") == 1 and text.startswith("\r[megafr] loop: step 50/100 (50%)")  # a pipe: no ANSI


def test_plain_process_writes_no_status_lines_unless_asked(monkeypatch):
    monkeypatch.delenv(progress.MODE_VARIABLE, raising=False)
    assert progress.terminal_fd() is None  # a plain process: the tqdm bar is on its standard error already
    monkeypatch.setenv(progress.MODE_VARIABLE, "off")
    assert progress.terminal_fd() is None
    assert list(progress.progress_bar(range(3), desc="x", disable=True)) == [0, 1, 2]


@pytest.mark.parametrize("value,expected", [("", progress.DEFAULT_SECONDS), ("5", 5.0), ("-1", 0.0),
                                            ("soon", progress.DEFAULT_SECONDS)])
def test_interval_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv(progress.SECONDS_VARIABLE, value) if value else monkeypatch.delenv(
        progress.SECONDS_VARIABLE, raising=False)
    assert progress.status_interval() == expected
