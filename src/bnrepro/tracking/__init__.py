"""Everything bnrepro writes to (and finds again in) MLflow.

tags (names and the store URI; no torch), store (opening it, the one paged search), job (Hydra's
view of the job, git state), liveness (heartbeats, lost runs), metrics (the Lightning logger),
run (one job's tracked run), sweep (the Hydra sweep callback, the report upload).
"""

import importlib

# Transitional: two of B's tests (test_experiments, test_tensor_stream) still import these from the package
# itself; loaded on first use so that `bnrepro.tracking.tags` stays free of torch. Remove once they import the modules.
_MOVED = {"JobInfo": "job", "MLflowMetricsLogger": "metrics"}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MOVED[name]}"), name)
