"""The Hydra side of tracking: `SweepTracking` gives a multirun one parent MLflow run whose children
are its jobs (tagged with the sweep id), prints "job k/N done" after each job, and closes the parent
with the sweep's outcome and summary; and the upload of a sweep's report to that parent run."""

import atexit
import contextlib
import functools
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnrepro.lifecycle.interruption import SweepStop
from bnrepro.messages import cause, duration, first_line
from bnrepro.tracking.job import git_state, with_context_tags
from bnrepro.tracking.liveness import Heartbeat, liveness_tags, mark_lost_runs
from bnrepro.tracking.store import client_for, experiment_id, open_store, search_runs
from bnrepro.tracking.tags import (
    FAILURE_TAG,
    MAX_PARAM_LENGTH,
    NOTE_TAG,
    OUTCOME_TAG,
    PARENT_TAG,
    ROLE_TAG,
    START_TAG,
    SUMMARY_TAG,
    SWEEP_ID_TAG,
    SWEEP_INVOCATION_ENV,
    SWEEP_NAME_TAG,
    SWEEP_RUN_ENV,
    SWEEP_VARYING_ENV,
    tracking_uri,
)
from bnrepro.tracking.ui import sweep_link

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepPlan:
    """What this invocation of a multirun launches, as Hydra's basic sweeper expands it."""

    jobs: int | None  # None: another sweeper (e.g. Optuna) decides as it goes
    sweeps: tuple[str, ...] = ()  # the overrides with more than one value, as written: "norm=bn,none"

    @property
    def varying(self) -> tuple[str, ...]:
        return tuple(sweep.split("=", 1)[0] for sweep in self.sweeps)


