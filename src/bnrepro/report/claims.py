"""The paper's testable claims (claims.yaml) and their verdicts on the runs of a sweep.

A claim selects the runs of one or more configurations (tag selectors, within its experiment),
computes one statistic per run (`STATISTICS`) and turns the seeds of every configuration into
checks: an effect (a difference, a log ratio, a mean) with a confidence interval (statistics.py)
that includes the seed-to-seed spread (seeds are the replicates) and, for accuracies, the
evaluation set's binomial sampling error (its size: the run's `eval_examples` param, else the
claim's `protocol.eval_examples` for the run's data set).

Verdicts (the claims judged in one report are corrected together with Holm-Bonferroni, `judge`):
* PASS: every check's interval lies on the claimed side of its bound at the corrected level;
* FAIL: some check's interval lies on the other side (at the Bonferroni level alpha / m);
* INCONCLUSIVE: neither; the result says about how many seeds per configuration would resolve
  it. Fewer than 3 usable seeds in a compared configuration, or a censored seed in the
  configuration claimed to be faster, is INCONCLUSIVE at best;
* NOT_RUN: it cannot be judged, and `reason` says why (the sweep lacks the experiment or a
  configuration, runs shorter than the claim's protocol, every run diverged or failed, the
  metric was not logged or is NaN, too few evaluations, evaluation set size unknown).

A run is usable when it FINISHED and is not tagged `bnrepro.outcome=diverged`. A diverged run
is unusable for every comparison except the outcome comparisons, `diverges` (divergence is the
expected outcome) and `trains` (every run is expected to finish without diverging); diverged runs
are counted in the result's reason either way.
"""

import dataclasses
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnrepro.report.runs import RunRecord, configuration_of, numeric_order, varying_values
from bnrepro.report.statistics import (
    DEFAULT_LEVEL,
    Estimate,
    binomial_se_bound,
    difference_estimate,
    holm_levels,
    log_ratio_estimate,
    mean_estimate,
    seeds_needed,
)
from bnrepro.tracking.tags import EVAL_EXAMPLES_PARAM, FAILURE_TAG

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")


class ClaimsFileError(ValueError):
    """A claims file that cannot be read; the message names the file and the bad entry."""


class Verdict(str, Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    NOT_RUN = "NOT_RUN"


MIN_SEEDS_FOR_A_VERDICT = 3  # fewer usable seeds per compared configuration: INCONCLUSIVE at best


@dataclass
class Protocol:
    """What the claim was published under: runs shorter than `steps` cannot judge the end of training."""

    steps: int | None = None  # the paper's training length (None: not fixed by the paper)
    eval_every: int | None = None  # evaluation interval in steps
    # data tag -> evaluation set size, for runs that do not log the `eval_examples` param
    eval_examples: dict[str, int] = field(default_factory=dict)


@dataclass
class ClaimOptions:
    """A claim's optional fields, shared by the file's schema (ClaimEntry) and the registry's record (Claim)."""

    source: str = ""
    metric: dict[str, Any] | None = None
    better: str = "higher"  # ordering: "higher" or "lower" values win
    at_least: float | None = None
    at_most: float | None = None
    tolerance: float = 0.0
    min_seeds: int = MIN_SEEDS_FOR_A_VERDICT
    scale: str = "any"
    full_scale: dict[str, Any] | None = None
    published: Any = None
    protocol: Protocol = field(default_factory=Protocol)
    scale_free: bool = False  # judged on shorter runs too, labelled with the step they ended at
    margin: float | None = None  # equivalent: the largest difference that still counts as equal


@dataclass
class ClaimEntry(ClaimOptions):
    """The schema of one entry of claims.yaml (types and known fields checked by OmegaConf)."""

    id: str = MISSING
    paper: str = MISSING
    comparison: str = MISSING
    configurations: list[dict[str, Any]] = MISSING
    experiment: Any = None  # an experiment tag or a list of them


# --- the registry ------------------------------------------------------------------------------
@dataclass
class Claim(ClaimOptions):
    """One claim as the report judges it: ClaimEntry with its experiments and configurations as tuples."""

    id: str = ""
    paper: str = ""
    comparison: str = ""
    experiments: tuple[str, ...] = ()  # empty: any experiment
    configurations: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Published:
    """The paper's numbers for one configuration, shown beside ours in the comparison table."""

    configuration: dict[str, Any]
    values: dict[str, float]
    source: str = ""


@dataclass(frozen=True)
class Registry:
    claims: tuple[Claim, ...]
    published: tuple[Published, ...] = ()


def load_claims(path: Path | str = CLAIMS_FILE) -> Registry:
    """The registry in `path`, checked entry by entry; raises ClaimsFileError naming the bad entry."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ClaimsFileError(f"cannot read claims file {path}: {error}") from None
    except yaml.YAMLError as error:
        raise ClaimsFileError(f"claims file {path} is not valid YAML: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("claims"), list):
        raise ClaimsFileError(f"claims file {path}: expected a mapping with a 'claims:' list at the top level")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ClaimsFileError(f"claims file {path}: 'defaults' must be a mapping of claim fields, got {defaults!r}")
    claims, seen = [], set()
    for index, entry in enumerate(document["claims"]):
        where = f"claims file {path}, claim #{index + 1}"
        if isinstance(entry, dict) and "id" in entry:
            where += f" ({entry['id']})"
        try:
            claim = _parse_claim(defaults, entry)
        except (ValueError, TypeError, OmegaConfBaseException) as error:
            one_line = "; ".join(line.strip() for line in str(error).splitlines())  # OmegaConf adds a full_key line
            raise ClaimsFileError(f"{where}: {one_line}") from None
        if claim.id in seen:
            raise ClaimsFileError(f"{where}: duplicate id {claim.id!r}")
        seen.add(claim.id)
        claims.append(claim)
    published = []
    for index, entry in enumerate(document.get("published") or []):
        try:
            published.append(_parse_published(entry))
        except (ValueError, TypeError) as error:
            raise ClaimsFileError(f"claims file {path}, published #{index + 1}: {error}") from None
    return Registry(tuple(claims), tuple(published))


def _parse_claim(defaults: dict, entry: Any) -> Claim:
    """One entry, over the file's defaults, through the typed schema (ClaimEntry), then checked for meaning."""
    if not isinstance(entry, dict):
        raise TypeError(f"a claim must be a mapping, got {entry!r}")
    typed: ClaimEntry = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ClaimEntry), defaults, entry))
    if typed.comparison not in COMPARISONS:
        raise ValueError(f"unknown comparison {typed.comparison!r}; known: {', '.join(COMPARISONS)}")
    if not typed.configurations or not all(typed.configurations):
        raise ValueError("configurations must be a list of non-empty tag selectors, e.g. [{norm: bn}, {norm: none}]")
    experiments = typed.experiment or ()
    experiments = (experiments,) if isinstance(experiments, str) else tuple(experiments)
    values = {key: value for key, value in vars(typed).items() if key != "experiment"}
    claim = Claim(
        **{**values, "experiments": tuple(map(str, experiments)), "configurations": tuple(typed.configurations)}
    )
    _check_claim(claim)
    return claim


