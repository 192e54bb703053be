"""Stage outputs: metrics must be finite numbers; sweep runs write under their own folder."""

import json
import math

import pandas as pd
import pytest

from megafr import stage


def test_numeric_leaves_rejects_strings_and_nan():
    assert stage.numeric_leaves({"a": 1, "b": {"c": 2.5}}) == {"a": 1, "b": {"c": 2.5}}
    with pytest.raises(TypeError, match="b.c"):
        stage.numeric_leaves({"b": {"c": "x"}})
    with pytest.raises(ValueError, match="non-finite"):
        stage.numeric_leaves({"a": math.nan})


def test_write_outputs_to_a_run_dir(tmp_path):
    paths = stage.write_outputs("demo", {"x": 1}, {"curve": pd.DataFrame({"step": [0, 1], "loss": [2.0, 1.0]})},
                                run_dir=str(tmp_path / "run"))
    assert paths[0] == tmp_path / "run" / "metrics" / "demo.json"
    assert json.loads(paths[0].read_text()) == {"x": 1}
    assert pd.read_csv(paths[1])["loss"].tolist() == [2.0, 1.0]
    assert stage.figure_path("demo", "grid", str(tmp_path / "run")) == tmp_path / "run" / "figures" / "demo_grid.png"
