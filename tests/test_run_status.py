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
from pathlib import Path

import pytest
from cli_inprocess import cli
from conftest import QUICK, ROOT, compose_config
from helpers import LockStoreWhenTrainingEnds, StopAtStep, StoreLock, on_log_line, signal_on_log_line, wait_for
from mlflow.tracking import MlflowClient

from bnrepro import run as run_module
from bnrepro.callbacks.checkpointing import LAST, checkpoint_dir, load_checkpoint
from bnrepro.lifecycle.interruption import RunInterrupted
from bnrepro.lifecycle.sweep_stop import STOPPING_FILE, invocation_dir
from bnrepro.run import train
from bnrepro.tracking.job import JobInfo
from bnrepro.tracking.metrics import MLflowMetricsLogger
from bnrepro.tracking.run import TrackedRun
from bnrepro.tracking.tags import (
    EVAL_EXAMPLES_PARAM,
    FAILURE_TAG,
    HEARTBEAT_SECONDS_TAG,
    HEARTBEAT_TAG,
    OUTCOME_TAG,
    ROLE_TAG,
    STALE_AFTER_TAG,
    SWEEP_INVOCATION_ENV,
)

ENDLESS = ("trainer.max_steps=1000000", "callbacks.checkpoint.every_n_steps=20", *QUICK)


def all_runs(store: str) -> list:
    client = MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def start_training(tmp_path, *overrides: str, multirun: bool = False) -> subprocess.Popen:
    dirs = [f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    command = [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), *ENDLESS, *overrides, *dirs]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


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


def test_sigterm_while_the_finished_run_closes_leaves_it_finished_and_exits_0(store, tmp_path, capsys):
    with signal_on_log_line("bnrepro.tracking.run", "^closing MLflow run .* as", signal.SIGTERM) as fault:
        code = cli(tmp_path, "trainer.max_steps=20", *QUICK)

    assert fault.fired and code == 0
    (run,) = all_runs(store)
    assert run.info.status == "FINISHED" and run.data.tags[OUTCOME_TAG] == "completed"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "bnrepro: received SIGTERM after training had finished; the run is recorded FINISHED"
    )


def test_a_second_ctrl_c_while_the_stopped_run_closes_still_ends_it_killed(store, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "GracefulStop", lambda: StopAtStep(20, "sigint"))
    with signal_on_log_line("bnrepro.tracking.run", "^closing MLflow run .* as", signal.SIGINT) as fault:
        code = cli(tmp_path, "trainer.max_steps=60", *QUICK)

    assert fault.fired and code == 128 + signal.SIGINT
    (run,) = all_runs(store)
    assert run.info.status == "KILLED" and "SIGINT at step 20" in run.data.tags[FAILURE_TAG]


def test_the_same_signal_twice_at_once_is_one_request_and_still_stops_at_the_step_boundary(
    store, tmp_path, monkeypatch
):
    # A terminal's Ctrl+C reaches a parallel sweep's job directly and again through the sweep's process.
    monkeypatch.setattr(run_module, "GracefulStop", lambda: StopAtStep(20, "sigterm", times=2))
    assert cli(tmp_path, "trainer.max_steps=60", "callbacks.checkpoint.every_n_steps=10", *QUICK) == 143
    (run,) = all_runs(store)
    assert run.info.status == "KILLED" and run.data.tags[FAILURE_TAG].endswith("SIGTERM at step 20")
    assert load_checkpoint(checkpoint_dir(tmp_path / "run") / LAST)["global_step"] == 20  # saved at the stop


def test_a_queued_job_of_a_stopped_sweep_stops_before_opening_a_run(store, tmp_path, monkeypatch):
    monkeypatch.setenv(SWEEP_INVOCATION_ENV, "this-invocation")
    stopping = invocation_dir(tmp_path / "sweep") / STOPPING_FILE
    stopping.parent.mkdir(parents=True)
    stopping.write_text(str(int(signal.SIGTERM)))  # what SweepStop writes before passing the signal on
    job = JobInfo(output_dir=str(tmp_path / "sweep" / "2_seed=2"), sweep_id=str(tmp_path / "sweep"))

    with pytest.raises(RunInterrupted, match="interrupted by SIGTERM"):
        train(compose_config("trainer.max_steps=10", *QUICK), job)
    assert all_runs(store) == []


