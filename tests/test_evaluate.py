"""The evaluate stage's code on tiny random networks: rows, metrics, n/a handling, linear edits, ablations."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from megafr.errors import InputError
from megafr.evaluate import ablations as abl
from megafr.evaluate import external, linear, registry, tables
from megafr.evaluate.rows.inversion_only import INVERSION_ROW
from megafr.evaluate.rows import psp_frontalization as psp_row
from megafr.evaluate.rows.linear_directions import LINEAR_ROW
from megafr.evaluate.stage import EvaluateConfig
from megafr.face3d import headmodel
from megafr.reenact import train as rt
from megafr.reenact.directions import LatentDirection, fit_direction
from megafr.reenact.inference import Reenactor
from megafr.reenact.model import MegaFR
from megafr.stage import numeric_leaves
from tests.conftest import TINY_SIZE as SIZE

ATTRIBUTES = ("yaw_deg", "pitch_deg", "expr_smile")


def _uint8(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _reenactor(frozen, condition):
    torch.manual_seed(1)
    channels = 3 if condition == "render" else rt.condition_width(frozen.face)
    model = MegaFR(frozen.inversion, frozen.generator, condition_channels=channels)
    with torch.no_grad():
        model.encoder.input_layer[0].weight[:, 3:].normal_(std=0.1)  # make the condition matter
    return Reenactor(model, frozen, condition)


def _truth_table(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"yaw_deg": rng.uniform(-60, 60, n), "pitch_deg": rng.uniform(-30, 30, n),
                         "expr_smile": rng.uniform(0, 1, n)})


def _no_paper_metrics():
    reasons = {name: f"{name} n/a: test" for name in external.PAPER_METRICS}
    return external.PaperMetrics(None, None, None, reasons)


@pytest.fixture(scope="module")
def setup(tiny_frozen):
    directions, search = linear.fit_baseline(tiny_frozen, _uint8(40, 0), ATTRIBUTES, (0.1, 10.0), _truth_table(40))
    baseline = linear.LinearBaseline(directions, tiny_frozen, search)
    reenactors = {"e4e_render": _reenactor(tiny_frozen, "render"), "e4e_params": _reenactor(tiny_frozen, "params")}
    judge = tables.Judge(tiny_frozen, _no_paper_metrics(), _uint8(12, 1))
    cross = tables.EvalSet("cross", _uint8(3, 2), _uint8(3, 3), _uint8(3, 4))
    return baseline, reenactors, judge, cross


# ------------------------------------------------------------------------------- linear baseline
def test_joint_edit_reaches_every_wanted_value_and_keeps_the_others():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 3, 4, generator=g)
    truth = {"yaw_deg": (w[:, 0, 0] * 5 + w[:, 1, 2]).numpy(), "expr_smile": (w[:, 2, 3] - w[:, 0, 0]).numpy()}
    directions = {n: fit_direction(n, w, v, ridge=1e-6) for n, v in truth.items()}
    codes = w[:4]
    edited = linear.edit_codes(directions, codes, {"yaw_deg": torch.tensor([1.0, -2.0, 0.0, 3.0])})
    assert torch.allclose(directions["yaw_deg"].predict(edited), torch.tensor([1.0, -2.0, 0.0, 3.0]), atol=1e-4)
    assert torch.allclose(directions["expr_smile"].predict(edited), directions["expr_smile"].predict(codes), atol=1e-4)
    # one direction alone: the same move as LatentDirection.edit (eq. 1)
    alone = {"yaw_deg": directions["yaw_deg"]}
    assert torch.allclose(linear.edit_codes(alone, codes, {"yaw_deg": 2.0}), directions["yaw_deg"].edit(codes, 2.0),
                          atol=1e-5)
    with pytest.raises(InputError, match="no fitted direction"):
        linear.edit_codes(alone, codes, {"pitch_deg": 0.0})


def test_joint_edit_with_a_constant_attribute_moves_the_others():
    """A direction whose float32 coefficients vanish (an attribute that barely varies over a few photos
    of one face, as on the paper-ci profile) makes the joint system singular; the edit then takes the
    least-norm step instead of failing."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(50, 3, 4, generator=g)
    directions = {"yaw_deg": fit_direction("yaw_deg", w, (w[:, 0, 0] * 5).numpy(), ridge=1e-6),
                  "expr_smile": LatentDirection("expr_smile", torch.zeros(3, 4), 0.5, 0.0)}
    edited = linear.edit_codes(directions, w[:3], {"yaw_deg": torch.tensor([1.0, 2.0, 3.0])})
    assert torch.isfinite(edited).all()
    assert torch.allclose(directions["yaw_deg"].predict(edited), torch.tensor([1.0, 2.0, 3.0]), atol=1e-4)


