"""The claims registry and its verdicts, on hand-made run records (no training, no MLflow)."""

import math
import textwrap

import pytest

from bnrepro.report.claims import (
    CLAIMS_FILE,
    Aggregate,
    ClaimsFileError,
    Verdict,
    evaluate_claim,
    load_claims,
    percentile_drift,
)
from bnrepro.report.runs import RunRecord


def record(norm="bn", seed=0, acc=(0.5, 0.9), status="FINISHED", outcome=None, experiment="mnist_fig1", diag=None, **tags):
    """A job run whose val/acc was `acc[i]` at step 100 * (i + 1)."""
    all_tags = {"norm": norm, "seed": str(seed), "experiment": experiment, "data": "mnist_mini", **tags}
    if outcome:
        all_tags["bnrepro.outcome"] = outcome
    history = {"val/acc": [(100 * (i + 1), value) for i, value in enumerate(acc)]}
    history.update(diag or {})
    name = ",".join(f"{k}={v}" for k, v in sorted({**tags, "norm": norm, "seed": seed}.items()))
    return RunRecord(f"{norm}-{seed}-{experiment}-{len(acc)}", name, status, all_tags, {"data.binarize": "True"}, history)


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
    min_seeds: 2
    configurations: [{norm: bn}, {norm: none}]
