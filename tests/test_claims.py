"""The claims table and the ablation summary on hand-made per-seed tables: the verdict rule, the sign of every
effect, which rows a claim compares, the metric fallbacks, and what reaches the metrics file."""

import math

import numpy as np
import pandas as pd
import pytest

from megafr.evaluate import ablations as abl
from megafr.evaluate import claims as cl
from megafr.reenact.train import LOSS_NAMES
from megafr.stage import numeric_leaves

SEEDS = (0, 1, 2)
BUDGET = {"steps": 100, "batch_size": 8, "pairs": 64}


def _row(ablation, seed, refine_steps=1, **scores):
    kind = ("reference" if ablation == "reference" else "refine" if ablation.startswith("refine_steps=")
            else "condition" if ablation.startswith("condition=") else "layers" if ablation.startswith("edit_groups=")
            else "loss")
    return {"ablation": ablation, "kind": kind, "seed": seed, **BUDGET, "refine_steps": refine_steps, **scores}


def _runs(rows):
    return pd.DataFrame(rows)


def _by_key(table):
    return table.set_index("key")


# ------------------------------------------------------------------------------------ the rule
@pytest.mark.parametrize("effects,expected", [
    ([1.0, 1.1, 0.9], cl.HOLDS),
    ([-1.0, -1.1, -0.9], cl.CONTRADICTED),
    ([1.0, -1.0, 0.5], cl.NOT_CONFIRMED),
    ([0.0, 0.0, 0.0], cl.NOT_CONFIRMED),  # no effect at all
    ([0.2, 0.2], cl.HOLDS),  # no spread: any positive mean exceeds 2 x 0
    ([-0.2, -0.2], cl.CONTRADICTED),
    ([1.0, 2.2], cl.NOT_CONFIRMED),  # mean 1.6 < 2 x 0.849 (sample std); 2 x the population std (1.2) would pass
    ([-1.0, -2.2], cl.NOT_CONFIRMED),
    ([2.0, 3.0], cl.HOLDS),  # mean 2.5 > 2 x 0.707
    ([5.0], cl.ONE_SEED),
    ([-5.0], cl.ONE_SEED),
])
def test_verdict_rule(effects, expected):
    assert cl.verdict(effects) == expected


def test_the_threshold_is_two_sample_standard_deviations():
    std = float(np.std([1.0, 3.0], ddof=1))
    assert cl.effect_spread([1.0, 3.0]) == pytest.approx((2.0, std))
    half = 1.0 / math.sqrt(2)  # two effects 1 -+ half: mean 1, sample std 1
    effects = [1.0 - half, 1.0 + half]
    assert cl.effect_spread(effects) == pytest.approx((1.0, 1.0))
    assert cl.verdict(effects) == cl.NOT_CONFIRMED  # 1 < 2 x 1
    assert cl.verdict([e + 0.99 for e in effects]) == cl.NOT_CONFIRMED  # 1.99 < 2 x 1
    assert cl.verdict([e + 1.01 for e in effects]) == cl.HOLDS  # 2.01 > 2 x 1
    assert cl.verdict([e - 2.99 for e in effects]) == cl.NOT_CONFIRMED  # -1.99 > -2 x 1
    assert cl.verdict([e - 3.01 for e in effects]) == cl.CONTRADICTED  # -2.01 < -2 x 1
    assert math.isnan(cl.effect_spread([1.0])[1])
    with pytest.raises(ValueError):
        cl.effect_spread([])


def test_effects_are_signed_in_the_claims_direction():
    assert cl.signed_effect(winner=5.0, loser=7.0, metric="apd") == 2.0  # lower is better: winner lower -> positive
    assert cl.signed_effect(winner=0.8, loser=0.6, metric="csim") == pytest.approx(0.2)  # higher is better
    assert cl.signed_effect(winner=7.0, loser=5.0, metric="aed") == -2.0
    assert cl.signed_effect(winner=0.1, loser=0.2, metric="fd_id") == pytest.approx(0.1)


