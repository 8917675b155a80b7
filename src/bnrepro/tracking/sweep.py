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
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnrepro.atomic_write import write_atomically
from bnrepro.lifecycle.sweep_stop import (
    SweepStop,
    clear_invocation,
    ignore_stop_signals,
    invocation_dir,
    requested_stop,
)
from bnrepro.messages import cause, duration, first_line
from bnrepro.tracking.job import git_state, run_name, with_context_tags
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
    """This invocation's failed jobs, a file each in its folder of sweep state (`invocation_dir`): the parallel
    and submitit launchers call `on_job_end` in the job's own process, so the sweep's process reads them back."""

    def __init__(self, sweep_dir: str | Path, invocation: str) -> None:
        self.folder = invocation_dir(sweep_dir, invocation) / "failed"

    def add(self, number: int, failure: JobFailed) -> None:
        write_atomically(self.folder / f"{number}.json", lambda file: file.write(json.dumps(asdict(failure)).encode()))

    def read(self) -> list[JobFailed]:
        files = sorted(self.folder.glob("*.json"), key=lambda path: int(path.stem))
        return [JobFailed(**json.loads(path.read_text())) for path in files]


def failed_jobs_line(failures: list[JobFailed], jobs: int | None) -> str:
    """'2 of 4 jobs failed: seed=-1 (ConfigError: ...); seed=3 (RuntimeError: ...)'."""
    listed = "; ".join(f"{failure.job} ({failure.reason})" for failure in failures)
    return f"{len(failures)}{f' of {jobs}' if jobs else ''} jobs failed: {listed}"


def job_failure(job_return: Any, varying: tuple[str, ...] = ()) -> JobFailed | None:
    """The job's failure: what `bnrepro.run.main` returned, or an error that escaped it (Hydra then
    re-raises it once the batch of jobs has run), named like its run; None for a job that succeeded."""
    from hydra.core.utils import JobStatus

    if job_return.status == JobStatus.FAILED:
        overrides = list(job_return.overrides or [])
        return JobFailed(run_name(overrides, list(varying)) or " ".join(overrides), _failure(job_return), 1)
    return job_return.return_value if isinstance(job_return.return_value, JobFailed) else None


