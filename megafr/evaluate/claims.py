"""The paper's claims as a table: each one tested on the ablations' per-seed scores, with one verdict rule.

Input: the ablations' runs, one row per (ablation, seed) (:func:`megafr.evaluate.ablations.run_ablations`).
Each claim compares two rows of that table, a *winner* (what the paper says is better) and a *loser*,
on one metric, seed by seed. The **effect** of a seed is signed so that a positive value is the
claim's direction: ``loser - winner`` for a metric where lower is better (AED, APD, L1, FD-id,
FID), ``winner - loser`` where higher is better (CSIM). Both rows of a seed were trained with the
same seed (data order, initialisation) and scored on the same pairs, so the per-seed differences
are paired. Over the seeds: the mean and the sample standard deviation (ddof 1) of the effects, and

- **holds**: mean > 2 x std and mean > 0;
- **contradicted**: mean < -2 x std and mean < 0;
- **not confirmed**: otherwise; with one seed always **not confirmed (one seed)**, since one seed gives
  no spread to judge the effect against.

The std is the spread over training seeds at the ablations' budget (``evaluate.ablation_steps``
steps at train_reenact's batch size, ``evaluate.ablation_pairs`` fixed pairs); it does not include the
sampling error of the pairs, which are the same for every seed. A verdict speaks for that budget
and world only; "not confirmed" means "not shown at this budget", not "false".

The claims and the metric each is judged on (the first of a claim's metrics that every compared row
has; the table's ``metric`` column says which was used):

- **rendering beats raw parameters**: the reference (E_FR fed the rendering r_t) against
  ``condition=params`` (fed the FLAME parameters tiled as channels), on APD and on AED: the
  rendering is the paper's answer to "how to tell E_FR the target motion", so motion accuracy is
  what it must improve.
- **refinement helps**: the reference model at 1 refinement step against 0, and at 2 against 1, on
  APD (eq. 9 re-applies F so the pose lands closer; pose is what a single pass misses most). The
  paper calls one extra step enough, so for 2 against 1 "not confirmed" agrees with it.
- **each loss matters**: the reference against the same training with that loss weight at 0, on the
  metric the loss is meant to improve:

  - ``L_ID`` (eq. 3, cosine of ID features of x_s and x_f) -> **CSIM**, the same quantity measured
    by the study's ID network on the output against the source photo;
  - ``L_lmk`` (eq. 4, the output's 68 3D landmarks against the target geometry's) -> **APD** and
    **AED**: the landmarks move with the head pose (all of them) and the expression (mouth, brows,
    eyes), so the loss drives both;
  - ``L_pair`` (eq. 5, eyelid and lip openings) -> **AED**: openings are expression; AED covers the
    eyelid components and the lip shapes, not the jaw (a pose parameter), so it sees part of the loss;
  - ``L_cyc`` (eq. 6, target and back returns the source) and ``L_self`` (eq. 7, the source's own
    geometry changes nothing) -> **L1** against the rendered right answer where the world has one
    (the source's appearance with the target's motion: what these reconstruction terms protect is
    everything but the motion), else **CSIM** (L_rec's identity term, the part of it measurable
    without a right answer, on photos);
  - ``L_latent`` (eq. 8, e4e's latent discriminator keeps w_f in the latent distribution) -> **FID**
    where its Inception weights are on the machine, else **FD-id** (the outputs' ID-feature
    distribution against the reference photos'): both measure whether outputs stay in distribution.

- **coarse + medium editing beats coarse only, and beats all layers**: the model editing the paper's
  coarse + medium layers against ``edit_groups=coarse`` and against ``edit_groups=coarse,medium,fine``,
  each on CSIM (editing fine layers is expected to change colour and identity) and on APD (coarse
  layers alone are expected to miss motion the medium layers carry). The coarse + medium model is the
  reference when train_reenact edits those layers (the paper's setting), else its ``layers`` ablation
  (``edit_groups=coarse,medium``; :func:`claims_for`).

A claim whose rows were not trained (its ablation kind is not in ``evaluate.ablations``) or whose
metrics are all n/a is left out of the table and listed under it as not measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from megafr.evaluate.ablations import PAPER_GROUPS, REFERENCE, run_name, same_groups
from megafr.evaluate.tables import LOWER_IS_BETTER

HOLDS = "holds"
CONTRADICTED = "contradicted"
NOT_CONFIRMED = "not confirmed"
ONE_SEED = "not confirmed (one seed)"
VERDICT_CODES = {HOLDS: 1, NOT_CONFIRMED: 0, ONE_SEED: 0, CONTRADICTED: -1}  # the metrics file's numbers
SPREAD = 2.0  # a claim holds when its mean effect exceeds SPREAD standard deviations over seeds
EFFECT_PREFIX = "effect_seed_"  # per-seed effect columns: effect_seed_<seed>
BUDGET = ("steps", "batch_size", "pairs", "seeds")  # what every verdict is conditional on


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: the rows of ``model`` (the trained model's name), at ``refine_steps`` refinement
    steps (None: the row named ``model`` itself, at its own refinement)."""

    model: str
    refine_steps: Optional[int] = None

    def label(self) -> str:
        return self.model if self.refine_steps is None else f"{self.model}, refine {self.refine_steps}"