def _check_claim(claim: Claim) -> None:
    count = len(claim.configurations)
    if claim.comparison not in EXPECTED_OUTCOME:
        if not isinstance(claim.metric, dict) or claim.metric.get("statistic") not in STATISTICS:
            raise ValueError(
                f"metric must be {{statistic: NAME, ...}} with NAME one of {', '.join(STATISTICS)}, "
                f"got {claim.metric!r}"
            )
        if claim.metric["statistic"] == "at_fraction" and not 0.0 <= claim.metric.get("fraction", -1.0) <= 1.0:
            raise ValueError(f"metric at_fraction needs a fraction in [0, 1], got {claim.metric.get('fraction')!r}")
        if claim.metric["statistic"] == "steps_to_reach" and not _valid_target(claim.metric.get("target")):
            raise ValueError(
                "metric steps_to_reach needs a target: a number or {fraction, of: final|max, configuration: "
                f"<selector> | lowest}}, got {claim.metric.get('target')!r}"
            )
    if claim.comparison == "ordering" and (count < 2 or claim.better not in ("higher", "lower")):
        raise ValueError("ordering needs at least 2 configurations (best first) and better: higher|lower")
    if claim.comparison in ("ratio", "threshold") and claim.at_least is None and claim.at_most is None:
        raise ValueError(f"{claim.comparison} needs at_least and/or at_most")
    if claim.comparison == "equivalent" and (count != 2 or claim.margin is None or claim.margin <= 0):
        raise ValueError("equivalent needs exactly 2 configurations and a positive margin")
    if claim.comparison == "ratio" and count != 2:
        raise ValueError("ratio needs exactly 2 configurations: [numerator, denominator]")
    if claim.min_seeds < 1:
        raise ValueError(f"min_seeds must be >= 1, got {claim.min_seeds}")
    if claim.scale not in ("any", "full"):
        raise ValueError(f"scale must be 'any' or 'full', got {claim.scale!r}")
    if claim.scale == "full" and not isinstance(claim.full_scale, dict):
        raise ValueError("scale: full needs full_scale, a selector that full-scale runs match, e.g. {data: imagenet}")


def _valid_target(target: Any) -> bool:
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        return True
    return (
        isinstance(target, dict)
        and target.get("of", "final") in STATISTICS
        and (isinstance(target.get("configuration"), dict) or target.get("configuration") == "lowest")
    )


def _parse_published(entry: Any) -> Published:
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("configuration"), dict)
        or not isinstance(entry.get("values"), dict)
    ):
        raise TypeError(f"expected {{configuration: {{...}}, values: {{...}}, source: ...}}, got {entry!r}")
    return Published(
        entry["configuration"], {k: float(v) for k, v in entry["values"].items()}, str(entry.get("source", ""))
    )


# --- selecting runs ----------------------------------------------------------------------------
def matches(run: RunRecord, selector: dict[str, Any]) -> bool:
    """A selector key is a tag (e.g. norm, experiment) or else a dotted config param; a list value matches any item."""
    for key, wanted in selector.items():
        actual = run.value(key)
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if actual is None or str(actual).lower() not in {str(value).lower() for value in allowed}:
            return False
    return True


def selector_label(selector: dict[str, Any]) -> str:
    return ",".join(
        f"{key}={'|'.join(map(str, value)) if isinstance(value, list) else value}" for key, value in selector.items()
    )


def is_diverged(run: RunRecord) -> bool:
    return run.outcome == "diverged"


def unusable_reason(run: RunRecord) -> str | None:
    """Why a run cannot be compared (None when it can)."""
    if is_diverged(run):
        return "diverged"
    if run.status != "FINISHED":
        failure = run.tags.get(FAILURE_TAG)
        return f"{run.status.lower()}" + (f" ({failure})" if failure else "")
    return None


