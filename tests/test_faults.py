"""The fault-injection table (slow): each row runs `train.py` in its own process, injects a fault at a
named moment (a log line, a file appearing) and checks what the user and the store are left with:
the exit status, every run's status and reason, the last line printed, and no traceback.

The faults a single process can show in-process (a signal while the run closes, a locked store
while closing, bad input) are also tested fast in test_run_status.py and test_bad_input.py.
"""

import shutil
import signal

import pytest
from conftest import QUICK, store_template
from faults import (
    ENDLESS,
    Case,
    Fault,
    Files,
    FillDisk,
    Line,
    LockStore,
    Send,
    SendToAJob,
    Step,
    run_case,
    runs_by_role,
    statuses,
    unmet_reasons,
)

SIGINT, SIGTERM, SIGKILL = signal.SIGINT, signal.SIGTERM, signal.SIGKILL
CHECKPOINT = Files("run/checkpoints/last.ckpt")  # the run has trained 20 steps and saved them
CLOSING_FINISHED = Line(r"closing MLflow run \w+ as FINISHED")  # training has ended; the run starts closing
PARALLEL = ("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1,2", *ENDLESS)
BOTH_RUNNING = Files("sweep/*/checkpoints/last.ckpt", count=2)  # (the third job waits for a free worker)
IDLE_WORKER = ("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0", *ENDLESS)  # 1 job, 2 workers
JOB_RUNNING = Files("sweep/*/checkpoints/last.ckpt")
SHORT = ("trainer.max_steps=40", *QUICK)

