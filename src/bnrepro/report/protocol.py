"""Pre-registered protocols (protocols/<name>.yaml) and how a sweep's runs deviate from them.

A protocol is committed before the runs it governs: the sweep it names, the grid of its jobs, the
configuration every run must have, the claims it tests and how any free choice is made. The report
of that sweep checks, and lists as deviations:

* registration: the file is committed, every run ran at a commit that contains its registered
  version (so the protocol predates the run), the file is unchanged since, and the run's tree had
  no uncommitted changes;
* the grid: every registered job ran exactly once, none beyond it;
* the fixed configuration: every run has the registered value of every fixed key;
* completion: every run finished (a divergence is a result, not a deviation);
* the claims: the judged claims are the registered ones (others are labelled exploratory).

`across` names a key of the grid (e.g. model.base_lr) at every value of which the claims are
judged separately; no value is picked (claims.evaluate).
"""

import itertools
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnrepro.report.runs import RunRecord, numeric_order
from bnrepro.tracking.job import git
from bnrepro.tracking.tags import GIT_COMMIT_TAG, GIT_DIRTY_TAG

PROTOCOLS_DIR = Path("protocols")


class ProtocolFileError(ValueError):
    """A protocol file that cannot be read; the message names the file and the problem."""


@dataclass
class Preregistration:
    """The schema of a protocol file (unknown keys and wrong types fail when it is read)."""

    protocol: str = MISSING
    sweep: str = MISSING  # the sweep_name of its runs (sweeps/<sweep>.yaml)
    command: str = MISSING
    question: str = MISSING
    grid: dict[str, list[Any]] = MISSING  # the jobs: every combination of these values
    fixed: dict[str, Any] = field(default_factory=dict)  # every run's value of these keys
    claims: list[str] = field(default_factory=list)
    choices: str = ""  # how each free choice was made
    across: str | None = None  # a grid key at each value of which the claims are judged
    budget: str = ""


@dataclass(frozen=True)
class Registration:
    """Where the protocol file is in git: the commit that added it and the last one that changed it."""

    first_commit: str
    first_date: str
    last_commit: str


@dataclass
class ProtocolCheck:
    """A protocol, its registration, and the deviations of one sweep's runs from it."""

    path: Path
    plan: Preregistration
    registration: Registration | None
    deviations: list[str]
    run_commits: list[str]

    def to_dict(self) -> dict:
        registration = self.registration
        return {
            "file": str(self.path),
            "protocol": self.plan.protocol,
            "registered_at": None if registration is None else registration.first_commit,
            "registered_on": None if registration is None else registration.first_date,
            "last_changed_at": None if registration is None else registration.last_commit,
            "run_commits": self.run_commits,
            "across": self.plan.across,
            "deviations": self.deviations,
        }


def load_preregistration(path: Path) -> Preregistration:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Preregistration), OmegaConf.load(path))
        plan = OmegaConf.to_object(merged)
    except (OSError, OmegaConfBaseException) as error:
        raise ProtocolFileError(f"{path}: {str(error).splitlines()[0]}") from error
    if plan.across is not None and plan.across not in plan.grid:
        raise ProtocolFileError(f"{path}: across={plan.across} is not a key of the grid ({', '.join(plan.grid)})")
    return plan


def find_protocol(sweep_name: str, directory: Path = PROTOCOLS_DIR) -> tuple[Path, Preregistration] | None:
    """The protocol registered for the sweep named `sweep_name`, if any."""
    for path in sorted(Path(directory).glob("*.yaml")):
        plan = load_preregistration(path)
        if plan.sweep == sweep_name:
            return path, plan
    return None


def registration_of(path: Path) -> Registration | None:
    """The commits that added and last changed `path` (None: not committed, or not in a git checkout)."""
    try:
        log = git("log", "--format=%H %cI", "--", path.name, cwd=path.parent).split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    entries = [line.split(" ") for line in log if line.strip()]
    if not entries:
        return None
    return Registration(first_commit=entries[-1][0], first_date=entries[-1][1], last_commit=entries[0][0])


def check_protocol(path: Path, plan: Preregistration, runs: list[RunRecord], judged_claims: list[str]) -> ProtocolCheck:
    registration = registration_of(path)
    commits = sorted({run.tags.get(GIT_COMMIT_TAG, "") for run in runs} - {""})
    deviations = [
        *registration_deviations(path, registration, runs),
        *grid_deviations(plan, runs),
        *fixed_deviations(plan, runs),
        *completion_deviations(runs),
        *claim_deviations(plan, judged_claims),
    ]
    return ProtocolCheck(path, plan, registration, deviations, commits)