def test_attributes_are_validated_and_measured(tiny_frozen):
    assert linear.parse_attributes("yaw_deg, expr_smile") == ("yaw_deg", "expr_smile")
    with pytest.raises(InputError):
        linear.parse_attributes("yaw_deg,expr_grin")
    params = tiny_frozen.face.net(torch.rand(2, 3, SIZE, SIZE) * 2 - 1)
    values = linear.measured_attributes(params, ATTRIBUTES)
    assert torch.equal(values["expr_smile"], params.expression[:, headmodel.EXPRESSION_COMPONENTS.index("smile")])
    flame_like = params._replace(expression=torch.zeros(2, 50))  # FLAME's unnamed coefficients
    with pytest.raises(InputError, match="synthetic head model"):
        linear.measured_attributes(flame_like, ["expr_smile"])


def test_fit_baseline_picks_a_ridge_from_the_candidates_and_checks_the_table(setup, tiny_frozen):
    baseline = setup[0]
    assert list(baseline.ridge_search["ridge"]) == [0.1, 10.0]
    assert np.isfinite(baseline.ridge_search["edit_error"]).all()
    assert set(baseline.fit_report()["attribute"]) == set(ATTRIBUTES)
    with pytest.raises(InputError, match="columns"):
        linear.fit_baseline(tiny_frozen, _uint8(40, 0), ATTRIBUTES, (1.0,), _truth_table(40).drop(columns="expr_smile"))
    with pytest.raises(InputError):
        linear.parse_ridges("1,-2")


# ------------------------------------------------------------------------------- paper metrics
def test_missing_weights_give_reasons_not_errors(tmp_path):
    paper = external.PaperMetrics.detect(str(tmp_path), "")
    assert not paper.available("fid") and "not on this machine" in paper.reasons["fid"]
    assert not paper.available("id_similarity") and "no ArcFace IR-SE50 file" in paper.reasons["id_similarity"]
    assert paper.reasons["lpips"].startswith("LPIPS")
    (tmp_path / external.INCEPTION_FILE).write_bytes(b"not a torchscript file")
    net, line = external.load_inception(str(tmp_path))
    assert net is None and "does not load" in line
    net, line = external.load_paper_arcface(str(tmp_path / "missing.pth"))
    assert net is None and "not on this machine" in line
    assert paper.fid_of_features(np.zeros((3, 4))) is None


def test_an_arcface_of_another_shape_scores_id_similarity_and_the_table_says_so(tmp_path):
    from megafr.nets.checkpoints import save_arcface
    from megafr.nets.irse import ArcFace, ArcFaceConfig, IRSEConfig

    body = IRSEConfig(widths=(8, 12, 16, 24), units=(1, 1, 1, 1), stem_channels=8)
    save_arcface(tmp_path / "small.pth", ArcFace(ArcFaceConfig(input_size=32, embedding_dim=16, body=body)))
    net, line = external.load_paper_arcface(str(tmp_path / "small.pth"))
    assert net is not None and "not comparable with the paper's" in line
    table = pd.DataFrame({"method": ["m"], "pairs": [2], **{c: [0.5] for c in tables.COLUMNS}})
    text = tables.markdown_table(table, "Table 1", tables.world_label("paper-ci"), {"id_similarity": line})
    assert f"- id_similarity: {line}" in text and "its numbers mean nothing" in text


def test_fid_plumbing_with_a_stand_in_feature_network():
    pooled = lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)  # noqa: E731  [B, 12]
    a, b = _uint8(20, 0), _uint8(20, 1) // 2
    features_a = external.inception_features(pooled, a, batch=7)
    assert features_a.shape == (20, 12)
    assert external.fid_from_features(features_a, features_a) == pytest.approx(0.0, abs=1e-6)
    assert external.fid_from_features(features_a, external.inception_features(pooled, b)) > 100.0


