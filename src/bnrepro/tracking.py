"""Everything that writes to MLflow, in one place.

* `TrackedRun` opens one job's run (params, tags, config artifacts), hands Lightning a metrics
  logger bound to it, and closes it with a truthful status: FINISHED, FAILED (with the reason as a
  tag) or KILLED.
* `SweepTracking` is a Hydra callback: a multirun gets one parent run, and every job's run is its
  child (tagged with the sweep id), so a sweep reads as one unit in the MLflow UI and the report.
* `MLflowMetricsLogger` buffers metrics and writes them in asynchronous batches, so tracking costs
  next to nothing per training step; every pending metric is flushed when the run closes.

Reading runs back is the report's business (`bnrepro.report`), not this module's.
"""

import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

STORE_DIR = Path("outputs")
SWEEP_ID_TAG = "bnrepro.sweep_id"
SWEEP_NAME_TAG = "bnrepro.sweep_name"
ROLE_TAG = "bnrepro.role"  # "sweep" for a sweep's parent run, "job" for a training run
FAILURE_TAG = "bnrepro.failure"
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
        )


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Resolved config as dotted keys -> string values (lists kept whole, as YAML flow text)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = str(value)
    return flat


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the working tree, or nothing outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": commit.stdout.strip(), "bnrepro.git_dirty": str(bool(status.stdout.strip()))}


class MLflowMetricsLogger(Logger):
    """A Lightning logger that buffers metrics and writes them to one MLflow run in async batches."""

    def __init__(self, client, run_id: str, flush_every: int = 500, flush_seconds: float = 15.0):
        super().__init__()
        self._client, self._run_id = client, run_id
        self._flush_every, self._flush_seconds = flush_every, flush_seconds
        self._pending: list = []
        self._operations: list = []
        self._last_flush = time.monotonic()

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
        """Queue every pending metric for writing; with `wait`, block until all are in the store."""
        for batch in iter_chunks(self._pending, 1000):  # MLflow takes at most 1000 metrics a batch
            self._operations.append(self._client.log_batch(self._run_id, metrics=batch, synchronous=False))
        self._pending.clear()
        self._last_flush = time.monotonic()
        if wait:
            for operation in self._operations:
                operation.wait()
            self._operations.clear()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush(wait=True)


class TrackedRun:
    """One job's MLflow run, as a context manager that always closes it with a truthful status."""

    def __init__(self, cfg: DictConfig, job: JobInfo):
        self.cfg, self.job = cfg, job
        self.client = _client(tracking_uri(cfg.logger.tracking_uri))
        self.run_id: str | None = None
        self.logger: MLflowMetricsLogger | None = None

    def __enter__(self) -> "TrackedRun":
        experiment_id = _experiment_id(self.client, self.cfg.logger.experiment_name)
        run = self.client.create_run(experiment_id, run_name=self.job.name, tags=self._tags())
        self.run_id = run.info.run_id
        self.logger = MLflowMetricsLogger(self.client, self.run_id)
        self._log_params()
        self.client.log_text(self.run_id, OmegaConf.to_yaml(self.cfg, resolve=True), "config.yaml")
        self.client.log_text(self.run_id, "\n".join(self.job.overrides) + "\n", "overrides.txt")
        log.info("MLflow run %s (%s) in %s", self.run_id, self.job.name, self.client.tracking_uri)
        return self

    def _tags(self) -> dict[str, str]:
        tags = {**self.job.choices, "seed": str(self.cfg.seed), ROLE_TAG: "job", **git_state()}
        if self.job.output_dir:
            tags["bnrepro.output_dir"] = self.job.output_dir
        if self.job.sweep_id:
            tags[SWEEP_ID_TAG] = self.job.sweep_id
            parent = os.environ.get(SWEEP_RUN_ENV)
            if parent:
                tags[PARENT_TAG] = parent
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
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def __exit__(self, kind, error, traceback) -> None:
        if self.logger is not None:
            self.logger.flush(wait=True)
        if error is None:
            status = "FINISHED"
        else:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:MAX_PARAM_LENGTH]
            self.client.set_tag(self.run_id, FAILURE_TAG, reason)
        self.client.set_terminated(self.run_id, status=status)
        log.info("MLflow run %s ended %s", self.run_id, status)


class NoTracking:
    """Stands in for `TrackedRun` with `logger=none`: nothing is written anywhere."""

    run_id = None
    logger = None

    def __enter__(self) -> "NoTracking":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass


def open_run(cfg: DictConfig, job: JobInfo) -> TrackedRun | NoTracking:
    """The run to record this job in; only global rank 0 writes (other DDP ranks get `NoTracking`)."""
    if cfg.logger.kind == "none" or rank_zero_only.rank != 0:
        return NoTracking()
    return TrackedRun(cfg, job)


try:  # Hydra callbacks are only needed when Hydra launches the job.
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class SweepTracking(_HydraCallback):
    """Hydra callback: one parent MLflow run per multirun, closed with the sweep's outcome."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.logger.kind == "none":
            return
        client = _client(tracking_uri(config.logger.tracking_uri))
        sweep_id = str(config.hydra.sweep.dir)
        name = config.get("sweep_name") or sweep_id
        tags = {ROLE_TAG: "sweep", SWEEP_ID_TAG: sweep_id, SWEEP_NAME_TAG: name, **git_state()}
        run = client.create_run(_experiment_id(client, config.logger.experiment_name), run_name=name, tags=tags)
        client.log_text(run.info.run_id, "\n".join(config.hydra.overrides.task) + "\n", "sweep_overrides.txt")
        os.environ[SWEEP_RUN_ENV] = run.info.run_id
        log.info("sweep %s: parent MLflow run %s", name, run.info.run_id)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        parent = os.environ.get(SWEEP_RUN_ENV)
        if parent and job_return.status == JobStatus.FAILED:
            # Hydra aborts the sweep after a failed job without calling on_multirun_end: close it here.
            _client(tracking_uri(config.logger.tracking_uri)).set_terminated(parent, status="FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = os.environ.pop(SWEEP_RUN_ENV, None)
        if parent:
            _client(tracking_uri(config.logger.tracking_uri)).set_terminated(parent, status="FINISHED")


def iter_chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
