"""The fault-injection harness behind tests/test_faults.py: `train.py` in a process of its own, a fault
injected at a named moment (a line of its output, a file appearing), and what it left in the store.

A case is a table row (`Fault`): the command, then steps, each a moment and what to do there (send
signals to the process or to its whole group as a terminal's Ctrl+C does, SIGKILL it, hold the
store's lock for a while, fill its file system), then what the process and the store must show.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conftest import QUICK, ROOT
from helpers import StoreLock, fill
from mlflow.tracking import MlflowClient

from bnrepro.lifecycle.claim import CLAIM_FILE
from bnrepro.tracking.tags import FAILURE_TAG, ROLE_TAG

ENDLESS = ("trainer.max_steps=1000000", "callbacks.checkpoint.every_n_steps=20", *QUICK)
TIMEOUT = 180.0  # seconds for any one moment to come, and for the process to end after its fault


class TrainProcess:
    """`python train.py ARGS` in a new session (its own process group), its output collected line by line."""

    def __init__(self, folder: Path, args: tuple[str, ...], env: dict[str, str]):
        self.folder, self.lines, self._new_line = folder, [], threading.Condition()
        dirs = [f"hydra.run.dir={folder}/run", f"hydra.sweep.dir={folder}/sweep"]
        command = [sys.executable, str(ROOT / "train.py"), *args, *dirs]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()

    def wait_until(self, arrived: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not arrived():
            if self.process.poll() is not None:
                self._reader.join(timeout=10)
                if arrived():
                    return
                raise AssertionError(f"train.py exited ({self.process.returncode}) before {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"{what} did not come within {TIMEOUT:.0f} s:\n{self.tail()}")
            with self._new_line:
                self._new_line.wait(timeout=0.1)

    def signal(self, signum: int, group: bool = False) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum) if group else self.process.send_signal(signum)

    def finish(self) -> int:
        try:
            code = self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError(f"train.py did not end within {TIMEOUT:.0f} s of its fault:\n{self.tail()}") from None
        self._reader.join(timeout=10)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def tail(self, count: int = 40) -> str:
        return "\n".join(self.lines[-count:])


# --- moments -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Line:
    """The first output line (after any earlier step's) matching the regular expression."""

    pattern: str

    def wait(self, run: TrainProcess, after: int) -> int:
        found: list[int] = []

        def arrived() -> bool:
            found[:] = [i for i in range(after, len(run.lines)) if re.search(self.pattern, run.lines[i])][:1]
            return bool(found)

        run.wait_until(arrived, f"a line matching {self.pattern!r}")
        return found[0] + 1


@dataclass(frozen=True)
class Files:
    """`count` files matching the glob pattern under the case's folder."""

    pattern: str
    count: int = 1

    def wait(self, run: TrainProcess, after: int) -> int:
        run.wait_until(lambda: len(list(run.folder.glob(self.pattern))) >= self.count, f"{self.count} x {self.pattern}")
        return len(run.lines)


# --- faults --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    """`signals` one after another, `gap` seconds apart, to the process or to its whole group."""

    signals: tuple[int, ...]
    group: bool = False
    gap: float = 0.0

    def inject(self, run: TrainProcess, case: "Case") -> None:
        for i, signum in enumerate(self.signals):
            if i:
                time.sleep(self.gap)
            run.signal(signum, self.group)


@dataclass(frozen=True)
class SendToAJob:
    """`signum` to one process running a job of the sweep (the holder its claim file names)."""

    signum: int

    def inject(self, run: TrainProcess, case: "Case") -> None:
        holders = [path.read_text().strip() for path in run.folder.glob(f"sweep/*/{CLAIM_FILE}")]
        os.kill(int(next(holder for holder in holders if holder)), self.signum)


@dataclass(frozen=True)
class LockStore:
    """Another writer holds the SQLite store's exclusive lock for `seconds`."""

    seconds: float

    def inject(self, run: TrainProcess, case: "Case") -> None:
        lock = StoreLock(case.database)
        lock.take()
        threading.Timer(self.seconds, lock.release).start()


@dataclass(frozen=True)
class FillDisk:
    """Write a file on the store's (small) file system until it is full."""

    def inject(self, run: TrainProcess, case: "Case") -> None:
        fill(case.database.parent)


# --- a case ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    at: Line | Files
    do: Send | SendToAJob | LockStore | FillDisk


@dataclass(frozen=True)
class Fault:
    """One row of the fault table: what runs, what happens to it when, and what it must leave."""

    name: str
    args: tuple[str, ...]
    steps: tuple[Step, ...]
    exit_code: int
    statuses: dict[str, list[str]]  # role (job, sweep) -> the sorted statuses of its runs
    reasons: dict[str, str] = field(default_factory=dict)  # role -> text each of its unfinished runs' reason holds
    last_line: str = ""  # how the output's last line starts ("": no check)
    then: tuple[str, ...] = ()  # a later start on the same store (it must succeed), before the store is read
    then_after: float = 0.0  # seconds between the end of the process and that later start
    new_store: bool = False  # no store yet: the process creates it (else a fresh copy of a migrated one)
    small_filesystem: bool = False  # the store on a 3 MB tmpfs (skipped where mounting is not allowed)


@dataclass
class Case:
    fault: Fault
    folder: Path
    database: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.database}"


def run_case(case: Case) -> tuple[int, str]:
    """Run the case's command, inject its faults at their moments; the exit status and the whole output."""
    fault = case.fault
    run = TrainProcess(case.folder, fault.args, {"MLFLOW_TRACKING_URI": case.uri})
    after = 0
    for step in fault.steps:
        after = step.at.wait(run, after)
        step.do.inject(run, case)
    code = run.finish()
    if fault.then:
        time.sleep(fault.then_after)
        later = TrainProcess(case.folder / "later", fault.then, {"MLFLOW_TRACKING_URI": case.uri})
        assert later.finish() == 0, later.tail()
    return code, run.output


def runs_by_role(uri: str) -> dict[str, list]:
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    roles: dict[str, list] = {}
    for run in runs:
        roles.setdefault(run.data.tags.get(ROLE_TAG, ""), []).append(run)
    return roles


def statuses(roles: dict[str, list]) -> dict[str, list[str]]:
    return {role: sorted(run.info.status for run in runs) for role, runs in roles.items()}


def unmet_reasons(roles: dict[str, list], expected: dict[str, str]) -> list[str]:
    """The failure tags of unfinished runs that lack the expected text of their role."""
    return [
        run.data.tags.get(FAILURE_TAG, "")
        for role, text in expected.items()
        for run in roles.get(role, [])
        if run.info.status != "FINISHED" and text not in run.data.tags.get(FAILURE_TAG, "")
    ]