# ------------------------------------------------------------------------------------ tables
def test_tables_have_every_row_and_say_what_is_not_available(setup, tiny_frozen):
    baseline, reenactors, judge, cross = setup
    methods = tables.table_methods("cross", reenactors, baseline, 1, tiny_frozen)
    assert list(methods) == ["MegaFR (e4e)", "FLAME-params baseline (e4e)", INVERSION_ROW, LINEAR_ROW]
    table, examples = tables.build_table(methods, cross, judge)
    assert list(table["method"]) == [*methods, tables.RIGHT_ANSWER_ROW] and (table["pairs"] == 3).all()
    own = list(tables.TRUTH_METRICS + tables.OWN_METRICS)
    assert np.isfinite(table[own][table["method"] != tables.RIGHT_ANSWER_ROW].to_numpy(float)).all()
    assert table[list(external.PAPER_METRICS)].isna().all().all()
    assert examples["MegaFR (e4e)"].shape == (3, SIZE, SIZE, 3)
    # MegaFR moves the face; inversion only returns x_s
    assert not np.array_equal(examples["MegaFR (e4e)"], examples[INVERSION_ROW])
    assert (tables.csv_table(table)["fid"] == "n/a").all()
    text = tables.markdown_table(table, "Table 1", tables.world_label("smoke"), judge.paper.reasons)
    assert "smoke-world numbers" in text and "fid: n/a — fid n/a: test" in text
    paper = tables.paper_markdown(tables.PAPER_TABLE_1, "Table 1")
    assert "not ours" in paper and "24.7" in paper and "24.7" not in text
    tree = numeric_leaves(tables.metrics_tree(table))
    assert set(tree["megafr_e4e"]) == set(own) | {tables.CSIM_FRACTION}


def test_the_right_answer_is_a_row_where_the_set_has_one(setup, tiny_frozen):
    """The rendered right answers scored by the same networks, last in the table, and every row's CSIM as a fraction
    of theirs; on a set without right answers (photos) neither the row nor the fraction appears."""
    from megafr import metrics
    from megafr.evaluate.stage import Ablations, stage_metrics
    from megafr.imageio import images_to_tensor

    baseline, reenactors, judge, cross = setup
    methods = {INVERSION_ROW: tables.table_methods("cross", reenactors, baseline, 1, tiny_frozen)[INVERSION_ROW]}
    table, examples = tables.build_table(methods, cross, judge)
    assert list(table["method"]) == [INVERSION_ROW, tables.RIGHT_ANSWER_ROW] and list(examples) == [INVERSION_ROW]
    right = table.set_index("method").loc[tables.RIGHT_ANSWER_ROW]
    truth, source, target = (images_to_tensor(images) for images in (cross.truth, cross.source, cross.target))
    assert right["csim"] == pytest.approx(float(metrics.csim(tiny_frozen.idnet, truth, source).mean()), abs=1e-5)
    face = tiny_frozen.face.net
    assert right["apd"] == pytest.approx(float(metrics.apd(face(truth).pose, face(target).pose).mean()), abs=1e-4)
    assert right[list(tables.TRUTH_METRICS)].isna().all() and np.isfinite(right[["aed", "fd_id"]]).all()
    columns = list(table.columns)
    assert columns.index(tables.CSIM_FRACTION) == columns.index("csim") + 1
    np.testing.assert_allclose(table[tables.CSIM_FRACTION], table["csim"] / right["csim"])
    assert right[tables.CSIM_FRACTION] == 1.0
    text = tables.markdown_table(table, "Table 1", tables.world_label("smoke"), judge.paper.reasons)
    assert f"- {tables.RIGHT_ANSWER_ROW}: the rendered right answers" in text and "- csim_vs_right: " in text
    assert (tables.csv_table(table).loc[1, list(tables.TRUTH_METRICS)] == "n/a").all()
    nothing = pd.DataFrame(columns=["ablation"])
    tree = stage_metrics({"table1_cross": table}, Ablations(nothing, nothing, nothing, []), baseline,
                         judge)["table1_cross"]
    assert tree["right_answer_rendered_truth"]["csim_vs_right"] == 1.0
    assert tree["inversion_only_e4e"]["csim_vs_right"] == pytest.approx(table.loc[0, "csim"] / right["csim"], abs=1e-4)

    photos = dataclasses.replace(cross, truth=None)
    bare, _ = tables.build_table(methods, photos, judge)
    assert list(bare["method"]) == [INVERSION_ROW] and tables.CSIM_FRACTION not in bare.columns
    pd.testing.assert_series_equal(bare.loc[0, list(tables.OWN_METRICS)], table.loc[0, list(tables.OWN_METRICS)])
    text = tables.markdown_table(bare, "Table 1", tables.world_label("paper"), judge.paper.reasons)
    assert tables.RIGHT_ANSWER_ROW not in text and "csim_vs_right" not in text
    assert set(tables.metrics_tree(bare)["inversion_only_e4e"]) == set(tables.OWN_METRICS)
    with pytest.raises(ValueError, match="no right answers"):
        tables.score_right_answer(photos, judge)


