"""The cluster path for real: sweeps through submitit's local executor (hydra/launcher=local, the same
launcher code as hydra/launcher=slurm), each job in its own process, pre-empted jobs requeued."""

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import QUICK, ROOT
from helpers import wait_for
from mlflow.tracking import MlflowClient

from bnrepro.callbacks.checkpointing import CHECKPOINT_DIR as CHECKPOINTS
from bnrepro.callbacks.checkpointing import LAST
from bnrepro.lifecycle.interruption import PREEMPTION_SIGNAL
from bnrepro.tracking.tags import IDENTITY_TAG, ROLE_TAG, START_TAG

pytestmark = pytest.mark.slow

SETTINGS = ("hydra/launcher=local", "callbacks.checkpoint.every_n_steps=20", *QUICK)


def submit_sweep(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "train.py"), "-m", *SETTINGS, *overrides, f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def job_runs(store: str) -> list:
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [run for run in runs if run.data.tags[ROLE_TAG] == "job"]


def submitit_task(pid: int) -> int:
    """The job process submitit's local controller started under the sweep process `pid`."""
    (task,) = [
        p.pid for p in psutil.Process(pid).children(recursive=True) if "submitit.core._submit" in " ".join(p.cmdline())
    ]
    return task


def test_a_local_submitit_sweep_runs_each_job_once_and_tracks_it_once(store, tmp_path):
    sweep = submit_sweep(tmp_path, "seed=0,1", "trainer.max_steps=20")
    _, output = sweep.communicate(timeout=600)

    assert sweep.returncode == 0, output[-3000:]
    runs = job_runs(store)
    assert sorted(run.data.tags["seed"] for run in runs) == ["0", "1"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert len({run.data.tags[IDENTITY_TAG] for run in runs}) == 2  # one run per job identity


def test_a_job_sent_the_preemption_signal_checkpoints_is_requeued_and_resumes_into_its_run(store, tmp_path):
    sweep = submit_sweep(tmp_path, "seed=0", "trainer.max_steps=4000")
    wait_for(lambda: any(tmp_path.glob(f"0_*/{CHECKPOINTS}/{LAST}")), sweep)  # job 0 trained 20+ steps
    os.kill(submitit_task(sweep.pid), PREEMPTION_SIGNAL)
    _, output = sweep.communicate(timeout=600)

    assert sweep.returncode == 0, output[-3000:]
    (run,) = job_runs(store)
    assert run.info.status == "FINISHED" and run.data.tags[START_TAG] == "resumed"  # requeued into its run
    steps = [m.step for m in MlflowClient(store).get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(10, 4001, 10))  # continuous across the requeue, no step logged twice
