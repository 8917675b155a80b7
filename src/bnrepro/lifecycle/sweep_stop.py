"""Stopping a sweep whose jobs run in other processes (hydra/launcher=parallel, local, slurm) without
leaving their runs RUNNING.

joblib answers an exception in the sweep process by SIGKILLing its workers (joblib 1.6,
`LokyBackend.abort_everything`), and loky treats a worker that died of a signal as a broken pool and
SIGKILLs the others. So:

* workers ignore SIGINT / SIGTERM outside a job (`ignore_stop_signals`, their initializer:
  `tracking.sweep.parallel_workers`); a job installs its own handlers for its duration
  (`lifecycle.interruption.interruptible`) and puts the ignoring back after;
* on SIGINT / SIGTERM the sweep process (`SweepStop`) first marks this invocation stopped (a queued
  job that starts now stops before it opens a run: `requested_stop`), passes the signal on to its
  children (a terminal's Ctrl+C reaches them already; a job takes the same signal twice within a
  second as one request), waits until none of its descendants holds a job claim (`lifecycle.claim`:
  every running job has closed its run KILLED), then stops with one line.

Under hydra/launcher=local, submitit's controller process stands between: it passes SIGTERM on to
its jobs, but answers SIGINT by killing them about a second later (submitit 1.5.4), so stop such a
sweep with SIGTERM.

The serial launcher runs each job in the sweep process under the job's own handlers, so there this
only stops the sweep between jobs.
"""

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

from bnrepro.atomic_write import write_atomically
from bnrepro.lifecycle.claim import running_jobs
from bnrepro.tracking.tags import SWEEP_INVOCATION_ENV

log = logging.getLogger(__name__)

SWEEP_STATE_DIR = ".bnrepro-sweep"  # under the sweep directory: a folder per invocation of the sweep
STOPPING_FILE = "stopping"  # in it: the number of the signal that stopped the invocation
SWEEP_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def invocation_dir(sweep_dir: str | Path, invocation: str | None = None) -> Path:
    """This invocation's folder of sweep state (its failed jobs, whether it was stopped)."""
    return Path(sweep_dir) / SWEEP_STATE_DIR / (invocation or os.environ.get(SWEEP_INVOCATION_ENV, "none"))


def clear_invocation(sweep_dir: str | Path) -> None:
    """Remove this invocation's sweep state (its folder; the parent folder too, unless another invocation of
    the same sweep still uses it)."""
    folder = invocation_dir(sweep_dir)
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()


def mark_stopped(sweep_dir: str | Path, signum: int) -> None:
    """Record that a signal stopped this invocation of the sweep (by its process, or by a job that was stopped)."""
    if SWEEP_INVOCATION_ENV in os.environ:
        marker = invocation_dir(sweep_dir) / STOPPING_FILE
        write_atomically(marker, lambda file: file.write(str(int(signum)).encode()))


def requested_stop(sweep_dir: str | None) -> int | None:
    """The signal that stopped this invocation of the sweep `sweep_dir`, or None (not stopped, or no sweep)."""
    if not sweep_dir or SWEEP_INVOCATION_ENV not in os.environ:
        return None
    marker = invocation_dir(sweep_dir) / STOPPING_FILE
    return int(marker.read_text()) if marker.exists() else None


def ignore_stop_signals() -> None:
    """A worker process's initializer: a signal meant for the job it runs reaches it only during the job."""
    for signum in SWEEP_STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def descendants() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def pass_on(signum: int) -> None:
    """Send `signum` to the sweep process's children: joblib's workers, or submitit's controller (which passes
    SIGTERM on to its jobs). Not to their own children (a job's DDP ranks and DataLoader workers: the job
    stops them)."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signum)


class SweepStop:
    """The sweep process's SIGINT / SIGTERM handler around its jobs (see the module docstring)."""

    WAIT_SECONDS = 360.0  # a job's closing retries against a locked store take ~2-5 min at worst

    def __init__(self, sweep_dir: str | Path) -> None:
        self.sweep_dir, self.stopping, self.previous = Path(sweep_dir), False, {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in SWEEP_STOP_SIGNALS:
                self.previous[signum] = signal.signal(signum, self.handle)

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def handle(self, signum: int, frame) -> None:
        first = not self.stopping
        if first:
            self.stopping = True
            mark_stopped(self.sweep_dir, signum)
        pass_on(signum)
        if not first:  # the first call is still waiting for the jobs
            return
        name = signal.Signals(signum).name
        log.warning("received %s: waiting for the running jobs to close their runs", name)
        still_running = self._wait_for_jobs()
        if still_running:
            log.error("jobs still running after %.0f s: %s", self.WAIT_SECONDS, ", ".join(map(str, still_running)))
        print(
            f"bnrepro: sweep stopped by {name}; the jobs that were running are recorded KILLED: "
            "re-run the same command to continue it",
            file=sys.stderr,
        )
        raise SystemExit(128 + signum)

    def _wait_for_jobs(self, poll: float = 0.2) -> list[Path]:
        """Wait until no process of this sweep holds a job claim; the jobs still running at the deadline."""
        deadline = time.monotonic() + self.WAIT_SECONDS
        while (running := running_jobs(self.sweep_dir, descendants())) and time.monotonic() < deadline:
            time.sleep(poll)
        return running