def test_the_inverted_right_answer_is_scored_before_the_right_answer(setup, tiny_frozen):
    """Given the e4e networks, G(E(truth)) is a row before the right answer's: its PSNR against the right answer
    is the inversion's, its CSIM is against the source like every row's, its examples are the redrawn truths;
    a set without right answers gets no such row."""
    from megafr import metrics
    from megafr.imageio import images_to_tensor
    from megafr.reenact.train import invert

    baseline, reenactors, judge, cross = setup
    methods = {INVERSION_ROW: tables.table_methods("cross", reenactors, baseline, 1, tiny_frozen)[INVERSION_ROW]}
    table, examples = tables.build_table(methods, cross, judge, inversion=tiny_frozen)
    assert list(table["method"]) == [INVERSION_ROW, tables.INVERTED_RIGHT_ROW, tables.RIGHT_ANSWER_ROW]
    truth, source = images_to_tensor(cross.truth), images_to_tensor(cross.source)
    with torch.no_grad():
        redrawn = invert(tiny_frozen, truth)[0].clamp(-1, 1)
    row = table.set_index("method").loc[tables.INVERTED_RIGHT_ROW]
    assert row["psnr"] == pytest.approx(float(metrics.psnr(redrawn, truth).mean()), abs=1e-3)
    assert row["csim"] == pytest.approx(float(metrics.csim(tiny_frozen.idnet, redrawn, source).mean()), abs=1e-4)
    assert list(examples) == [INVERSION_ROW, tables.INVERTED_RIGHT_ROW]
    text = tables.markdown_table(table, "Table 1", tables.world_label("smoke"), judge.paper.reasons)
    assert f"- {tables.INVERTED_RIGHT_ROW}: the rendered right answers inverted" in text
    assert "right_answer_inverted_e4e" in tables.metrics_tree(table)
    bare, _ = tables.build_table(methods, dataclasses.replace(cross, truth=None), judge, inversion=tiny_frozen)
    assert list(bare["method"]) == [INVERSION_ROW]


def test_table_2_has_the_right_answer_row_too(setup):
    """Table 2 gets the row too: a method that copies the source has CSIM 1, i.e. 1 / the right answer's CSIM."""
    judge = setup[2]
    frontal = tables.EvalSet("frontal", _uint8(3, 5), None, _uint8(3, 6))
    table, _ = tables.build_table({"copy": lambda sources, targets: sources}, frontal, judge)
    assert list(table["method"]) == ["copy", tables.RIGHT_ANSWER_ROW]
    right = table.loc[1, "csim"]
    assert table.loc[0, tables.CSIM_FRACTION] == pytest.approx(1.0 / right, rel=1e-5)


def test_rows_are_registered_in_table_order():
    assert registry.registered_rows() == ["MegaFR (e4e)", "MegaFR (pSp)", "FLAME-params baseline (e4e)",
                                          "FLAME-params baseline (pSp)", INVERSION_ROW, LINEAR_ROW,
                                          psp_row.PSP_FRONTAL_ROW]
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_method(INVERSION_ROW, rank=99)(lambda task, inputs: None)
    with pytest.raises(ValueError, match="task"):
        registry.build_methods("profile", registry.MethodInputs({}, None, 0, None))


