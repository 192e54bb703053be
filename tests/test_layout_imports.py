"""The package's layout: no import cycles between megafr modules, one home for losses, metrics and resume code.

The import graph is built from the source with ``ast`` (every ``import megafr...`` and
``from megafr... import ...``, at module level or inside functions), so a cycle is caught even when
one side imports lazily inside a function, where Python itself would not fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import megafr

PACKAGE = Path(megafr.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """megafr module -> the megafr modules it imports (a ``from pkg import mod`` counts as ``pkg.mod``)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path [a, b, ..., a], or [] when the graph has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles_in_megafr():
    graph = import_graph()
    assert "megafr.pretrain.autoencoder" in graph and graph["megafr.pretrain.autoencoder"]  # the graph is real
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def defined_functions(names: set[str]) -> list[str]:
    """``module:function`` for every top-level function or method in megafr whose name is in ``names``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
                found.append(f"{module_name(path)}:{node.name}")
    return found


def test_losses_live_in_megafr_losses():
    shared = {"id_loss", "laplacian_l1", "latent_loss", "encoder_latent_loss", "latent_d_loss", "mapping_loss",
              "delta_loss", "landmark_loss", "pair_loss", "reconstruction_loss", "weighted_total", "lpips_status",
              "LpipsTerm", "LpipsLoss", "weighted_landmark_loss", "silhouette_loss"}
    outside = [f for f in defined_functions(shared) if not f.startswith("megafr.losses.")]
    assert outside == []


def test_resume_code_lives_in_megafr_training():
    resume = {"code_digest", "resume_key", "try_resume", "save_training_state", "read_training_state", "restore",
              "resume_or_start", "_try_resume", "_resume_key", "resume_mismatch", "config_matches"}
    outside = [f for f in defined_functions(resume) if not f.startswith("megafr.training:")]
    assert outside == []


# ------------------------------------------------------------------------------ the resume digest
def test_code_digest_ignores_comments_docstrings_and_layout():
    from megafr.training import source_digest

    base = 'def f(x):\n    """Doc."""\n    return x + 1  # one\n'
    same = [
        '"""A module docstring."""\n\ndef f(x):\n    """Another doc, with a table:\n| a | b |\n"""\n    return x + 1\n',
        "def f(x):\n    return (x +\n            1)  # another comment\n",
        "class C:\n    pass\n\n" * 0 + "def f(x):\n    'single-quoted doc'\n    return x + 1\n",
    ]
    for other in same:
        assert source_digest(other) == source_digest(base), other
    changed = ["def f(x):\n    return x + 2\n", "def f(y):\n    return y + 1\n", "def f(x):\n    return x + 1.0\n",
               "def f(x):\n    return 'x' + 1\n", "def f(x):\n    print('doc')\n    return x + 1\n"]
    for other in changed:
        assert source_digest(other) != source_digest(base), other


def test_code_digest_of_the_pretraining_sources_is_stable_and_covers_the_losses():
    from megafr.training import PRETRAIN_CODE, code_digest

    assert code_digest(PRETRAIN_CODE) == code_digest(PRETRAIN_CODE)
    assert code_digest(PRETRAIN_CODE) != code_digest(("pretrain", "nets"))
    assert "losses" in PRETRAIN_CODE and "training.py" in PRETRAIN_CODE


def test_every_training_stage_names_code_that_exists():
    from megafr.face3d.train import TRAINING_CODE as FACE3D_CODE
    from megafr.reenact.train import TRAINING_CODE as REENACT_CODE
    from megafr.training import PACKAGE_ROOT, PRETRAIN_CODE

    for folders in (PRETRAIN_CODE, FACE3D_CODE, REENACT_CODE):
        assert all((PACKAGE_ROOT / f).exists() for f in folders), folders