# --- statistics of one run ---------------------------------------------------------------------
def _series_name(metric: dict) -> str:
    return metric.get("series", "val/acc")


def _series(run: RunRecord, metric: dict) -> list[tuple[int, float]]:
    return run.history.get(_series_name(metric), [])


def final_value(run: RunRecord, metric: dict) -> float | None:
    return run.final(_series_name(metric))


def max_value(run: RunRecord, metric: dict) -> float | None:
    return run.best(_series_name(metric))


def min_value(run: RunRecord, metric: dict) -> float | None:
    points = _series(run, metric)
    return min(value for _, value in points) if points else None


def at_fraction(run: RunRecord, metric: dict) -> float | None:
    """The series at the first evaluation at or after `fraction` of the run's last evaluated step
    (e.g. 0.1: early in training, where Figure 3 shows BN-x30 behind BN-x5)."""
    points = _series(run, metric)
    if not points:
        return None
    step = float(metric["fraction"]) * points[-1][0]
    return next(value for at, value in points if at >= step)


def steps_to_reach(run: RunRecord, metric: dict) -> float | None:
    """The first evaluation step at which the series reaches `target` (resolved to a number); a run
    that never does is right-censored at its last evaluation (`is_censored` tells which)."""
    points = _series(run, metric)
    if not points:
        return None
    return next((float(step) for step, value in points if value >= metric["target"]), float(points[-1][0]))


def is_censored(run: RunRecord, metric: dict) -> bool:
    """steps_to_reach: the run never reached the target (its value is only a lower bound)."""
    return all(value < metric["target"] for _, value in _series(run, metric))


def percentile_drift(run: RunRecord, metric: dict) -> float | None:
    """Fig. 1b/c: how far a unit's input distribution moves, in units of its own spread (p85 - p15).

    For each unit logged at `site` ("last": the last site logged) over the evaluations from
    `from_fraction` of training on: of=p50 -> range of the median, of=spread -> range of the
    p85 - p15 spread, each divided by the mean spread. The run's value is the mean over units.
    """
    units = diagnostic_units(run, metric.get("site", "last"))
    drifts = [
        unit_drift(curves, metric.get("of", "p50"), metric.get("from_fraction", 0.0)) for curves in units.values()
    ]
    drifts = [d for d in drifts if d is not None]
    return statistics.fmean(drifts) if drifts else None


def diagnostic_units(run: RunRecord, site: str = "last") -> dict[str, dict[str, dict[int, float]]]:
    """{unit: {"p15"|"p50"|"p85": {step: value}}} from the run's diag/<site>/<unit>/<percentile> histories."""
    keys = [key.split("/") for key in run.history if key.startswith("diag/") and key.count("/") == 3]
    sites = list(dict.fromkeys(parts[1] for parts in keys))
    if not sites:
        return {}
    chosen = sites[-1] if site == "last" else site
    units: dict[str, dict[str, dict[int, float]]] = {}
    for _, key_site, unit, percentile in keys:
        if key_site == chosen:
            units.setdefault(unit, {})[percentile] = dict(run.history[f"diag/{key_site}/{unit}/{percentile}"])
    return dict(
        sorted(units.items(), key=lambda item: int(item[0].lstrip("u")) if item[0].lstrip("u").isdigit() else item[0])
    )


def unit_drift(curves: dict[str, dict[int, float]], of: str, from_fraction: float) -> float | None:
    if not {"p15", "p50", "p85"} <= set(curves):
        return None
    steps = sorted(set(curves["p15"]) & set(curves["p50"]) & set(curves["p85"]))
    if not steps:
        return None
    window = [step for step in steps if step >= from_fraction * steps[-1]]
    spreads = [curves["p85"][step] - curves["p15"][step] for step in window]
    moving = [curves["p50"][step] for step in window] if of == "p50" else spreads
    width = statistics.fmean(spreads)
    return (max(moving) - min(moving)) / width if width > 0 else None


STATISTICS: dict[str, Callable[[RunRecord, dict], float | None]] = {
    "final": final_value,
    "max": max_value,
    "min": min_value,
    "at_fraction": at_fraction,
    "steps_to_reach": steps_to_reach,
    "percentile_drift": percentile_drift,
}


# --- aggregates over seeds ---------------------------------------------------------------------
@dataclass(frozen=True)
class Aggregate:
    mean: float
    std: float  # sample standard deviation over seeds (0 for one seed)
    min: float
    max: float
    n: int
    median: float = math.nan

    @classmethod
    def of(cls, values: Sequence[float]) -> "Aggregate":
        """Mean, spread, range and median of one value per seed."""
        values = list(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, min(values), max(values), len(values), statistics.median(values))


