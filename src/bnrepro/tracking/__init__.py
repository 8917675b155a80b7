"""Everything bnrepro writes to (and finds again in) MLflow.

tags (names and the store URI; no torch), store (opening it, the one paged search), job (Hydra's
view of the job, git state), liveness (heartbeats, lost runs), metrics (the Lightning logger),
run (one job's tracked run), sweep (the Hydra sweep callback, the report upload).
"""

import importlib

# Transitional: the names other packages still import from `bnrepro.tracking` itself (report/, two tests),
# loaded on first use so that `bnrepro.tracking.tags` stays free of torch. Remove once they import the modules.
_MOVED = {
    **dict.fromkeys(
        ("FAILURE_TAG", "GROUPS", "OUTCOME_TAG", "ROLE_TAG", "SWEEP_ID_TAG", "SWEEP_NAME_TAG", "tracking_uri"), "tags"
    ),
    "JobInfo": "job",
    "MLflowMetricsLogger": "metrics",
    "log_report": "sweep",
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MOVED[name]}"), name)
