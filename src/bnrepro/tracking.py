"""Everything that writes to MLflow, in one place.

* `TrackedRun` opens one job's run (params, tags, config artifacts), hands Lightning a metrics
  logger bound to it, and closes it with a truthful status: FINISHED, FAILED (with the reason as a
  tag) or KILLED.
* `SweepTracking` is a Hydra callback: a multirun gets one parent run, and every job's run is its
  child (tagged with the sweep id), so a sweep reads as one unit in the MLflow UI and the report.
* `MLflowMetricsLogger` buffers metrics and writes them in asynchronous batches, so tracking costs
  next to nothing per training step; every pending metric is flushed when the run closes.

Reliability (README, "When things go wrong"):

* Every run carries a heartbeat tag (``bnrepro.heartbeat``, unix seconds, refreshed by a background
  thread every ``logger.heartbeat_seconds``). A run left RUNNING by a process that died without
  closing it (SIGKILL, power loss) is found by `mark_lost_runs` when the next job or sweep starts
  in the same store, and ended FAILED with the reason "lost: no heartbeat since ...".
* Every job run carries its content identity (tag ``bnrepro.identity``; see `bnrepro.identity`), how it
  started (``bnrepro.start``: fresh | resumed | skipped) and how it ended (``bnrepro.outcome``:
  completed | diverged | interrupted | failed, with ``bnrepro.failure`` holding the reason).
  A resumed run is the *same* MLflow run, reopened; its metric history is continued, never
  duplicated (points at steps the store already holds are dropped).
* `open_store` checks that the store answers before any data is read or any run is created,
  and serializes the first creation of a SQLite store between parallel jobs.

Reading runs back is the report's business (`bnrepro.report`); this module reads only what it
needs to write truthfully (a run to reopen, the runs of a job's identity, a sweep's counts).
"""

import atexit
import functools
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from bnrepro.config import flatten
from bnrepro.distributed import global_rank
from bnrepro.messages import cause, first_line

log = logging.getLogger(__name__)

STORE_DIR = Path("outputs")
SWEEP_ID_TAG = "bnrepro.sweep_id"
SWEEP_NAME_TAG = "bnrepro.sweep_name"
ROLE_TAG = "bnrepro.role"  # "sweep" for a sweep's parent run, "job" for a training run
FAILURE_TAG = "bnrepro.failure"  # why a run did not complete, one line
HEARTBEAT_TAG = "bnrepro.heartbeat"  # unix seconds of the last sign of life of the process writing the run
IDENTITY_TAG = "bnrepro.identity"  # the job's content identity (bnrepro.identity)
CODE_VERSION_TAG = "bnrepro.code_version"
START_TAG = "bnrepro.start"  # "fresh" | "resumed" | "skipped" (the latest start of this run)
OUTCOME_TAG = "bnrepro.outcome"  # "completed" | "diverged" | "interrupted" | "failed"
DIVERGED_STEP_TAG = "bnrepro.diverged_step"
RESUMES_TAG = "bnrepro.resumes"  # how many times the run was resumed
OUTPUT_DIR_TAG = "bnrepro.output_dir"  # the job's run directory (its checkpoints)
PARENT_TAG = "mlflow.parentRunId"
SWEEP_RUN_ENV = "BNREPRO_SWEEP_RUN_ID"  # set for the jobs of a multirun by `SweepTracking`
GROUPS = ("model", "norm", "optim", "reg", "data", "trainer", "logger", "experiment")
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI wins, then the config, then a SQLite store under outputs/."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI and the fix."""


_OPENED_STORES: dict[str, Any] = {}  # uri -> a client whose store answered (in this process)