@dataclass
class Group:
    """The runs of one configuration a claim compares."""

    selector: dict[str, Any]
    runs: list[RunRecord]  # every run of the claim's experiment(s) the selector matches
    values: dict[str, float] = field(default_factory=dict)  # usable run id -> statistic
    excluded: dict[str, str] = field(default_factory=dict)  # run id -> why it was left out
    censored: list[str] = field(default_factory=list)  # steps_to_reach: run ids that never reached the target
    eval_examples: int | None = None  # the smallest evaluation set of its usable runs
    aggregate: Aggregate | None = None

    @property
    def label(self) -> str:
        return selector_label(self.selector)

    @property
    def seeds(self) -> list[str]:
        return sorted({run.seed for run in self.runs if run.run_id in self.values}, key=numeric_order)

    @property
    def samples(self) -> list[float]:
        return [self.values[run_id] for run_id in sorted(self.values)]

    def to_dict(self) -> dict:
        return {
            "configuration": self.selector,
            "runs": sorted(self.values),
            "seeds": self.seeds,
            "values": {run_id: _json_number(self.values[run_id]) for run_id in sorted(self.values)},
            "excluded": dict(sorted(self.excluded.items())),
            "censored": sorted(self.censored),
            "eval_examples": self.eval_examples,
            "aggregate": None
            if self.aggregate is None
            else {k: _json_number(v) for k, v in vars(self.aggregate).items()},
        }


@dataclass(frozen=True)
class Check:
    """One statement a claim makes about an effect: effect > above and/or effect < below."""

    label: str  # what the effect is, e.g. "final val/acc: norm=bn - norm=none"
    estimate: Estimate
    above: float | None = None
    below: float | None = None
    seed_sd: float = 0.0  # the seeds' standard deviation, for the seeds-needed estimate
    eval_se: float = 0.0  # the evaluation set's standard error of the effect (binomial bound)
    log_scale: bool = False  # the effect is log(ratio): shown as the ratio

    @property
    def p_holds(self) -> float:
        """Two-sided-equivalent p-value of the statement (for two bounds: the larger one, i.e. TOST)."""
        return max(p for p in (self._p(self.above, True), self._p(self.below, False)) if p is not None)

    @property
    def p_fails(self) -> float:
        """p-value of the opposite statement (the effect lies beyond one of the bounds)."""
        return min(p for p in (self._p(self.above, False), self._p(self.below, True)) if p is not None)

    def _p(self, bound: float | None, above: bool) -> float | None:
        if bound is None:
            return None
        return self.estimate.p_above(bound) if above else self.estimate.p_below(bound)

    def seeds_needed(self, alpha: float) -> int | None:
        bounds = [b for b in (self.above, self.below) if b is not None]
        distance = min(abs(self.estimate.value - bound) for bound in bounds)
        return seeds_needed(distance, self.seed_sd, self.eval_se, alpha)

    def describe(self, level: float) -> str:
        low, high = self.estimate.interval(level)
        show = math.exp if self.log_scale else (lambda value: value)
        claimed = " and ".join(
            text for text in (
                None if self.above is None else f"> {_fmt(show(self.above))}",
                None if self.below is None else f"< {_fmt(show(self.below))}",
            ) if text
        )  # fmt: skip
        interval = f"{level:.1%} CI [{_fmt(show(low))}, {_fmt(show(high))}]"
        return f"{self.label} = {_fmt(show(self.estimate.value))}, {interval} (claimed {claimed})"

    def to_dict(self, level: float) -> dict:
        low, high = self.estimate.interval(level)
        show = math.exp if self.log_scale else (lambda value: value)
        return {
            "effect": self.label,
            "estimate": _json_number(show(self.estimate.value)),
            "interval": [_json_number(show(low)), _json_number(show(high))],
            "level": round(level, 6),
            "claimed_above": None if self.above is None else _json_number(show(self.above)),
            "claimed_below": None if self.below is None else _json_number(show(self.below)),
            "se": _json_number(self.estimate.se),
            "df": _json_number(self.estimate.df),
            "eval_se": _json_number(self.eval_se),
            "scale": "log ratio" if self.log_scale else "difference",
            "p_holds": _json_number(self.p_holds),
        }


@dataclass
class Result:
    claim: Claim
    verdict: Verdict
    reason: str  # NOT_RUN: why; otherwise what was compared
    groups: list[Group] = field(default_factory=list)
    target: float | None = None  # steps_to_reach: the accuracy the steps were counted to
    target_rule: str = ""  # how the target was chosen
    checks: list[Check] = field(default_factory=list)
    caps: list[str] = field(default_factory=list)  # why the verdict can be INCONCLUSIVE at best
    scale: str = ""  # scale-free claims judged on shorter runs: the step they were judged at
    level: float = DEFAULT_LEVEL  # the confidence level of the intervals, after the correction
    correction: str = "none"

    @property
    def p_holds(self) -> float | None:
        return max((check.p_holds for check in self.checks), default=None)

    def to_dict(self) -> dict:
        claim = self.claim
        return {
            "id": claim.id,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "paper": claim.paper,
            "source": claim.source,
            "experiment": list(claim.experiments),
            "comparison": claim.comparison,
            "metric": claim.metric,
            "bounds": {
                "at_least": claim.at_least,
                "at_most": claim.at_most,
                "tolerance": claim.tolerance,
                "margin": claim.margin,
            },
            "protocol": vars(claim.protocol),
            "scale": self.scale or claim.scale,
            "published": claim.published,
            "target": self.target,
            "target_rule": self.target_rule,
            "test": TESTS.get(self.claim.comparison) if self.checks else None,
            "correction": self.correction,
            "p_holds": None if self.p_holds is None else _json_number(self.p_holds),
            "checks": [check.to_dict(self.level) for check in self.checks],
            "caps": self.caps,
            "configurations": [group.to_dict() for group in self.groups],
        }


def _json_number(value: float) -> float | str:
    if not math.isfinite(value):
        return str(value)  # JSON has no inf / nan
    return round(value, 12)  # the same store gives the same bytes


