"""Run status: a stopped or dead process never leaves its run RUNNING.

SIGTERM (pre-emption) and SIGINT (Ctrl+C) end the run KILLED with the reason, after flushing the
metrics and saving a checkpoint; a SIGKILLed process's run is found by its stale heartbeat and
marked FAILED when the next job starts in the same store.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from cli_inprocess import cli
from conftest import QUICK, ROOT, compose_config
from helpers import StopAtStep
from mlflow.tracking import MlflowClient

from bnrepro import run as run_module
from bnrepro.callbacks.checkpointing import LAST, checkpoint_dir, load_checkpoint
from bnrepro.run import train
from bnrepro.tracking.job import JobInfo
from bnrepro.tracking.tags import FAILURE_TAG, HEARTBEAT_TAG, OUTCOME_TAG

ENDLESS = ("trainer.max_steps=1000000", "callbacks.checkpoint.every_n_steps=20", *QUICK)


def all_runs(store: str) -> list:
    client = MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def start_training(tmp_path, *overrides: str, multirun: bool = False) -> subprocess.Popen:
    dirs = [f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    command = [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), *ENDLESS, *overrides, *dirs]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"train.py exited early ({process.returncode}): {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("train.py did not reach the expected state in time")
        time.sleep(0.2)


def test_sigterm_flushes_checkpoints_and_ends_the_run_killed_with_the_reason(store, tmp_path):
    process = start_training(tmp_path)
    wait_for(lambda: (checkpoint_dir(tmp_path / "run") / LAST).exists(), process)  # trained 20+ steps
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 128 + signal.SIGTERM
    (run,) = all_runs(store)
    step = load_checkpoint(checkpoint_dir(tmp_path / "run") / LAST)["global_step"]
    assert run.info.status == "KILLED" and run.data.tags[OUTCOME_TAG] == "interrupted"
    assert run.data.tags[FAILURE_TAG] == f"RunInterrupted: interrupted by SIGTERM at step {step}"
    assert stderr.strip().splitlines()[-1] == (
        f"bnrepro: interrupted by SIGTERM at step {step}; "
        f"continue it with the same command plus resume={run.info.run_id}"
    )
    logged = [m.step for m in MlflowClient(store).get_metric_history(run.info.run_id, "train/loss")]
    assert logged[-1] == step  # every metric up to the stop was flushed


def test_sigint_ends_the_run_killed(store, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "GracefulStop", lambda: StopAtStep(20, "sigint"))
    assert cli(tmp_path, "trainer.max_steps=60", *QUICK) == 128 + signal.SIGINT
    (run,) = all_runs(store)
    assert run.info.status == "KILLED" and "SIGINT at step 20" in run.data.tags[FAILURE_TAG]


def test_run_with_a_stale_heartbeat_is_marked_failed_when_the_next_job_starts(store):
    client = MlflowClient(store)
    silent_since = int(time.time()) - 3600  # a process that died an hour ago, never closing its run
    dead = client.create_run(client.create_experiment("elsewhere"), tags={HEARTBEAT_TAG: str(silent_since)})
    alive = client.create_run(
        client.get_experiment_by_name("elsewhere").experiment_id, tags={HEARTBEAT_TAG: str(int(time.time()))}
    )

    train(compose_config("trainer.max_steps=10", *QUICK), JobInfo())  # default: silent for 600 s = lost

    marked = client.get_run(dead.info.run_id)
    assert marked.info.status == "FAILED" and marked.info.end_time == silent_since * 1000
    assert marked.data.tags[FAILURE_TAG].startswith("lost: no heartbeat since")
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"


@pytest.mark.slow
def test_sigkilled_run_is_marked_failed_when_the_next_job_starts(store, tmp_path):
    process = start_training(tmp_path, "logger.heartbeat_seconds=1")
    wait_for(lambda: (checkpoint_dir(tmp_path / "run") / LAST).exists(), process)
    process.kill()  # SIGKILL: no handler runs, the run stays RUNNING in the store
    process.communicate(timeout=60)
    (lost,) = all_runs(store)
    assert lost.info.status == "RUNNING"
    while time.time() - float(MlflowClient(store).get_run(lost.info.run_id).data.tags[HEARTBEAT_TAG]) <= 3:
        time.sleep(0.2)

    train(
        compose_config("trainer.max_steps=10", "logger.heartbeat_seconds=1", "logger.stale_after_seconds=3", *QUICK),
        JobInfo(),
    )

    marked = MlflowClient(store).get_run(lost.info.run_id)
    assert marked.info.status == "FAILED" and marked.data.tags[OUTCOME_TAG] == "failed"
    assert marked.data.tags[FAILURE_TAG].startswith("lost: no heartbeat since")


@pytest.mark.slow
def test_sigterm_during_a_sweep_ends_the_job_and_the_sweep_killed(store, tmp_path):
    process = start_training(tmp_path, "seed=0,1", multirun=True)
    wait_for(lambda: any((tmp_path / "sweep").glob("*/checkpoints/last.ckpt")), process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)

    assert process.returncode == 128 + signal.SIGTERM
    runs = {run.data.tags["bnrepro.role"]: run for run in all_runs(store)}  # job seed=1 never started
    assert runs["job"].info.status == "KILLED" and runs["sweep"].info.status == "KILLED"
    assert "sweep stopped before all its jobs ran" in runs["sweep"].data.tags[FAILURE_TAG]