def open_store(uri: str):
    """A client for `uri` whose store answered: fails fast, naming the URI, before anything trains.

    A fresh SQLite store is created by the first client that touches it (MLflow runs its schema
    migrations); parallel jobs starting together on a fresh file would race on that, so the first
    touch in each process holds an exclusive lock file beside the database.
    """
    if uri in _OPENED_STORES:
        return _OPENED_STORES[uri]
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    try:
        with _sqlite_init_lock(uri):
            client = _client(uri)  # MLflow creates (migrates) a SQLite store's tables right here
            client.search_experiments(max_results=1)
    except Exception as error:
        raise TrackingError(
            f"MLflow tracking store {uri} is not usable ({cause(error)}); "
            "point MLFLOW_TRACKING_URI (or logger.tracking_uri) at a working store, or move the broken file "
            "aside to start a new one; logger=none runs without tracking"
        ) from error
    _OPENED_STORES[uri] = client
    return client


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """MLflow's REST client retries for minutes; a server that does not answer fails here in seconds."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # the server answered (an older server may lack /health)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it (make tracking-server) "
            "or set MLFLOW_TRACKING_URI / logger.tracking_uri to a reachable store"
        ) from error


class _sqlite_init_lock:
    """An exclusive flock on <database>.lock while a process first touches a SQLite store."""

    def __init__(self, uri: str):
        self.path = None
        if uri.startswith("sqlite:///"):  # (open_store takes it only for a store not yet opened here)
            database = uri[len("sqlite:///") :].split("?", 1)[0]
            if database and database != ":memory:":
                self.path = Path(database + ".lock")
        self._file = None

    def __enter__(self) -> None:
        if self.path is None:
            return
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = None
    if client.tracking_uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ:
        artifacts = (STORE_DIR / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another job of a parallel sweep created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@dataclass
class JobInfo:
    """What Hydra knows about the job being run."""

    choices: dict[str, str] = field(default_factory=dict)  # config group -> chosen option
    overrides: list[str] = field(default_factory=list)  # the command-line overrides of this job
    name: str = ""  # readable run name, from the overrides
    output_dir: str = ""
    sweep_id: str | None = None  # the sweep directory, when the job belongs to a multirun
    config_name: str = "config"
    config_dirs: list[str] = field(default_factory=list)  # config directories added with --config-dir
    parallel_jobs: int = 1  # jobs of this sweep running at once (the joblib launcher's workers)

    @classmethod
    def from_hydra(cls) -> "JobInfo":
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        choices = {group: str(option) for group, option in hydra.runtime.choices.items() if group in GROUPS}
        multirun = hydra.mode == RunMode.MULTIRUN
        return cls(
            choices=choices,
            overrides=list(hydra.overrides.task),
            name=hydra.job.override_dirname or choices.get("experiment", "run"),
            output_dir=hydra.runtime.output_dir,
            sweep_id=str(hydra.sweep.dir) if multirun else None,
            config_name=hydra.job.config_name,
            config_dirs=[s.path for s in hydra.runtime.config_sources if s.provider == "command-line"],
            parallel_jobs=_parallel_jobs(hydra.launcher) if multirun else 1,
        )


def _parallel_jobs(launcher: DictConfig) -> int:
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = int(launcher.get("n_jobs", 1))
    return n_jobs if n_jobs > 0 else max((os.cpu_count() or 1) + 1 + n_jobs, 1)  # joblib: -1 = every core


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the working tree at `cwd` (default: here), or nothing outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": commit.stdout.strip(), "bnrepro.git_dirty": str(bool(status.stdout.strip()))}


class MLflowMetricsLogger(Logger):
    """A Lightning logger that buffers metrics and writes them to one MLflow run in batches, off the training thread.

    `log_metrics` only appends to a list (the module calls it once per logging interval). Every
    `flush_every` metrics, or after `flush_seconds`, the pending ones are handed to one writer
    thread, which writes them with MLflow's batch API (at most 1000 metrics a call), retrying a
    failed write (e.g. a SQLite store locked by a parallel job) before giving up. `flush(wait=True)`
    returns once everything handed over is in the store and raises if a write failed, so no metric
    is lost silently; it runs before every checkpoint, when Lightning finalizes the logger, and when
    the run closes, finished or failed (`TrackedRun.__exit__`).

    The writer thread is ours rather than MLflow's ``synchronous=False`` queue: that queue's thread
    polls with a one-second timeout, so ending a run that used it (``set_terminated``) waits up to a
    second, and it starts two pools of ten threads.
    """

    WRITE_ATTEMPTS = 3
    RETRY_SECONDS = 0.5

    def __init__(self, client, run_id: str, flush_every: int = 500, flush_seconds: float = 15.0):
        super().__init__()
        self._client, self._run_id = client, run_id
        self._flush_every, self._flush_seconds = flush_every, flush_seconds
        self._pending: list = []
        self._last_flush = time.monotonic()
        self._batches = None  # queue.Queue of metric lists for the writer (None: no writer running)
        self._writer: threading.Thread | None = None
        self._unwritten: list = []  # metrics of batches whose writes failed
        self._error: Exception | None = None

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self._run_id

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Params are written once, from the resolved config, by `TrackedRun`."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items())
        if len(self._pending) >= self._flush_every or time.monotonic() - self._last_flush > self._flush_seconds:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Hand every pending metric to the writer; with `wait`, block until all are in the store."""
        if self._pending:
            self._start_writer()
            self._batches.put(self._pending)
            self._pending = []
        self._last_flush = time.monotonic()
        if wait and self._batches is not None:
            self._batches.join()
            if self._error is not None:
                error, count = self._error, len(self._unwritten)
                raise RuntimeError(
                    f"{count} metrics could not be written to MLflow run {self._run_id} "
                    f"({cause(error)})"
                ) from error

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush(wait=True)
        self._stop_writer()

    def _start_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        import queue

        self._batches = queue.Queue()
        self._writer = threading.Thread(target=self._write_batches, name=f"metrics-{self._run_id[:8]}", daemon=True)
        self._writer.start()

    def _stop_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._batches.put(None)
            self._writer.join()
        self._writer = self._batches = None

    def _write_batches(self) -> None:
        while (batch := self._batches.get()) is not None:
            try:
                self._write(batch)
            finally:
                self._batches.task_done()
        self._batches.task_done()

    def _write(self, metrics: list) -> None:
        for chunk in iter_chunks(metrics, 1000):  # MLflow takes at most 1000 metrics a batch
            for attempt in range(1, self.WRITE_ATTEMPTS + 1):
                try:
                    self._client.log_batch(self._run_id, metrics=chunk)  # one transaction: all or nothing
                    break
                except Exception as error:  # reported by the next flush(wait=True)
                    if attempt == self.WRITE_ATTEMPTS:
                        log.warning("could not write %d metrics to MLflow: %s", len(chunk), first_line(error))
                        self._error = error
                        self._unwritten.extend(chunk)
                    else:
                        time.sleep(self.RETRY_SECONDS * attempt)