@dataclass(frozen=True)
class Claim:
    key: str  # metrics-file key
    text: str  # the claim in words
    winner: Arm  # what the paper says is better
    loser: Arm
    metrics: tuple[str, ...]  # judged on the first of these that both arms have, on every seed


LOSS_METRICS = {  # loss -> the metric(s) it is meant to improve, each a preference list (module docstring)
    "id": (("csim",),), "lmk": (("apd",), ("aed",)), "pair": (("aed",),), "cyc": (("l1", "csim"),),
    "self": (("l1", "csim"),), "latent": (("fid", "fd_id"),)}
LOSS_LABELS = {"id": "L_ID", "lmk": "L_lmk", "pair": "L_pair", "cyc": "L_cyc", "self": "L_self", "latent": "L_latent"}


def _key(stem: str, metrics: tuple[str, ...]) -> str:
    """A claim's metrics-file key: the metric is part of it when fixed, not when it falls back by world."""
    return f"{stem}_{metrics[0]}" if len(metrics) == 1 else stem


def _loss_claims() -> list[Claim]:
    return [Claim(_key(f"loss_{loss}", choice), f"{LOSS_LABELS[loss]} matters", Arm(REFERENCE),
                  Arm(run_name(f"lambda_{loss}", 0)), choice)
            for loss, choices in LOSS_METRICS.items() for choice in choices]


def _layer_claims(reference_groups: str) -> list[Claim]:
    def arm(groups: str) -> Arm:  # the reference when it edits these groups itself, else their ablation
        return Arm(REFERENCE) if same_groups(groups, reference_groups) else Arm(run_name("edit_groups", groups))

    return [Claim(f"coarse_medium_beats_{short}_{metric}", f"editing coarse + medium beats {words}",
                  arm(PAPER_GROUPS), arm(groups), (metric,))
            for short, words, groups in (("coarse", "coarse only", "coarse"),
                                         ("all_layers", "all layers", "coarse,medium,fine"))
            for metric in ("csim", "apd")]


def claims_for(reference_groups: str = PAPER_GROUPS) -> tuple[Claim, ...]:
    """Every claim, for a reference that edits ``reference_groups`` (train_reenact's ``edit_groups``)."""
    return (
        *(Claim(f"render_beats_params_{m}", "rendering beats raw parameters", Arm(REFERENCE),
                Arm(run_name("condition", "params")), (m,)) for m in ("apd", "aed")),
        Claim("refine_1_beats_0_apd", "refinement helps (1 step beats 0)", Arm(REFERENCE, 1), Arm(REFERENCE, 0),
              ("apd",)),
        Claim("refine_2_beats_1_apd", "refinement helps (2 steps beat 1)", Arm(REFERENCE, 2), Arm(REFERENCE, 1),
              ("apd",)),
        *_loss_claims(),
        *_layer_claims(reference_groups),
    )


CLAIMS = claims_for()  # with the paper's reference (coarse + medium)


def reference_groups(runs: pd.DataFrame) -> str:
    """The layers the runs' reference edits (their ``edit_groups`` column; the paper's when it is not recorded)."""
    if "edit_groups" not in runs.columns:
        return PAPER_GROUPS
    groups = runs.loc[runs["ablation"] == REFERENCE, "edit_groups"].unique()
    return str(groups[0]) if len(groups) else PAPER_GROUPS