def test_a_registered_method_becomes_a_row(setup, tiny_frozen, monkeypatch):
    """A new baseline is a registered builder: it appears in both tables at its rank and is scored."""
    baseline, reenactors, judge, cross = setup
    monkeypatch.setattr(registry, "_ROWS", dict(registry._ROWS))  # registration undone after the test

    @registry.register_method("identity (copies the source)", rank=25)
    def copy_source(task, inputs):
        return lambda sources, targets: sources

    @registry.register_method("needs a variant that was not trained", rank=5)
    def absent(task, inputs):
        return None

    methods = tables.table_methods("cross", reenactors, baseline, 1, tiny_frozen)
    assert list(methods)[-3:] == [INVERSION_ROW, "identity (copies the source)", LINEAR_ROW]
    assert "needs a variant that was not trained" not in methods
    table, _ = tables.build_table({"identity (copies the source)": methods["identity (copies the source)"]}, cross, judge)
    assert table.loc[0, "csim"] == pytest.approx(1.0, abs=1e-5)  # the output is the source itself


def test_frontal_rows_and_a_set_without_right_answers(setup, tiny_frozen):
    baseline, reenactors, judge, _ = setup
    frontal = tables.EvalSet("frontal", _uint8(4, 5), None, None)
    table, _ = tables.build_table(tables.table_methods("frontal", reenactors, baseline, 0, tiny_frozen), frontal, judge)
    assert table[list(tables.TRUTH_METRICS)].isna().all().all()
    assert np.isfinite(table[list(tables.OWN_METRICS)].to_numpy(float)).all()
    text = tables.markdown_table(table, "Table 2", tables.world_label("paper"), judge.paper.reasons)
    assert "l1: n/a — not measurable" in text


def test_scores_are_reproducible(setup, tiny_frozen):
    baseline, reenactors, judge, cross = setup
    every = tables.table_methods("cross", reenactors, baseline, 1, tiny_frozen)
    methods = {name: every[name] for name in ("MegaFR (e4e)", LINEAR_ROW)}
    first, _ = tables.build_table(methods, cross, judge)
    second, _ = tables.build_table(methods, cross, judge)
    pd.testing.assert_frame_equal(first, second)


def test_load_eval_set_reads_the_prepare_layout(tmp_path):
    for name in ("source", "target"):
        np.save(tmp_path / f"{name}.npy", _uint8(6, 0))
    data = tables.load_eval_set(tmp_path, "cross", 4)
    assert len(data) == 4 and data.truth is None and data.target.shape == (4, SIZE, SIZE, 3)
    assert tables.load_eval_set(tmp_path, "frontal", 10).target is None


# --------------------------------------------------------------------------------- ablations
def _base_config(tmp_path):
    return rt.ReenactConfig(
        profile="smoke", seed=0, steps=50, batch_size=2, lr=1e-3,
        lr_schedule="constant", encoder="e4e", condition="render",
        edit_groups="coarse,medium", lambda_id=1.0, lambda_lmk=1.0, lambda_pair=1.0, lambda_cyc=1.0,
        lambda_self=1.0, lambda_latent=0.1, lambda_l2=1.0, lambda_lpips=0.0, lambda_rec_id=0.5,
        checkpoint_every=1, generator_path="", e4e_path="", psp_path="", face3d_path="", idnet_path="",
        model_path="", landmark_path="", train_images="", out_dir=str(tmp_path / "canonical"),
        cpu_bf16=False, input_cache="")


def test_plan_and_configs_change_one_thing(tmp_path):
    plan = abl.plan(abl.parse_kinds("loss,layers,condition,refine"), refine_steps=1)
    names = [a.name for a in plan]
    assert names[0] == "reference" and "lambda_cyc=0" in names and "edit_groups=coarse" in names
    assert names[-4:] == ["condition=params", "refine_steps=0", "refine_steps=2", "refine_steps=3"]
    assert [a.refine_steps for a in plan if a.kind == "refine"] == [0, 2, 3]
    base = _base_config(tmp_path)
    for ablation in plan:
        cfg = abl.ablation_config(base, ablation, 3, tmp_path / "ablations")
        changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name)}
        assert changed == {"steps", "out_dir"} | {k for k, _ in ablation.changes}
        assert cfg.out_dir == str(tmp_path / "ablations" / ablation.trained_name)
        seeded = abl.ablation_config(base, ablation, 3, abl.seed_folder(tmp_path / "ablations", 7), seed=7)
        assert seeded.seed == 7 and seeded.out_dir == str(tmp_path / "ablations" / "seed=7" / ablation.trained_name)
    params = abl.ablation_config(dataclasses.replace(base, condition="params"), plan[0], 3, tmp_path)
    assert params.condition == "render"  # the reference is MegaFR (e4e) whatever the base checkpoint was
    assert abl.ablation_config(base, plan[-4], 3, tmp_path).condition == "params"
    with pytest.raises(InputError):
        abl.parse_kinds("loss,colour")
    assert abl.parse_kinds("none") == ()