def _fmt(value: float) -> str:
    return f"{value + 0.0:.4g}" if math.isfinite(value) else str(value)  # + 0.0: no "-0"


# --- checks of a comparison --------------------------------------------------------------------
def _eval_se(metric: dict | None, group: Group) -> float:
    """The evaluation set's standard error of the group's mean: an accuracy's binomial bound, else 0
    (diagnostics and steps carry no binomial error; for steps it enters through the target, see
    resolve_target)."""
    if not _is_accuracy(metric):
        return 0.0
    return binomial_se_bound(group.aggregate.mean, group.eval_examples)


def _is_accuracy(metric: dict | None) -> bool:
    values_of_series = ("final", "max", "min", "at_fraction")
    return bool(metric) and metric["statistic"] in values_of_series and _series_name(metric).endswith("acc")


def _pair_check(
    claim: Claim, first: Group, second: Group, sign: float, above: float | None, below: float | None
) -> Check:
    """sign x (mean(first) - mean(second)); the evaluation error of a difference on one shared set is
    bounded by the sum of the two errors (their errors may be anti-correlated)."""
    eval_se = _eval_se(claim.metric, first) + _eval_se(claim.metric, second)
    estimate = difference_estimate(first.samples, second.samples, eval_se)
    estimate = Estimate(sign * estimate.value, estimate.se, estimate.df)
    label = (
        f"{_metric_label(claim)}: {first.label} - {second.label}"
        if sign > 0
        else f"{_metric_label(claim)}: {second.label} - {first.label}"
    )
    return Check(label, estimate, above, below, _pooled_sd(first, second), eval_se)


def _pooled_sd(*groups: Group) -> float:
    return math.sqrt(statistics.fmean([g.aggregate.std**2 for g in groups]))


def _metric_label(claim: Claim) -> str:
    if claim.metric is None:
        return "diverged"
    if claim.metric["statistic"] == "percentile_drift":
        return f"percentile_drift of {claim.metric.get('of', 'p50')}"
    return f"{claim.metric['statistic']} {_series_name(claim.metric)}"


def ordering(claim: Claim, groups: list[Group]) -> list[Check]:
    """Each configuration beats the next one (best first) by more than `tolerance`."""
    sign = 1.0 if claim.better == "higher" else -1.0
    return [
        _pair_check(claim, winner, loser, sign, claim.tolerance, None)
        for winner, loser in zip(groups, groups[1:], strict=False)
    ]


def equivalent(claim: Claim, groups: list[Group]) -> list[Check]:
    """The two configurations differ by less than `margin` (two one-sided tests)."""
    return [_pair_check(claim, groups[0], groups[1], 1.0, -claim.margin, claim.margin)]


def ratio(claim: Claim, groups: list[Group]) -> list[Check]:
    """mean(numerator) / mean(denominator) within [at_least, at_most], judged on the log scale."""
    num, den = groups
    estimate = log_ratio_estimate(_mean(claim, num), _mean(claim, den))
    if math.isnan(estimate.value):
        raise NotRun(f"the ratio {num.label} / {den.label} is undefined (a mean is not positive)")
    seed_sd = math.hypot(num.aggregate.std / num.aggregate.mean, den.aggregate.std / den.aggregate.mean) / math.sqrt(2)
    eval_se = math.hypot(
        _eval_se(claim.metric, num) / num.aggregate.mean, _eval_se(claim.metric, den) / den.aggregate.mean
    )
    label = f"{_metric_label(claim)}: {num.label} / {den.label}"
    return [Check(label, estimate, _log(claim.at_least), _log(claim.at_most), seed_sd, eval_se, log_scale=True)]


def _log(bound: float | None) -> float | None:
    return None if bound is None else math.log(bound) if bound > 0 else -math.inf


def _mean(claim: Claim, group: Group) -> Estimate:
    return mean_estimate(group.samples, _eval_se(claim.metric, group))


def threshold(claim: Claim, groups: list[Group]) -> list[Check]:
    """Every configuration's mean within [at_least, at_most] (+- tolerance)."""
    low = None if claim.at_least is None else claim.at_least - claim.tolerance
    high = None if claim.at_most is None else claim.at_most + claim.tolerance
    return [
        Check(
            f"{_metric_label(claim)}: {group.label}",
            _mean(claim, group),
            low,
            high,
            group.aggregate.std,
            _eval_se(claim.metric, group),
        )
        for group in groups
    ]


COMPARISONS: dict[str, Callable[[Claim, list[Group]], list[Check]]] = {
    "ordering": ordering,
    "ratio": ratio,
    "threshold": threshold,
    "equivalent": equivalent,
    # counted, not estimated: see outcome_verdict
    "diverges": lambda claim, groups: [],
    "trains": lambda claim, groups: [],
}
TESTS = {  # what claims.json names as the test of each comparison
    "ordering": "Welch t per adjacent pair, seeds as replicates; accuracies add the evaluation set's binomial bound",
    "equivalent": "two one-sided Welch t tests against the margin; accuracies add the evaluation set's binomial bound",
    "ratio": "t on the log ratio of the seed means (delta method); accuracies add the evaluation set's binomial bound",
    "threshold": "one-sample t on the seed mean; accuracies add the evaluation set's binomial bound",
}
# Comparisons that judge the runs' outcomes (diverged or finished) instead of a statistic, and the outcome
# each expects of every run.
EXPECTED_OUTCOME = {"diverges": "diverged", "trains": "finished"}