# ------------------------------------------------------------------------------------- the rule
def signed_effect(winner: float, loser: float, metric: str) -> float:
    """Positive when the winner is better on ``metric`` (``loser - winner`` where lower is better)."""
    return loser - winner if LOWER_IS_BETTER[metric] else winner - loser


def effect_spread(effects: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN with one value) of the per-seed effects."""
    values = np.asarray(effects, float)
    if len(values) == 0:
        raise ValueError("no effects to summarise")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def verdict(effects: Sequence[float]) -> str:
    """``holds`` if mean > 2 std and > 0, ``contradicted`` if mean < -2 std and < 0, else ``not confirmed``;
    one seed: ``not confirmed (one seed)``."""
    mean, std = effect_spread(effects)
    if len(effects) == 1:
        return ONE_SEED
    if mean > 0 and mean > SPREAD * std:
        return HOLDS
    if mean < 0 and mean < -SPREAD * std:
        return CONTRADICTED
    return NOT_CONFIRMED


# ---------------------------------------------------------------------------------- the table
def _arm_rows(runs: pd.DataFrame, arm: Arm) -> pd.DataFrame:
    """The per-seed rows of ``arm``, indexed by seed."""
    if arm.refine_steps is None:
        rows = runs[runs["ablation"] == arm.model]
    else:
        model = np.where(runs["kind"] == "refine", REFERENCE, runs["ablation"])  # refine rows reuse the reference
        rows = runs[(model == arm.model) & (runs["refine_steps"] == arm.refine_steps)]
    if rows["seed"].duplicated().any():
        raise ValueError(f"{arm.label()}: more than one row per seed")
    return rows.set_index("seed")


def _measurable(claim: Claim, winner: pd.DataFrame, loser: pd.DataFrame) -> Optional[str]:
    """The first metric of the claim that both arms have on every seed (None: none)."""
    for metric in claim.metrics:
        if metric in winner.columns and metric in loser.columns and winner[metric].notna().all() \
                and loser[metric].notna().all():
            return metric
    return None


def _budget(runs: pd.DataFrame) -> dict:
    """steps, batch_size, pairs (each one value for the whole run) and the number of seeds."""
    budget = {}
    for column in BUDGET[:-1]:
        values = runs[column].unique() if column in runs.columns else []
        if len(values) > 1:
            raise ValueError(f"the ablations were run with several {column}: {sorted(values)}")
        budget[column] = int(values[0]) if len(values) else None
    budget["seeds"] = int(runs["seed"].nunique())
    return budget


def claims_table(runs: pd.DataFrame, claims: Optional[Iterable[Claim]] = None) -> pd.DataFrame:
    """One row per measurable claim: ``key``, ``claim``, ``winner``, ``loser``, ``metric``, ``better`` (lower or
    higher), ``effect_seed_<s>`` per seed, ``effect_mean``, ``effect_std``, the budget (``steps``, ``batch_size``,
    ``pairs``, ``seeds``) and ``verdict``. Claims that cannot be measured are in ``not_measured(runs)``.
    ``claims`` None: every claim, for the layers the runs' reference edits (:func:`claims_for`)."""
    claims = claims_for(reference_groups(runs)) if claims is None else claims
    seeds = sorted(int(s) for s in runs["seed"].unique())
    budget = _budget(runs)
    rows = []
    for claim in claims:
        winner, loser = _arm_rows(runs, claim.winner), _arm_rows(runs, claim.loser)
        if winner.empty or loser.empty:
            continue
        if sorted(winner.index) != seeds or sorted(loser.index) != seeds:
            raise ValueError(f"claim {claim.key}: its rows do not cover the seeds {seeds}")
        metric = _measurable(claim, winner, loser)
        if metric is None:
            continue
        effects = [signed_effect(float(winner.loc[s, metric]), float(loser.loc[s, metric]), metric) for s in seeds]
        mean, std = effect_spread(effects)
        rows.append({"key": claim.key, "claim": claim.text, "winner": claim.winner.label(),
                     "loser": claim.loser.label(), "metric": metric,
                     "better": "lower" if LOWER_IS_BETTER[metric] else "higher",
                     **{f"{EFFECT_PREFIX}{s}": e for s, e in zip(seeds, effects)},
                     "effect_mean": mean, "effect_std": std, **budget, "verdict": verdict(effects)})
    columns = ["key", "claim", "winner", "loser", "metric", "better", *(f"{EFFECT_PREFIX}{s}" for s in seeds),
               "effect_mean", "effect_std", *BUDGET, "verdict"]
    return pd.DataFrame(rows, columns=columns)