def test_ablations_train_per_seed_in_their_own_folders_and_resume(setup, tiny_frozen, tmp_path):
    """Two seeds: every trained model once per seed under seed=<s>/, the refinement row on each seed's reference,
    the params-fed E_FR beside them; a second run resumes every checkpoint (same numbers); the summary, the claims
    and the metrics come out of the per-seed rows."""
    from megafr.evaluate.stage import (EvaluateConfig, ablation_markdown, ablation_results, claims_markdown,
                                       stage_metrics, write_tables)

    baseline, _, judge, cross = setup
    wanted = ("reference", "lambda_id=0", "condition=params", "refine_steps=0")
    plan = [a for a in abl.plan(("loss", "condition", "refine"), 1) if a.name in wanted]
    base, images, folder = _base_config(tmp_path), _uint8(8, 6), tmp_path / "ablations"
    legacy = folder / "reference"  # a checkpoint folder of the layout without seeds
    legacy.mkdir(parents=True)
    (folder / abl.DIGEST_FILE).write_text("a\n")
    runs = abl.run_ablations(base, tiny_frozen, images, cross, judge, plan, 2, folder, digest="a", seeds=(0, 1))
    assert list(runs["ablation"]) == list(wanted) * 2 and list(runs["seed"]) == [0] * 4 + [1] * 4
    assert runs.loc[1, "lambda_id"] == 0.0 and runs.loc[0, "lambda_id"] == 1.0
    assert list(runs["condition"]) == ["render", "render", "params", "render"] * 2
    assert (runs["batch_size"] == 2).all() and (runs["pairs"] == 3).all()
    assert np.isfinite(runs[["aed", "apd", "csim", "l1"]].to_numpy(float)).all()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["seed=0", "seed=1"]  # legacy folder gone
    for seed in (0, 1):
        here = folder / f"seed={seed}"
        assert sorted(p.name for p in here.iterdir()) == ["condition=params", "lambda_id=0", "reference"]
        saved = torch.load(here / "reference" / "megafr_e4e_render.pt", weights_only=False)
        assert saved["step"] == 2 and saved["config"]["seed"] == seed
        assert (here / "condition=params" / "megafr_e4e_params.pt").is_file()
    assert not (tmp_path / "canonical").exists()
    by_seed = runs.set_index(["ablation", "seed"])
    assert by_seed.loc[("reference", 0), "aed"] != by_seed.loc[("reference", 1), "aed"]  # seeds train differently
    assert set(abl.train_seconds(folder)) == {f"seed={s}/{n}" for s in (0, 1) for n in wanted[:3]}

    again = abl.run_ablations(base, tiny_frozen, images, cross, judge, plan, 2, folder, digest="a", seeds=(0, 1))
    pd.testing.assert_frame_equal(runs, again)  # resumed from the finished checkpoints: same numbers
    one = abl.run_ablations(base, tiny_frozen, images, cross, judge, plan, 2, folder, digest="a", seeds=(1,))
    pd.testing.assert_frame_equal(one.reset_index(drop=True), runs[runs["seed"] == 1].reset_index(drop=True))
    assert (folder / "seed=0" / "reference").is_dir()  # a seed not requested now is kept for later

    results = ablation_results(runs)
    table = results.table
    assert list(table["ablation"]) == list(wanted) and (table["seeds"] == 2).all()
    reference = runs[runs["ablation"] == "reference"]
    assert table.loc[0, "aed"] == pytest.approx(reference["aed"].mean())
    assert table.loc[0, "aed_std"] == pytest.approx(reference["aed"].std(ddof=1))
    assert set(results.claims["key"]) == {"render_beats_params_apd", "render_beats_params_aed", "loss_id_csim",
                                          "refine_1_beats_0_apd"}
    assert set(results.claims["verdict"]) <= {"holds", "not confirmed", "contradicted"}
    assert list(results.claims["steps"].unique()) == [2] and list(results.claims["seeds"].unique()) == [2]
    metrics = numeric_leaves(stage_metrics({}, results, baseline, judge))
    assert set(metrics["ablations"]) == set(wanted) and "aed_std" in metrics["ablations"]["reference"]
    assert set(metrics["claims"]) == set(results.claims["key"])
    assert set(metrics["claims"]["loss_id_csim"]) == {"effect_mean", "effect_std", "verdict", "seeds"}
    cfg = EvaluateConfig(**_stage_values())
    assert "±" in ablation_markdown(cfg, table) and "smoke-world" in ablation_markdown(cfg, table)
    text = claims_markdown(cfg, results)
    assert "rendering beats raw parameters" in text and "Not measured:" in text and "edit_groups=coarse" in text
    out = EvaluateConfig(**{**_stage_values(), "out_dir": str(tmp_path / "out")})
    write_tables(out, {}, results, baseline, judge)
    written = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert list(written["key"]) == list(results.claims["key"]) and "effect_seed_1" in written.columns
    assert len(pd.read_csv(tmp_path / "out" / "ablations_per_seed.csv")) == len(runs)
    assert "aed_std" in pd.read_csv(tmp_path / "out" / "ablations.csv").columns
    assert (tmp_path / "out" / "claims.md").read_text() == text
    assert len(abl.plot_records(table)) == len(wanted)
    figure = abl.ablation_figure(table, "test")
    assert len(figure.axes) == len(abl.FIGURE_METRICS)
    assert any(len(c) for ax in figure.axes for c in ax.containers if hasattr(c, "has_xerr") and c.has_xerr)

    assert abl.clear_if_stale(folder, "b") and not (folder / "seed=0").exists() and not (folder / "seed=1").exists()