class TrackedRun:
    """One job's MLflow run, as a context manager that always closes it with a truthful status.

    With `resume_run_id` the existing run is reopened instead of a new one created: same run id,
    params and artifacts kept, and metric points at steps the store already holds are dropped, so
    the history is continued, not duplicated. `identity` (bnrepro.identity.JobIdentity) is tagged.
    """

    def __init__(self, cfg: DictConfig, job: JobInfo, identity=None, resume_run_id: str | None = None):
        self.cfg, self.job, self.identity = cfg, job, identity
        self.client = open_store(tracking_uri(cfg.logger.tracking_uri))
        self.run_id: str | None = resume_run_id
        self.resumed = resume_run_id is not None
        self.logger: MLflowMetricsLogger | None = None
        self.outcome: str | None = None  # set by mark_diverged; else decided when the run closes
        self._heartbeat: _Heartbeat | None = None

    def __enter__(self) -> "TrackedRun":
        if self.resumed:
            self._reopen()
        else:
            experiment_id = _experiment_id(self.client, self.cfg.logger.experiment_name)
            run = self.client.create_run(experiment_id, run_name=self.job.name, tags=self._tags())
            self.run_id = run.info.run_id
            self.logger = MLflowMetricsLogger(self.client, self.run_id)
            self._log_params()
            self.client.log_text(self.run_id, OmegaConf.to_yaml(self.cfg, resolve=True), "config.yaml")
            self.client.log_text(self.run_id, "\n".join(self.job.overrides) + "\n", "overrides.txt")
        self._heartbeat = _Heartbeat(self.client, self.run_id, self.cfg.logger.heartbeat_seconds)
        log.info(
            "MLflow run %s (%s%s) in %s",
            self.run_id, self.job.name, ", resumed" if self.resumed else "", self.client.tracking_uri,
        )
        return self

    def _reopen(self) -> None:
        run = self.client.get_run(self.run_id)
        self.client.update_run(self.run_id, status="RUNNING")
        tags = {**_sweep_tags(self.job), START_TAG: "resumed", RESUMES_TAG: str(int(run.data.tags.get(RESUMES_TAG, "0")) + 1)}
        tags.update({HEARTBEAT_TAG: str(int(time.time())), OUTCOME_TAG: "running"})
        self.set_tags(tags)
        self.logger = _ContinuedMetricsLogger(self.client, self.run_id, logged_through(self.client, run))

    def _tags(self) -> dict[str, str]:
        tags = {**self.job.choices, "seed": str(self.cfg.seed), ROLE_TAG: "job", **git_state()}
        tags.update({START_TAG: "fresh", HEARTBEAT_TAG: str(int(time.time())), OUTCOME_TAG: "running"})
        if self.identity is not None:
            tags.update({IDENTITY_TAG: self.identity.digest, CODE_VERSION_TAG: self.identity.code_version[:5000]})
        if self.job.output_dir:
            tags[OUTPUT_DIR_TAG] = self.job.output_dir
        tags.update(_sweep_tags(self.job))
        return tags

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

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Extra params known only once the run is built (e.g. the global batch size)."""
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        _write_tags(self.client, self.run_id, tags)

    def mark_diverged(self, step: int, loss: float, reason: str) -> None:
        """Divergence is a result (Sec. 4.2.1): the run ends FINISHED with outcome=diverged and the step."""
        self.outcome = "diverged"
        self.set_tags({OUTCOME_TAG: "diverged", DIVERGED_STEP_TAG: step, "bnrepro.diverged_loss": loss, FAILURE_TAG: reason})

    def abandon(self, reason: str) -> None:
        """End the run FAILED from another thread when this process must exit at once (a lost DDP rank)."""
        self.client.set_tag(self.run_id, FAILURE_TAG, reason[:MAX_PARAM_LENGTH])
        self.client.set_terminated(self.run_id, status="FAILED")

    def __exit__(self, kind, error, traceback) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        status, outcome = _ending(error)
        tags = {OUTCOME_TAG: self.outcome or outcome}
        if error is not None:
            tags[FAILURE_TAG] = cause(error)
        try:
            if self.logger is not None:
                self.logger.flush(wait=True)
            self.set_tags(tags)
            self.client.set_terminated(self.run_id, status=status)
        except Exception:
            if error is None:  # the run itself succeeded: its record must not silently stay RUNNING
                raise
            log.exception("could not close MLflow run %s as %s", self.run_id, status)
            return
        log.info("MLflow run %s ended %s (%s)", self.run_id, status, tags[OUTCOME_TAG])


def _ending(error: BaseException | None) -> tuple[str, str]:
    """(MLflow status, bnrepro.outcome) for a run that ended with `error` (None: it completed)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from bnrepro.interruption import RunInterrupted

    if error is None:
        return "FINISHED", "completed"
    if isinstance(error, (RunInterrupted, KeyboardInterrupt, SIGTERMException)):
        return "KILLED", "interrupted"
    return "FAILED", "failed"