FAULTS = [
    Fault(
        "SIGTERM while training", ENDLESS, (Step(CHECKPOINT, Send((SIGTERM,))),), 143,
        {"job": ["KILLED"]}, {"job": "SIGTERM at step"}, "bnrepro: interrupted by SIGTERM at step",
    ),
    Fault(
        "Ctrl+C while training", ENDLESS, (Step(CHECKPOINT, Send((SIGINT,), group=True)),), 130,
        {"job": ["KILLED"]}, {"job": "SIGINT at step"}, "bnrepro: interrupted by SIGINT at step",
    ),
    Fault(
        "two Ctrl+C 45 ms apart while training", ENDLESS,
        (Step(CHECKPOINT, Send((SIGINT, SIGINT), group=True, gap=0.045)),), 130,
        {"job": ["KILLED"]}, {"job": "SIGINT at step"}, "bnrepro: interrupted by SIGINT at step",
    ),
    Fault(
        "SIGTERM as the finished run closes", SHORT, (Step(CLOSING_FINISHED, Send((SIGTERM,))),), 0,
        {"job": ["FINISHED"]}, last_line="bnrepro: received SIGTERM after training had finished",
    ),
    Fault(
        "Ctrl+C again as the stopped run closes", ENDLESS,
        (
            Step(CHECKPOINT, Send((SIGINT,), group=True)),
            Step(Line(r"closing MLflow run \w+ as KILLED"), Send((SIGINT,), group=True)),
        ),
        130, {"job": ["KILLED"]}, {"job": "SIGINT"},
    ),
    Fault(
        "the store locked for 8 s as the run closes", SHORT, (Step(CLOSING_FINISHED, LockStore(8.0)),), 0,
        {"job": ["FINISHED"]},
    ),
    Fault(
        "SIGKILL while training, then another start", (*ENDLESS, "logger.heartbeat_seconds=1",
        "logger.stale_after_seconds=3"), (Step(CHECKPOINT, Send((SIGKILL,))),), -SIGKILL,
        {"job": ["FAILED", "FINISHED"]}, {"job": "lost: no heartbeat since"},
        then=("trainer.max_steps=10", *QUICK), then_after=4.0,
    ),
    Fault(
        "Ctrl+C while the first start creates the store", SHORT,
        (Step(Line("Creating initial MLflow database tables"), Send((SIGINT,), group=True)),), 130,
        {"job": ["FINISHED"]}, then=("trainer.max_steps=10", *QUICK), new_store=True,
    ),
    Fault(
        "SIGTERM to a sweep", ("-m", "seed=0,1", *ENDLESS), (Step(Files("sweep/*/checkpoints/last.ckpt"),
        Send((SIGTERM,))),), 143, {"job": ["KILLED"], "sweep": ["KILLED"]},
        {"job": "SIGTERM at step", "sweep": "sweep stopped by SIGTERM before all its jobs ran"},
    ),
    Fault(
        "SIGTERM to a sweep after a failed job", ("-m", "seed=-1,0", *ENDLESS), (Step(Files(
        "sweep/*/checkpoints/last.ckpt"), Send((SIGTERM,))),), 143, {"job": ["KILLED"], "sweep": ["KILLED"]},
        {"sweep": "sweep stopped by SIGTERM before all its jobs ran; 1 of 2 jobs failed: seed=-1 (ConfigError"},
    ),
    Fault(
        "SIGTERM to a parallel sweep", PARALLEL, (Step(BOTH_RUNNING, Send((SIGTERM,))),), 143,
        {"job": ["KILLED", "KILLED"], "sweep": ["KILLED"]}, {"job": "SIGTERM at step"},
        "bnrepro: sweep stopped by SIGTERM;",
    ),
    Fault(
        "SIGINT to a parallel sweep's process", PARALLEL, (Step(BOTH_RUNNING, Send((SIGINT,))),), 130,
        {"job": ["KILLED", "KILLED"], "sweep": ["KILLED"]}, {"job": "SIGINT at step"},
        "bnrepro: sweep stopped by SIGINT;",
    ),
    Fault(
        "Ctrl+C to a parallel sweep", PARALLEL, (Step(BOTH_RUNNING, Send((SIGINT,), group=True)),), 130,
        {"job": ["KILLED", "KILLED"], "sweep": ["KILLED"]}, {"job": "SIGINT at step"},
        "bnrepro: sweep stopped by SIGINT;",
    ),
    Fault(
        "SIGTERM to one job of a parallel sweep", PARALLEL, (Step(BOTH_RUNNING, SendToAJob(SIGTERM)),), 143,
        {"job": ["KILLED", "KILLED"], "sweep": ["KILLED"]}, {"job": "SIGTERM at step"},
        "bnrepro: sweep stopped by SIGTERM;",
    ),
    Fault(
        "Ctrl+C to a parallel sweep with an idle worker", IDLE_WORKER,
        (Step(JOB_RUNNING, Send((SIGINT,), group=True)),), 130,
        {"job": ["KILLED"], "sweep": ["KILLED"]}, {"job": "SIGINT at step"},
        "bnrepro: sweep stopped by SIGINT;",
    ),
    Fault(
        "SIGTERM to a parallel sweep with an idle worker", IDLE_WORKER, (Step(JOB_RUNNING, Send((SIGTERM,))),), 143,
        {"job": ["KILLED"], "sweep": ["KILLED"]}, {"job": "SIGTERM at step"},
        "bnrepro: sweep stopped by SIGTERM;",
    ),
    Fault(
        "a rejected value in a parallel sweep", ("-m", "hydra/launcher=parallel", "seed=-1,0", *SHORT), (), 2,
        {"job": ["FINISHED"], "sweep": ["FAILED"]}, {"sweep": "1 of 2 jobs failed: seed=-1 (ConfigError"},
        "bnrepro: error: sweep seed=-1,0: 1 of 2 jobs failed",
    ),
    Fault(
        "the store's disk fills while training", ENDLESS, (Step(CHECKPOINT, FillDisk()),), 2,
        {"job": ["RUNNING"]}, last_line="bnrepro: error: ", small_filesystem=True,
    ),
]  # fmt: skip


@pytest.fixture
def case(request, tmp_path) -> Case:
    fault: Fault = request.param
    if fault.small_filesystem:
        folder = request.getfixturevalue("small_filesystem")  # a tmpfs holding a fresh store
        return Case(fault, tmp_path, folder / "mlflow.db")
    database = tmp_path / "mlflow.db"
    if not fault.new_store:
        shutil.copyfile(store_template(), database)
    return Case(fault, tmp_path, database)


@pytest.mark.slow
@pytest.mark.parametrize("case", FAULTS, ids=[fault.name for fault in FAULTS], indirect=True)
def test_fault(case: Case):
    code, output = run_case(case)

    fault = case.fault
    assert code == fault.exit_code, output[-3000:]
    roles = runs_by_role(case.uri)
    assert statuses(roles) == fault.statuses
    assert unmet_reasons(roles, fault.reasons) == []
    assert "Traceback" not in output, output[-3000:]
    if fault.last_line:
        assert output.strip().splitlines()[-1].startswith(fault.last_line), output[-1000:]