@pytest.mark.slow
def test_a_store_locked_while_the_run_closes_still_ends_it_finished_with_every_metric(store, tmp_path, monkeypatch):
    lock = StoreLock(Path(store.removeprefix("sqlite:///")))
    monkeypatch.setattr(run_module, "GracefulStop", lambda: LockStoreWhenTrainingEnds(lock))
    monkeypatch.setattr(MLflowMetricsLogger, "WRITE_ATTEMPTS", 1)  # one 20 s busy wait, not three
    with on_log_line("bnrepro.tracking.run", "^closing MLflow run .* failed", lock.release) as released:
        train(compose_config("trainer.max_steps=20", *QUICK), JobInfo())

    assert released.fired  # the first closing attempt met the lock
    (run,) = all_runs(store)
    assert run.info.status == "FINISHED" and run.data.params[EVAL_EXAMPLES_PARAM]
    history = MlflowClient(store).get_metric_history(run.info.run_id, "train/loss")
    assert sorted(point.step for point in history) == [10, 20]


@pytest.mark.slow
def test_a_store_locked_past_every_retry_is_one_line_exit_2_naming_the_store(store, tmp_path, capsys, monkeypatch):
    lock = StoreLock(Path(store.removeprefix("sqlite:///")))
    monkeypatch.setattr(run_module, "GracefulStop", lambda: LockStoreWhenTrainingEnds(lock))
    monkeypatch.setattr(MLflowMetricsLogger, "WRITE_ATTEMPTS", 1)  # one 20 s busy wait per write, not three
    monkeypatch.setattr(TrackedRun, "CLOSE_ATTEMPTS", 1)
    try:
        code = cli(tmp_path, "trainer.max_steps=20", *QUICK)
    finally:
        lock.release()

    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("bnrepro: error: could not close MLflow run ") and "as FINISHED after 1 attempts" in last
    assert "Make the store writable" in last
    (run,) = all_runs(store)
    assert run.info.status == "RUNNING"  # its heartbeat has stopped: a later start marks it lost


def job_run(client: MlflowClient, silent_for: float, heartbeat_seconds: float = 60, stale_after: float = 600) -> str:
    """A RUNNING bnrepro job run whose process last beat `silent_for` seconds ago, with its own liveness settings."""
    tags = {ROLE_TAG: "job", HEARTBEAT_SECONDS_TAG: str(heartbeat_seconds), STALE_AFTER_TAG: str(stale_after)}
    tags[HEARTBEAT_TAG] = str(int(time.time() - silent_for))
    experiment = client.get_experiment_by_name("elsewhere") or client.get_experiment(
        client.create_experiment("elsewhere")
    )
    return client.create_run(experiment.experiment_id, tags=tags).info.run_id


def test_run_with_a_stale_heartbeat_is_marked_failed_when_the_next_job_starts(store):
    client = MlflowClient(store)
    dead = job_run(client, silent_for=3600)  # a process that died an hour ago, never closing its run
    alive = job_run(client, silent_for=0)

    train(compose_config("trainer.max_steps=10", *QUICK), JobInfo())

    marked = client.get_run(dead)
    assert marked.info.status == "FAILED" and marked.info.end_time // 1000 == int(marked.data.tags[HEARTBEAT_TAG])
    assert marked.data.tags[FAILURE_TAG].startswith("lost: no heartbeat since")
    assert client.get_run(alive).info.status == "RUNNING"


def test_a_live_run_is_judged_by_its_own_heartbeat_settings_not_the_starting_jobs(store):
    client = MlflowClient(store)
    live = job_run(client, silent_for=30, heartbeat_seconds=60, stale_after=600)  # between two of its beats

    train(
        compose_config("trainer.max_steps=10", "logger.heartbeat_seconds=1", "logger.stale_after_seconds=5", *QUICK),
        JobInfo(),
    )

    assert client.get_run(live).info.status == "RUNNING"


def test_a_run_with_a_short_own_threshold_is_lost_even_for_a_patient_starting_job(store):
    client = MlflowClient(store)
    dead = job_run(client, silent_for=30, heartbeat_seconds=1, stale_after=5)

    train(compose_config("trainer.max_steps=10", *QUICK), JobInfo())  # its own threshold (600 s) does not apply

    assert client.get_run(dead).info.status == "FAILED"


def test_runs_of_other_projects_are_never_marked_lost(store):
    client = MlflowClient(store)
    foreign = client.create_run(client.create_experiment("another project"), tags={HEARTBEAT_TAG: "0"})

    train(compose_config("trainer.max_steps=10", *QUICK), JobInfo())

    assert client.get_run(foreign.info.run_id).info.status == "RUNNING"


def test_every_run_records_the_heartbeat_settings_it_is_judged_by(store):
    train(
        compose_config("trainer.max_steps=10", "logger.heartbeat_seconds=7", "logger.stale_after_seconds=70", *QUICK),
        JobInfo(),
    )

    (run,) = all_runs(store)
    assert (run.data.tags[HEARTBEAT_SECONDS_TAG], run.data.tags[STALE_AFTER_TAG]) == ("7.0", "70.0")
