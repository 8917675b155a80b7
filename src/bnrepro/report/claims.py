"""The paper's testable claims (claims.yaml) and their verdicts on the runs of a sweep.

A claim selects the runs of one or more configurations (tag selectors, within its experiment),
computes one statistic per run (`STATISTICS`), aggregates the seeds of every configuration
(mean, std, min, max) and hands the aggregates to its comparison (`COMPARISONS`).

Verdicts:
* PASS: the comparison holds on the means, and also between the seed ranges (the worst seed of
  the configuration that should win beats the best seed of the other), i.e. the gap is larger
  than the seed-to-seed spread;
* WITHIN_NOISE: it holds on the means only; the gap is inside the seed-to-seed spread. Not a pass;
* FAIL: it does not hold on the means;
* NOT_RUN: it cannot be judged, and `reason` says why (the sweep lacks the experiment or a
  configuration, runs diverged or failed, fewer usable seeds than the claim's `min_seeds`, the
  metric was not logged, no configuration reached the target).

A run is usable when it FINISHED and is not tagged `bnrepro.outcome=diverged`. A diverged run
is unusable for every comparison except `diverges`, for which divergence is the expected outcome.
"""

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from bnrepro.report.runs import RunRecord, configuration_of, numeric_order, varying_values
from bnrepro.tracking import FAILURE_TAG

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")


class ClaimsFileError(ValueError):
    """A claims file that cannot be read; the message names the file and the bad entry."""


class Verdict(str, Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    WITHIN_NOISE = "WITHIN_NOISE"
    NOT_RUN = "NOT_RUN"


# --- the registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    source: str
    experiments: tuple[str, ...]  # empty: any experiment
    comparison: str
    configurations: tuple[dict[str, Any], ...]
    metric: dict[str, Any] | None = None
    better: str = "higher"  # ordering: "higher" or "lower" values win
    at_least: float | None = None
    at_most: float | None = None
    tolerance: float = 0.0
    min_seeds: int = 2
    scale: str = "any"
    full_scale: dict[str, Any] | None = None
    published: Any = None


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


CLAIM_KEYS = {
    "id", "paper", "source", "experiment", "comparison", "configurations", "metric", "better",
    "at_least", "at_most", "tolerance", "min_seeds", "scale", "full_scale", "published",
}  # fmt: skip


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
    if not isinstance(defaults, dict) or set(defaults) - CLAIM_KEYS:
        raise ClaimsFileError(f"claims file {path}: 'defaults' must be a mapping of claim fields, got {defaults!r}")
    claims, seen = [], set()
    for index, entry in enumerate(document["claims"]):
        where = f"claims file {path}, claim #{index + 1}"
        if isinstance(entry, dict) and "id" in entry:
            where += f" ({entry['id']})"
        try:
            claim = _parse_claim({**defaults, **entry} if isinstance(entry, dict) else entry)
        except (ValueError, TypeError) as error:
            raise ClaimsFileError(f"{where}: {error}") from None
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


def _parse_claim(entry: Any) -> Claim:
    if not isinstance(entry, dict):
        raise TypeError(f"a claim must be a mapping, got {entry!r}")
    unknown = set(entry) - CLAIM_KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(CLAIM_KEYS))}")
    for key in ("id", "paper", "comparison", "configurations"):
        if not entry.get(key):
            raise ValueError(f"missing required field {key!r}")
    comparison = entry["comparison"]
    if comparison not in COMPARISONS:
        raise ValueError(f"unknown comparison {comparison!r}; known: {', '.join(COMPARISONS)}")
    configurations = entry["configurations"]
    if not isinstance(configurations, list) or not all(isinstance(c, dict) and c for c in configurations):
        raise ValueError("configurations must be a list of non-empty tag selectors, e.g. [{norm: bn}, {norm: none}]")
    experiments = entry.get("experiment") or ()
    experiments = (experiments,) if isinstance(experiments, str) else tuple(experiments)
    claim = Claim(
        id=str(entry["id"]),
        paper=str(entry["paper"]),
        source=str(entry.get("source", "")),
        experiments=tuple(str(e) for e in experiments),
        comparison=comparison,
        configurations=tuple(configurations),
        metric=entry.get("metric"),
        better=entry.get("better", "higher"),
        at_least=_number(entry, "at_least"),
        at_most=_number(entry, "at_most"),
        tolerance=_number(entry, "tolerance") or 0.0,
        min_seeds=int(entry.get("min_seeds", 2)),
        scale=entry.get("scale", "any"),
        full_scale=entry.get("full_scale"),
        published=entry.get("published"),
    )
    _check_claim(claim)
    return claim


