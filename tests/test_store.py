"""The tracking store: a new SQLite store is created atomically, so an interrupted first start leaves
a usable store or none, never a half-migrated file; where a store keeps its artifacts, and how a new
experiment is set up for the MLflow UI."""

import os
import signal
import subprocess
import sys
import time

import pytest
from cli_inprocess import cli
from conftest import QUICK
from mlflow.tracking import MlflowClient

from bnrepro.tracking.store import artifact_root, experiment_id, open_store
from bnrepro.tracking.tags import EXPERIMENT_KIND_TAG

MIGRATION_HALFWAY = 400_000  # bytes
CREATE_STORE = "import sys; from bnrepro.tracking.store import open_store; open_store(sys.argv[1])"


def size_of(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed or removed since it was listed
        return 0


def signal_when_a_file_grows(process: subprocess.Popen, folder, pattern: str, size: int, signum: int) -> None:
    """Fault injection: send `signum` to `process` once a file matching `pattern` in `folder` holds `size` bytes."""
    while not any(size_of(path) >= size for path in folder.glob(pattern)):
        assert process.poll() is None, f"the process ended before {pattern} reached {size} bytes"
        time.sleep(0.001)
    process.send_signal(signum)


@pytest.mark.slow
def test_ctrl_c_while_mlflow_creates_a_new_store_leaves_a_store_the_next_start_can_open(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", CREATE_STORE, uri], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    # A new store's file grows to about 950 KB through MLflow's migration steps: stop it halfway.
    signal_when_a_file_grows(process, tmp_path, "mlflow.db*", MIGRATION_HALFWAY, signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode != 0  # the creation was interrupted, not finished before the signal

    client = open_store(uri)

    assert [experiment.name for experiment in client.search_experiments()] == ["Default"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_a_partial_store_left_by_a_killed_creation_is_rebuilt(tmp_path):
    (tmp_path / "mlflow.db.creating").write_bytes(b"SQLite format 3\x00 half of a migration")

    client = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")

    assert [experiment.name for experiment in client.search_experiments()] == ["Default"]
    assert not (tmp_path / "mlflow.db.creating").exists()


def test_a_sqlite_stores_artifacts_go_beside_its_database_file(store, tmp_path):
    client = open_store(store)
    experiment = client.get_experiment(experiment_id(client, "fig1"))
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_a_tracking_server_decides_where_artifacts_go():
    assert artifact_root("http://127.0.0.1:5001") is None


def test_a_new_experiment_opens_on_the_model_training_view(store):
    client = open_store(store)
    experiment = client.get_experiment(experiment_id(client, "fig1"))
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_run_writes_nothing_into_the_directory_it_was_started_from(store, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli(tmp_path / "out", "trainer.max_steps=10", *QUICK) == 0
    assert list(elsewhere.iterdir()) == []
    (run,) = MlflowClient(store).search_runs([e.experiment_id for e in MlflowClient(store).search_experiments()])
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