def job_outcome(job_return: Any, failure: JobFailed | None) -> str:
    """How a job ended: its failure (`job_failure`), else from what `bnrepro.run.main` returned: its final
    metrics, the diverged step, or nothing for a job skipped because an identical run already finished."""
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
    the whole sweep (`lifecycle.sweep_stop`): the parent ends KILLED.
    """

    _heartbeat: "Heartbeat | None" = None
    _stop: "SweepStop | None" = None  # SIGINT/SIGTERM: the running jobs close their runs, then the sweep stops
    _workers: "contextlib.ExitStack | None" = None  # joblib's worker settings for this sweep
    _plan: SweepPlan = SweepPlan(None)
    _started_at = 0.0  # unix seconds (the joblib launcher calls on_job_end in its worker processes)
    _failed: "FailedJobs | None" = None
    _config: Any = None  # the sweep's config, for closing its parent at exit
    _parent: str | None = None  # the parent run's id

    def __getstate__(self) -> dict:
        # The joblib launcher pickles Hydra's callbacks into its workers; threads and handlers stay here.
        return {**self.__dict__, "_heartbeat": None, "_stop": None, "_workers": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._plan, self._started_at, self._config = plan_sweep(config), time.time(), config
        os.environ[SWEEP_VARYING_ENV] = ",".join(self._plan.varying)  # the jobs' run names (JobInfo.from_hydra)
        os.environ[SWEEP_INVOCATION_ENV] = uuid.uuid4().hex
        self._failed = FailedJobs(config.hydra.sweep.dir, os.environ[SWEEP_INVOCATION_ENV])
        self._stop = SweepStop(config.hydra.sweep.dir)
        self._stop.install()
        if str(config.hydra.launcher.get("_target_", "")).endswith("JoblibLauncher"):
            self._workers = contextlib.ExitStack()
            self._workers.enter_context(parallel_workers())
        # A stopped sweep (a signal, a job's SystemExit, an error Hydra re-raises) skips on_multirun_end.
        atexit.register(self._close_at_exit)
        if config.logger.kind != "none":
            self._parent = self._open_parent(config)

    def _open_parent(self, config: DictConfig) -> str:
        client = open_store(tracking_uri(config.logger.tracking_uri))
        mark_lost_runs(client)
        name = sweep_name(config, self._plan)
        tags = {ROLE_TAG: "sweep", SWEEP_ID_TAG: str(config.hydra.sweep.dir), SWEEP_NAME_TAG: name, **git_state()}
        tags.update(liveness_tags(config.logger.heartbeat_seconds, config.logger.stale_after_seconds))
        experiment = experiment_id(client, config.logger.experiment_name)
        run = client.create_run(experiment, run_name=name, tags=with_context_tags(tags))
        self._parent = os.environ[SWEEP_RUN_ENV] = run.info.run_id
        client.log_text(run.info.run_id, "\n".join(config.hydra.overrides.task) + "\n", "sweep_overrides.txt")
        self._heartbeat = Heartbeat(client, run.info.run_id, config.logger.heartbeat_seconds)
        log.info("sweep %s: parent MLflow run %s", name, run.info.run_id)
        return run.info.run_id

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if job_return.hydra_cfg.hydra.mode != RunMode.MULTIRUN:
            return
        number = int(job_return.hydra_cfg.hydra.job.num)
        failure = job_failure(job_return, self._plan.varying)
        if failure is not None and self._failed is not None:
            self._failed.add(number, failure)
        # "done" in launch order (exact for the serial launcher)
        line = progress_line(
            number + 1, self._plan.jobs, job_outcome(job_return, failure), time.time() - self._started_at
        )
        print(f"sweep {sweep_name(config, self._plan)}: {line}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failures = self._failed.read() if self._failed is not None else []
        name = sweep_name(config, self._plan)
        if self._parent:  # (should closing it fail, the exit hook tries again)
            self._stop_heartbeat()
            client = client_for(tracking_uri(config.logger.tracking_uri))
            summary = sweep_summary(client, self._parent, len(failures))
            client.set_tag(self._parent, SUMMARY_TAG, summary)
            if failures:
                client.set_tag(
                    self._parent, FAILURE_TAG, failed_jobs_line(failures, self._plan.jobs)[:MAX_PARAM_LENGTH]
                )
            client.set_terminated(self._parent, status="FAILED" if failures else "FINISHED")
            print(f"sweep {name}: {summary}", flush=True)
            print(f"sweep {name} in the MLflow UI (make ui): {sweep_link(self._parent, config.logger.tracking_uri)}")
        self._finish()
        if failures:
            print(
                f"bnrepro: error: sweep {name}: {failed_jobs_line(failures, self._plan.jobs)}. Fix them and re-run "
                "the same command: the finished jobs are skipped",
                file=sys.stderr,
            )
            raise SystemExit(2 if all(failure.exit_code == 2 for failure in failures) else 1)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _finish(self) -> None:
        """The sweep has ended: no exit hook, heartbeats or handlers any more, its state folder removed."""
        atexit.unregister(self._close_at_exit)
        self._stop_heartbeat()
        if self._stop is not None:
            self._stop.uninstall()
            self._stop = None
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        clear_invocation(self._config.hydra.sweep.dir)
        for key in (SWEEP_VARYING_ENV, SWEEP_INVOCATION_ENV, SWEEP_RUN_ENV):
            os.environ.pop(key, None)

    def _close_at_exit(self) -> None:
        """At interpreter exit, the sweep stopped before its end. Its parent, if still RUNNING, ends KILLED when
        a signal stopped the sweep (its process's or a job's) or a job exited, naming any job that failed before;
        FAILED when a job's error escaped it (Hydra re-raises it once the batch of jobs has run)."""
        self._stop = None  # its handlers stay: the process is exiting (see fast_exit)
        try:
            stopped_by = requested_stop(str(self._config.hydra.sweep.dir))  # marked by SweepStop or a stopped job
            failures = self._failed.read() if self._failed is not None else []
            if self._parent is not None:
                self._close_stopped_parent(stopped_by, failures)
        except Exception as error:  # the interpreter is exiting; the heartbeat check will catch it later
            log.warning("could not close sweep run %s: %s", self._parent, first_line(error))
        finally:
            self._finish()

    def _close_stopped_parent(self, stopped_by: int | None, failures: list[JobFailed]) -> None:
        client = client_for(tracking_uri(self._config.logger.tracking_uri))
        if client.get_run(self._parent).info.status != "RUNNING":
            return
        stopped = "sweep stopped before all its jobs ran"
        if stopped_by is not None:
            stopped = f"sweep stopped by {signal.Signals(stopped_by).name} before all its jobs ran"
        failed = failed_jobs_line(failures, self._plan.jobs) if failures else ""
        status = "FAILED" if failures and stopped_by is None else "KILLED"
        reason = failed if status == "FAILED" else "; ".join(filter(None, [stopped, failed]))
        self._stop_heartbeat()
        client.set_tag(self._parent, FAILURE_TAG, reason[:MAX_PARAM_LENGTH])
        client.set_terminated(self._parent, status=status)


@contextlib.contextmanager
def parallel_workers():
    """joblib's loky workers for this sweep: each ignores SIGINT/SIGTERM outside its jobs (`lifecycle.sweep_stop`).

    hydra-joblib-launcher 1.2.0 hard-codes `backend="loky"` when it calls joblib, so joblib's `parallel_config`
    cannot reach its workers' initializer; joblib's public `register_parallel_backend` can, by naming a factory
    "loky" for the sweep's duration. It wraps the factory joblib 1.6 registers under that name
    (`joblib.parallel.BACKENDS`), passing the initializer on to loky's executor. This is the one place."""
    from joblib import parallel, register_parallel_backend

    loky = parallel.BACKENDS["loky"]
    register_parallel_backend("loky", functools.partial(loky, initializer=ignore_stop_signals))
    try:
        yield
    finally:
        register_parallel_backend("loky", loky)


def _failure(job_return: Any) -> str:
    """The failed job's error as 'TypeName: first line': Hydra's public `return_value` re-raises it."""
    try:
        _ = job_return.return_value
    except BaseException as error:  # a job may fail with SystemExit or KeyboardInterrupt too
        return cause(error)
    return "see its run"


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
