"""A job's claim on its output directory, so that no job is trained by two processes at once.

Two identical commands started at the same moment (the same sweep twice into one folder, or a
sweep re-run while the first still runs) give their jobs the same directories. Each job holds an
exclusive lock on ``<output dir>/.bnrepro-job.lock`` from before it decides how to start (fresh,
resumed or skipped: `lifecycle.resume`) until its run is closed. The second process waits there,
then finds the job FINISHED and skips it, or resumes it if the first was stopped. The lock is an
`fcntl.flock`, which the kernel releases when its process dies, so a killed job leaves no stale claim.
"""

import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from bnrepro.lifecycle.preflight import check_writable

log = logging.getLogger(__name__)

CLAIM_FILE = ".bnrepro-job.lock"


@contextlib.contextmanager
def job_claim(output_dir: str | None) -> Iterator[None]:
    """Hold the job's claim on `output_dir` for the block, waiting while another process holds it.
    While held, the claim file names the holding process (`running_jobs`)."""
    if not output_dir:  # a direct train() call without a run directory: nothing to share
        yield
        return
    check_writable(output_dir)
    path = Path(output_dir) / CLAIM_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as claim:
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is running the job in %s: waiting for it to finish", output_dir)
            fcntl.flock(claim, fcntl.LOCK_EX)
        try:
            _write_holder(claim, str(os.getpid()))
            yield
        finally:
            _write_holder(claim, "")  # then closing the file releases the lock


def _write_holder(claim, text: str) -> None:
    """Name the claim's holder ("" when letting go); a stop signal waits until the file says it whole."""
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        claim.truncate(0)
        claim.write(text)
        claim.flush()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)


def running_jobs(folder: str | Path, processes: set[int]) -> list[Path]:
    """The job directories under `folder` whose claim one of `processes` holds now (a holder killed outright
    leaves its pid behind, but is no longer one of the live `processes`)."""
    running = []
    for path in sorted(Path(folder).rglob(CLAIM_FILE)):
        holder = path.read_text().strip()
        if holder.isdigit() and int(holder) in processes:
            running.append(path.parent)
    return running