"""


@pytest.fixture
def ordering(tmp_path):
    return claim_from(ORDERING, tmp_path)


def test_ordering_passes_when_every_seed_of_the_winner_beats_every_seed_of_the_loser(ordering):
    runs = [record("bn", 0, (0.5, 0.97)), record("bn", 1, (0.5, 0.96)), record("none", 0, (0.5, 0.93)), record("none", 1, (0.5, 0.94))]
    assert evaluate_claim(ordering, runs).verdict is Verdict.PASS


def test_ordering_fails_when_the_means_are_reversed(ordering):
    runs = [record("bn", 0, (0.5, 0.90)), record("bn", 1, (0.5, 0.91)), record("none", 0, (0.5, 0.95)), record("none", 1, (0.5, 0.96))]
    assert evaluate_claim(ordering, runs).verdict is Verdict.FAIL


def test_ordering_is_within_noise_when_the_gap_is_inside_the_seed_spread(ordering):
    # means 0.95 > 0.94, but the worst BN seed (0.93) is below the best no-BN seed (0.95)
    runs = [record("bn", 0, (0.5, 0.97)), record("bn", 1, (0.5, 0.93)), record("none", 0, (0.5, 0.93)), record("none", 1, (0.5, 0.95))]
    result = evaluate_claim(ordering, runs)
    assert result.verdict is Verdict.WITHIN_NOISE
    assert result.verdict is not Verdict.PASS


def test_not_run_when_the_sweep_lacks_a_configuration(ordering):
    result = evaluate_claim(ordering, [record("bn", 0), record("bn", 1)])
    assert result.verdict is Verdict.NOT_RUN
    assert "no runs of configuration norm=none" in result.reason


def test_not_run_when_the_sweep_lacks_the_experiment(ordering):
    result = evaluate_claim(ordering, [record("bn", 0, experiment="bn_x5"), record("none", 0, experiment="bn_x5")])
    assert result.verdict is Verdict.NOT_RUN
    assert "no runs of experiment mnist_fig1" in result.reason


def test_not_run_with_fewer_seeds_than_min_seeds(ordering):
    result = evaluate_claim(ordering, [record("bn", 0, (0.5, 0.99)), record("none", 0), record("none", 1)])
    assert result.verdict is Verdict.NOT_RUN
    assert result.reason.startswith("too few seeds: norm=bn has 1 usable seed(s), the claim needs 2")


def test_not_run_when_every_run_of_a_configuration_diverged(ordering):
    runs = [record("bn", 0), record("bn", 1), record("none", 0, outcome="diverged"), record("none", 1, outcome="diverged")]
    result = evaluate_claim(ordering, runs)
    assert result.verdict is Verdict.NOT_RUN
    assert result.reason.startswith("diverged: every run of norm=none diverged")


def test_diverged_and_failed_runs_are_left_out_of_the_aggregate(ordering):
    runs = [
        record("bn", 0, (0.5, 0.97)), record("bn", 1, (0.5, 0.96)), record("bn", 2, (0.5, 0.10), outcome="diverged"),
        record("none", 0, (0.5, 0.93)), record("none", 1, (0.5, 0.94)), record("none", 2, (0.5, 0.99), status="FAILED"),
    ]  # fmt: skip
    result = evaluate_claim(ordering, runs)
    assert result.verdict is Verdict.PASS
    assert [group.aggregate.n for group in result.groups] == [2, 2]
    assert sorted(result.groups[0].excluded.values()) == ["diverged"]
    assert sorted(result.groups[1].excluded.values()) == ["failed"]


def test_too_few_seeds_reason_names_the_runs_left_out(ordering):
    runs = [record("bn", 0), record("bn", 1, outcome="diverged"), record("none", 0), record("none", 1)]
    result = evaluate_claim(ordering, runs)
    assert result.verdict is Verdict.NOT_RUN
    assert "1 usable seed(s)" in result.reason and "left out: 1 diverged" in result.reason


def test_a_selector_matching_several_configurations_is_not_pooled_as_seeds(ordering):
    runs = [record("bn", 0, lr="0.1"), record("bn", 1, lr="0.5"), record("none", 0), record("none", 1)]
    result = evaluate_claim(ordering, runs)
    assert result.verdict is Verdict.NOT_RUN
    assert result.reason.startswith("ambiguous: norm=bn")


def test_orderings_compare_more_than_two_configurations_selected_by_experiment(tmp_path):
    claim = claim_from(
        """
        claims:
          - id: max_accuracy_order
            paper: "BN-x30 > BN-x5 > BN-Baseline"
            experiment: [bn_baseline, bn_x5, bn_x30]
            metric: {statistic: max}
            comparison: ordering
            configurations: [{experiment: bn_x30}, {experiment: bn_x5}, {experiment: bn_baseline}]
        """,
        tmp_path,
    )
    curves = {"bn_x30": (0.75, 0.76), "bn_x5": (0.73, 0.74), "bn_baseline": (0.71, 0.72)}
    runs = [record("bn", seed, (curve[seed],), experiment=name) for name, curve in curves.items() for seed in (0, 1)]
    assert evaluate_claim(claim, runs).verdict is Verdict.PASS
    swapped = [record("bn", seed, (curves["bn_baseline"][seed] + 0.1,), experiment="bn_baseline") for seed in (0, 1)]
    assert evaluate_claim(claim, runs[:4] + swapped).verdict is Verdict.FAIL


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


def test_fewer_steps_to_a_target_taken_from_the_reference_configuration_passes(tmp_path):
    claim = claim_from(STEPS, tmp_path)
    runs = [record("bn", s, (0.90, 0.95, 0.96, 0.96)) for s in (0, 1)] + [record("none", s, (0.5, 0.8, 0.9, 0.9)) for s in (0, 1)]
    result = evaluate_claim(claim, runs)
    assert result.target == pytest.approx(0.9)
    assert [group.aggregate.mean for group in result.groups] == [100.0, 300.0]
    assert result.verdict is Verdict.PASS


def test_a_lowest_target_is_taken_from_the_configuration_that_ends_lower(tmp_path):
    claim = claim_from(STEPS.replace("configuration: {norm: none}", "configuration: lowest"), tmp_path)
    # no BN ends higher (0.95) but gets there slowly; BN plateaus at 0.90 early
    runs = [record("bn", s, (0.85, 0.90, 0.90, 0.90)) for s in (0, 1)] + [record("none", s, (0.3, 0.6, 0.9, 0.95)) for s in (0, 1)]
    result = evaluate_claim(claim, runs)
    assert result.target == pytest.approx(0.9)
    assert [group.aggregate.mean for group in result.groups] == [200.0, 300.0]
    assert result.verdict is Verdict.PASS


def test_a_seed_that_never_reaches_the_target_prevents_a_pass(tmp_path):
    claim = claim_from(STEPS, tmp_path)
    runs = [record("bn", 0, (0.90, 0.95, 0.96)), record("bn", 1, (0.5, 0.6, 0.7))]
    runs += [record("none", s, (0.5, 0.8, 0.9)) for s in (0, 1)]
    result = evaluate_claim(claim, runs)
    assert math.isinf(result.groups[0].aggregate.max)
    assert result.verdict is not Verdict.PASS


RATIO = """
claims:
  - id: stability
    paper: "much more stable"
    metric: {statistic: final}
    comparison: ratio
    at_least: 2.0
    configurations: [{norm: none}, {norm: bn}]