def _number(entry: dict, key: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def _check_claim(claim: Claim) -> None:
    count = len(claim.configurations)
    if claim.comparison != "diverges":
        if not isinstance(claim.metric, dict) or claim.metric.get("statistic") not in STATISTICS:
            raise ValueError(f"metric must be {{statistic: NAME, ...}} with NAME one of {', '.join(STATISTICS)}, got {claim.metric!r}")
        if claim.metric["statistic"] == "steps_to_reach" and not _valid_target(claim.metric.get("target")):
            raise ValueError(
                "metric steps_to_reach needs a target: a number or {fraction, of: final|max, configuration: "
                f"<selector> | lowest}}, got {claim.metric.get('target')!r}"
            )
    if claim.comparison == "ordering":
        if count < 2 or claim.better not in ("higher", "lower"):
            raise ValueError("ordering needs at least 2 configurations (best first) and better: higher|lower")
    if claim.comparison in ("ratio", "threshold") and claim.at_least is None and claim.at_most is None:
        raise ValueError(f"{claim.comparison} needs at_least and/or at_most")
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
    if not isinstance(entry, dict) or not isinstance(entry.get("configuration"), dict) or not isinstance(entry.get("values"), dict):
        raise TypeError(f"expected {{configuration: {{...}}, values: {{...}}, source: ...}}, got {entry!r}")
    return Published(entry["configuration"], {k: float(v) for k, v in entry["values"].items()}, str(entry.get("source", "")))


# --- selecting runs ----------------------------------------------------------------------------
def matches(run: RunRecord, selector: dict[str, Any]) -> bool:
    """A selector key is a tag (e.g. norm, experiment) or else a dotted config param; a list value matches any item."""
    for key, wanted in selector.items():
        actual = run.tags.get(key, run.params.get(key))
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if actual is None or str(actual).lower() not in {str(value).lower() for value in allowed}:
            return False
    return True


def selector_label(selector: dict[str, Any]) -> str:
    return ",".join(f"{key}={'|'.join(map(str, value)) if isinstance(value, list) else value}" for key, value in selector.items())


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


def steps_to_reach(run: RunRecord, metric: dict) -> float | None:
    """The first evaluation step at which the series reaches `target` (resolved to a number); inf if never."""
    points = _series(run, metric)
    if not points:
        return None
    return next((float(step) for step, value in points if value >= metric["target"]), math.inf)


def percentile_drift(run: RunRecord, metric: dict) -> float | None:
    """Fig. 1b/c: how far a unit's input distribution moves, in units of its own spread (p85 - p15).

    For each unit logged at `site` ("last": the last site logged) over the evaluations from
    `from_fraction` of training on: of=p50 -> range of the median, of=spread -> range of the
    p85 - p15 spread, each divided by the mean spread. The run's value is the mean over units.
    """
    units = diagnostic_units(run, metric.get("site", "last"))
    drifts = [unit_drift(curves, metric.get("of", "p50"), metric.get("from_fraction", 0.0)) for curves in units.values()]
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
    return dict(sorted(units.items(), key=lambda item: int(item[0].lstrip("u")) if item[0].lstrip("u").isdigit() else item[0]))


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

    @classmethod
    def of(cls, values: Sequence[float]) -> "Aggregate":
        """Mean, spread and range of one value per seed (a never-reached target counts as inf)."""
        values = list(values)
        finite = all(math.isfinite(v) for v in values)
        std = statistics.stdev(values) if len(values) > 1 and finite else (0.0 if len(values) == 1 else math.nan)
        return cls(statistics.fmean(values), std, min(values), max(values), len(values))


@dataclass
class Group:
    """The runs of one configuration a claim compares."""

    selector: dict[str, Any]
    runs: list[RunRecord]  # every run of the claim's experiment(s) the selector matches
    values: dict[str, float] = field(default_factory=dict)  # usable run id -> statistic
    excluded: dict[str, str] = field(default_factory=dict)  # run id -> why it was left out
    aggregate: Aggregate | None = None

    @property
    def label(self) -> str:
        return selector_label(self.selector)

    @property
    def seeds(self) -> list[str]:
        return sorted({run.seed for run in self.runs if run.run_id in self.values}, key=numeric_order)

    def to_dict(self) -> dict:
        return {
            "configuration": self.selector,
            "runs": len(self.runs),
            "seeds": self.seeds,
            "values": [_json_number(v) for v in self.values.values()],
            "excluded": self.excluded,
            "aggregate": None if self.aggregate is None else {k: _json_number(v) for k, v in vars(self.aggregate).items()},
        }


@dataclass
class Result:
    claim: Claim
    verdict: Verdict
    reason: str  # NOT_RUN: why; otherwise what was compared
    groups: list[Group] = field(default_factory=list)
    target: float | None = None  # steps_to_reach: the accuracy the steps were counted to

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
            "bounds": {"at_least": claim.at_least, "at_most": claim.at_most, "tolerance": claim.tolerance},
            "min_seeds": claim.min_seeds,
            "scale": claim.scale,
            "published": claim.published,
            "target": self.target,
            "configurations": [group.to_dict() for group in self.groups],
        }


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON has no inf / nan


