"""One job's MLflow run: params, tags and config artifacts, a heartbeat, the metrics logger handed to
Lightning, and a truthful ending: FINISHED, FAILED (with the reason as a tag) or KILLED.

Every job run carries its content identity (``bnrepro.identity``; see `bnrepro.lifecycle.identity`),
how it started (``bnrepro.start``: fresh | resumed | skipped) and how it ended (``bnrepro.outcome``:
completed | diverged | interrupted | failed, with ``bnrepro.failure`` holding the reason). A resumed
run is the *same* MLflow run, reopened; its metric history is continued, never duplicated.
"""

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnrepro.config import flatten
from bnrepro.lifecycle.distributed import global_rank
from bnrepro.lifecycle.interruption import hold_signals
from bnrepro.messages import cause
from bnrepro.tracking.job import JobInfo, git_state, with_context_tags
from bnrepro.tracking.liveness import Heartbeat, liveness_tags
from bnrepro.tracking.metrics import ContinuedMetricsLogger, MLflowMetricsLogger
from bnrepro.tracking.store import (
    TrackingError,
    experiment_id,
    iter_chunks,
    logged_through,
    open_store,
    write_tags,
)
from bnrepro.tracking.tags import (
    CODE_VERSION_TAG,
    DIVERGED_LOSS_TAG,
    DIVERGED_STEP_TAG,
    FAILURE_TAG,
    IDENTITY_TAG,
    MAX_PARAM_LENGTH,
    OUTCOME_TAG,
    OUTPUT_DIR_TAG,
    PARENT_TAG,
    RESUMES_TAG,
    ROLE_TAG,
    START_TAG,
    SWEEP_ID_TAG,
    SWEEP_RUN_ENV,
    tracking_uri,
)

log = logging.getLogger(__name__)