# --- evaluation --------------------------------------------------------------------------------
class NotRun(Exception):
    """The claim cannot be judged on these runs; the message is the reason."""


def in_scope(claim: Claim, runs: Sequence[RunRecord]) -> bool:
    """The sweep has runs of (one of) the claim's experiments."""
    return not claim.experiments or any(run.tags.get("experiment") in claim.experiments for run in runs)


def evaluate(
    claims: Sequence[Claim] | Registry,
    runs: Sequence[RunRecord],
    alpha: float = 1 - DEFAULT_LEVEL,
    across: str | None = None,
) -> list[Result]:
    """The verdict of every claim whose experiment is in `runs` (the job runs of one sweep), the
    claims judged together under Holm-Bonferroni. With `across` (a tag or param, e.g. model.base_lr),
    every claim is judged separately at each of its values (claim id `<id>@<key>=<value>`), all of
    them one family: a free choice is shown across its range, never picked."""
    claims = claims.claims if isinstance(claims, Registry) else claims
    if across is None:
        return judge([measure_claim(claim, runs) for claim in claims if in_scope(claim, runs)], alpha)
    measured = []
    for value, subset in split_by(runs, across).items():
        for claim in claims:
            if in_scope(claim, subset):
                measured.append(measure_claim(dataclasses.replace(claim, id=f"{claim.id}@{across}={value}"), subset))
    return judge(measured, alpha)


def split_by(runs: Sequence[RunRecord], key: str) -> dict[str, list[RunRecord]]:
    """The runs by their value of `key` (tag, else param), values in numeric order."""
    values: dict[str, list[RunRecord]] = {}
    for run in runs:
        value = run.value(key)
        values.setdefault("-" if value is None else str(value), []).append(run)
    return {value: values[value] for value in sorted(values, key=numeric_order)}


def base_claim_id(result_id: str) -> str:
    """The registry's id of a claim judged at one value of a free choice (`<id>@<key>=<value>`)."""
    return result_id.split("@", 1)[0]


def evaluate_claim(claim: Claim, runs: Sequence[RunRecord], alpha: float = 1 - DEFAULT_LEVEL) -> Result:
    """One claim judged alone (no correction for other claims)."""
    return judge([measure_claim(claim, runs)], alpha)[0]


def judge(results: list[Result], alpha: float = 1 - DEFAULT_LEVEL) -> list[Result]:
    """Verdicts for the measured claims: Holm-Bonferroni over the claims that have checks (the family:
    every claim judged in one report), PASS at the Holm level, FAIL at the Bonferroni level."""
    tested = [result for result in results if result.checks]
    levels = holm_levels([result.p_holds for result in tested], alpha)
    for result, holm in zip(tested, levels, strict=True):
        bonferroni = alpha / len(tested)
        result.level = 1 - max(holm, bonferroni)
        result.correction = f"Holm-Bonferroni over {len(tested)} claims" if len(tested) > 1 else "none (one claim)"
        result.verdict, result.reason = _verdict(result, holm, bonferroni)
    return results


def _verdict(result: Result, holm: float, bonferroni: float) -> tuple[Verdict, str]:
    details = "; ".join(check.describe(result.level) for check in result.checks)
    notes = "".join(f"; {note}" for note in [result.reason, result.scale] if note)
    if any(check.p_fails <= bonferroni for check in result.checks):
        return Verdict.FAIL, details + notes
    if result.p_holds <= holm and not result.caps:
        return Verdict.PASS, details + notes
    return Verdict.INCONCLUSIVE, details + notes + "; " + _what_would_resolve(result, 1 - result.level)


def _what_would_resolve(result: Result, alpha: float) -> str:
    if result.caps and result.p_holds <= alpha:
        return "inconclusive because " + "; ".join(result.caps)
    weakest = max(result.checks, key=lambda check: check.p_holds)
    needed = weakest.seeds_needed(alpha)
    if needed is None and weakest.eval_se > 0:
        return "more seeds cannot resolve it: the evaluation set's sampling error alone exceeds the observed effect"
    if needed is None:
        return "no observed effect beyond the claim's bound: more seeds would not make it pass"
    caps = f" ({'; '.join(result.caps)})" if result.caps else ""
    return f"about {needed} seeds per configuration would resolve it at the observed effect and spread{caps}"


def measure_claim(claim: Claim, runs: Sequence[RunRecord]) -> Result:
    """The claim's groups, statistic and checks on `runs`; the verdict itself comes from `judge`."""
    result = Result(claim, Verdict.NOT_RUN, "")
    try:
        pool = claim_runs(claim, runs)
        result.groups = [
            Group(selector, [run for run in pool if matches(run, selector)]) for selector in claim.configurations
        ]
        for group in result.groups:
            if not group.runs:
                raise NotRun(f"the sweep has no runs of configuration {group.label}{_in_experiments(claim)}")
            _require_one_configuration(group)
        if claim.comparison in EXPECTED_OUTCOME:
            return outcome_verdict(claim, result)
        _measure_groups(claim, pool, result)
    except NotRun as reason:
        result.verdict, result.reason = Verdict.NOT_RUN, str(reason)
        return result
    result.reason = "; ".join(note for note in (_diverged_note(result.groups), _censored_note(result.groups)) if note)
    result.caps += _caps(claim, result.groups)
    return result


