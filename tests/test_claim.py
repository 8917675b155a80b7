"""A job's claim on its directory: two identical sweeps started at once never train the same job twice."""

import os
import subprocess
import sys

import pytest
from conftest import QUICK, ROOT
from mlflow.tracking import MlflowClient

from bnrepro.lifecycle.claim import job_claim, running_jobs
from bnrepro.tracking.tags import ROLE_TAG, START_TAG


def start_sweep(tmp_path) -> subprocess.Popen:
    command = [
        sys.executable, str(ROOT / "train.py"), "-m", "seed=0,1", "trainer.max_steps=200", *QUICK,
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_two_identical_sweeps_started_at_once_train_each_job_once(store, tmp_path):
    sweeps = [start_sweep(tmp_path), start_sweep(tmp_path)]
    for sweep in sweeps:
        _, stderr = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, stderr[-2000:]

    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.`{ROLE_TAG}` = 'job'")
    assert len(runs) == 2 and all(run.info.status == "FINISHED" for run in runs)
    assert sorted(run.data.tags[START_TAG] for run in runs) == ["skipped", "skipped"]  # the second sweep's view
    for run in runs:
        steps = [point.step for point in client.get_metric_history(run.info.run_id, "train/loss")]
        assert len(steps) == len(set(steps)) == 20  # one writer: every step once


def hold_claim_in_another_process(folder) -> subprocess.Popen:
    """A process that holds the job claim on `folder` until its standard input closes."""
    code = (
        "import sys; from bnrepro.lifecycle.claim import job_claim\n"
        f"with job_claim({str(folder)!r}):\n    print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_claim_names_its_holder_until_the_job_lets_go(tmp_path):
    running, done = tmp_path / "0_seed=0", tmp_path / "1_seed=1"
    holder = hold_claim_in_another_process(running)
    with job_claim(str(done)):
        pass
    try:
        assert running_jobs(tmp_path, {holder.pid}) == [running]
        assert running_jobs(tmp_path, {holder.pid + 1}) == []  # held, but not by one of the given processes
    finally:
        holder.communicate("")
    assert running_jobs(tmp_path, {holder.pid}) == []