class TrackedRun:
    """One job's MLflow run, as a context manager that always closes it with a truthful status.

    With `resume_run_id` the existing run is reopened instead of a new one created: same run id,
    params and artifacts kept, and metric points at steps the store already holds are dropped, so
    the history is continued, not duplicated. `identity` (bnrepro.lifecycle.identity.JobIdentity) is tagged.
    """

    def __init__(self, cfg: DictConfig, job: JobInfo, identity=None, resume_run_id: str | None = None):
        self.cfg, self.job, self.identity = cfg, job, identity
        self.client = open_store(tracking_uri(cfg.logger.tracking_uri))
        self.run_id: str | None = resume_run_id
        self.resumed = resume_run_id is not None
        self.logger: MLflowMetricsLogger | None = None
        self.outcome: str | None = None  # set by mark_diverged; else decided when the run closes
        self.params_at_close: dict[str, Any] = {}  # params known only at the end, written with the status
        self._heartbeat: Heartbeat | None = None

    def __enter__(self) -> "TrackedRun":
        try:
            self._open()
        except Exception as error:  # a read-only store, a full disk, a store locked past SQLite's timeout
            self._abandon_half_opened(error)
            raise TrackingError(
                f"MLflow tracking store {self.client.tracking_uri} refused to record the run ({cause(error)}); "
                "make it writable (permissions, free disk space, the process holding it locked), "
                "or set MLFLOW_TRACKING_URI to another store, or logger=none to run untracked"
            ) from error
        self._heartbeat = Heartbeat(self.client, self.run_id, self.cfg.logger.heartbeat_seconds)
        log.info(
            "MLflow run %s (%s%s) in %s",
            self.run_id,
            self.job.name,
            ", resumed" if self.resumed else "",
            self.client.tracking_uri,
        )
        return self

    def _abandon_half_opened(self, error: Exception) -> None:
        """A run created (or reopened) before a later write failed must not stay RUNNING, if the store lets us."""
        if self.run_id is None:
            return
        try:
            self.abandon(f"the run could not be opened: {cause(error)}")
        except Exception:  # the store refuses this too: the run is marked lost once its own threshold passes
            log.debug("could not end half-opened run %s", self.run_id, exc_info=True)

    def _open(self) -> None:
        if self.resumed:
            self._reopen()
        else:
            experiment = experiment_id(self.client, self.cfg.logger.experiment_name)
            run = self.client.create_run(experiment, run_name=self.job.name, tags=with_context_tags(self._tags()))
            self.run_id = run.info.run_id
            self.logger = MLflowMetricsLogger(self.client, self.run_id)
            self._log_params()
            self.client.log_text(self.run_id, OmegaConf.to_yaml(self.cfg, resolve=True), "config.yaml")
            self.client.log_text(self.run_id, "\n".join(self.job.overrides) + "\n", "overrides.txt")

    def _reopen(self) -> None:
        run = self.client.get_run(self.run_id)
        self.client.update_run(self.run_id, status="RUNNING")
        if FAILURE_TAG in run.data.tags:  # why it stopped before: no longer true of a run that continues
            self.client.delete_tag(self.run_id, FAILURE_TAG)
        tags = {
            **_sweep_tags(self.job),
            START_TAG: "resumed",
            RESUMES_TAG: str(int(run.data.tags.get(RESUMES_TAG, "0")) + 1),
        }
        tags.update({**self._liveness_tags(), OUTCOME_TAG: "running"})
        self.set_tags(tags)
        self.logger = ContinuedMetricsLogger(self.client, self.run_id, logged_through(self.client, run))

    def _tags(self) -> dict[str, str]:
        tags = {**self.job.choices, "seed": str(self.cfg.seed), ROLE_TAG: "job", **git_state()}
        tags.update({START_TAG: "fresh", **self._liveness_tags(), OUTCOME_TAG: "running"})
        if self.identity is not None:
            tags.update({IDENTITY_TAG: self.identity.digest, CODE_VERSION_TAG: self.identity.code_version[:5000]})
        if self.job.output_dir:
            tags[OUTPUT_DIR_TAG] = self.job.output_dir
        tags.update(_sweep_tags(self.job))
        return tags

    def _liveness_tags(self) -> dict[str, str]:
        return liveness_tags(self.cfg.logger.heartbeat_seconds, self.cfg.logger.stale_after_seconds)

    def _log_params(self) -> None:
        from mlflow.entities import Param

        flat = flatten(OmegaConf.to_container(self.cfg, resolve=True))
        params = [Param(key, self._fit(key, value)) for key, value in sorted(flat.items())]
        for batch in iter_chunks(params, 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=batch)

    @staticmethod
    def _fit(key: str, value: str) -> str:
        if len(value) <= MAX_PARAM_LENGTH:
            return value
        log.warning("param %s is %d characters long; the full value is in config.yaml", key, len(value))
        return value[: MAX_PARAM_LENGTH - 40] + " ... [truncated: see config.yaml]"

    def callbacks(self) -> list:
        """The Lightning callbacks that write to this run: its data splits as dataset inputs and, with
        logger.system_metrics=true, MLflow's system metrics (CPU, memory, GPU) while it trains; with
        logger.log_model=best, its best network as the run's MLflow model."""
        from bnrepro.tracking.inputs import BestNetwork, DatasetInputs, SystemMetrics

        data = self.cfg.data
        name = self.job.choices.get("data") or str(data._target_).rsplit(".", 1)[-1]
        source = {"target": str(data._target_), **({"data_dir": str(data.data_dir)} if "data_dir" in data else {})}
        system = [SystemMetrics(self.run_id, self.client.tracking_uri)] if self.cfg.logger.system_metrics else []
        model = [BestNetwork(self.client, self.run_id)] if self.cfg.logger.log_model == "best" else []
        return [DatasetInputs(self.client, self.run_id, name, source), *system, *model]

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Extra params known only once the run is built (e.g. the global batch size)."""
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        write_tags(self.client, self.run_id, tags)

    def mark_diverged(self, step: int, loss: float, reason: str) -> None:
        """Divergence is a result (Sec. 4.2.1): the run ends FINISHED with outcome=diverged and the step."""
        self.outcome = "diverged"
        self.set_tags({OUTCOME_TAG: "diverged", DIVERGED_STEP_TAG: step, DIVERGED_LOSS_TAG: loss, FAILURE_TAG: reason})

    def abandon(self, reason: str) -> None:
        """End the run FAILED from another thread when this process must exit at once (a lost DDP rank)."""
        self.client.set_tag(self.run_id, FAILURE_TAG, reason[:MAX_PARAM_LENGTH])
        self.client.set_terminated(self.run_id, status="FAILED")

    CLOSE_ATTEMPTS = 3  # each write already waits out SQLite's 20 s busy timeout; with the pauses, ~2-5 min in all
    CLOSE_PAUSE_SECONDS = 5.0

    def __exit__(self, kind, error, traceback) -> None:
        hold_signals()  # a signal from here on is reported once the run is closed, never cuts the closing short
        if self._heartbeat is not None:
            self._heartbeat.stop()
        status, outcome = _ending(error)
        tags = {OUTCOME_TAG: self.outcome or outcome}
        if error is not None:
            tags[FAILURE_TAG] = cause(error)
        log.info("closing MLflow run %s as %s", self.run_id, status)
        try:
            self._close(status, tags)
        except Exception as failure:
            problem = TrackingError(
                f"could not close MLflow run {self.run_id} as {status} after {self.CLOSE_ATTEMPTS} attempts "
                f"({cause(failure)}); it shows RUNNING until a later start marks it FAILED (lost) "
                f"{self.cfg.logger.stale_after_seconds:.0f} s after its last heartbeat. "
                "Make the store writable (free space, permissions, the process holding it locked)"
            )
            if error is None:  # the run itself succeeded: say why its record is not FINISHED
                raise problem from failure
            log.error("%s", problem)  # the run's own error is the one to report
            return
        log.info("MLflow run %s ended %s (%s)", self.run_id, status, tags[OUTCOME_TAG])

    def _close(self, status: str, tags: Mapping[str, Any]) -> None:
        """Pending metrics, end-of-run params and tags, then the status, retried against a busy store."""
        from mlflow.entities import Param, RunTag

        params = [Param(key, str(value)) for key, value in self.params_at_close.items()]
        run_tags = [RunTag(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in tags.items()]
        for attempt in range(1, self.CLOSE_ATTEMPTS + 1):
            try:
                if self.logger is not None:
                    self.logger.flush(wait=True)  # re-sends metrics an earlier write could not store
                self.client.log_batch(self.run_id, params=params, tags=run_tags)
                self.client.set_terminated(self.run_id, status=status)
                return
            except Exception as error:
                if attempt == self.CLOSE_ATTEMPTS:
                    raise
                log.warning(
                    "closing MLflow run %s failed (%s); retrying in %.0f s", self.run_id, cause(error),
                    self.CLOSE_PAUSE_SECONDS * attempt,
                )  # fmt: skip
                time.sleep(self.CLOSE_PAUSE_SECONDS * attempt)


def _ending(error: BaseException | None) -> tuple[str, str]:
    """(MLflow status, bnrepro.outcome) for a run that ended with `error` (None: it completed)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from bnrepro.lifecycle.interruption import RunInterrupted

    if error is None:
        return "FINISHED", "completed"
    if isinstance(error, (RunInterrupted, KeyboardInterrupt, SIGTERMException)):
        return "KILLED", "interrupted"
    return "FAILED", "failed"


