"""The statistics behind a verdict: intervals over seeds plus the evaluation set's sampling error.

Pure functions on numbers (no runs, no MLflow), so that each can be checked on data whose truth is known.

* Seeds are the replicates: a configuration's value is the mean over its seeds, with the t-based
  standard error of that mean; two configurations are compared with Welch's t (unequal variances).
* The evaluation set adds its own error, shared by every run evaluated on it. Per-example
  predictions are not logged, so it enters as the conservative binomial bound: an accuracy
  measured on n examples has a standard error of at most sqrt(p (1 - p) / n); for a difference of
  two accuracies on the same set the bound is the sum of the two (perfectly anti-correlated errors).
* Many claims judged in one report are corrected with Holm-Bonferroni (Holm 1979, step-down).
* Equivalence ("matches", "costs nothing") is two one-sided tests (TOST) against a declared margin.
"""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

DEFAULT_LEVEL = 0.95
POWER = 0.8  # the power the seeds-needed estimate plans for


@dataclass(frozen=True)
class Estimate:
    """An effect with its standard error and the degrees of freedom of its t distribution."""

    value: float
    se: float
    df: float

    def interval(self, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
        """The two-sided interval at `level`."""
        half = t_quantile(1 - (1 - level) / 2, self.df) * self.se
        return self.value - half, self.value + half

    def p_above(self, bound: float) -> float:
        """Two-sided-equivalent p-value of 'the effect is above `bound`': the smallest 1 - level at which
        the two-sided interval lies entirely above it (1 when the estimate is not above it)."""
        if self.se == 0:
            return 0.0 if self.value > bound else 1.0
        one_sided = 1 - scipy_stats.t.cdf((self.value - bound) / self.se, self.df)
        return min(1.0, 2 * one_sided)

    def p_below(self, bound: float) -> float:
        return Estimate(-self.value, self.se, self.df).p_above(-bound)


def t_quantile(probability: float, df: float) -> float:
    """The t distribution's quantile; df = inf is the normal one (no seed spread to estimate)."""
    return float(scipy_stats.norm.ppf(probability) if math.isinf(df) else scipy_stats.t.ppf(probability, df))


def binomial_se_bound(accuracy: float, examples: int) -> float:
    """The standard error of an accuracy measured on `examples` i.i.d. examples, sqrt(p (1 - p) / n)."""
    p = min(max(accuracy, 0.0), 1.0)
    return math.sqrt(p * (1 - p) / examples)


def mean_estimate(values: Sequence[float], eval_se: float = 0.0) -> Estimate:
    """The mean over seeds; its error: the seeds' standard error of the mean plus the evaluation error
    (in quadrature: independent sources). Fewer than 2 seeds: no spread can be estimated (se = inf)."""
    n = len(values)
    if n < 2:
        return Estimate(statistics.fmean(values) if values else math.nan, math.inf, 1.0)
    seed_var = statistics.variance(values) / n
    return Estimate(
        statistics.fmean(values), math.sqrt(seed_var + eval_se**2), satterthwaite_df([(seed_var, n)], eval_se)
    )


def difference_estimate(a: Sequence[float], b: Sequence[float], eval_se: float = 0.0) -> Estimate:
    """mean(a) - mean(b) with Welch's standard error plus `eval_se` (the evaluation error of the
    difference) in quadrature, and Welch-Satterthwaite degrees of freedom."""
    if len(a) < 2 or len(b) < 2:
        return Estimate(statistics.fmean(a) - statistics.fmean(b), math.inf, 1.0)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = satterthwaite_df([(va, len(a)), (vb, len(b))], eval_se)
    return Estimate(statistics.fmean(a) - statistics.fmean(b), math.sqrt(va + vb + eval_se**2), df)


def satterthwaite_df(seed_variances: Sequence[tuple[float, int]], eval_se: float = 0.0) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variances: (variance of the mean, seeds) per
    configuration, estimated from the seeds, plus the evaluation variance, which is not estimated
    (a bound from the set's size) and so has infinite degrees of freedom."""
    total = sum(variance for variance, _ in seed_variances) + eval_se**2
    spread = sum(variance**2 / (n - 1) for variance, n in seed_variances)
    return total**2 / spread if spread > 0 else math.inf


def log_ratio_estimate(numerator: Estimate, denominator: Estimate) -> Estimate:
    """log(num / den) by the delta method: se^2 = (se_n / num)^2 + (se_d / den)^2; the smaller df."""
    if numerator.value <= 0 or denominator.value <= 0:
        return Estimate(math.nan, math.inf, 1.0)
    se = math.hypot(numerator.se / numerator.value, denominator.se / denominator.value)
    return Estimate(math.log(numerator.value / denominator.value), se, min(numerator.df, denominator.df))


def holm_levels(p_values: Sequence[float], alpha: float = 1 - DEFAULT_LEVEL) -> list[float]:
    """Holm-Bonferroni: the significance level each test is judged at, in the order given.

    Sorted by p, the k-th smallest (k = 0, 1, ...) of m is judged at alpha / (m - k) as long as every
    smaller one was rejected; after the first non-rejection every later test gets level 0 (step-down)."""
    order = sorted(range(len(p_values)), key=lambda i: (p_values[i], i))
    levels = [0.0] * len(p_values)
    stopped = False
    for rank, index in enumerate(order):
        level = 0.0 if stopped else alpha / (len(p_values) - rank)
        levels[index] = level
        stopped = stopped or p_values[index] > level
    return levels


def tost_p(estimate: Estimate, margin: float) -> float:
    """Two one-sided tests: the p-value (two-sided-equivalent, as in `Estimate.p_above`) of
    '|effect| < margin', the larger of the two one-sided tests."""
    return max(estimate.p_above(-margin), estimate.p_below(margin))


def seeds_needed(effect: float, seed_sd: float, eval_se: float, alpha: float = 1 - DEFAULT_LEVEL) -> int | None:
    """About how many seeds per configuration a two-configuration comparison needs to resolve an effect of
    `effect` at seed standard deviation `seed_sd` (normal approximation, power POWER):
    n = 2 (z_{1-alpha/2} + z_power)^2 sd^2 / (effect^2 - (z sum)^2 eval_se^2).
    None when no number of seeds can: the evaluation error alone is too large for the effect."""
    z = t_quantile(1 - alpha / 2, math.inf) + t_quantile(POWER, math.inf)
    room = effect**2 - (z * eval_se) ** 2
    if room <= 0:
        return None
    return max(3, math.ceil(2 * (z * seed_sd) ** 2 / room))