class NoTracking:
    """Stands in for `TrackedRun` with `logger=none`: nothing is written anywhere."""

    run_id = None
    logger = None

    def __enter__(self) -> "NoTracking":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def abandon(self, reason: str) -> None:
        pass

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

    `identity` is the job's `bnrepro.identity.JobIdentity`; `resume_run_id` reopens that run.
    """
    if not is_tracked(cfg):
        return NoTracking()
    return TrackedRun(cfg, job, identity=identity, resume_run_id=resume_run_id)


# --- liveness ----------------------------------------------------------------------------------
class _Heartbeat:
    """A daemon thread that refreshes the run's heartbeat tag every `every_seconds` (0: never)."""

    def __init__(self, client, run_id: str, every_seconds: float):
        self._client, self._run_id, self._every = client, run_id, every_seconds
        self._stop = threading.Event()
        self._thread = None
        if every_seconds > 0:
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._client.set_tag(self._run_id, HEARTBEAT_TAG, str(int(time.time())))
            except Exception as error:  # a busy store must not kill training; the next beat retries
                log.warning("heartbeat of run %s not written: %s", self._run_id, first_line(error))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def mark_lost_runs(client, stale_after_seconds: float) -> list[str]:
    """End FAILED every RUNNING run whose heartbeat is older than `stale_after_seconds`; their ids.

    Such a run's process died without closing it (SIGKILL, out-of-memory killer, power loss): it
    would otherwise show RUNNING forever. Its reason tag says since when it was silent.
    """
    if stale_after_seconds <= 0:
        return []
    now = time.time()
    lost = []
    for run in _search_all(client, "attributes.status = 'RUNNING'"):
        last_sign = float(run.data.tags.get(HEARTBEAT_TAG) or run.info.start_time / 1000)
        if now - last_sign <= stale_after_seconds:
            continue
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last_sign))
        reason = f"lost: no heartbeat since {since} ({now - last_sign:.0f} s); the process died without closing the run"
        try:
            client.set_tag(run.info.run_id, FAILURE_TAG, reason)
            client.set_tag(run.info.run_id, OUTCOME_TAG, "failed")
            client.set_terminated(run.info.run_id, status="FAILED", end_time=int(last_sign * 1000))
        except Exception as error:  # another starting job marked it first, or the store is busy
            log.warning("could not mark lost run %s: %s", run.info.run_id, first_line(error))
            continue
        log.warning("marked run %s FAILED: %s", run.info.run_id, reason)
        lost.append(run.info.run_id)
    return lost


