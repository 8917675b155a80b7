"""Heartbeats and lost runs: a run left RUNNING by a process that died (SIGKILL, power loss) is
found by its stale heartbeat tag when the next job or sweep starts, and ended FAILED."""

import logging
import threading
import time

from bnrepro.messages import first_line
from bnrepro.tracking.store import search_runs
from bnrepro.tracking.tags import FAILURE_TAG, HEARTBEAT_TAG, OUTCOME_TAG

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread that refreshes the run's heartbeat tag every `every_seconds` (0: never)."""

    def __init__(self, client, run_id: str, every_seconds: float):
        self._client, self._run_id, self._every = client, run_id, every_seconds
        self._stop = threading.Event()
        self._thread = None
        if every_seconds > 0:
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._client.set_tag(self._run_id, HEARTBEAT_TAG, str(int(time.time())))
            except Exception as error:  # a busy store must not kill training; the next beat retries
                log.warning("heartbeat of run %s not written: %s", self._run_id, first_line(error))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def mark_lost_runs(client, stale_after_seconds: float) -> list[str]:
    """End FAILED every RUNNING run whose heartbeat is older than `stale_after_seconds`; their ids.

    Such a run's process died without closing it (SIGKILL, out-of-memory killer, power loss): it
    would otherwise show RUNNING forever. Its reason tag says since when it was silent.
    """
    if stale_after_seconds <= 0:
        return []
    now = time.time()
    lost = []
    for run in search_runs(client, "attributes.status = 'RUNNING'"):
        last_sign = float(run.data.tags.get(HEARTBEAT_TAG) or run.info.start_time / 1000)
        if now - last_sign <= stale_after_seconds:
            continue
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last_sign))
        reason = f"lost: no heartbeat since {since} ({now - last_sign:.0f} s); the process died without closing the run"
        try:
            client.set_tag(run.info.run_id, FAILURE_TAG, reason)
            client.set_tag(run.info.run_id, OUTCOME_TAG, "failed")
            client.set_terminated(run.info.run_id, status="FAILED", end_time=int(last_sign * 1000))
        except Exception as error:  # another starting job marked it first, or the store is busy
            log.warning("could not mark lost run %s: %s", run.info.run_id, first_line(error))
            continue
        log.warning("marked run %s FAILED: %s", run.info.run_id, reason)
        lost.append(run.info.run_id)
    return lost
