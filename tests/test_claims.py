"""The claims registry and its verdicts, on hand-made run records (no training, no MLflow)."""

import dataclasses
import math
import textwrap

import pytest

from bnrepro.report.claims import (
    CLAIMS_FILE,
    Aggregate,
    ClaimsFileError,
    Verdict,
    evaluate,
    evaluate_claim,
    load_claims,
    percentile_drift,
)
from bnrepro.report.runs import RunRecord


def record(
    norm="bn", seed=0, acc=(0.5, 0.9), status="FINISHED", outcome=None, experiment="mnist_fig1", diag=None,
    eval_examples=10_000, **params,
):  # fmt: skip
    """A job run whose val/acc was `acc[i]` at step 100 * (i + 1), evaluated on `eval_examples` examples."""
    tags = {"norm": norm, "seed": str(seed), "experiment": experiment, "data": "mnist_mini"}
    if outcome:
        tags["bnrepro.outcome"] = outcome
    history = {"val/acc": [(100 * (i + 1), value) for i, value in enumerate(acc)]}
    history.update(diag or {})
    logged = {"data.binarize": "True", "seed": str(seed), "data.seed": str(seed), **params}
    if eval_examples is not None:
        logged["eval_examples"] = str(eval_examples)
    name = f"run {norm} {seed}"  # names are not parsed: the configuration comes from tags and params
    return RunRecord(f"{norm}-{seed}-{experiment}-{len(acc)}", name, status, tags, logged, history)


def seeds(norm, finals, **kwargs):
    """One run per value of `finals` (seeds 0, 1, ...), each ending at that accuracy."""
    return [record(norm, seed, (0.5, final), **kwargs) for seed, final in enumerate(finals)]


