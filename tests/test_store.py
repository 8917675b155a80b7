"""The tracking store: a new SQLite store is created atomically, so an interrupted first start leaves
a usable store or none, never a half-migrated file."""

import os
import signal
import subprocess
import sys
import time

import pytest

from bnrepro.tracking.store import open_store

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
