"""How a job starts: fresh, resumed from a checkpoint into its MLflow run, or skipped as already done.

``resume=<run id>``      continue that MLflow run from its directory's last.ckpt (same run id).
``resume=<output dir>``  continue from <dir>/checkpoints/last.ckpt; the checkpoint names its run.
``resume=auto``          look the job's identity (bnrepro.lifecycle.identity) up in the store: skip it if a run
                         with that identity FINISHED, else continue the unfinished one whose
                         checkpoint got furthest (the newest of equals), else start fresh.
``resume=null``          (default) ``auto`` for the jobs of a multirun, fresh for a single run: so
                         re-running a sweep command skips finished jobs, resumes interrupted
                         ones and runs the rest.
``rerun=true``           always fresh.

An explicit resume must match the checkpoint's configuration (keys that change the result; see
`bnrepro.lifecycle.identity.EXCLUDED` for those that may differ, like logging intervals): a mismatch is an
error naming the differing keys. A different code version only warns.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bnrepro.callbacks.checkpointing import CheckpointError, last_checkpoint, load_checkpoint
from bnrepro.lifecycle.identity import JobIdentity, config_differences
from bnrepro.tracking.job import JobInfo
from bnrepro.tracking.run import is_tracked
from bnrepro.tracking.store import find_run, open_store, runs_with_identity
from bnrepro.tracking.tags import OUTPUT_DIR_TAG, tracking_uri

log = logging.getLogger(__name__)


def _store(cfg: DictConfig):
    return open_store(tracking_uri(cfg.logger.tracking_uri))


class ResumeError(ValueError):
    """A resume request that cannot be honoured; the message names the run or directory and the fix."""


@dataclass
class StartPlan:
    start: str  # "fresh" | "resumed" | "skipped"
    run_id: str | None = None  # resumed: the run to reopen; skipped: the finished run
    output_dir: str | None = None  # resumed: the directory whose checkpoints continue


FRESH = StartPlan("fresh")


def plan_start(cfg: DictConfig, job: JobInfo, identity: JobIdentity) -> StartPlan:
    """Decide how this job starts (see the module docstring)."""
    if cfg.rerun:
        return FRESH
    request = cfg.get("resume") or ("auto" if job.sweep_id else None)
    if request is None:
        return FRESH
    request = str(request)
    if request == "auto":
        return _auto(cfg, identity)
    if Path(request).is_dir():
        return _from_directory(cfg, Path(request), identity)
    if any(sep in request for sep in ("/", "\\")) or request.startswith("."):
        raise ResumeError(
            f"resume={request}: no such directory; give a run's output directory, its MLflow run id, or auto"
        )
    return _from_run_id(cfg, request, identity)


def _auto(cfg: DictConfig, identity: JobIdentity) -> StartPlan:
    if not is_tracked(cfg):
        log.info("resume=auto needs the tracking store (logger=none): starting fresh")
        return FRESH
    runs = runs_with_identity(_store(cfg), identity.digest)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    if finished:
        return StartPlan("skipped", run_id=finished[0].info.run_id)
    resumable = []  # (step, run, output dir), newest run first
    for run in runs:
        if run.info.status == "RUNNING":
            continue  # alive (lost runs were just marked FAILED): never continue a run another process writes
        output_dir, path = _run_checkpoint(run)
        if path is None:
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as error:
            log.warning("not resuming run %s: %s", run.info.run_id, error)
            continue
        if state["meta"].get("identity") == identity.digest:
            resumable.append((state.get("global_step", 0), run, output_dir))
    if not resumable:
        return FRESH
    step, run, output_dir = max(resumable, key=lambda candidate: candidate[0])  # the first of equals: the newest
    if len(resumable) > 1:
        log.info(
            "resume=auto: %d unfinished runs of this job; continuing %s, the furthest (step %d)",
            len(resumable), run.info.run_id, step,
        )  # fmt: skip
    return StartPlan("resumed", run.info.run_id, output_dir)


def _from_directory(cfg: DictConfig, directory: Path, identity: JobIdentity) -> StartPlan:
    path = last_checkpoint(directory)
    if path is None:
        raise ResumeError(
            f"resume={directory}: no checkpoint at {directory}/checkpoints/last.ckpt; "
            "give the output directory of a run that saved one (callbacks.checkpoint), or start a new run"
        )
    state = _load_same_job(path, identity, f"resume={directory}")
    run_id = state["meta"].get("run_id")
    if is_tracked(cfg) and run_id:
        run = find_run(_store(cfg), run_id)
        if run is None:
            uri = tracking_uri(cfg.logger.tracking_uri)
            raise ResumeError(
                f"resume={directory}: its checkpoint belongs to MLflow run {run_id}, which is not in {uri}; "
                "set MLFLOW_TRACKING_URI to the store it was tracked in, or resume untracked with logger=none"
            )
        if run.info.status == "FINISHED":  # as resume=<its run id> does: nothing is left to train
            return StartPlan("skipped", run_id=run_id)
        _check_resumable(run, f"resume={directory}")
    return StartPlan("resumed", run_id if is_tracked(cfg) else None, str(directory.resolve()))


def _from_run_id(cfg: DictConfig, run_id: str, identity: JobIdentity) -> StartPlan:
    uri = tracking_uri(cfg.logger.tracking_uri)
    if not is_tracked(cfg):
        raise ResumeError(
            f"resume={run_id} looks like a run id, but logger=none has no store to look it up: "
            "give its output directory"
        )
    run = find_run(_store(cfg), run_id)
    if run is None:
        raise ResumeError(f"resume={run_id}: no such directory and no MLflow run with that id in {uri}")
    if run.info.status == "FINISHED":
        return StartPlan("skipped", run_id=run_id)
    _check_resumable(run, f"resume={run_id}")
    output_dir, path = _run_checkpoint(run)
    if output_dir and not Path(output_dir).is_dir():
        raise ResumeError(
            f"resume={run_id}: the run's output directory {output_dir} no longer exists; if it was moved, "
            "give its new location (resume=<dir>), else start a new run (rerun=true)"
        )
    if path is None:
        raise ResumeError(
            f"resume={run_id}: the run saved no checkpoint (looked in {output_dir or '?'}/checkpoints); "
            "start a new run (rerun=true)"
        )
    _load_same_job(path, identity, f"resume={run_id}")
    return StartPlan("resumed", run_id, output_dir)


def _run_checkpoint(run) -> tuple[str | None, Path | None]:
    """A tracked run's output directory and the last checkpoint in it (None where there is none)."""
    output_dir = run.data.tags.get(OUTPUT_DIR_TAG)
    return output_dir, last_checkpoint(output_dir) if output_dir else None


def _load_same_job(path: Path, identity: JobIdentity, request: str) -> dict[str, Any]:
    """The checkpoint's state, refused (ResumeError) if it was saved by a different job."""
    state = load_checkpoint(path)
    _check_same_job(state, identity, request)
    return state


def _check_resumable(run, request: str) -> None:
    if run.info.status == "RUNNING":
        raise ResumeError(
            f"{request}: run {run.info.run_id} is still RUNNING (its heartbeat is recent): stop its process first; "
            "a run whose process died is marked FAILED after logger.stale_after_seconds"
        )


def _check_same_job(state: dict[str, Any], identity: JobIdentity, request: str) -> None:
    saved = state["meta"].get("config") or {}
    if saved and saved != identity.config:
        raise ResumeError(
            f"{request}: the checkpoint was written with a different configuration "
            f"({config_differences(saved, identity.config)}); "
            "resume with the run's original overrides, or start a new run"
        )
    if state["meta"].get("code_version") not in (None, identity.code_version):
        log.warning(
            "%s: the code changed since the checkpoint (%s -> %s); continuing with the current code",
            request,
            state["meta"].get("code_version"),
            identity.code_version,
        )