def test_the_stage_trains_seed_to_seed_plus_n_and_judges_the_claims(setup, tiny_frozen, tmp_path):
    """evaluate.seed 5 and ablation_seeds 2: seeds 5 and 6, each in its folder; the claims of the trained kind."""
    from megafr.evaluate import stage

    judge, cross = setup[2], setup[3]
    np.save(tmp_path / "train.npy", _uint8(8, 6))
    base = dataclasses.replace(_base_config(tmp_path), train_images=str(tmp_path / "train.npy"), seed=5)
    cfg = EvaluateConfig(**{**_stage_values(), "seed": 5, "ablations": "condition", "ablation_steps": 1,
                            "out_dir": str(tmp_path / "evaluate")})
    results = stage.run_ablations(cfg, stage.Trained({}, base, tiny_frozen), judge, cross, progress=False)
    assert list(results.runs["seed"]) == [5, 5, 6, 6] and (results.runs["steps"] == 1).all()
    assert sorted(p.name for p in (tmp_path / "evaluate" / "ablations").iterdir() if p.is_dir()) == ["seed=5",
                                                                                                   "seed=6"]
    assert list(results.claims["key"]) == ["render_beats_params_apd", "render_beats_params_aed"]
    assert list(results.claims.columns[6:8]) == ["effect_seed_5", "effect_seed_6"]
    assert {claim.key for claim, _ in results.not_measured} >= {"loss_id_csim", "refine_1_beats_0_apd"}


def _stage_values():
    return dict(profile="smoke", seed=0, reenact_dir="r", variants="e4e:render,psp:render", cross_dir="c",
                cross_pairs=4, frontal_dir="f", frontal_pairs=4, reference_images="t", reference_count=0,
                truth_table="", direction_attributes="yaw_deg,pitch_deg", direction_images=0,
                direction_ridges="1,10", refine_steps=1, inception_dir="", arcface_path="",
                ablations="loss,condition", ablation_steps=2, ablation_seeds=2, ablation_pairs=4, ablation_workers=1,
                psp_frontalization_path="", out_dir="data/evaluate", run_dir="")