# --- finding runs again (resume, sweep re-runs) ------------------------------------------------
def _search_all(client, filter_string: str, order_by: list[str] | None = None) -> list:
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiment_ids:
        return []
    return client.search_runs(experiment_ids, filter_string=filter_string, order_by=order_by, max_results=50_000)


def runs_with_identity(cfg: DictConfig, digest: str) -> list:
    """Job runs of this identity in the store, newest first (any status)."""
    client = open_store(tracking_uri(cfg.logger.tracking_uri))
    return _search_all(
        client,
        f"tags.`{IDENTITY_TAG}` = '{digest}' and tags.`{ROLE_TAG}` = 'job'",
        order_by=["attributes.start_time DESC"],
    )


def find_run(cfg: DictConfig, run_id: str):
    """The run with this id in the configured store, or None."""
    from mlflow.exceptions import MlflowException

    client = open_store(tracking_uri(cfg.logger.tracking_uri))
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def record_skipped(cfg: DictConfig, job: JobInfo, run_id: str) -> None:
    """A re-run job found `run_id` FINISHED: count it in this sweep (tags) instead of running again."""
    if not is_tracked(cfg):
        return
    client = open_store(tracking_uri(cfg.logger.tracking_uri))
    _write_tags(client, run_id, {START_TAG: "skipped", **_sweep_tags(job)})


def _sweep_tags(job: JobInfo) -> dict[str, str]:
    """The tags that count a job in its sweep: the sweep id and, when there is one, the parent run."""
    if not job.sweep_id:
        return {}
    parent = os.environ.get(SWEEP_RUN_ENV)
    return {SWEEP_ID_TAG: job.sweep_id, **({PARENT_TAG: parent} if parent else {})}


def _write_tags(client, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in tags.items()])


def logged_through(client, run) -> dict[str, int]:
    """metric key -> the last step the store holds for it."""
    return {
        key: max((point.step for point in client.get_metric_history(run.info.run_id, key)), default=-1)
        for key in run.data.metrics
    }


class _ContinuedMetricsLogger(MLflowMetricsLogger):
    """The logger of a resumed run: drops points at steps the store already holds for that key."""

    def __init__(self, client, run_id: str, logged_through: Mapping[str, int]):
        super().__init__(client, run_id)
        self._logged_through = dict(logged_through)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None:
            metrics = {key: value for key, value in metrics.items() if step > self._logged_through.get(key, -1)}
        if metrics:
            super().log_metrics(metrics, step)


