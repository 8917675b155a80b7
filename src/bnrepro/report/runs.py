"""Runs of a sweep, read back from MLflow as plain records (the only place that reads the store)."""

from dataclasses import dataclass, field

from bnrepro.lifecycle.identity import EXCLUDED
from bnrepro.tracking.store import client_for, search_runs
from bnrepro.tracking.tags import (
    GIT_COMMIT_TAG,
    GROUPS,
    OUTCOME_TAG,
    ROLE_TAG,
    SWEEP_ID_TAG,
    SWEEP_NAME_TAG,
    tracking_uri,
)


class SweepNotFound(LookupError):
    """No sweep with that name, id or parent run id is in the store."""


def numeric_order(text: str) -> tuple[int, float, str]:
    """Sort key putting numbers written as text in numeric order ("2" before "10", "0.05" before "0.1"):
    seeds, steps, learning rates; other text after them, alphabetically."""
    try:
        return 0, float(text), text
    except ValueError:
        return 1, 0.0, text


@dataclass
class RunRecord:
    run_id: str
    name: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    started_ms: int | None = None  # MLflow's start and end times (ms since the epoch)
    ended_ms: int | None = None

    @property
    def seed(self) -> str:
        return self.tags.get("seed", "")

    @property
    def outcome(self) -> str:
        """The run's status as a result: "diverged" (a finding, not a crash) or its MLflow status."""
        return "diverged" if self.tags.get(OUTCOME_TAG) == "diverged" else self.status

    def value(self, key: str) -> str | None:
        """A selector's, grid's or protocol's key in this run: its tag (group choices, seed), else its logged param."""
        return self.tags.get(key, self.params.get(key))

    def final(self, metric: str) -> float | None:
        points = self.history.get(metric)
        return points[-1][1] if points else None

    def best(self, metric: str) -> float | None:
        points = self.history.get(metric)
        return max(value for _, value in points) if points else None


@dataclass
class Sweep:
    parent_run_id: str
    name: str
    sweep_id: str
    runs: list[RunRecord]
    started_ms: int | None = None  # the parent run's start and end: the sweep's wall time
    ended_ms: int | None = None


def load_sweep(
    sweep: str, metrics: tuple[str, ...] = ("val/acc",), uri: str | None = None, prefixes: tuple[str, ...] = ()
) -> Sweep:
    """The latest sweep whose name, id or parent run id is `sweep`, with its job runs and metric histories.

    Histories are read for `metrics` and for every metric a run logged whose key starts with one
    of `prefixes` (e.g. "diag/" for the covariate-shift diagnostics).
    """
    client = client_for(tracking_uri(uri))
    parent = _find_parent(client, sweep)
    sweep_id = parent.data.tags[SWEEP_ID_TAG]
    jobs = search_runs(client, f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and tags.`{ROLE_TAG}` = 'job'")
    records = [_record(client, run, metrics, prefixes) for run in sorted(jobs, key=lambda r: r.info.start_time)]
    name = parent.data.tags.get(SWEEP_NAME_TAG, sweep_id)
    return Sweep(parent.info.run_id, name, sweep_id, records, parent.info.start_time, parent.info.end_time)


def _find_parent(client, sweep: str):
    for key in (SWEEP_NAME_TAG, SWEEP_ID_TAG):
        found = search_runs(client, f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{key}` = '{sweep}'")
        if found:
            return max(found, key=lambda run: run.info.start_time)
    sweeps = search_runs(client, f"tags.`{ROLE_TAG}` = 'sweep'")
    parents = [run for run in sweeps if run.info.run_id == sweep]
    if parents:
        return parents[0]
    known = sorted({run.data.tags.get(SWEEP_NAME_TAG, "?") for run in sweeps})
    raise SweepNotFound(
        f"no sweep named {sweep!r} in {client.tracking_uri}; known sweeps: {', '.join(known) or 'none'} "
        "(run one with `python train.py -m ...` or `make reproduce-mnist`)"
    )


def _record(client, run, metrics: tuple[str, ...], prefixes: tuple[str, ...] = ()) -> RunRecord:
    prefixed = sorted(key for key in run.data.metrics if prefixes and key.startswith(prefixes))
    history = {
        metric: [
            (point.step, point.value)
            for point in sorted(client.get_metric_history(run.info.run_id, metric), key=lambda p: p.step)
        ]
        for metric in dict.fromkeys([*metrics, *prefixed])
    }
    tags = {
        key: value
        for key, value in run.data.tags.items()
        if key in GROUPS or key.startswith("bnrepro.") or key in ("seed", GIT_COMMIT_TAG)
    }
    info = run.info
    params = dict(run.data.params)
    return RunRecord(info.run_id, info.run_name, info.status, tags, params, history, info.start_time, info.end_time)


# --- configurations: runs that differ only by seed ---------------------------------------------
def configuration_of(run: RunRecord) -> dict[str, str]:
    """What identifies the run's configuration: its group choices (tags) and its logged config (params),
    minus the seed (and the keys set from it) and the keys that do not change the result (the
    project's list, bnrepro.lifecycle.identity.EXCLUDED: logging, checkpoints, resuming, output)."""
    configuration = {group: run.tags[group] for group in GROUPS if group in run.tags}
    for key, value in run.params.items():
        if not _ignored(key):
            configuration.setdefault(key, value)
    return configuration


def _ignored(key: str) -> bool:
    is_seed = key == "seed" or key.endswith(".seed")  # e.g. data.seed: ${seed}
    return is_seed or any(key == prefix or key.startswith(prefix + ".") for prefix in EXCLUDED)


def varying_values(configurations: list[dict[str, str]]) -> dict[str, list[str]]:
    """The keys whose value differs between `configurations`, with their values ("-" where absent), in order."""
    keys = dict.fromkeys(key for configuration in configurations for key in configuration)
    values = {key: list(dict.fromkeys(str(c.get(key, "-")) for c in configurations)) for key in keys}
    return {key: found for key, found in values.items() if len(found) > 1}


def group_by_configuration(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs grouped by configuration (seeds pooled), labelled by what varies between the groups,
    e.g. {"norm=bn": [...], "norm=none": [...]}, in order of first appearance. A group choice names a
    configuration best; the other varying keys join the label, in order, only as far as needed for each
    group to hold one configuration (a sweep over norm and model.base_lr: "norm=bn,model.base_lr=0.1")."""
    configurations = [configuration_of(run) for run in runs]
    differing = varying_values(configurations)
    varying = [key for key in differing if key in GROUPS]
    for key in differing:
        if _one_configuration_each(configurations, varying):
            break
        if key not in varying:
            varying.append(key)
    groups: dict[str, list[RunRecord]] = {}
    for run, configuration in zip(runs, configurations, strict=True):
        label = _label(configuration, varying)
        groups.setdefault(label or configuration.get("experiment", "all runs"), []).append(run)
    return groups


def _label(configuration: dict[str, str], keys: list[str]) -> str:
    return ",".join(f"{key}={configuration.get(key, '-')}" for key in keys)


def _one_configuration_each(configurations: list[dict[str, str]], keys: list[str]) -> bool:
    """Whether labelling by `keys` puts runs of one configuration only under each label."""
    seen: dict[str, dict[str, str]] = {}
    return all(seen.setdefault(_label(c, keys), c) == c for c in configurations)