def claim_from(text: str, tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text(textwrap.dedent(text))
    return load_claims(path).claims[0]


ORDERING = """
claims:
  - id: final_accuracy
    paper: "The batch-normalized network enjoys the higher test accuracy."
    experiment: mnist_fig1
    metric: {statistic: final}
    comparison: ordering
    better: higher
    configurations: [{norm: bn}, {norm: none}]
"""


@pytest.fixture
def ordering(tmp_path):
    return claim_from(ORDERING, tmp_path)


# --- orderings: intervals over seeds and the evaluation set ------------------------------------
def test_a_large_consistent_effect_over_five_seeds_passes(ordering):
    runs = seeds("bn", (0.97, 0.971, 0.969, 0.972, 0.970)) + seeds("none", (0.93, 0.931, 0.929, 0.932, 0.930))
    result = evaluate_claim(ordering, runs)
    assert result.verdict is Verdict.PASS
    low, high = result.checks[0].estimate.interval(result.level)
    assert 0 < low < 0.04 < high


def test_identical_learning_curves_do_not_pass(ordering):
    finals = (0.95, 0.96, 0.97, 0.95, 0.96)
    assert evaluate_claim(ordering, seeds("bn", finals) + seeds("none", finals)).verdict is not Verdict.PASS


def test_a_gap_smaller_than_the_evaluation_sets_sampling_error_does_not_pass(ordering):
    # 0.3 points on 1,000 test images (binomial error ~0.55 points per accuracy), seeds in perfect agreement
    runs = seeds("bn", [0.973] * 5, eval_examples=1000) + seeds("none", [0.970] * 5, eval_examples=1000)
    result = evaluate_claim(ordering, runs)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "more seeds cannot resolve it" in result.reason


def test_the_same_gap_on_a_large_evaluation_set_passes(ordering):
    runs = seeds("bn", [0.973] * 5, eval_examples=1_000_000) + seeds("none", [0.970] * 5, eval_examples=1_000_000)
    assert evaluate_claim(ordering, runs).verdict is Verdict.PASS


def test_two_seeds_per_configuration_do_not_pass_however_large_the_gap(ordering):
    result = evaluate_claim(ordering, seeds("bn", (0.97, 0.971)) + seeds("none", (0.90, 0.901)))
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "fewer than 3" in result.reason


def test_a_clearly_reversed_ordering_fails(ordering):
    runs = seeds("bn", (0.90, 0.901, 0.899, 0.90)) + seeds("none", (0.96, 0.961, 0.959, 0.96))
    assert evaluate_claim(ordering, runs).verdict is Verdict.FAIL


def test_inconclusive_says_how_many_seeds_would_resolve_it(ordering):
    runs = seeds("bn", (0.97, 0.95, 0.96), eval_examples=10**6) + seeds(
        "none", (0.955, 0.945, 0.95), eval_examples=10**6
    )
    result = evaluate_claim(ordering, runs)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "seeds per configuration would resolve it" in result.reason


def test_holm_correction_turns_a_borderline_pass_into_inconclusive(ordering, tmp_path):
    # alone, p is just under 0.05; judged with three other claims that do not pass, Holm asks for 0.05 / 4
    runs = seeds("bn", (0.9700, 0.9710, 0.9690, 0.9705)) + seeds("none", (0.9680, 0.9690, 0.9670, 0.9685))
    runs = [record(r.tags["norm"], int(r.seed), (0.5, r.final("val/acc")), eval_examples=10**8) for r in runs]
    alone = evaluate_claim(ordering, runs)
    assert alone.verdict is Verdict.PASS and 0.005 < alone.p_holds < 0.05
    others = [dataclasses.replace(ordering, id=f"copy{i}", better="lower") for i in range(3)]
    together = {result.claim.id: result for result in evaluate([ordering, *others], runs)}
    assert together["final_accuracy"].verdict is Verdict.INCONCLUSIVE
    assert together["final_accuracy"].correction == "Holm-Bonferroni over 4 claims"


def test_not_run_when_the_sweep_lacks_a_configuration(ordering):
    result = evaluate_claim(ordering, [record("bn", 0), record("bn", 1)])
    assert result.verdict is Verdict.NOT_RUN
    assert "no runs of configuration norm=none" in result.reason


def test_claims_of_experiments_outside_the_sweep_are_not_judged(ordering):
    assert evaluate([ordering], seeds("bn", (0.9,) * 3, experiment="bn_x5")) == []


def test_nan_is_not_run_not_fail(ordering):
    result = evaluate_claim(ordering, seeds("bn", (math.nan,) * 3) + seeds("none", (0.9,) * 3))
    assert result.verdict is Verdict.NOT_RUN
    assert "statistic is nan" in result.reason


def test_an_unknown_evaluation_set_size_is_not_run(ordering):
    result = evaluate_claim(ordering, seeds("bn", (0.97,) * 3, eval_examples=None) + seeds("none", (0.9,) * 3))
    assert result.verdict is Verdict.NOT_RUN
    assert "evaluation set size is unknown" in result.reason


def test_the_protocols_evaluation_set_size_stands_in_for_runs_that_do_not_log_it(tmp_path):
    claim = claim_from(
        ORDERING.replace("comparison:", "protocol: {eval_examples: {mnist_mini: 1000}}\n    comparison:"), tmp_path
    )
    result = evaluate_claim(
        claim, seeds("bn", (0.97,) * 3, eval_examples=None) + seeds("none", (0.9,) * 3, eval_examples=None)
    )
    assert [group.eval_examples for group in result.groups] == [1000, 1000]


def test_runs_shorter_than_the_protocol_are_not_run(tmp_path):
    claim = claim_from(ORDERING.replace("comparison:", "protocol: {steps: 50000}\n    comparison:"), tmp_path)
    result = evaluate_claim(claim, seeds("bn", (0.97,) * 3) + seeds("none", (0.9,) * 3))
    assert result.verdict is Verdict.NOT_RUN
    assert result.reason == "runs end at step 200; the protocol is 50,000"


def test_a_scale_free_claim_on_shorter_runs_is_judged_and_labelled_with_its_scale(tmp_path):
    claim = claim_from(
        ORDERING.replace("comparison:", "protocol: {steps: 50000}\n    scale_free: true\n    comparison:"), tmp_path
    )
    result = evaluate_claim(claim, seeds("bn", (0.97, 0.971, 0.972)) + seeds("none", (0.9, 0.901, 0.902)))
    assert result.verdict is Verdict.PASS
    assert "judged at step 200 (the protocol is 50,000)" in result.reason


def test_not_run_when_every_run_of_a_configuration_diverged(ordering):
    runs = seeds("bn", (0.9,) * 3) + seeds("none", (0.9,) * 3, outcome="diverged")
    result = evaluate_claim(ordering, runs)
    assert result.verdict is Verdict.NOT_RUN
    assert result.reason.startswith("diverged: every run of norm=none diverged")


def test_diverged_and_failed_runs_are_left_out_and_counted(ordering):
    runs = [
        *seeds("bn", (0.97, 0.971, 0.972)), record("bn", 3, (0.5, 0.10), outcome="diverged"),
        *seeds("none", (0.93, 0.931, 0.932)), record("none", 3, (0.5, 0.99), status="FAILED"),
    ]  # fmt: skip
    result = evaluate_claim(ordering, runs)
    assert [group.aggregate.n for group in result.groups] == [3, 3]
    assert sorted(result.groups[0].excluded.values()) == ["diverged"]
    assert sorted(result.groups[1].excluded.values()) == ["failed"]
    assert "1 run(s) of norm=bn diverged and are left out" in result.reason


def test_a_selector_matching_several_configurations_is_not_pooled_as_seeds(ordering):
    runs = [record("bn", 0, **{"optim.lr": "0.1"}), record("bn", 1, **{"optim.lr": "0.5"}), *seeds("none", (0.9, 0.9))]
    result = evaluate_claim(ordering, runs)
    assert result.verdict is Verdict.NOT_RUN
    assert result.reason.startswith("ambiguous: norm=bn matches runs of several configurations (optim.lr=0.1|0.5)")


EQUIVALENT = """
claims:
  - id: no_dropout_costs_nothing
    paper: "removing dropout costs nothing"
    metric: {statistic: final}
    comparison: equivalent
    margin: 0.02
    configurations: [{norm: bn}, {norm: none}]
"""


def test_an_equivalence_claim_inside_its_margin_passes(tmp_path):
    claim = claim_from(EQUIVALENT, tmp_path)
    runs = seeds("bn", (0.950, 0.951, 0.949, 0.950, 0.951)) + seeds("none", (0.951, 0.950, 0.950, 0.949, 0.951))
    assert evaluate_claim(claim, runs).verdict is Verdict.PASS


def test_an_equivalence_claim_outside_its_margin_fails(tmp_path):
    claim = claim_from(EQUIVALENT, tmp_path)
    runs = seeds("bn", (0.970, 0.971, 0.969, 0.970, 0.971)) + seeds("none", (0.920, 0.921, 0.919, 0.920, 0.921))
    assert evaluate_claim(claim, runs).verdict is Verdict.FAIL


STEPS = """
claims:
  - id: trains_faster
    paper: "Batch Normalization helps the network train faster."
    experiment: mnist_fig1
    metric: {statistic: steps_to_reach, target: {fraction: 1.0, of: final, configuration: {norm: none}}}
    comparison: ordering
    better: lower
    configurations: [{norm: bn}, {norm: none}]
"""


def curves(norm, curve, count=3, **kwargs):
    return [record(norm, seed, curve, **kwargs) for seed in range(count)]


def test_fewer_steps_to_a_target_every_reference_seed_reaches_passes(tmp_path):
    claim = claim_from(STEPS, tmp_path)
    runs = [record("bn", s, (0.90, 0.95, 0.96, 0.96, 0.96)) for s in range(4)]
    runs += [record("none", s, (0.5, 0.6, 0.7, 0.8 + d, 0.9 + d)) for s, d in enumerate((0.0, 0.001, 0.002, 0.003))]
    result = evaluate_claim(claim, runs)
    assert result.target < 0.9  # every seed of the reference (weakest: 0.90) reaches it, below its plateau by the noise
    assert [group.aggregate.mean for group in result.groups] == [100.0, 500.0]
    assert result.verdict is Verdict.PASS


def test_identical_plateaus_do_not_become_a_step_difference(tmp_path):
    # both curves rise the same way and plateau within 0.1 points of each other (1,000 test images):
    # the target sits below both plateaus by more than the noise, so both reach it at the same step
    claim = claim_from(STEPS.replace("configuration: {norm: none}", "configuration: lowest"), tmp_path)
    runs = curves("bn", (0.5, 0.9, 0.97, 0.971, 0.971), eval_examples=1000)
    runs += curves("none", (0.5, 0.9, 0.97, 0.970, 0.970), eval_examples=1000)
    result = evaluate_claim(claim, runs)
    assert [group.aggregate.mean for group in result.groups] == [300.0, 300.0]
    assert result.verdict is not Verdict.PASS


def test_a_weak_reference_seed_gives_a_finite_sensible_statistic(tmp_path):
    claim = claim_from(STEPS, tmp_path)
    runs = [record("none", 0, (0.5, 0.7, 0.80, 0.80)), *[record("none", s, (0.5, 0.8, 0.9, 0.9)) for s in (1, 2)]]
    runs += curves("bn", (0.5, 0.8, 0.9, 0.9))  # the same curves as the strong reference seeds
    result = evaluate_claim(claim, runs)
    assert all(math.isfinite(value) for group in result.groups for value in group.values.values())
    assert [group.aggregate.median for group in result.groups] == [200.0, 200.0]
    assert result.verdict is not Verdict.PASS
    assert result.target < 0.80 and result.groups[1].censored == []  # the weak seed reaches the target too


def test_a_run_that_never_reaches_the_target_is_censored_at_its_last_evaluation(tmp_path):
    claim = claim_from(STEPS, tmp_path)
    runs = [record("bn", 0, (0.5, 0.6, 0.7))] + curves("bn", (0.95, 0.96, 0.96))[1:] + curves("none", (0.5, 0.8, 0.9))
    result = evaluate_claim(claim, runs)
    bn = result.groups[0]
    assert bn.censored == ["bn-0-mnist_fig1-3"] and bn.values["bn-0-mnist_fig1-3"] == 300.0
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "1 of 3 seeds of norm=bn never reached the target (censored at their last evaluation)" in result.reason


def test_too_few_evaluations_is_not_run(tmp_path):
    claim = claim_from(STEPS, tmp_path)
    result = evaluate_claim(claim, curves("bn", (0.9,)) + curves("none", (0.9,)))
    assert result.verdict is Verdict.NOT_RUN
    assert result.reason.startswith("too few evaluations")


RATIO = """
claims:
  - id: stability
    paper: "much more stable"
    metric: {statistic: percentile_drift, of: p50}
    comparison: ratio
    at_least: 2.0
    configurations: [{norm: none}, {norm: bn}]
"""


def drifting(norm, seed, drift):
    """A run whose one diagnosed unit's median moves by `drift` spreads (spread 1 throughout)."""
    diag = {
        "diag/h/u0/p15": [(100, 0.0), (200, 0.0)],
        "diag/h/u0/p50": [(100, 0.5), (200, 0.5 + drift)],
        "diag/h/u0/p85": [(100, 1.0), (200, 1.0)],
    }
    return record(norm, seed, diag=diag)


@pytest.mark.parametrize(
    ("none", "bn", "verdict"),
    [
        ((0.40, 0.42, 0.44), (0.10, 0.105, 0.11), Verdict.PASS),  # 4x, tight
        ((0.20, 0.40, 0.30), (0.10, 0.14, 0.12), Verdict.INCONCLUSIVE),  # 2.5x on the means, wide
        ((0.15, 0.155, 0.16), (0.10, 0.105, 0.11), Verdict.FAIL),  # 1.5x, tight
    ],
)
def test_ratio_verdicts(tmp_path, none, bn, verdict):
    claim = claim_from(RATIO, tmp_path)
    runs = [drifting("none", s, v) for s, v in enumerate(none)] + [drifting("bn", s, v) for s, v in enumerate(bn)]
    assert evaluate_claim(claim, runs).verdict is verdict


THRESHOLD = """
claims:
  - id: sigmoid_never_learns
    paper: "never exceeds 12%"
    metric: {statistic: max}
    comparison: threshold
    at_most: 0.12
    configurations: [{norm: none}]
"""


@pytest.mark.parametrize(
    ("values", "verdict"),
    [
        ((0.100, 0.101, 0.099), Verdict.PASS),
        ((0.10, 0.13, 0.115), Verdict.INCONCLUSIVE),
        ((0.15, 0.151, 0.149), Verdict.FAIL),
    ],
)
def test_threshold_verdicts(tmp_path, values, verdict):
    claim = claim_from(THRESHOLD, tmp_path)
    assert evaluate_claim(claim, [record("none", s, (v,)) for s, v in enumerate(values)]).verdict is verdict


DIVERGES = """
claims:
  - id: nobn_x5_diverges
    paper: "Inception-x5 diverges"
    comparison: diverges
    configurations: [{norm: none}]
"""


def test_expected_divergence_fails_when_a_run_finished_normally(tmp_path):
    claim = claim_from(DIVERGES, tmp_path)
    runs = [record("none", 0, outcome="diverged"), record("none", 1)]
    result = evaluate_claim(claim, runs)
    assert result.verdict is Verdict.FAIL
    assert "1 of 2 runs diverged" in result.reason


def test_crashed_runs_do_not_count_as_divergence(tmp_path):
    claim = claim_from(DIVERGES, tmp_path)
    runs = [record("none", 0, outcome="diverged"), record("none", 1, status="FAILED")]
    result = evaluate_claim(claim, runs)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "1 of 1 runs diverged" in result.reason


TRAINS = """
claims:
  - id: bn_trains_at_x5
    paper: "BN-x5 trains"
    comparison: trains
    configurations: [{norm: bn}]
"""


@pytest.mark.parametrize(
    ("claims", "norm", "outcome"), [(DIVERGES, "none", "diverged"), (TRAINS, "bn", None)], ids=["diverges", "trains"]
)
def test_an_outcome_claim_passes_when_every_run_has_the_expected_outcome(tmp_path, claims, norm, outcome):
    claim = claim_from(claims, tmp_path)
    runs = [record(norm, s, outcome=outcome) for s in range(3)]
    assert evaluate_claim(claim, runs).verdict is Verdict.PASS


def test_expected_training_fails_when_a_run_diverged(tmp_path):
    claim = claim_from(TRAINS, tmp_path)
    runs = [record("bn", 0), record("bn", 1), record("bn", 2, outcome="diverged")]
    result = evaluate_claim(claim, runs)
    assert result.verdict is Verdict.FAIL
    assert "1 of 3 runs diverged" in result.reason


EARLY = """
claims:
  - id: bn_ahead_early
    paper: "BN is ahead early in training"
    metric: {statistic: at_fraction, fraction: 0.25}
    comparison: ordering
    better: higher
    configurations: [{norm: bn}, {norm: none}]
"""


def test_at_fraction_reads_the_first_evaluation_at_or_after_that_fraction_of_training(tmp_path):
    claim = claim_from(EARLY, tmp_path)
    # evaluations at steps 100..800; a quarter of 800 is step 200, the second evaluation
    bn = [record("bn", s, (0.5, 0.8 + s / 1000, 0.85, 0.9, 0.9, 0.9, 0.9, 0.9)) for s in range(3)]
    none = [record("none", s, (0.5, 0.3 + s / 1000, 0.85, 0.9, 0.9, 0.9, 0.9, 0.95)) for s in range(3)]
    result = evaluate_claim(claim, bn + none)
    assert result.groups[0].aggregate.mean == pytest.approx(0.801)
    assert result.groups[1].aggregate.mean == pytest.approx(0.301)
    assert result.verdict is Verdict.PASS  # the later, reversed finish does not enter


def test_full_scale_claims_are_not_run_on_small_data(tmp_path):
    claim = claim_from(
        """
        claims:
          - id: bn_x30_accuracy
            paper: "BN-x30 reaches 74.8%"
            metric: {statistic: max}
            comparison: threshold
            at_least: 0.748
            scale: full
            full_scale: {data: imagenet}
            published: 0.748
            configurations: [{norm: bn}]
        """,
        tmp_path,
    )
    result = evaluate_claim(claim, [record("bn", s, (0.9,)) for s in range(3)])
    assert result.verdict is Verdict.NOT_RUN
    assert "needs full-scale runs (data=imagenet)" in result.reason


def test_selectors_fall_back_to_config_params(tmp_path):
    claim = claim_from(THRESHOLD.replace("{norm: none}", "{data.binarize: true}"), tmp_path)
    assert evaluate_claim(claim, [record("none", s, (0.1,)) for s in range(3)]).verdict is Verdict.PASS


def test_percentile_drift_is_the_range_of_the_median_in_units_of_the_spread():
    steps = (100, 200, 300)
    diag = {
        "diag/hidden3/u7/p15": [(s, v) for s, v in zip(steps, (-1.0, -1.0, -1.0), strict=True)],
        "diag/hidden3/u7/p50": [(s, v) for s, v in zip(steps, (0.0, 0.5, 1.0), strict=True)],
        "diag/hidden3/u7/p85": [(s, v) for s, v in zip(steps, (1.0, 3.0, 5.0), strict=True)],
    }
    run = record(diag=diag)
    # spreads 2, 4, 6 (mean 4): median range 1.0 / 4; spread range 4 / 4
    assert percentile_drift(run, {"of": "p50"}) == pytest.approx(0.25)
    assert percentile_drift(run, {"of": "spread"}) == pytest.approx(1.0)
    assert percentile_drift(run, {"of": "spread", "from_fraction": 0.5}) == pytest.approx(2 / 5)  # steps 200, 300


def test_aggregate_reports_mean_sample_std_range_and_median():
    a = Aggregate.of([1.0, 2.0, 6.0])
    assert (a.mean, a.std, a.min, a.max, a.n, a.median) == (3.0, math.sqrt(7), 1.0, 6.0, 3, 2.0)


def test_the_package_registry_loads_with_the_mnist_claims():
    ids = [claim.id for claim in load_claims(CLAIMS_FILE).claims]
    assert {
        "mnist.bn_higher_final_accuracy",
        "mnist.bn_trains_faster",
        "mnist.bn_stabilizes_input_mean",
        "mnist.bn_stabilizes_input_spread",
    } <= set(ids)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("claims: [ {id: a\n", "is not valid YAML"),
        ("[1, 2]\n", "expected a mapping with a 'claims:' list"),
        (
            ORDERING.replace("comparison: ordering", "comparison: orderin"),
            "claim #1 (final_accuracy): unknown comparison 'orderin'",
        ),
        (ORDERING.replace("    paper:", "    quote:"), "claim #1 (final_accuracy): Key 'quote' not in 'ClaimEntry'"),
        (
            ORDERING.replace("metric: {statistic: final}", "metric: {statistic: best}"),
            "claim #1 (final_accuracy): metric must be",
        ),
        (
            RATIO.replace("at_least: 2.0", "at_least: lots"),
            "claim #1 (stability): Value 'lots' of type 'str' could not",
        ),
        (
            RATIO.replace("[{norm: none}, {norm: bn}]", "[{norm: none}]"),
            "claim #1 (stability): ratio needs exactly 2 configurations",
        ),
        (
            EQUIVALENT.replace("margin: 0.02", "margin: 0"),
            "claim #1 (no_dropout_costs_nothing): equivalent needs exactly 2 configurations and a positive margin",
        ),
        (
            STEPS.replace("configuration: {norm: none}", "configuration: slowest"),
            "claim #1 (trains_faster): metric steps_to_reach needs a target",
        ),
        (ORDERING + ORDERING.split("claims:\n")[1], "claim #2 (final_accuracy): duplicate id"),
    ],
)
def test_a_malformed_claims_file_names_the_file_and_the_bad_entry(tmp_path, text, message):
    path = tmp_path / "claims.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ClaimsFileError) as error:
        load_claims(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_identical_curves_give_a_ratio_of_one_not_zero_and_do_not_pass_half_the_steps(tmp_path):
    claim = claim_from(
        """
        claims:
          - id: half_the_steps
            paper: "we match the accuracy of Inception in less than half the number of training steps"
            metric: {statistic: steps_to_reach, target: {fraction: 1.0, of: max, configuration: {norm: none}}}
            comparison: ratio
            at_most: 0.5
            configurations: [{norm: bn}, {norm: none}]
        """,
        tmp_path,
    )
    curve = (0.3, 0.5, 0.6, 0.62, 0.62)
    result = evaluate_claim(claim, curves("bn", curve, eval_examples=1000) + curves("none", curve, eval_examples=1000))
    assert math.exp(result.checks[0].estimate.value) == pytest.approx(1.0)
    assert result.verdict is not Verdict.PASS