# --- comparisons of aggregates -----------------------------------------------------------------
Outcome = tuple[Verdict, str]


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "never" if value > 0 else str(value)
    return f"{value:.4g}"


def _describe(group: Group) -> str:
    a = group.aggregate
    return f"{group.label}: {_fmt(a.mean)} [{_fmt(a.min)}, {_fmt(a.max)}] (n={a.n})"


def ordering(claim: Claim, groups: list[Group]) -> Outcome:
    """Each configuration beats the next one (best first) by more than `tolerance`."""
    sign = 1.0 if claim.better == "higher" else -1.0
    worst_verdict, notes = Verdict.PASS, []
    for winner, loser in zip(groups, groups[1:]):
        a, b = winner.aggregate, loser.aggregate
        gap = sign * (a.mean - b.mean)
        worst_case = sign * ((a.min if sign > 0 else a.max) - (b.max if sign > 0 else b.min))
        if math.isnan(gap) or gap <= claim.tolerance:
            verdict = Verdict.FAIL
        elif math.isnan(worst_case) or worst_case <= claim.tolerance:
            verdict = Verdict.WITHIN_NOISE
        else:
            verdict = Verdict.PASS
        relation = ">" if sign > 0 else "<"
        notes.append(f"expected {_describe(winner)} {relation} {_describe(loser)}: {verdict.value}")
        worst_verdict = _worse(worst_verdict, verdict)
    return worst_verdict, "; ".join(notes)


def ratio(claim: Claim, groups: list[Group]) -> Outcome:
    """mean(numerator) / mean(denominator) within [at_least, at_most]; the seed ranges' worst ratio too for PASS."""
    num, den = groups[0].aggregate, groups[1].aggregate
    mean_ratio = _divide(num.mean, den.mean)
    low, high = _divide(num.min, den.max), _divide(num.max, den.min)
    verdict = _bounded(claim, mean_ratio, low, high)
    return verdict, f"ratio {groups[0].label} / {groups[1].label} = {_fmt(mean_ratio)} (seed range {_fmt(low)}..{_fmt(high)}); {_bounds(claim)}"


def threshold(claim: Claim, groups: list[Group]) -> Outcome:
    """Every configuration's mean within [at_least, at_most] (+- tolerance); every seed too for PASS."""
    verdict, notes = Verdict.PASS, []
    for group in groups:
        a = group.aggregate
        verdict = _worse(verdict, _bounded(claim, a.mean, a.min, a.max))
        notes.append(_describe(group))
    return verdict, f"{'; '.join(notes)}; {_bounds(claim)}"


def diverges(claim: Claim, groups: list[Group]) -> Outcome:
    """Every run of every configuration diverged (tag bnrepro.outcome=diverged)."""
    verdict, notes = Verdict.PASS, []
    for group in groups:
        diverged = int(sum(group.values.values()))  # judge_outcomes: 1 per diverged run, 0 per finished one
        if diverged < len(group.values):
            verdict = Verdict.FAIL
        notes.append(f"{group.label}: {diverged} of {len(group.values)} runs diverged")
    return verdict, "; ".join(notes)


