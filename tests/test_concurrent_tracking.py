"""Concurrent tracking: parallel jobs writing to one local SQLite store lose nothing.

4 processes start at once on a *fresh* store (the worst case: all of them create its tables) and
each records 3 runs one after another through the same code path as a training job
(`tracking.open_run` -> TrackedRun, its metrics logger with asynchronous batches, tags, the
heartbeat thread). Afterwards every run must be FINISHED and every logged step present, exactly once.

Run as a script, this file imports everything once and then forks the 4 writer processes (no
thread exists yet at that point), so the test pays one interpreter start-up, not four.
"""

import os
import subprocess
import sys
import traceback
from pathlib import Path

from mlflow.tracking import MlflowClient

WORKERS, REPETITIONS, STEPS = 4, 3, 200
METRICS = ("train/loss", "val/loss", "val/acc")


def value(worker: int, repetition: int, step: int, key: str) -> float:
    return worker * 1000 + repetition * 100 + step / 1000 + METRICS.index(key) / 10


def write_runs(worker: int) -> None:
    """One writer: REPETITIONS runs of STEPS steps, flushing asynchronous batches often, tags and heartbeats on."""
    from conftest import compose_config

    from bnrepro.tracking.job import JobInfo
    from bnrepro.tracking.run import open_run

    cfg = compose_config("trainer.max_steps=1", "logger.heartbeat_seconds=0.1", "logger.stale_after_seconds=0")
    for repetition in range(REPETITIONS):
        job = JobInfo(choices={"norm": "bn"}, name=f"worker{worker}-rep{repetition}")
        with open_run(cfg, job) as run:
            for step in range(1, STEPS + 1):
                run.logger.log_metrics({key: value(worker, repetition, step, key) for key in METRICS}, step=step)
                if step % 20 == 0:
                    run.logger.flush()  # an asynchronous batch, racing the other processes' writes
                    run.set_tags({"progress": step})
            run.set_tags({"worker": worker, "repetition": repetition})


def fork_writers() -> int:
    """Fork WORKERS writer processes at once; how many of them failed."""
    children = []
    for worker in range(WORKERS):
        pid = os.fork()
        if pid == 0:  # the writer
            code = 0
            try:
                write_runs(worker)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    return sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children)


def test_four_concurrent_writers_three_runs_each_lose_no_run_and_no_step(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted((r.data.tags["worker"], r.data.tags["repetition"]) for r in runs) == sorted(
        (str(w), str(r)) for w in range(WORKERS) for r in range(REPETITIONS)
    )
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        worker, repetition = int(run.data.tags["worker"]), int(run.data.tags["repetition"])
        for key in METRICS:
            points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert points == [(step, value(worker, repetition, step, key)) for step in range(1, STEPS + 1)]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import conftest  # noqa: F401

    import bnrepro.tracking.run  # noqa: F401  (import everything before forking)

    sys.exit(fork_writers())