class NoTracking:
    """Stands in for `TrackedRun` with `logger=none`: nothing is written anywhere."""

    run_id = None
    logger = None

    def __init__(self) -> None:
        self.params_at_close: dict[str, Any] = {}

    def __enter__(self) -> "NoTracking":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def abandon(self, reason: str) -> None:
        pass

    def callbacks(self) -> list:
        return []

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def mark_diverged(self, step: int, loss: float, reason: str) -> None:
        pass


def is_tracked(cfg: DictConfig) -> bool:
    """Whether this process writes and reads the store: only global rank 0 with a logger (ranks 1..N-1 get
    rank 0's start decision as an explicit resume=<dir> / rerun=true, and rank 0 reopens the run)."""
    return cfg.logger.kind != "none" and global_rank() == 0


def open_run(cfg: DictConfig, job: JobInfo, identity=None, resume_run_id: str | None = None) -> TrackedRun | NoTracking:
    """The run to record this job in; only global rank 0 writes (other DDP ranks get `NoTracking`).

    `identity` is the job's `bnrepro.lifecycle.identity.JobIdentity`; `resume_run_id` reopens that run.
    """
    if not is_tracked(cfg):
        return NoTracking()
    return TrackedRun(cfg, job, identity=identity, resume_run_id=resume_run_id)


def record_skipped(cfg: DictConfig, job: JobInfo, run_id: str) -> None:
    """A re-run job found `run_id` FINISHED: count it in this sweep (tags) instead of running again."""
    if not is_tracked(cfg):
        return
    client = open_store(tracking_uri(cfg.logger.tracking_uri))
    write_tags(client, run_id, {START_TAG: "skipped", **_sweep_tags(job)})


def _sweep_tags(job: JobInfo) -> dict[str, str]:
    """The tags that count a job in its sweep: the sweep id and, when there is one, the parent run."""
    if not job.sweep_id:
        return {}
    parent = os.environ.get(SWEEP_RUN_ENV)
    return {SWEEP_ID_TAG: job.sweep_id, **({PARENT_TAG: parent} if parent else {})}