def plan_sweep(config: DictConfig) -> SweepPlan:
    """The basic sweeper's product: the sweep config's hydra.sweeper.params, then the command line's
    overrides (a later value of a key replaces an earlier one, in its place), one job per combination."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return SweepPlan(None)
    params = config.hydra.sweeper.get("params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    values: dict[str, tuple[int, str]] = {}  # key -> (number of values, the override as written)
    for override in OverridesParser.create().parse_overrides(lines):
        count = len(list(override.sweep_string_iterator())) if override.is_discrete_sweep() else 1
        values[override.get_key_element()] = (count, override.input_line or "")
    counts = [count for count, _ in values.values()]
    return SweepPlan(math.prod(counts), tuple(line for count, line in values.values() if count > 1))


@dataclass(frozen=True)
class JobFailed:
    """What `bnrepro.run.main` returns for a sweep's job that failed (a rejected value, an error while
    training): the job is recorded as failed and the sweep goes on with its other jobs."""

    job: str  # the job's name (what its sweep varies: "seed=-1")
    reason: str  # "ConfigError: seed must be in [0, 4294967295] ..."
    exit_code: int  # 2: an input the user can fix; 1: an error


class FailedJobs:
    """This invocation's failed jobs, a file each under the sweep directory: the parallel and submitit
    launchers call `on_job_end` in the job's own process, so the sweep's process reads them back at its end."""

    def __init__(self, sweep_dir: str | Path, invocation: str) -> None:
        self.folder = Path(sweep_dir) / ".bnrepro-failed" / invocation

    def add(self, number: int, failure: JobFailed) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{number}.json").write_text(json.dumps(asdict(failure)))

    def read(self) -> list[JobFailed]:
        files = sorted(self.folder.glob("*.json"), key=lambda path: int(path.stem))
        return [JobFailed(**json.loads(path.read_text())) for path in files]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # (kept while a concurrent invocation of the same sweep uses it)


def failed_jobs_line(failures: list[JobFailed], jobs: int | None) -> str:
    """'2 of 4 jobs failed: seed=-1 (ConfigError: ...); seed=3 (RuntimeError: ...)'."""
    listed = "; ".join(f"{failure.job} ({failure.reason})" for failure in failures)
    return f"{len(failures)}{f' of {jobs}' if jobs else ''} jobs failed: {listed}"


def job_failure(job_return: Any) -> JobFailed | None:
    """The job's failure: what `bnrepro.run.main` returned, or an error that escaped it (Hydra then
    re-raises it once the batch of jobs has run); None for a job that succeeded."""
    from hydra.core.utils import JobStatus

    name = " ".join(job_return.overrides or [])
    if job_return.status == JobStatus.FAILED:
        return JobFailed(name, _failure(job_return), 1)
    return job_return.return_value if isinstance(job_return.return_value, JobFailed) else None


def job_outcome(job_return: Any) -> str:
    """How a job ended, from what `bnrepro.run.main` returned: its final metrics, the diverged step, its
    failure, or nothing for a job skipped because an identical run already finished."""
    failure = job_failure(job_return)
    if failure is not None:
        return f"failed: {failure.reason}"
    result = job_return.return_value or {}
    if "diverged_step" in result:
        return f"diverged at step {int(result['diverged_step']):,}"
    if not result:
        return "skipped: already finished"
    return f"completed, val/acc {result['val/acc']:.1%}" if "val/acc" in result else "completed"


def progress_line(done: int, jobs: int | None, outcome: str, elapsed: float) -> str:
    """'job 2/4 done (completed, val/acc 91.2%), 1m10s elapsed, ETA 2m20s for the rest'."""
    if jobs is None:
        return f"job {done} done ({outcome}), {duration(elapsed)} elapsed"
    line = f"job {done}/{jobs} done ({outcome}), {duration(elapsed)} elapsed"
    if done < jobs:
        line += f", ETA {duration(elapsed / done * (jobs - done))} for the rest"
    return line


class SweepTracking(Callback):
    """Hydra callback: one parent MLflow run per multirun, closed with the sweep's outcome.

    A job that fails (`JobFailed`) fails alone: the other jobs run, then the parent ends FAILED naming
    the failed jobs and the sweep exits 2 (every failure an input the user can fix) or 1. A signal stops
    the whole sweep (`SweepStop`): the parent ends KILLED.
    """

    _heartbeat: "Heartbeat | None" = None
    _abandon: Any = None  # atexit hook that closes the parent if the sweep stops before its end
    _stop: "SweepStop | None" = None  # SIGINT/SIGTERM: the running jobs close their runs, then the sweep stops
    _plan: SweepPlan = SweepPlan(None)
    _started_at = 0.0  # unix seconds (the joblib launcher calls on_job_end in its worker processes)
    _failed: "FailedJobs | None" = None

    def __getstate__(self) -> dict:
        # The joblib launcher pickles Hydra's callbacks into its workers; the heartbeat thread stays here.
        return {**self.__dict__, "_heartbeat": None, "_abandon": None, "_stop": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._plan, self._started_at = plan_sweep(config), time.time()
        os.environ[SWEEP_VARYING_ENV] = ",".join(self._plan.varying)  # the jobs' run names (JobInfo.from_hydra)
        os.environ[SWEEP_INVOCATION_ENV] = uuid.uuid4().hex
        self._failed = FailedJobs(config.hydra.sweep.dir, os.environ[SWEEP_INVOCATION_ENV])
        self._stop = SweepStop(config.hydra.sweep.dir)
        self._stop.install()
        parent = None
        if config.logger.kind != "none":
            parent = self._open_parent(config)
        # A stopped sweep (a signal, a job's SystemExit, an error Hydra re-raises) skips on_multirun_end:
        # close the parent, and forget this invocation's failures, on exit.
        self._abandon = functools.partial(
            _close_abandoned_sweep, self._failed, tracking_uri(config.logger.tracking_uri), parent
        )
        atexit.register(self._abandon)

    def _open_parent(self, config: DictConfig) -> str:
        client = open_store(tracking_uri(config.logger.tracking_uri))
        mark_lost_runs(client)
        name = sweep_name(config, self._plan)
        tags = {ROLE_TAG: "sweep", SWEEP_ID_TAG: str(config.hydra.sweep.dir), SWEEP_NAME_TAG: name, **git_state()}
        tags.update(liveness_tags(config.logger.heartbeat_seconds, config.logger.stale_after_seconds))
        experiment = experiment_id(client, config.logger.experiment_name)
        run = client.create_run(experiment, run_name=name, tags=with_context_tags(tags))
        client.log_text(run.info.run_id, "\n".join(config.hydra.overrides.task) + "\n", "sweep_overrides.txt")
        os.environ[SWEEP_RUN_ENV] = run.info.run_id
        self._heartbeat = Heartbeat(client, run.info.run_id, config.logger.heartbeat_seconds)
        log.info("sweep %s: parent MLflow run %s", name, run.info.run_id)
        return run.info.run_id

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if job_return.hydra_cfg.hydra.mode != RunMode.MULTIRUN:
            return
        number = int(job_return.hydra_cfg.hydra.job.num)
        failure = job_failure(job_return)
        if failure is not None and self._failed is not None:
            self._failed.add(number, failure)
        # "done" in launch order (exact for the serial launcher)
        line = progress_line(number + 1, self._plan.jobs, job_outcome(job_return), time.time() - self._started_at)
        print(f"sweep {sweep_name(config, self._plan)}: {line}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._stop_heartbeat()
        os.environ.pop(SWEEP_VARYING_ENV, None)
        os.environ.pop(SWEEP_INVOCATION_ENV, None)
        parent = os.environ.pop(SWEEP_RUN_ENV, None)
        failures = self._failed.read() if self._failed is not None else []
        if self._failed is not None:
            self._failed.remove()
        name = sweep_name(config, self._plan)
        if parent:
            client = client_for(tracking_uri(config.logger.tracking_uri))
            summary = sweep_summary(client, parent, len(failures))
            client.set_tag(parent, SUMMARY_TAG, summary)
            if failures:
                client.set_tag(parent, FAILURE_TAG, failed_jobs_line(failures, self._plan.jobs)[:MAX_PARAM_LENGTH])
            client.set_terminated(parent, status="FAILED" if failures else "FINISHED")
            print(f"sweep {name}: {summary}", flush=True)
            print(f"sweep {name} in the MLflow UI (make ui): {sweep_link(parent, config.logger.tracking_uri)}")
        if failures:
            print(
                f"bnrepro: error: sweep {name}: {failed_jobs_line(failures, self._plan.jobs)}. Fix them and re-run "
                "the same command: the finished jobs are skipped",
                file=sys.stderr,
            )
            raise SystemExit(2 if all(failure.exit_code == 2 for failure in failures) else 1)

    def _stop_heartbeat(self) -> None:
        """The parent run is being closed here: no more heartbeats, no closing at exit."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._abandon is not None:
            atexit.unregister(self._abandon)
            self._abandon = None
        if self._stop is not None:
            self._stop.uninstall()
            self._stop = None


