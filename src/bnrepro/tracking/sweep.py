"""The Hydra side of tracking: `SweepTracking` gives a multirun one parent MLflow run whose children
are its jobs (tagged with the sweep id), closed with the sweep's outcome and summary; and the
upload of a sweep's report to that parent run."""

import atexit
import functools
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnrepro.messages import cause, first_line
from bnrepro.tracking.job import git_state
from bnrepro.tracking.liveness import Heartbeat, liveness_tags, mark_lost_runs
from bnrepro.tracking.store import client_for, experiment_id, open_store, search_runs
from bnrepro.tracking.tags import (
    FAILURE_TAG,
    MAX_PARAM_LENGTH,
    OUTCOME_TAG,
    ROLE_TAG,
    START_TAG,
    SUMMARY_TAG,
    SWEEP_ID_TAG,
    SWEEP_NAME_TAG,
    SWEEP_RUN_ENV,
    tracking_uri,
)

log = logging.getLogger(__name__)


class SweepTracking(Callback):
    """Hydra callback: one parent MLflow run per multirun, closed with the sweep's outcome."""

    _heartbeat: "Heartbeat | None" = None
    _abandon: Any = None  # atexit hook that ends the parent KILLED if the sweep stops before its end

    def __getstate__(self) -> dict:
        # The joblib launcher pickles Hydra's callbacks into its workers; the heartbeat thread stays here.
        return {**self.__dict__, "_heartbeat": None, "_abandon": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.logger.kind == "none":
            return
        client = open_store(tracking_uri(config.logger.tracking_uri))
        mark_lost_runs(client)
        sweep_id = str(config.hydra.sweep.dir)
        name = config.get("sweep_name") or sweep_id
        tags = {ROLE_TAG: "sweep", SWEEP_ID_TAG: sweep_id, SWEEP_NAME_TAG: name, **git_state()}
        tags.update(liveness_tags(config.logger.heartbeat_seconds, config.logger.stale_after_seconds))
        run = client.create_run(experiment_id(client, config.logger.experiment_name), run_name=name, tags=tags)
        client.log_text(run.info.run_id, "\n".join(config.hydra.overrides.task) + "\n", "sweep_overrides.txt")
        os.environ[SWEEP_RUN_ENV] = run.info.run_id
        self._heartbeat = Heartbeat(client, run.info.run_id, config.logger.heartbeat_seconds)
        # A stopped sweep (Ctrl+C, SIGTERM, a job's SystemExit) skips on_multirun_end: close the parent on exit.
        self._abandon = functools.partial(
            _close_abandoned_sweep, tracking_uri(config.logger.tracking_uri), run.info.run_id
        )
        atexit.register(self._abandon)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that SIGTERM between jobs still runs the hook
        log.info("sweep %s: parent MLflow run %s", name, run.info.run_id)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        parent = os.environ.get(SWEEP_RUN_ENV)
        if parent and job_return.status == JobStatus.FAILED:
            # Hydra aborts the sweep after a failed job without calling on_multirun_end: close it here.
            self._stop_heartbeat()
            client = client_for(tracking_uri(config.logger.tracking_uri))
            reason = f"job {' '.join(job_return.overrides or [])} failed: {_failure(job_return)}"
            client.set_tag(parent, FAILURE_TAG, reason[:MAX_PARAM_LENGTH])
            client.set_terminated(parent, status="FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._stop_heartbeat()
        parent = os.environ.pop(SWEEP_RUN_ENV, None)
        if parent:
            client = client_for(tracking_uri(config.logger.tracking_uri))
            summary = sweep_summary(client, str(config.hydra.sweep.dir))
            client.set_tag(parent, SUMMARY_TAG, summary)
            client.set_terminated(parent, status="FINISHED")
            name = config.get("sweep_name") or str(config.hydra.sweep.dir)
            print(f"sweep {name}: {summary}", flush=True)

    def _stop_heartbeat(self) -> None:
        """The parent run is being closed here: no more heartbeats, no closing at exit."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._abandon is not None:
            atexit.unregister(self._abandon)
            self._abandon = None
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is _exit_on_sigterm
        ):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _failure(job_return: Any) -> str:
    """The failed job's error as 'TypeName: first line': Hydra's public `return_value` re-raises it."""
    try:
        _ = job_return.return_value
    except BaseException as error:  # a job may fail with SystemExit or KeyboardInterrupt too
        return cause(error)
    return "see its run"


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def _close_abandoned_sweep(uri: str, run_id: str) -> None:
    """At interpreter exit: a sweep parent still RUNNING was stopped before its end; say so."""
    try:
        client = client_for(uri)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, FAILURE_TAG, "sweep stopped before all its jobs ran (interrupted, or a job exited)")
            client.set_terminated(run_id, status="KILLED")
    except Exception as error:  # the interpreter is exiting; the heartbeat check will catch it later
        log.warning("could not close sweep run %s: %s", run_id, first_line(error))


def sweep_summary(client, sweep_id: str) -> str:
    """'N jobs: a run, b resumed, c skipped (already finished); d diverged' from the jobs' tags."""
    jobs = search_runs(client, f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and tags.`{ROLE_TAG}` = 'job'")
    starts = [run.data.tags.get(START_TAG, "fresh") for run in jobs]
    outcomes = [run.data.tags.get(OUTCOME_TAG, "") for run in jobs]
    line = (
        f"{len(jobs)} jobs: {starts.count('fresh')} run, {starts.count('resumed')} resumed, "
        f"{starts.count('skipped')} skipped (already finished)"
    )
    if outcomes.count("diverged"):
        line += f"; {outcomes.count('diverged')} diverged"
    return line


def log_report(
    parent_run_id: str, directory: str | Path, uri: str | None = None, artifact_path: str = "report"
) -> None:
    """Upload a sweep's report (figures, report.md, claims.json) as artifacts of its parent run."""
    client_for(tracking_uri(uri)).log_artifacts(parent_run_id, str(directory), artifact_path=artifact_path)
