"""The study's layout agrees with itself: notebooks, dvc.yaml, the stage modules and the profiles.

A value lives in the profile only; each stage's config dataclass names the fields; ``dvc.yaml``
holds the data flow. These tests fail as soon as the three drift apart: a dataclass field without
a value in some profile, a profile key no stage reads, a stage whose ``params:`` miss what it reads,
a notebook that sets values itself, or ``deps`` that miss a ``megafr`` module its notebook imports.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from megafr import stages
from megafr.config import PROFILES, load_params, profile_file, study_root

ROOT = study_root(__file__)
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Imported by every stage but unable to change a product: error types and the version string.
NOT_RESULTS = {"megafr/__init__.py", "megafr/errors.py"}
PARAMETERS = {"params_file", "overrides", "run_dir"}  # all a stage notebook's parameters cell may set


def _cells(stage: str) -> list[dict]:
    return json.loads((ROOT / stages.notebook(stage)).read_text())["cells"]


def _code(stage: str) -> list[str]:
    return ["".join(c["source"]) for c in _cells(stage) if c["cell_type"] == "code"]


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _imported(source: str) -> list[str]:
    """Module names an import statement anywhere in ``source`` may load (``from a import b``: a and a.b)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def megafr_closure(sources: list[str]) -> set[str]:
    """The ``megafr`` files (relative paths) that ``sources`` import, transitively, packages' ``__init__`` too."""
    seen: set[Path] = set()
    todo = list(sources)
    while todo:
        for name in _imported(todo.pop()):
            parts = name.split(".")
            if parts[0] != "megafr":
                continue
            for depth in range(1, len(parts) + 1):
                path = _module_file(".".join(parts[:depth]))
                if path is not None and path not in seen:
                    seen.add(path)
                    todo.append(path.read_text())
    return {str(path.relative_to(ROOT)) for path in seen}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_notebooks_are_numbered_in_pipeline_order():
    found = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("[0-9]*.ipynb"))
    assert found == [stages.notebook(stage) for stage in stages.ORDER]
    assert [name for name in PIPELINE if name != "validate"] == list(stages.ORDER)


def test_every_stage_command_is_one_short_line_running_its_notebook():
    assert PIPELINE["validate"]["cmd"] == "python -m megafr validate --record data/validate.json"
    assert not [name for name, spec in PIPELINE.items() if "${" in spec["cmd"]]  # no value passes through a shell
    for stage in stages.ORDER:
        assert PIPELINE[stage]["cmd"] == f"python -m megafr run {stage}", stage
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in PIPELINE[stage]["outs"]]
        assert stages.executed_notebook(stage) in outs, stage


def test_notebook_parameters_cells_hold_no_values():
    for stage in stages.ORDER:
        cells = [c for c in _cells(stage) if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(cells) == 1, stage
        assigned = {node.targets[0].id for node in ast.parse("".join(cells[0]["source"])).body
                    if isinstance(node, ast.Assign)}
        assert assigned == PARAMETERS, f"{stage}: its parameters cell sets {sorted(assigned - PARAMETERS)}"
        assert any(f"from megafr.stages.{stage} import load_config" in code for code in _code(stage)), stage


@pytest.mark.parametrize("profile", PROFILES)
def test_every_field_has_one_value_in_every_profile(profile):
    params = load_params(profile_file(profile, ROOT))
    for stage in stages.ORDER:
        assert sorted(params[stage]) == sorted(stages.block_fields(stage)), f"{profile}: block {stage}"
        for key in stages.module(stage).SHARED.values():
            head, _, tail = key.partition(".")
            assert head in params and (not tail or tail in params[head]), f"{profile}: {key} ({stage})"
        config = stages.module(stage).CONFIG
        fields = {f.name for f in dataclasses.fields(config)}
        sources = set(stages.block_fields(stage)) | set(stages.module(stage).SHARED) | stages.code_fields(stage)
        assert fields == sources, f"{stage}: fields without a source {sorted(fields - sources)}"
    read = stages.read_keys()
    leaves = {f"{k}.{sub}" if isinstance(v, dict) else k for k, v in params.items() if k not in stages.ORDER
              for sub in (v if isinstance(v, dict) else [None])}
    assert leaves <= read, f"{profile}: keys no stage reads {sorted(leaves - read)}"


def test_stage_params_name_exactly_what_the_stage_reads():
    assert PIPELINE["validate"]["params"] == [{"params.yaml": None}]  # the whole file
    for stage in stages.ORDER:
        assert PIPELINE[stage]["params"] == stages.params_keys(stage), stage


def test_stage_deps_cover_the_megafr_modules_their_notebooks_import():
    for stage in stages.ORDER:
        deps = PIPELINE[stage]["deps"]
        assert stages.notebook(stage) in deps and "data/validate.json" in deps, stage
        imported = megafr_closure(_code(stage)) - NOT_RESULTS
        missing = sorted(path for path in imported if not _covered(path, deps))
        assert not missing, f"stage {stage}: dvc.yaml deps miss {missing}"
        unused = [dep for dep in deps if dep.startswith("megafr") and not any(_covered(p, [dep]) for p in imported)]
        assert not unused, f"stage {stage}: deps {unused} are not imported by its notebook"


def test_the_closure_follows_imports_transitively():
    files = megafr_closure(["from megafr.stages.train_face3d import load_config"])
    assert {"megafr/stages/__init__.py", "megafr/face3d/train.py", "megafr/config.py"} <= files
    assert "megafr/face3d/recon.py" in files  # imported by face3d/train.py, not by the notebook