def not_measured(runs: pd.DataFrame, claims: Optional[Iterable[Claim]] = None) -> list[tuple[Claim, str]]:
    """The claims left out of :func:`claims_table`, each with the reason."""
    claims = claims_for(reference_groups(runs)) if claims is None else claims
    left = []
    for claim in claims:
        winner, loser = _arm_rows(runs, claim.winner), _arm_rows(runs, claim.loser)
        missing = [arm.label() for arm, rows in ((claim.winner, winner), (claim.loser, loser)) if rows.empty]
        if missing:
            left.append((claim, f"not trained: {', '.join(missing)} (its kind is not in evaluate.ablations)"))
        elif _measurable(claim, winner, loser) is None:
            left.append((claim, f"{' / '.join(claim.metrics)} n/a"))
    return left


# ---------------------------------------------------------------------------------------- output
def metrics_tree(table: pd.DataFrame) -> dict:
    """``{key: {effect_mean, effect_std, verdict, seeds}}`` for ``dvc metrics``: numeric leaves only; verdict as a
    number (holds 1, not confirmed 0, contradicted -1); effect_std left out with one seed."""
    tree = {}
    for row in table.to_dict("records"):
        leaves = {"effect_mean": round(float(row["effect_mean"]), 6), "verdict": VERDICT_CODES[row["verdict"]],
                  "seeds": int(row["seeds"])}
        if pd.notna(row["effect_std"]):
            leaves["effect_std"] = round(float(row["effect_std"]), 6)
        tree[row["key"]] = leaves
    return tree


def _signed(value: float) -> str:
    return f"{value:+.3g}"


def markdown(table: pd.DataFrame, title: str, label: str, left_out: Sequence[tuple[Claim, str]] = ()) -> str:
    """The claims table as a Markdown section: the budget, one line per claim (effects per seed, mean ± std,
    verdict), the rule, and the claims not measured."""
    lines = [f"### {title} ({label})", ""]
    if len(table):
        first = table.iloc[0]
        effects = [c for c in table.columns if c.startswith(EFFECT_PREFIX)]
        seeds = ", ".join(c[len(EFFECT_PREFIX):] for c in effects)
        lines += [f"Budget of every verdict: E_FR trained {first['steps']} steps at batch {first['batch_size']} per "
                  f"model and seed, scored on {first['pairs']} cross pairs; {first['seeds']} seed"
                  f"{'s' if first['seeds'] > 1 else ''} ({seeds}).", ""]
        shown = pd.DataFrame({
            "claim": table["claim"], "winner": table["winner"], "loser": table["loser"],
            "metric": [f"{m} ({b} is better)" for m, b in zip(table["metric"], table["better"])],
            f"effect per seed ({seeds})":
                [", ".join(_signed(row[c]) for c in effects) for _, row in table.iterrows()],
            "mean ± std": [_signed(m) if pd.isna(s) else f"{_signed(m)} ± {s:.2g}"
                           for m, s in zip(table["effect_mean"], table["effect_std"])],
            "verdict": table["verdict"]})
        lines += [shown.to_markdown(index=False), ""]
    else:
        lines += ["No claim could be measured with the ablations of this run.", ""]
    lines += [f"Effect: signed so that positive is the claim's direction (loser - winner where lower is better). "
              f"Verdict: holds if mean > {SPREAD:g} x std over seeds (and > 0), contradicted if mean < -{SPREAD:g} x "
              "std (and < 0), otherwise not confirmed; one seed is never enough. The std is over training seeds on "
              "fixed pairs; a verdict speaks for this budget and world only (docs/metrics.md, \"Claims\")."]
    if left_out:
        lines += ["", "Not measured:"] + [f"- {claim.key} ({claim.text}): {why}" for claim, why in left_out]
    return "\n".join(lines) + "\n"