try:  # Hydra callbacks are only needed when Hydra launches the job.
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class SweepTracking(_HydraCallback):
    """Hydra callback: one parent MLflow run per multirun, closed with the sweep's outcome."""

    _heartbeat: "_Heartbeat | None" = None
    _abandon: Any = None  # atexit hook that ends the parent KILLED if the sweep stops before its end

    def __getstate__(self) -> dict:
        # The joblib launcher pickles Hydra's callbacks into its workers; the heartbeat thread stays here.
        return {**self.__dict__, "_heartbeat": None, "_abandon": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.logger.kind == "none":
            return
        client = open_store(tracking_uri(config.logger.tracking_uri))
        mark_lost_runs(client, config.logger.stale_after_seconds)
        sweep_id = str(config.hydra.sweep.dir)
        name = config.get("sweep_name") or sweep_id
        tags = {ROLE_TAG: "sweep", SWEEP_ID_TAG: sweep_id, SWEEP_NAME_TAG: name, **git_state()}
        tags[HEARTBEAT_TAG] = str(int(time.time()))
        run = client.create_run(_experiment_id(client, config.logger.experiment_name), run_name=name, tags=tags)
        client.log_text(run.info.run_id, "\n".join(config.hydra.overrides.task) + "\n", "sweep_overrides.txt")
        os.environ[SWEEP_RUN_ENV] = run.info.run_id
        self._heartbeat = _Heartbeat(client, run.info.run_id, config.logger.heartbeat_seconds)
        # A stopped sweep (Ctrl+C, SIGTERM, a job's SystemExit) skips on_multirun_end: close the parent on exit.
        self._abandon = functools.partial(_close_abandoned_sweep, tracking_uri(config.logger.tracking_uri), run.info.run_id)
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
            client = _client(tracking_uri(config.logger.tracking_uri))
            error = job_return._return_value  # `return_value` would re-raise it
            why = cause(error) if isinstance(error, BaseException) else f"{type(error).__name__}: see its run"
            reason = f"job {' '.join(job_return.overrides or [])} failed: {why}"
            client.set_tag(parent, FAILURE_TAG, reason[:MAX_PARAM_LENGTH])
            client.set_terminated(parent, status="FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._stop_heartbeat()
        parent = os.environ.pop(SWEEP_RUN_ENV, None)
        if parent:
            client = _client(tracking_uri(config.logger.tracking_uri))
            summary = sweep_summary(client, str(config.hydra.sweep.dir))
            client.set_tag(parent, "bnrepro.summary", summary)
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
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def _close_abandoned_sweep(uri: str, run_id: str) -> None:
    """At interpreter exit: a sweep parent still RUNNING was stopped before its end; say so."""
    try:
        client = _client(uri)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, FAILURE_TAG, "sweep stopped before all its jobs ran (interrupted, or a job exited)")
            client.set_terminated(run_id, status="KILLED")
    except Exception as error:  # the interpreter is exiting; the heartbeat check will catch it later
        log.warning("could not close sweep run %s: %s", run_id, first_line(error))


def sweep_summary(client, sweep_id: str) -> str:
    """'N jobs: a run, b resumed, c skipped (already finished); d diverged' from the jobs' tags."""
    jobs = _search_all(client, f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and tags.`{ROLE_TAG}` = 'job'")
    starts = [run.data.tags.get(START_TAG, "fresh") for run in jobs]
    outcomes = [run.data.tags.get(OUTCOME_TAG, "") for run in jobs]
    line = (
        f"{len(jobs)} jobs: {starts.count('fresh')} run, {starts.count('resumed')} resumed, "
        f"{starts.count('skipped')} skipped (already finished)"
    )
    if outcomes.count("diverged"):
        line += f"; {outcomes.count('diverged')} diverged"
    return line


def iter_chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_report(parent_run_id: str, directory: str | Path, uri: str | None = None, artifact_path: str = "report") -> None:
    """Upload a sweep's report (figures, report.md, claims.json) as artifacts of its parent run."""
    _client(tracking_uri(uri)).log_artifacts(parent_run_id, str(directory), artifact_path=artifact_path)
