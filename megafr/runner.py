"""Run a stage's notebook as ``dvc repro`` does (``python -m megafr run <stage>``).

The whole params file is validated first (every stage's config, :func:`megafr.stages.validate`),
then the stage's notebook runs with papermill's Python API into ``data/executed/``; the notebook
reads its values from the params file itself, so nothing is passed but the file's name, the
overrides and the sweep folder. A failing cell becomes one :class:`StageFailed` line naming the
cell's error and the executed notebook that holds the traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from megafr import stages
from megafr.config import PARAMS_FILE, load_params, study_root
from megafr.errors import MegaFRError



def _names(cls: type) -> set[str]:
    return {cls.__name__, *(name for sub in cls.__subclasses__() for name in _names(sub))}


USER_ERRORS = _names(MegaFRError)  # errors raised in a notebook that are the user's to fix (exit status 2)


class StageFailed(Exception):
    """A cell of a stage's notebook raised; the executed notebook at ``record`` holds the traceback."""

    def __init__(self, notebook: str, cell: int, ename: str, evalue: str, record: Path):
        super().__init__(f"{notebook} failed in cell {cell}: {ename}: {evalue} (traceback in {record})")
        self.notebook, self.cell, self.ename, self.evalue, self.record = notebook, cell, ename, evalue, record

    @property
    def user_error(self) -> bool:
        """Whether the cell raised one of the study's own errors (a bad value, a missing file), not a bug."""
        return self.ename in USER_ERRORS

    def moved(self, record: Path) -> "StageFailed":
        """The same failure, its executed notebook now at ``record``."""
        return StageFailed(self.notebook, self.cell, self.ename, self.evalue, record)


def execute(notebook: str | os.PathLike, output: str | os.PathLike, parameters: Mapping[str, Any], *,
            root: Path, progress: bool = True) -> Path:
    """Run ``notebook`` (papermill, working directory ``root``) into ``output`` with ``parameters``."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=dict(parameters), cwd=str(root),
                                   progress_bar=progress)
    except PapermillExecutionError as error:
        record = output.relative_to(root) if output.is_relative_to(root) else output
        raise StageFailed(Path(notebook).name, error.exec_count, error.ename, error.evalue, record) from None
    return output


def run_stage(stage: str, params_file: str = PARAMS_FILE, *, progress: bool = True) -> Path:
    """Validate the whole ``params_file``, then run ``stage``'s notebook into ``data/executed/``."""
    root = study_root()
    stages.validate(load_params(root / params_file))
    parameters = {"params_file": params_file} if params_file != PARAMS_FILE else {}
    return execute(root / stages.notebook(stage), root / stages.executed_notebook(stage), parameters, root=root,
                   progress=progress)


def write_validated(params_file: str, record: str | os.PathLike) -> Path:
    """Validate ``params_file`` as a whole and write ``record``: the profile and the stages checked.

    ``dvc repro`` runs this as the ``validate`` stage that every other stage depends on, so a bad value
    stops the pipeline before DVC deletes any stage's outputs. The record depends only on the profile
    name and the stage list, never on other values, so changing one key re-runs only the stages that
    read it.
    """
    from megafr.fileio import write_json

    params = load_params(params_file)
    stages.validate(params)
    path = Path(record)
    write_json(path, {"profile": params["profile"], "stages": list(stages.ORDER)})
    return path
