"""Heartbeats and lost runs: a run left RUNNING by a process that died (SIGKILL, power loss) is
found by its stale heartbeat tag when the next job or sweep starts, and ended FAILED. Each run
records its own heartbeat interval and stale threshold (`liveness_tags`) and is judged by those."""

import logging
import threading
import time

from bnrepro.messages import first_line
from bnrepro.tracking.store import find_run, search_runs
from bnrepro.tracking.tags import (
    FAILURE_TAG,
    HEARTBEAT_SECONDS_TAG,
    HEARTBEAT_TAG,
    OUTCOME_TAG,
    ROLE_TAG,
    STALE_AFTER_TAG,
)

log = logging.getLogger(__name__)

BNREPRO_ROLES = ("job", "sweep")  # the ROLE_TAG values of the runs this project creates


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


def liveness_tags(heartbeat_seconds: float, stale_after_seconds: float) -> dict[str, str]:
    """A fresh heartbeat plus the settings the run is to be judged by: its own, whoever judges it later."""
    return {
        HEARTBEAT_TAG: str(int(time.time())),
        HEARTBEAT_SECONDS_TAG: str(heartbeat_seconds),
        STALE_AFTER_TAG: str(stale_after_seconds),
    }


def silence_limit(tags: dict[str, str]) -> float | None:
    """How long the run may be silent before it counts as lost, by its own recorded settings (None: never).

    At least two of its own heartbeat intervals, so a beat delayed by a busy store is never taken for death.
    """
    stale, beat = float(tags.get(STALE_AFTER_TAG) or 0), float(tags.get(HEARTBEAT_SECONDS_TAG) or 0)
    return max(stale, 2 * beat) if stale > 0 else None


def last_sign_of_life(run) -> float:
    return float(run.data.tags.get(HEARTBEAT_TAG) or run.info.start_time / 1000)


def is_lost(run, now: float) -> bool:
    """A RUNNING run of this project whose heartbeat is older than its own limit (see `silence_limit`)."""
    if run.info.status != "RUNNING" or run.data.tags.get(ROLE_TAG) not in BNREPRO_ROLES:
        return False
    limit = silence_limit(run.data.tags)
    return limit is not None and now - last_sign_of_life(run) > limit


def mark_lost_runs(client) -> list[str]:
    """End FAILED every RUNNING run of this project whose heartbeat is stale by its own settings; their ids.

    Such a run's process died without closing it (SIGKILL, out-of-memory killer, power loss): it
    would otherwise show RUNNING forever. Only runs bnrepro created (its role tag) that recorded their
    liveness settings are candidates, and each is judged by those settings, never the caller's: runs
    of other projects on a shared store, and live runs with a slower heartbeat than the caller's, are
    left alone. Its reason tag says since when it was silent.
    """
    lost = []
    for candidate in search_runs(client, f"attributes.status = 'RUNNING' and tags.`{STALE_AFTER_TAG}` IS NOT NULL"):
        run_id = candidate.info.run_id
        run = find_run(client, run_id)  # read again: its heartbeat may have been refreshed since the search
        now = time.time()
        if run is None or not is_lost(run, now):
            continue
        last_sign = last_sign_of_life(run)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last_sign))
        reason = f"lost: no heartbeat since {since} ({now - last_sign:.0f} s); the process died without closing the run"
        try:
            client.set_tag(run_id, FAILURE_TAG, reason)
            client.set_tag(run_id, OUTCOME_TAG, "failed")
            client.set_terminated(run_id, status="FAILED", end_time=int(last_sign * 1000))
        except Exception as error:  # another starting job marked it first, or the store is busy
            log.warning("could not mark lost run %s: %s", run_id, first_line(error))
            continue
        log.warning("marked run %s FAILED: %s", run_id, reason)
        lost.append(run_id)
    return lost