def _failure(job_return: Any) -> str:
    """The failed job's error as 'TypeName: first line': Hydra's public `return_value` re-raises it."""
    try:
        _ = job_return.return_value
    except BaseException as error:  # a job may fail with SystemExit or KeyboardInterrupt too
        return cause(error)
    return "see its run"


def _close_abandoned_sweep(failed: FailedJobs, uri: str, run_id: str | None) -> None:
    """At interpreter exit: the sweep stopped before its end. Its parent, if still RUNNING, ends FAILED
    naming the jobs that failed (Hydra re-raises an error that escaped a job once its batch has run),
    else KILLED: it was stopped (a signal, or a job that exited)."""
    failures = failed.read()
    failed.remove()
    if run_id is None:
        return
    try:
        client = client_for(uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return
        if failures:
            client.set_tag(run_id, FAILURE_TAG, failed_jobs_line(failures, None)[:MAX_PARAM_LENGTH])
            client.set_terminated(run_id, status="FAILED")
        else:
            client.set_tag(run_id, FAILURE_TAG, "sweep stopped before all its jobs ran")
            client.set_terminated(run_id, status="KILLED")
    except Exception as error:  # the interpreter is exiting; the heartbeat check will catch it later
        log.warning("could not close sweep run %s: %s", run_id, first_line(error))


def sweep_name(config: DictConfig, plan: SweepPlan) -> str:
    """The parent run's name: `sweep_name` (the files in sweeps/ set it), else what the sweep varies."""
    return config.get("sweep_name") or " ".join(plan.sweeps) or str(config.hydra.sweep.dir)


def sweep_summary(client, parent_run_id: str, failed: int = 0) -> str:
    """'N jobs: a run, b resumed, c skipped (already finished); d diverged; f failed' over this invocation's
    jobs: the runs it created, resumed or counted as skipped all carry its parent run id (an earlier
    invocation of the same sweep directory had another), and `failed` jobs, some refused before a run."""
    jobs = search_runs(client, f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{ROLE_TAG}` = 'job'")
    starts = [run.data.tags.get(START_TAG, "fresh") for run in jobs]
    outcomes = [run.data.tags.get(OUTCOME_TAG, "") for run in jobs]
    refused = max(0, failed - outcomes.count("failed"))  # failed jobs that never opened a run
    line = (
        f"{len(jobs) + refused} jobs: {starts.count('fresh')} run, {starts.count('resumed')} resumed, "
        f"{starts.count('skipped')} skipped (already finished)"
    )
    for outcome, count in (("diverged", outcomes.count("diverged")), ("failed", failed)):
        if count:
            line += f"; {count} {outcome}"
    return line


def log_report(
    parent_run_id: str,
    directory: str | Path,
    uri: str | None = None,
    artifact_path: str = "report",
    note: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> None:
    """Upload a sweep's report (figures, report.md, report.html, claims.json) as artifacts of its parent run,
    with `note` as the run's description in the MLflow UI and `metrics` logged on it (step 0)."""
    from mlflow.entities import Metric

    client = client_for(tracking_uri(uri))
    client.log_artifacts(parent_run_id, str(directory), artifact_path=artifact_path)
    if note:
        client.set_tag(parent_run_id, NOTE_TAG, note)
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(parent_run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()])