# ------------------------------------------------------------------------------------ the table
def test_rendering_and_losses_signed_per_seed_with_their_verdicts():
    """The reference (render) has lower APD than condition=params on every seed -> positive, holds; its AED is
    better on one seed only -> not confirmed; lambda_id=0 keeps identity *better* than the reference on every
    seed -> the L_ID claim is contradicted."""
    rows = []
    for s in SEEDS:
        rows.append(_row("reference", s, apd=5.0 + 0.1 * s, aed=0.20, csim=0.70))
        rows.append(_row("condition=params", s, apd=8.0 + 0.1 * s, aed=0.21 if s == 0 else 0.18, csim=0.70))
        rows.append(_row("lambda_id=0", s, apd=5.0, aed=0.20, csim=0.75 + 0.01 * s))
    table = _by_key(cl.claims_table(_runs(rows)))
    apd = table.loc["render_beats_params_apd"]
    assert [apd[f"effect_seed_{s}"] for s in SEEDS] == pytest.approx([3.0, 3.0, 3.0])
    assert apd["effect_mean"] == pytest.approx(3.0) and apd["verdict"] == cl.HOLDS
    assert (apd["winner"], apd["loser"], apd["metric"], apd["better"]) == ("reference", "condition=params", "apd",
                                                                         "lower")
    aed = table.loc["render_beats_params_aed"]
    assert [aed[f"effect_seed_{s}"] for s in SEEDS] == pytest.approx([0.01, -0.02, -0.02])
    assert aed["verdict"] == cl.NOT_CONFIRMED
    identity = table.loc["loss_id_csim"]
    assert identity["metric"] == "csim" and identity["better"] == "higher"
    assert [identity[f"effect_seed_{s}"] for s in SEEDS] == pytest.approx([-0.05, -0.06, -0.07])
    assert identity["verdict"] == cl.CONTRADICTED
    assert {k: apd[k] for k in ("steps", "batch_size", "pairs", "seeds")} == {**BUDGET, "seeds": 3}
    assert list(table.index) == ["render_beats_params_apd", "render_beats_params_aed", "loss_id_csim"]


def test_refinement_claims_compare_the_reference_model_at_its_steps():
    """The reference row is the reference model at the tables' refinement (1); refine_steps=<k> rows are the same
    model at k. APD falls from 0 to 1 step on every seed, and rises (noisily) from 1 to 2."""
    rows = []
    for s in SEEDS:
        rows.append(_row("reference", s, refine_steps=1, apd=5.0))
        rows.append(_row("refine_steps=0", s, refine_steps=0, apd=6.0 + 0.1 * s))
        rows.append(_row("refine_steps=2", s, refine_steps=2, apd=(5.1, 4.9, 5.3)[s]))
    table = _by_key(cl.claims_table(_runs(rows)))
    one = table.loc["refine_1_beats_0_apd"]
    assert (one["winner"], one["loser"]) == ("reference, refine 1", "reference, refine 0")
    assert [one[f"effect_seed_{s}"] for s in SEEDS] == pytest.approx([1.0, 1.1, 1.2]) and one["verdict"] == cl.HOLDS
    two = table.loc["refine_2_beats_1_apd"]
    assert [two[f"effect_seed_{s}"] for s in SEEDS] == pytest.approx([-0.1, 0.1, -0.3])
    assert two["verdict"] == cl.NOT_CONFIRMED


def test_a_reference_trained_without_refinement_is_the_refine_0_arm():
    rows = [r for s in (0, 1) for r in (_row("reference", s, refine_steps=0, apd=6.0),
                                        _row("refine_steps=1", s, refine_steps=1, apd=5.0))]
    one = _by_key(cl.claims_table(_runs(rows))).loc["refine_1_beats_0_apd"]
    assert one["effect_mean"] == pytest.approx(1.0) and one["verdict"] == cl.HOLDS


def test_every_loss_and_layer_claim_uses_its_metric_and_falls_back_where_n_a():
    def rows_with(**extra):
        out = []
        for s in (0, 1):
            out.append(_row("reference", s, apd=5.0, aed=0.2, csim=0.7, l1=0.05, fd_id=1.0, **extra))
            for loss in LOSS_NAMES:
                out.append(_row(f"lambda_{loss}=0", s, apd=6.0, aed=0.3, csim=0.6, l1=0.07, fd_id=1.5, **extra))
            for groups in abl.LAYER_CHOICES:
                out.append(_row(f"edit_groups={groups}", s, apd=5.5, aed=0.25, csim=0.65, l1=0.06, fd_id=1.2,
                                **extra))
        return _runs(out)

    table = _by_key(cl.claims_table(rows_with()))
    expected = {"loss_id_csim": "csim", "loss_lmk_apd": "apd", "loss_lmk_aed": "aed", "loss_pair_aed": "aed",
                "loss_cyc": "l1", "loss_self": "l1", "loss_latent": "fd_id",
                "coarse_medium_beats_coarse_csim": "csim", "coarse_medium_beats_coarse_apd": "apd",
                "coarse_medium_beats_all_layers_csim": "csim", "coarse_medium_beats_all_layers_apd": "apd"}
    assert table["metric"].to_dict() == expected
    assert (table["effect_mean"] > 0).all() and (table["verdict"] == cl.HOLDS).all()  # the reference better on all
    assert table.loc["loss_cyc", "effect_mean"] == pytest.approx(0.02)  # L1: 0.07 - 0.05
    assert table.loc["coarse_medium_beats_all_layers_csim", "loser"] == "edit_groups=coarse,medium,fine"

    photos = rows_with().drop(columns="l1")  # no right answer: the reconstruction losses fall back to CSIM
    table = _by_key(cl.claims_table(photos))
    assert table.loc["loss_cyc", "metric"] == "csim" and table.loc["loss_self", "metric"] == "csim"
    with_fid = rows_with(fid=np.nan)  # FID column present but n/a -> FD-id
    assert _by_key(cl.claims_table(with_fid)).loc["loss_latent", "metric"] == "fd_id"
    runs = rows_with()
    runs["fid"] = np.where(runs["ablation"] == "reference", 20.0, 30.0)
    latent = _by_key(cl.claims_table(runs)).loc["loss_latent"]
    assert latent["metric"] == "fid" and latent["effect_mean"] == pytest.approx(10.0)