def test_stage_config_is_validated():
    values = _stage_values()
    assert EvaluateConfig(**values).folder.name == "evaluate"
    for bad in (dict(variants="psp:render"), dict(cross_pairs=1), dict(ablations="everything"),
                dict(direction_attributes="mood"), dict(direction_ridges="0"), dict(ablation_seeds=0),
                dict(ablation_workers=0)):
        with pytest.raises(InputError):
            EvaluateConfig(**{**values, **bad})
    swept = EvaluateConfig(**{**values, "run_dir": "data/sweeps/x/y"}).folder
    assert swept.parts[-4:] == ("sweeps", "x", "y", "evaluate")


# ------------------------------------------------------------------------------------ devices
def _remote_copy(frozen):
    """The tiny frozen networks copied onto the second device of ``tests.second_device``."""
    import copy

    from tests.second_device import to_remote

    return rt.Frozen(*(None if m is None else to_remote(copy.deepcopy(m)) for m in frozen))


def test_tables_run_with_every_network_on_another_device(setup, tiny_frozen):
    """Networks on a second device, batches read on the CPU: the code must move every batch to the
    networks' device and bring only results back (a CPU tensor meeting the device raises)."""
    import copy


    from tests.second_device import remote_device, to_remote

    baseline, reenactors, _, cross = setup
    frontal = tables.EvalSet("frontal", _uint8(3, 5), None, None)
    expected = {task: tables.build_table(tables.table_methods(task, reenactors, baseline, 1, tiny_frozen), data,
                                         tables.Judge(tiny_frozen, _no_paper_metrics(), _uint8(12, 1)))[0]
                for task, data in (("cross", cross), ("frontal", frontal))}
    with remote_device():
        frozen = _remote_copy(tiny_frozen)
        remote = {name: Reenactor(to_remote(copy.deepcopy(r.model)).with_generator(frozen.generator), frozen,
                                  r.condition) for name, r in reenactors.items()}
        directions, _ = linear.fit_baseline(frozen, _uint8(40, 0), ATTRIBUTES, (0.1, 10.0), _truth_table(40))
        fitted = linear.LinearBaseline(directions, frozen)
        judge = tables.Judge(frozen, _no_paper_metrics(), _uint8(12, 1))
        for task, data in (("cross", cross), ("frontal", frontal)):
            table, examples = tables.build_table(tables.table_methods(task, remote, fitted, 1, frozen), data, judge)
            assert examples["MegaFR (e4e)"].dtype == np.uint8
            pd.testing.assert_frame_equal(table, expected[task], atol=1e-6, rtol=1e-5)  # the CPU run's numbers


def test_psp_frontalization_row_loads_the_release_layout_and_the_notes_name_missing_baselines(setup, tiny_frozen,
                                                                                              tmp_path):
    from megafr.nets.checkpoints import save_encoder
    from megafr.nets.encoders import EncoderConfig, GradualStyleEncoder, InversionNet
    from tests.conftest import TINY_BODY, TINY_STYLE

    baseline, reenactors, judge, _ = setup
    generator = tiny_frozen.generator
    config = EncoderConfig(input_size=SIZE, n_latent=generator.n_latent, style_dim=TINY_STYLE, body=TINY_BODY)
    path = tmp_path / "psp_ffhq_frontalization.pt"
    save_encoder(path, InversionNet(GradualStyleEncoder(config), torch.zeros(TINY_STYLE), generator))
    row = psp_row.psp_frontalization(path, tiny_frozen)
    methods = tables.table_methods("frontal", reenactors, baseline, 0, tiny_frozen, psp_frontal=row)
    assert list(methods)[-1] == psp_row.PSP_FRONTAL_ROW
    assert psp_row.PSP_FRONTAL_ROW not in tables.table_methods("cross", reenactors, baseline, 0, tiny_frozen,
                                                              psp_frontal=row)
    table, _ = tables.build_table({psp_row.PSP_FRONTAL_ROW: row}, tables.EvalSet("frontal", _uint8(3, 7), None, None),
                                  judge)
    assert np.isfinite(table[["apd", "csim"]].to_numpy(float)).all()
    note = tables.paper_markdown(tables.PAPER_TABLE_2, "Table 2", tables.NOT_REPRODUCED["frontal"])
    assert "R&R is not reproduced" in note
    assert "ID-disentanglement" in tables.NOT_REPRODUCED["cross"]