"""


@pytest.mark.parametrize(
    ("none", "bn", "verdict"),
    [
        ((0.40, 0.44), (0.10, 0.11), Verdict.PASS),  # 4.2x, worst case 3.6x
        ((0.20, 0.30), (0.10, 0.13), Verdict.WITHIN_NOISE),  # 2.17x on the means, worst case 1.5x
        ((0.15, 0.16), (0.10, 0.11), Verdict.FAIL),  # 1.5x
    ],
)
def test_ratio_verdicts(tmp_path, none, bn, verdict):
    claim = claim_from(RATIO, tmp_path)
    runs = [record("none", s, (v,)) for s, v in enumerate(none)] + [record("bn", s, (v,)) for s, v in enumerate(bn)]
    assert evaluate_claim(claim, runs).verdict is verdict


THRESHOLD = """
claims:
  - id: sigmoid_never_learns
    paper: "never exceeds 1/1000"
    metric: {statistic: max}
    comparison: threshold
    at_most: 0.001
    configurations: [{norm: none}]
"""


@pytest.mark.parametrize(
    ("values", "verdict"),
    [((0.0005, 0.0008), Verdict.PASS), ((0.0002, 0.0015), Verdict.WITHIN_NOISE), ((0.002, 0.003), Verdict.FAIL)],
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


def test_divergence_as_the_expected_outcome_passes(tmp_path):
    claim = claim_from(DIVERGES, tmp_path)
    runs = [record("none", s, outcome="diverged") for s in (0, 1)]
    assert evaluate_claim(claim, runs).verdict is Verdict.PASS


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
    assert result.verdict is Verdict.NOT_RUN
    assert "too few seeds" in result.reason and "failed" in result.reason


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
    result = evaluate_claim(claim, [record("bn", s, (0.9,)) for s in (0, 1)])
    assert result.verdict is Verdict.NOT_RUN
    assert "needs full-scale runs (data=imagenet)" in result.reason


def test_selectors_fall_back_to_config_params(tmp_path):
    claim = claim_from(THRESHOLD.replace("{norm: none}", "{data.binarize: true}"), tmp_path)
    assert evaluate_claim(claim, [record("none", s, (0.0001,)) for s in (0, 1)]).verdict is Verdict.PASS


def test_percentile_drift_is_the_range_of_the_median_in_units_of_the_spread():
    steps = (100, 200, 300)
    diag = {
        "diag/hidden3/u7/p15": [(s, v) for s, v in zip(steps, (-1.0, -1.0, -1.0))],
        "diag/hidden3/u7/p50": [(s, v) for s, v in zip(steps, (0.0, 0.5, 1.0))],
        "diag/hidden3/u7/p85": [(s, v) for s, v in zip(steps, (1.0, 3.0, 5.0))],
    }
    run = record(diag=diag)
    # spreads 2, 4, 6 (mean 4): median range 1.0 / 4; spread range 4 / 4
    assert percentile_drift(run, {"of": "p50"}) == pytest.approx(0.25)
    assert percentile_drift(run, {"of": "spread"}) == pytest.approx(1.0)
    assert percentile_drift(run, {"of": "spread", "from_fraction": 0.5}) == pytest.approx(2 / 5)  # steps 200, 300


def test_aggregate_reports_mean_sample_std_and_range():
    a = Aggregate.of([1.0, 2.0, 3.0])
    assert (a.mean, a.std, a.min, a.max, a.n) == (2.0, 1.0, 1.0, 3.0, 3)


def test_the_package_registry_loads_with_the_mnist_claims():
    ids = [claim.id for claim in load_claims(CLAIMS_FILE).claims]
    assert {"mnist.bn_higher_final_accuracy", "mnist.bn_trains_faster", "mnist.bn_stabilizes_input_mean", "mnist.bn_stabilizes_input_spread"} <= set(ids)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("claims: [ {id: a\n", "is not valid YAML"),
        ("[1, 2]\n", "expected a mapping with a 'claims:' list"),
        (ORDERING.replace("comparison: ordering", "comparison: orderin"), "claim #1 (final_accuracy): unknown comparison 'orderin'"),
        (ORDERING.replace("    paper:", "    quote:"), "claim #1 (final_accuracy): unknown field(s) quote"),
        (ORDERING.replace("metric: {statistic: final}", "metric: {statistic: best}"), "claim #1 (final_accuracy): metric must be"),
        (RATIO.replace("[{norm: none}, {norm: bn}]", "[{norm: none}]"), "claim #1 (stability): ratio needs exactly 2 configurations"),
        (STEPS.replace("configuration: {norm: none}", "configuration: slowest"), "claim #1 (trains_faster): metric steps_to_reach needs a target"),
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