def test_claims_without_their_rows_are_listed_as_not_measured():
    rows = [r for s in (0, 1) for r in (_row("reference", s, apd=5.0, aed=0.2, csim=0.7),
                                        _row("condition=params", s, apd=6.0, aed=0.3, csim=0.7))]
    runs = _runs(rows)
    table = cl.claims_table(runs)
    assert list(table["key"]) == ["render_beats_params_apd", "render_beats_params_aed"]
    left = dict((claim.key, why) for claim, why in cl.not_measured(runs))
    assert set(left) == {c.key for c in cl.CLAIMS} - set(table["key"])
    assert "not trained: lambda_id=0" in left["loss_id_csim"]
    assert "reference, refine 0" in left["refine_1_beats_0_apd"]
    text = cl.markdown(table, "Claims", "smoke-world", cl.not_measured(runs))
    assert "Not measured:" in text and "- loss_id_csim (L_ID matters): not trained" in text
    assert "holds" in text and "+1 ± 0" in text and "steps at batch 8" in text
    empty = cl.claims_table(_runs([_row("reference", 0, apd=5.0)]))
    assert empty.empty and "No claim could be measured" in cl.markdown(empty, "Claims", "x")


def test_one_seed_is_never_a_verdict_and_leaves_the_std_out_of_the_metrics():
    runs = _runs([_row("reference", 0, apd=5.0, aed=0.2), _row("condition=params", 0, apd=9.0, aed=0.4)])
    table = cl.claims_table(runs)
    assert (table["verdict"] == cl.ONE_SEED).all() and table["effect_std"].isna().all()
    tree = numeric_leaves(cl.metrics_tree(table))
    assert tree["render_beats_params_apd"] == {"effect_mean": 4.0, "verdict": 0, "seeds": 1}
    two = _runs([_row("reference", s, apd=5.0, aed=0.2) for s in (0, 1)]
                + [_row("condition=params", s, apd=9.0 - s, aed=0.1) for s in (0, 1)])
    tree = numeric_leaves(cl.metrics_tree(cl.claims_table(two)))
    assert tree["render_beats_params_apd"]["verdict"] == 1 and tree["render_beats_params_aed"]["verdict"] == -1
    assert tree["render_beats_params_apd"]["effect_std"] == pytest.approx(math.sqrt(0.5), abs=1e-6)


def test_rows_missing_a_seed_or_duplicated_are_refused():
    rows = [_row("reference", 0, apd=5.0), _row("reference", 1, apd=5.0), _row("condition=params", 0, apd=6.0)]
    with pytest.raises(ValueError, match="do not cover the seeds"):
        cl.claims_table(_runs(rows))
    with pytest.raises(ValueError, match="more than one row per seed"):
        cl.claims_table(_runs([_row("reference", 0, apd=5.0)] * 2 + [_row("condition=params", 0, apd=6.0)]))
    mixed = _runs([_row("reference", 0, apd=5.0), {**_row("condition=params", 0, apd=6.0), "steps": 50}])
    with pytest.raises(ValueError, match="several steps"):
        cl.claims_table(mixed)


def test_every_claim_compares_rows_that_the_full_plan_trains():
    """The claims name the rows abl.plan makes (refinement arms: the reference model at 0-2 steps), and every loss
    of train_reenact has a claim."""
    names = {a.name for a in abl.plan(abl.KINDS, refine_steps=1)}
    for claim in cl.CLAIMS:
        for arm in (claim.winner, claim.loser):
            assert arm.model in names, (claim.key, arm)
            assert arm.refine_steps is None or arm.refine_steps in abl.REFINE_CHOICES
        assert all(m in cl.LOWER_IS_BETTER for m in claim.metrics)
    assert set(cl.LOSS_METRICS) == set(LOSS_NAMES)
    assert len({c.key for c in cl.CLAIMS}) == len(cl.CLAIMS)