def registration_deviations(path: Path, registration: Registration | None, runs: list[RunRecord]) -> list[str]:
    if registration is None:
        return [f"{path} is not committed: nothing shows it was fixed before its runs"]
    found = []
    by_commit = Counter(run.tags.get(GIT_COMMIT_TAG, "") for run in runs)
    for commit, count in sorted(by_commit.items()):
        if not commit:
            found.append(f"{count} run(s) record no git commit: their code cannot be matched to the protocol")
        elif not _is_ancestor(registration.last_commit, commit, path):
            found.append(
                f"{count} run(s) ran at commit {commit[:12]}, which does not contain the protocol's registered "
                f"version ({registration.last_commit[:12]}): the protocol was fixed or changed after them"
            )
    dirty = sum(run.tags.get(GIT_DIRTY_TAG) == "True" for run in runs)
    if dirty:
        found.append(f"{dirty} run(s) ran from a tree with uncommitted changes")
    return found


def _is_ancestor(ancestor: str, commit: str, path: Path) -> bool:
    try:
        git("merge-base", "--is-ancestor", ancestor, commit, cwd=path.parent)  # exit 1: not an ancestor
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def grid_deviations(plan: Preregistration, runs: list[RunRecord]) -> list[str]:
    """Registered jobs that did not run, ran more than once, or ran beyond the grid."""
    keys = list(plan.grid)
    combinations = itertools.product(*plan.grid.values())
    expected = {tuple(_normal(value) for value in combination) for combination in combinations}
    ran = Counter(tuple(_normal(run.value(key)) for key in keys) for run in runs)
    found = []
    missing = sorted(expected - set(ran))
    if missing:
        found.append(f"{len(missing)} registered job(s) did not run: {_jobs(keys, missing)}")
    extra = sorted(set(ran) - expected)
    if extra:
        found.append(f"{len(extra)} job(s) ran that the protocol does not register: {_jobs(keys, extra)}")
    repeated = sorted(job for job, count in ran.items() if count > 1)
    if repeated:
        found.append(f"{len(repeated)} job(s) ran more than once: {_jobs(keys, repeated)}")
    return found


def fixed_deviations(plan: Preregistration, runs: list[RunRecord]) -> list[str]:
    found = []
    for key, registered in plan.fixed.items():
        actual = Counter(str(run.value(key)) for run in runs if _normal(run.value(key)) != _normal(registered))
        for value, count in sorted(actual.items()):
            found.append(f"{key}: {count} run(s) have {value}, the protocol fixes {registered}")
    return found


def completion_deviations(runs: list[RunRecord]) -> list[str]:
    unfinished = Counter(run.status for run in runs if run.status != "FINISHED" and run.outcome != "diverged")
    return [f"{count} run(s) ended {status}" for status, count in sorted(unfinished.items())]


def claim_deviations(plan: Preregistration, judged_claims: list[str]) -> list[str]:
    judged = set(judged_claims)
    found = []
    exploratory = sorted(judged - set(plan.claims))
    if exploratory:
        found.append(f"judged but not registered (exploratory): {', '.join(exploratory)}")
    unjudged = [claim for claim in plan.claims if claim not in judged]
    if unjudged:
        found.append(f"registered but not judged: {', '.join(unjudged)}")
    return found


def _normal(value: Any) -> str:
    """One spelling per value: numbers by value (0.1 == "0.10"), the rest lower-cased ("True" == true)."""
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value).lower()


def _jobs(keys: list[str], jobs: list[tuple[str, ...]], shown: int = 6) -> str:
    def label(job: tuple[str, ...]) -> str:
        return ",".join(f"{key}={_plain(value)}" for key, value in zip(keys, job, strict=True))

    text = "; ".join(label(job) for job in sorted(jobs, key=lambda job: [numeric_order(v) for v in job])[:shown])
    return text + (f"; and {len(jobs) - shown} more" if len(jobs) > shown else "")


def _plain(normal: str) -> str:
    """A normalized value as a person writes it (0.1, 3, bn)."""
    try:
        number = float(normal)
    except ValueError:
        return normal
    return str(int(number)) if number.is_integer() else f"{number:g}"