def _divide(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def _bounded(claim: Claim, mean: float, low: float, high: float) -> Verdict:
    """FAIL if the mean is out of bounds, WITHIN_NOISE if only the seed range [low, high] reaches out."""
    def inside(value: float) -> bool:
        ok_low = claim.at_least is None or value >= claim.at_least - claim.tolerance
        ok_high = claim.at_most is None or value <= claim.at_most + claim.tolerance
        return not math.isnan(value) and ok_low and ok_high

    if not inside(mean):
        return Verdict.FAIL
    return Verdict.PASS if inside(low) and inside(high) else Verdict.WITHIN_NOISE


def _bounds(claim: Claim) -> str:
    parts = [f">= {claim.at_least:g}" if claim.at_least is not None else "", f"<= {claim.at_most:g}" if claim.at_most is not None else ""]
    tolerance = f" (tolerance {claim.tolerance:g})" if claim.tolerance else ""
    return "needs " + " and ".join(p for p in parts if p) + tolerance


_SEVERITY = [Verdict.PASS, Verdict.WITHIN_NOISE, Verdict.FAIL]


def _worse(a: Verdict, b: Verdict) -> Verdict:
    return max(a, b, key=_SEVERITY.index)


COMPARISONS: dict[str, Callable[[Claim, list[Group]], Outcome]] = {
    "ordering": ordering,
    "ratio": ratio,
    "threshold": threshold,
    "diverges": diverges,
}
EXPECTS_DIVERGENCE = {"diverges"}  # comparisons that judge diverged runs instead of excluding them


# --- evaluation --------------------------------------------------------------------------------
class NotRun(Exception):
    """The claim cannot be judged on these runs; the message is the reason."""


def evaluate(claims: Sequence[Claim] | Registry, runs: Sequence[RunRecord]) -> list[Result]:
    """The verdict of every claim on `runs` (the job runs of one sweep)."""
    claims = claims.claims if isinstance(claims, Registry) else claims
    return [evaluate_claim(claim, runs) for claim in claims]


def evaluate_claim(claim: Claim, runs: Sequence[RunRecord]) -> Result:
    groups: list[Group] = []
    target = None
    try:
        pool = claim_runs(claim, runs)
        groups = [Group(selector, [run for run in pool if matches(run, selector)]) for selector in claim.configurations]
        for group in groups:
            if not group.runs:
                raise NotRun(f"the sweep has no runs of configuration {group.label}{_in_experiments(claim)}")
            _require_one_configuration(group)
        if claim.comparison in EXPECTS_DIVERGENCE:
            for group in groups:
                judge_outcomes(group)
            _require_seeds(claim, groups)
        else:
            metric = dict(claim.metric)
            if metric["statistic"] == "steps_to_reach":
                target = metric["target"] = resolve_target(metric, pool, claim.configurations)
            for group in groups:
                measure(group, metric)
            _require_seeds(claim, groups)
            for group in groups:
                group.aggregate = Aggregate.of(list(group.values.values()))
            if metric["statistic"] == "steps_to_reach" and all(math.isinf(g.aggregate.min) for g in groups):
                raise NotRun(f"no configuration reached the target {target:.4g} on {metric.get('series', 'val/acc')}")
    except NotRun as reason:
        return Result(claim, Verdict.NOT_RUN, str(reason), groups, target)
    verdict, detail = COMPARISONS[claim.comparison](claim, groups)
    return Result(claim, verdict, detail, groups, target)


def _require_one_configuration(group: Group) -> None:
    """Seeds may be pooled only within one configuration: a selector matching several is ambiguous."""
    differing = {key: sorted(values) for key, values in varying_values([configuration_of(run) for run in group.runs]).items()}
    if differing:
        spread = ", ".join(f"{key}={'|'.join(values)}" for key, values in differing.items())
        raise NotRun(f"ambiguous: {group.label} matches runs of several configurations ({spread}); use a sweep that varies only what the claim compares")


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
        elif reason is None and math.isnan(value):
            reason = "statistic is NaN"
        if reason:
            group.excluded[run.run_id] = reason
        else:
            group.values[run.run_id] = value


def judge_outcomes(group: Group) -> None:
    """For `diverges`: a run that diverged or finished is judged (value 1 / 0); a failed or unfinished one is left out."""
    for run in group.runs:
        if is_diverged(run) or run.status == "FINISHED":
            group.values[run.run_id] = float(is_diverged(run))
        else:
            group.excluded[run.run_id] = unusable_reason(run) or run.status.lower()


def _require_seeds(claim: Claim, groups: list[Group]) -> None:
    """NOT_RUN unless every configuration has `min_seeds` distinct seeds among its judged runs."""
    for group in groups:
        count = len(group.seeds)
        if count >= claim.min_seeds:
            continue
        reasons = sorted(set(group.excluded.values()))
        if count == 0 and reasons == ["diverged"]:
            raise NotRun(f"diverged: every run of {group.label} diverged ({len(group.runs)} runs)")
        left_out = f"; left out: {', '.join(f'{n} {r}' for r, n in sorted(Counter(group.excluded.values()).items()))}" if reasons else ""
        raise NotRun(f"too few seeds: {group.label} has {count} usable seed(s), the claim needs {claim.min_seeds}{left_out}")


def resolve_target(metric: dict, pool: Sequence[RunRecord], configurations: Sequence[dict] = ()) -> float:
    """A number, or {fraction, of: final|max, configuration}: fraction x the mean final/max value of the
    reference configuration, a selector, or `lowest`: the compared configuration whose mean is lowest
    (so that every compared configuration reaches the target)."""
    target = metric["target"]
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        return float(target)
    reference = target.get("configuration") if isinstance(target, dict) else None
    of = STATISTICS.get(target.get("of", "final")) if isinstance(target, dict) else None
    if of is None or not (isinstance(reference, dict) or reference == "lowest"):
        raise NotRun(f"malformed target {target!r}")
    means = []
    for selector in configurations if reference == "lowest" else [reference]:
        values = [of(run, metric) for run in pool if matches(run, selector) and unusable_reason(run) is None]
        values = [value for value in values if value is not None]
        if not values:
            raise NotRun(f"the target's reference configuration {selector_label(selector)} has no usable runs")
        means.append(statistics.fmean(values))
    return float(target.get("fraction", 1.0)) * min(means)