def test_layer_claims_take_the_paper_layers_from_their_ablation_when_the_reference_edits_others():
    """A world whose train_reenact edits other layers (the mini world's coarse,16px) trains the paper's coarse +
    medium as an ablation; the layer claims compare that model, the rest the reference."""
    names = [a.name for a in abl.plan(("layers",), 1, reference_groups="coarse, 16px")]
    assert names == ["reference", "edit_groups=coarse", "edit_groups=coarse,medium", "edit_groups=coarse,medium,fine"]
    assert [a.name for a in abl.plan(("layers",), 1, reference_groups="medium,coarse")] == [
        "reference", "edit_groups=coarse", "edit_groups=coarse,medium,fine"]
    rows = []
    for s in SEEDS:
        rows.append({**_row("reference", s, apd=2.0, csim=0.9), "edit_groups": "coarse,16px"})
        rows.append({**_row("edit_groups=coarse", s, apd=4.0 + 0.1 * s, csim=0.8), "edit_groups": "coarse"})
        rows.append({**_row("edit_groups=coarse,medium", s, apd=3.0, csim=0.5), "edit_groups": "coarse,medium"})
        rows.append({**_row("edit_groups=coarse,medium,fine", s, apd=3.5 + 0.1 * s, csim=0.4),
                     "edit_groups": "coarse,medium,fine"})
    runs = _runs(rows)
    assert cl.reference_groups(runs) == "coarse,16px"
    table = _by_key(cl.claims_table(runs))
    coarse = table.loc["coarse_medium_beats_coarse_csim"]
    assert coarse["winner"] == "edit_groups=coarse,medium" and coarse["loser"] == "edit_groups=coarse"
    assert coarse["effect_mean"] == pytest.approx(-0.3) and coarse["verdict"] == cl.CONTRADICTED
    assert table.loc["coarse_medium_beats_coarse_apd", "effect_mean"] == pytest.approx(1.1)
    assert table.loc["coarse_medium_beats_all_layers_csim", "effect_mean"] == pytest.approx(0.1)
    paper = _runs([{**r, "edit_groups": "coarse,medium"} if r["ablation"] == "reference" else r for r in rows
                   if r["ablation"] != "edit_groups=coarse,medium"])
    assert _by_key(cl.claims_table(paper)).loc["coarse_medium_beats_coarse_csim", "winner"] == "reference"


# ------------------------------------------------------------------------------ the ablation table
def test_summary_is_the_mean_and_sample_std_over_seeds_in_the_runs_order():
    runs = _runs([_row("reference", 0, aed=0.2, csim=0.7), _row("lambda_id=0", 0, aed=0.4, csim=0.5),
                  _row("reference", 1, aed=0.4, csim=0.9), _row("lambda_id=0", 1, aed=0.4, csim=0.6)])
    table = abl.summarise(runs)
    assert list(table["ablation"]) == ["reference", "lambda_id=0"] and list(table["seeds"]) == [2, 2]
    assert table["aed"].tolist() == pytest.approx([0.3, 0.4])
    assert table["aed_std"].tolist() == pytest.approx([math.sqrt(0.02), 0.0])
    assert table["csim_std"].tolist() == pytest.approx([math.sqrt(0.02), math.sqrt(0.005)])
    assert "seed" not in table.columns and table.loc[0, "steps"] == 100
    columns = list(table.columns)
    assert columns.index("aed_std") == columns.index("aed") + 1
    tree = numeric_leaves(abl.metrics_tree(table, abl.summary_columns(table)))
    assert set(tree["reference"]) == {"aed", "aed_std", "csim", "csim_std", "seeds"}
    text = abl.markdown(table, "Ablations", "smoke", abl.metric_columns(table))
    assert "0.3 ± 0.14" in text and "seeds" in text

    single = abl.summarise(runs[runs["seed"] == 0])
    assert single["aed_std"].isna().all() and list(single["seeds"]) == [1, 1]
    tree = numeric_leaves(abl.metrics_tree(single, abl.summary_columns(single)))
    assert set(tree["reference"]) == {"aed", "csim", "seeds"}  # no std with one seed
    assert "±" not in abl.markdown(single, "Ablations", "smoke", abl.metric_columns(single))
    assert abl.seed_list(3, 2) == (3, 4)
