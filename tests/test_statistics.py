"""The statistics of a verdict, on numbers whose truth is known."""

import math
import random

import pytest

from bnrepro.report.statistics import (
    Estimate,
    binomial_se_bound,
    difference_estimate,
    holm_levels,
    log_ratio_estimate,
    mean_estimate,
    seeds_needed,
    tost_p,
)


def test_a_95_percent_t_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = random.Random(0)
    covered = 0
    for _ in range(2000):
        low, high = mean_estimate([rng.gauss(1.0, 0.5) for _ in range(5)]).interval(0.95)
        covered += low <= 1.0 <= high
    assert 0.93 < covered / 2000 < 0.97


def test_the_t_interval_of_three_values_uses_two_degrees_of_freedom():
    low, high = mean_estimate([1.0, 2.0, 3.0]).interval(0.95)
    assert (high - low) / 2 == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)


def test_one_seed_has_an_unbounded_interval():
    assert mean_estimate([0.9]).interval() == (-math.inf, math.inf)


def test_the_evaluation_error_widens_even_identical_seeds_to_a_normal_interval():
    low, high = mean_estimate([0.9] * 5, eval_se=0.01).interval()
    assert (high - low) / 2 == pytest.approx(1.96 * 0.01, rel=1e-3)


def test_the_binomial_bound_on_1000_examples_at_97_percent_is_about_half_a_point():
    assert binomial_se_bound(0.97, 1000) == pytest.approx(0.0054, abs=1e-4)


def test_welch_degrees_of_freedom_for_equal_spreads_are_the_pooled_ones():
    estimate = difference_estimate([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert estimate.value == -3.0 and estimate.df == pytest.approx(4.0)


def test_p_above_is_small_for_a_clear_effect_and_one_for_a_wrong_sign():
    assert Estimate(1.0, 0.1, 10).p_above(0.0) < 1e-4
    assert Estimate(-1.0, 0.1, 10).p_above(0.0) == 1.0


def test_log_ratio_of_equal_means_is_zero():
    assert log_ratio_estimate(Estimate(2.0, 0.1, 4), Estimate(2.0, 0.1, 4)).value == 0.0


def test_holm_judges_the_smallest_p_at_alpha_over_m_and_stops_at_the_first_non_rejection():
    assert holm_levels([0.04, 0.01, 0.02], 0.05) == pytest.approx([0.05, 0.05 / 3, 0.025])
    assert holm_levels([0.04, 0.5, 0.01], 0.05) == pytest.approx([0.025, 0.0, 0.05 / 3])


def test_tost_is_small_inside_the_margin_and_large_outside():
    assert tost_p(Estimate(0.0, 0.01, 20), margin=0.05) < 0.01
    assert tost_p(Estimate(0.08, 0.01, 20), margin=0.05) == 1.0


def test_seeds_needed_grows_with_the_spread_and_is_none_when_the_evaluation_error_dominates():
    assert seeds_needed(0.01, 0.02, 0.0) > seeds_needed(0.01, 0.01, 0.0) >= 3
    assert seeds_needed(0.01, 0.01, eval_se=0.01) is None


def test_the_evaluation_error_is_not_estimated_so_it_raises_the_degrees_of_freedom():
    assert mean_estimate([1.0, 2.0, 3.0], eval_se=10.0).df > 100
    assert difference_estimate([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], eval_se=0.1).df == math.inf
