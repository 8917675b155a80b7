"""The Lightning logger that writes a run's metrics to MLflow in batches, off the training thread."""

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from bnrepro.messages import cause, first_line
from bnrepro.tracking.store import TrackingError, iter_chunks

log = logging.getLogger(__name__)


class MLflowMetricsLogger(Logger):
    """A Lightning logger that buffers metrics and writes them to one MLflow run in batches, off the training thread.

    `log_metrics` only appends to a list (the module calls it once per logging interval). Every
    `flush_every` metrics, or after `flush_seconds`, the pending ones are handed to one writer
    thread, which writes them with MLflow's batch API (at most 1000 metrics a call), retrying a
    failed write (e.g. a SQLite store locked by a parallel job) before giving up. `flush(wait=True)`
    returns once everything handed over is in the store and raises if a write failed, so no metric
    is lost silently; it runs before every checkpoint, when Lightning finalizes the logger, and when
    the run closes, finished or failed (`bnrepro.tracking.run.TrackedRun`).

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
        """Hand every pending metric to the writer; with `wait`, block until all are in the store.

        Metrics whose write failed before (a store locked past the writer's retries) are handed over again.
        """
        if self._unwritten:
            self._pending, self._unwritten, self._error = [*self._unwritten, *self._pending], [], None
        if self._pending:
            self._start_writer()
            self._batches.put(self._pending)
            self._pending = []
        self._last_flush = time.monotonic()
        if wait and self._batches is not None:
            self._batches.join()
            if self._error is not None:
                error, count = self._error, len(self._unwritten)
                raise TrackingError(
                    f"{count} metrics could not be written to MLflow run {self._run_id} in "
                    f"{self._client.tracking_uri} ({cause(error)}); make the store writable (free disk space, "
                    "permissions, the process holding it locked), then resume the run"
                ) from error

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Lightning ends a fit or validate: write everything; what a busy store refuses now, the run's
        closing (`TrackedRun`, with its retries) writes, so a locked store does not fail a trained run."""
        try:
            self.flush(wait=True)
        except TrackingError as error:
            log.warning("%s; retrying when the run closes", error)
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


class ContinuedMetricsLogger(MLflowMetricsLogger):
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