def _measure_groups(claim: Claim, pool: list[RunRecord], result: Result) -> None:
    metric = dict(claim.metric)
    for group in result.groups:
        group.eval_examples = _eval_examples(claim, group.runs) if _is_accuracy(metric) or _is_steps(metric) else None
    if _is_steps(metric):
        result.target, result.target_rule = resolve_target(claim, metric, pool)
        metric["target"] = result.target
    for group in result.groups:
        measure(group, metric)
    _require_seeds(claim, result.groups)
    result.scale = _check_protocol(claim, result.groups, metric)
    for group in result.groups:
        group.aggregate = Aggregate.of(group.samples)
        if _is_steps(metric):
            group.censored = sorted(
                run.run_id for run in group.runs if run.run_id in group.values and is_censored(run, metric)
            )
    if _is_steps(metric) and all(len(g.censored) == len(g.values) for g in result.groups):
        raise NotRun(f"no run reached the target {result.target:.4g} on {_series_name(metric)} ({result.target_rule})")
    result.checks = COMPARISONS[claim.comparison](claim, result.groups)


def _is_steps(metric: dict | None) -> bool:
    return bool(metric) and metric["statistic"] == "steps_to_reach"


def _eval_examples(claim: Claim, runs: Sequence[RunRecord]) -> int:
    """The evaluation set's size: the run's `eval_examples` param, else the protocol's for its data set."""
    sizes = set()
    for run in runs:
        logged = run.params.get(EVAL_EXAMPLES_PARAM) or claim.protocol.eval_examples.get(run.tags.get("data", ""))
        if logged is None:
            raise NotRun(
                f"the evaluation set size is unknown: run {run.run_id} logs no eval_examples and the claim's "
                f"protocol declares none for data={run.tags.get('data', '?')}"
            )
        sizes.add(int(logged))
    return min(sizes)


def _check_protocol(claim: Claim, groups: list[Group], metric: dict) -> str:
    """NOT_RUN for too few evaluations, or for runs shorter than the protocol or evaluated at another
    interval, unless the claim is scale-free: then the label of the scale it was judged at."""
    usable = [run for group in groups for run in group.runs if run.run_id in group.values]
    if _is_steps(metric) and any(len(_series(run, metric)) < 2 for run in usable):
        raise NotRun("too few evaluations: a run evaluated fewer than 2 times")
    last = max((step for run in usable for step, _ in _series(run, metric)), default=0)
    protocol = claim.protocol
    every = sorted({eval_interval(run) for run in usable} - {None})
    if claim.scale_free:
        shorter = protocol.steps is not None and last < protocol.steps
        return f"scale-free claim judged at step {last:,} (the protocol is {protocol.steps:,})" if shorter else ""
    if protocol.steps is not None and last < protocol.steps:
        raise NotRun(f"runs end at step {last:,}; the protocol is {protocol.steps:,}")
    if protocol.eval_every is not None and every and every != [str(protocol.eval_every)]:
        raise NotRun(
            f"runs evaluate every {'|'.join(every)} steps; the protocol evaluates every {protocol.eval_every:,}"
        )
    return ""


def eval_interval(run: RunRecord) -> str | None:
    """The run's logged evaluation interval (the key moved from trainer to loop; older runs have the first)."""
    return run.params.get("loop.eval_every_n_steps", run.params.get("trainer.eval_every_n_steps"))


def _caps(claim: Claim, groups: list[Group]) -> list[str]:
    needed = max(MIN_SEEDS_FOR_A_VERDICT, claim.min_seeds)
    caps = [
        f"{group.label} has {len(group.seeds)} usable seed(s), fewer than {needed}"
        for group in groups
        if len(group.seeds) < needed
    ]
    for group in _claimed_smaller(claim, groups):
        if group.censored:
            caps.append(
                f"{len(group.censored)} of {len(group.values)} seeds of {group.label} never reached the target "
                "(censored at their last evaluation, a lower bound), and it is claimed to be the faster"
            )
    return caps


def _claimed_smaller(claim: Claim, groups: list[Group]) -> list[Group]:
    """The configurations whose censored (under-estimated) values would favour the claim."""
    if claim.comparison == "ordering":
        return groups[:-1] if claim.better == "lower" else groups[1:]
    if claim.comparison == "ratio":
        return [groups[0]] if claim.at_most is not None else [groups[1]]
    return groups


def _diverged_note(groups: list[Group]) -> str:
    counts = [(group.label, sum(reason == "diverged" for reason in group.excluded.values())) for group in groups]
    return "; ".join(f"{count} run(s) of {label} diverged and are left out" for label, count in counts if count)


def _censored_note(groups: list[Group]) -> str:
    return "; ".join(
        f"{len(group.censored)} of {len(group.values)} seeds of {group.label} never reached the target "
        "(censored at their last evaluation)"
        for group in groups
        if group.censored
    )


