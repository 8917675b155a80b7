"""The names bnrepro writes into MLflow and where the store is: shared by writers and the report.

Imports neither torch, Lightning nor MLflow, so the read-only report starts in a fraction of a second.
"""

import os
from pathlib import Path

STORE_DIR = Path("outputs")
SWEEP_ID_TAG = "bnrepro.sweep_id"
SWEEP_NAME_TAG = "bnrepro.sweep_name"
ROLE_TAG = "bnrepro.role"  # "sweep" for a sweep's parent run, "job" for a training run
FAILURE_TAG = "bnrepro.failure"  # why a run did not complete, one line
HEARTBEAT_TAG = "bnrepro.heartbeat"  # unix seconds of the last sign of life of the process writing the run
# The writing process's own liveness settings, recorded at each (re)start: every later start judges the run by them.
HEARTBEAT_SECONDS_TAG = "bnrepro.heartbeat_seconds"
STALE_AFTER_TAG = "bnrepro.stale_after_seconds"
IDENTITY_TAG = "bnrepro.identity"  # the job's content identity (bnrepro.lifecycle.identity)
CODE_VERSION_TAG = "bnrepro.code_version"
START_TAG = "bnrepro.start"  # "fresh" | "resumed" | "skipped" (the latest start of this run)
OUTCOME_TAG = "bnrepro.outcome"  # "completed" | "diverged" | "interrupted" | "failed"
DIVERGED_STEP_TAG = "bnrepro.diverged_step"
DIVERGED_LOSS_TAG = "bnrepro.diverged_loss"
RESUMES_TAG = "bnrepro.resumes"  # how many times the run was resumed
OUTPUT_DIR_TAG = "bnrepro.output_dir"  # the job's run directory (its checkpoints)
SUMMARY_TAG = "bnrepro.summary"  # a sweep parent's one-line count of its jobs
GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_DIRTY_TAG = "bnrepro.git_dirty"
PARENT_TAG = "mlflow.parentRunId"
SWEEP_RUN_ENV = "BNREPRO_SWEEP_RUN_ID"  # set for the jobs of a multirun by `SweepTracking`
SWEEP_INVOCATION_ENV = "BNREPRO_SWEEP_INVOCATION"  # this invocation of a multirun (its failed jobs' folder)
SWEEP_VARYING_ENV = "BNREPRO_SWEEP_VARYING"  # the keys a multirun sweeps over, comma-separated: its jobs' run names
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # the MLflow 3 UI opens "custom_model_development" on its runs list
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)
GROUPS = ("model", "norm", "optim", "reg", "data", "trainer", "logger", "experiment")  # tagged with their choice
EVAL_EXAMPLES_PARAM = "eval_examples"  # examples in the run's evaluation (val) split: its binomial error's n
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI wins, then the config, then a SQLite store under outputs/."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"
