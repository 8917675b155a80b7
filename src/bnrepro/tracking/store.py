"""Opening the MLflow store and finding runs in it: the one paged search that resume, lost-run
marking, the sweep summary and the report all use. Imports MLflow only inside functions, never torch."""

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bnrepro.messages import cause
from bnrepro.tracking.tags import EXPERIMENT_KIND_TAG, IDENTITY_TAG, MAX_PARAM_LENGTH, ROLE_TAG


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI and the fix."""


MODEL_TRAINING = "custom_model_development"  # the experiment kind whose UI opens on the runs list (MLflow 3)
_OPENED_STORES: dict[str, Any] = {}  # uri -> a client whose store answered (in this process)


def client_for(uri: str):
    """An MLflow client for `uri`, without checking that the store answers (see `open_store`)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def open_store(uri: str):
    """A client for `uri` whose store answered: fails fast, naming the URI, before anything trains.

    A new SQLite store is created atomically (`_create_sqlite_store`); parallel jobs starting together
    on a new store would race on that, so the first touch in each process holds an exclusive lock file
    beside the database.
    """
    if uri in _OPENED_STORES:
        return _OPENED_STORES[uri]
    logging.getLogger("mlflow.store.db.utils").addFilter(_failed_statement_tracebacks)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    _check_sqlite_writable(uri)
    try:
        with _SqliteInitLock(uri) as database:
            if database is not None and not _holds_a_store(database):
                _create_sqlite_store(database, uri)
            client = client_for(uri)
            client.search_experiments(max_results=1)
    except Exception as error:
        raise TrackingError(
            f"MLflow tracking store {uri} is not usable ({cause(error)}); "
            "point MLFLOW_TRACKING_URI (or logger.tracking_uri) at a working store, or move the broken file "
            "aside to start a new one; logger=none runs without tracking"
        ) from error
    _OPENED_STORES[uri] = client
    return client


def _failed_statement_tracebacks(record: logging.LogRecord) -> bool:
    """A logging filter: MLflow 3.17 logs every failed SQL statement with its traceback (ERROR) just before
    raising it as an MlflowException. bnrepro retries those writes and reports what still fails in one line
    naming the store and the fix (a full disk printed ~1,300 lines of them), so they stay out of the console."""
    return record.levelno < logging.ERROR


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


def _check_sqlite_writable(uri: str) -> None:
    """A SQLite store that cannot be written (read-only file system or file) fails before any run is created."""
    database = sqlite_file(uri)
    if database is None:
        return
    existing = next(path for path in (database, *database.parents) if path.exists())
    folder = existing if existing.is_dir() else existing.parent
    unwritable = [path for path in {existing, folder} if not os.access(path, os.W_OK)]
    if unwritable:
        raise TrackingError(
            f"MLflow tracking store {uri} is read-only ({unwritable[0]} cannot be written); make it writable, "
            "or set MLFLOW_TRACKING_URI to another store, or logger=none to run untracked"
        )


def _holds_a_store(database: Path) -> bool:
    return database.is_file() and database.stat().st_size > 0  # (SQLite may leave an empty file on connect)


def _create_sqlite_store(database: Path, uri: str) -> None:
    """Create and migrate a new SQLite store under a temporary name, then rename it into place.

    MLflow creates a store's tables in many migration steps; a signal among them (Ctrl+C in the first
    seconds of `make demo`) would leave a file that no later start can migrate ("table ... already
    exists"). Built aside and renamed (`os.replace`, atomic on POSIX), an interrupted first start
    leaves no store at all, and the next start builds it again (the caller holds `_SqliteInitLock`).
    """
    partial = database.with_name(database.name + ".creating")
    for leftover in (partial, partial.with_name(partial.name + "-journal")):  # from an interrupted creation
        leftover.unlink(missing_ok=True)
    query = uri.partition("?")[2]
    client_for(f"sqlite:///{partial}" + (f"?{query}" if query else "")).search_experiments(max_results=1)
    os.replace(partial, database)


class _SqliteInitLock:
    """An exclusive flock on <database>.lock while a process first touches a SQLite store; yields the database."""

    def __init__(self, uri: str):
        self.database = sqlite_file(uri)  # (open_store takes it only for a store not yet opened here)
        self._file = None

    def __enter__(self) -> Path | None:
        if self.database is None:
            return None
        import fcntl

        self.database.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.database.with_name(self.database.name + ".lock"), "a")
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self.database

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created if absent (artifacts beside a SQLite store: `artifact_root`)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # (made before bnrepro set it)
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return experiment.experiment_id
    try:
        experiment_id = client.create_experiment(name, artifact_location=artifact_root(client.tracking_uri))
    except Exception:  # another job of a parallel sweep created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
    # Without this tag the MLflow 3 UI opens the experiment on its GenAI overview (traces, tokens), not the runs.
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment_id


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: for a SQLite store, `mlartifacts/` beside the database file
    (MLflow's own default is ./mlruns of whatever directory the command runs in); for a tracking server or
    another database, None: the server's --artifacts-destination or MLflow's default-artifact-root decides."""
    database = sqlite_file(uri)
    return (database.resolve().parent / "mlartifacts").as_uri() if database else None


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for another store or an in-memory database)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(database) if database and database != ":memory:" else None


SEARCH_PAGE = 1000


def search_runs(
    client, filter_string: str = "", order_by: list[str] | None = None, experiment_ids: Sequence[str] | None = None
) -> list:
    """Every run matching `filter_string` in `experiment_ids` (default: all experiments), page by page."""
    if experiment_ids is None:
        experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiment_ids:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs(
            list(experiment_ids), filter_string=filter_string, order_by=order_by,
            max_results=SEARCH_PAGE, page_token=token,
        )  # fmt: skip
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_with_identity(client, digest: str) -> list:
    """Job runs of this identity in the store, newest first (any status)."""
    query = f"tags.`{IDENTITY_TAG}` = '{digest}' and tags.`{ROLE_TAG}` = 'job'"
    return search_runs(client, query, order_by=["attributes.start_time DESC"])


def find_run(client, run_id: str):
    """The run with this id in the store, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def write_tags(client, run_id: str, tags: Mapping[str, Any]) -> None:
    """All of `tags` on the run in one call, each value cut to MLflow's limit."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in tags.items()])


def logged_through(client, run) -> dict[str, int]:
    """metric key -> the last step the store holds for it."""
    return {
        key: max((point.step for point in client.get_metric_history(run.info.run_id, key)), default=-1)
        for key in run.data.metrics
    }


def iter_chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