def outcome_verdict(claim: Claim, result: Result) -> Result:
    """`diverges` / `trains`: PASS when every judged run of every configuration diverged / finished without
    diverging and each has at least MIN_SEEDS_FOR_A_VERDICT of them; FAIL when one did the other; counts,
    no interval."""
    for group in result.groups:
        judge_outcomes(group)
        if not group.values:
            raise NotRun(
                f"no run of {group.label} diverged or finished ({', '.join(sorted(set(group.excluded.values())))})"
            )
    expected = EXPECTED_OUTCOME[claim.comparison]
    notes, verdict = [], Verdict.PASS
    for group in result.groups:
        diverged = int(sum(group.values.values()))  # judge_outcomes: 1 per diverged run, 0 per finished one
        as_expected = diverged if expected == "diverged" else len(group.values) - diverged
        notes.append(f"{group.label}: {diverged} of {len(group.values)} runs diverged")
        if as_expected < len(group.values):
            verdict = Verdict.FAIL
        elif verdict is Verdict.PASS and len(group.values) < max(MIN_SEEDS_FOR_A_VERDICT, claim.min_seeds):
            verdict = Verdict.INCONCLUSIVE
            notes.append(f"fewer than {max(MIN_SEEDS_FOR_A_VERDICT, claim.min_seeds)} runs")
    result.verdict, result.reason = verdict, "; ".join(notes)
    return result


def _require_one_configuration(group: Group) -> None:
    """Seeds may be pooled only within one configuration: a selector matching several is ambiguous."""
    differing = {
        key: sorted(values) for key, values in varying_values([configuration_of(run) for run in group.runs]).items()
    }
    if differing:
        spread = ", ".join(f"{key}={'|'.join(values)}" for key, values in differing.items())
        raise NotRun(
            f"ambiguous: {group.label} matches runs of several configurations ({spread}); "
            "use a sweep that varies only what the claim compares"
        )


def claim_runs(claim: Claim, runs: Sequence[RunRecord]) -> list[RunRecord]:
    """The runs of the claim's experiment(s) (and, for a full-scale claim, only full-scale runs)."""
    pool = [run for run in runs if not claim.experiments or run.tags.get("experiment") in claim.experiments]
    if not pool:
        raise NotRun(f"the sweep has no runs{_in_experiments(claim)}")
    if claim.scale == "full":
        full = [run for run in pool if matches(run, claim.full_scale)]
        if not full:
            ran = ", ".join(sorted({run.tags.get("data", "?") for run in pool}))
            raise NotRun(f"needs full-scale runs ({selector_label(claim.full_scale)}); this sweep ran data={ran}")
        pool = full
    return pool


def _in_experiments(claim: Claim) -> str:
    return f" of experiment {'|'.join(claim.experiments)}" if claim.experiments else ""


def measure(group: Group, metric: dict) -> None:
    """The claim's statistic for every usable run of the group; the others are recorded with the reason."""
    statistic = STATISTICS[metric["statistic"]]
    for run in group.runs:
        reason = unusable_reason(run)
        value = None if reason else statistic(run, metric)
        if reason is None and value is None:
            logged = "diag/ metrics" if metric["statistic"] == "percentile_drift" else _series_name(metric)
            reason = f"{logged} not logged"
        elif reason is None and not math.isfinite(value):
            reason = f"statistic is {value}"
        if reason:
            group.excluded[run.run_id] = reason
        else:
            group.values[run.run_id] = value


def judge_outcomes(group: Group) -> None:
    """For `diverges` / `trains`: a run that diverged or finished is judged (value 1 / 0); a failed or unfinished one is
    left out."""
    for run in group.runs:
        if is_diverged(run) or run.status == "FINISHED":
            group.values[run.run_id] = float(is_diverged(run))
        else:
            group.excluded[run.run_id] = unusable_reason(run) or run.status.lower()


def _require_seeds(claim: Claim, groups: list[Group]) -> None:
    """NOT_RUN when a configuration has no usable run (the reason says which were left out and why)."""
    for group in groups:
        if group.values:
            continue
        counts = Counter(group.excluded.values())
        if set(counts) == {"diverged"}:
            raise NotRun(f"diverged: every run of {group.label} diverged ({len(group.runs)} runs)")
        left_out = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
        raise NotRun(f"no usable run: {group.label} has no run the statistic can be computed on; left out: {left_out}")


def resolve_target(claim: Claim, metric: dict, pool: Sequence[RunRecord]) -> tuple[float, str]:
    """The accuracy steps are counted to, and its definition.

    A number: fixed by the claim. {fraction, of: final|max, configuration: <selector> | lowest}:
    fraction x the LOWEST seed's final/max value over the reference configuration (lowest: every
    compared configuration), so that every reference seed reaches it; and, so that a plateau crossing
    a line near its top cannot decide "faster", at least two evaluation standard errors (binomial
    bound) below that seed's value."""
    target = metric["target"]
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        return float(target), f"fixed by the claim: {float(target):.4g}"
    reference = target["configuration"]
    selectors = claim.configurations if reference == "lowest" else [reference]
    of = STATISTICS[target.get("of", "final")]
    references = [run for run in pool if any(matches(run, s) for s in selectors) and unusable_reason(run) is None]
    values = [value for run in references if (value := of(run, metric)) is not None and math.isfinite(value)]
    if not values:
        raise NotRun(
            f"the target's reference configuration {'lowest' if reference == 'lowest' else selector_label(reference)} "
            "has no usable runs"
        )
    lowest = min(values)
    noise = 2 * binomial_se_bound(lowest, _eval_examples(claim, references))
    fraction = float(target.get("fraction", 1.0))
    chosen = min(fraction * lowest, lowest - noise)
    label = "the compared configurations" if reference == "lowest" else selector_label(reference)
    rule = (
        f"min({fraction:g} x, minus 2 evaluation standard errors ({noise:.4g}) from) the lowest seed's "
        f"{target.get('of', 'final')} {_series_name(metric)} of {label} ({lowest:.4g}) = {chosen:.4g}"
    )
    return chosen, rule
