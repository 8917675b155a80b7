"""Everything bnrepro writes to (and finds again in) MLflow.

tags (names and the store URI; no torch), store (opening it, the one paged search), job (Hydra's
view of the job, git state), liveness (heartbeats, lost runs), metrics (the Lightning logger),
run (one job's tracked run), sweep (the Hydra sweep callback, the report upload).
"""
