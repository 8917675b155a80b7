"""The MLflow UI (or a tracking server) over bnrepro's store, and links into the UI's model-training view.

`python -m bnrepro.tracking.ui ui|server [--host H] [--port P]` (what `make ui` / `make tracking-server`
run) serves the store `MLFLOW_TRACKING_URI` names, else outputs/mlflow.db; for a SQLite store the server
keeps new artifacts beside the database file, as the jobs do (`bnrepro.tracking.store.artifact_root`).
Before it starts it prints the link to each experiment's runs list and to the latest sweep's parent run.
"""

import argparse
import os
import sys
from urllib.parse import quote

from bnrepro.tracking.store import TrackingError, artifact_root, client_for, open_store, search_runs
from bnrepro.tracking.tags import PARENT_TAG, ROLE_TAG, SWEEP_NAME_TAG, tracking_uri

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5000


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_base(uri: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """Where the UI of the store `uri` is: the tracking server itself, or `make ui` on host:port."""
    return uri.rstrip("/") if is_server(uri) else f"http://{host}:{port}"


MODEL_TRAINING_VIEW = "workflowType=machine_learning"  # the UI's "Model training" mode, not its GenAI one


def runs_link(base: str, experiment_id: str) -> str:
    return f"{experiment_page(base, experiment_id)}?{MODEL_TRAINING_VIEW}"


def experiment_page(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs"


def jobs_link(base: str, experiment_id: str, parent_run_id: str) -> str:
    """The runs list showing one sweep's jobs side by side (filtered by their parent, so not collapsed under it)."""
    query = f"tags.`{ROLE_TAG}` = 'job' and tags.`{PARENT_TAG}` = '{parent_run_id}'"
    return f"{runs_link(base, experiment_id)}&searchFilter={quote(query)}"


def run_link(base: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page, or with `artifact` (e.g. report/report.html) that artifact opened in its Artifacts tab."""
    link = f"{experiment_page(base, experiment_id)}/{run_id}" + (f"/artifactPath/{artifact}" if artifact else "")
    return f"{link}?{MODEL_TRAINING_VIEW}"


def sweep_link(parent_run_id: str, uri: str | None = None, artifact: str | None = None) -> str:
    """The link to a sweep's parent run in the UI `make ui` starts (or the tracking server's)."""
    uri = tracking_uri(uri)
    run = client_for(uri).get_run(parent_run_id)
    return run_link(ui_base(uri), run.info.experiment_id, parent_run_id, artifact)


def startup_lines(client, base: str) -> list[str]:
    """One line per experiment with runs (its runs list) and one for the latest sweep (its parent run)."""
    lines, sweeps = [], []
    for experiment in client.search_experiments():
        if client.search_runs([experiment.experiment_id], max_results=1):
            lines.append(f"  experiment {experiment.name}: {runs_link(base, experiment.experiment_id)}")
            sweeps += search_runs(client, f"tags.`{ROLE_TAG}` = 'sweep'", experiment_ids=[experiment.experiment_id])
    if sweeps:
        latest = max(sweeps, key=lambda run: run.info.start_time)
        name = latest.data.tags.get(SWEEP_NAME_TAG, latest.info.run_name)
        experiment, parent = latest.info.experiment_id, latest.info.run_id
        lines.append(f"  latest sweep {name}: {run_link(base, experiment, parent)}")
        lines.append(f"    its jobs side by side: {jobs_link(base, experiment, parent)}")
    return lines or ["  (no runs yet: train one, e.g. make demo)"]


def server_command(kind: str, uri: str, host: str, port: int) -> list[str]:
    """`mlflow ui` or `mlflow server` of this interpreter's MLflow over the store `uri`."""
    command = [sys.executable, "-m", "mlflow", kind, "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if kind == "ui":  # one person's browser: one worker, not MLflow's default four
        command += ["--workers", "1"]
    beside = artifact_root(uri)
    if kind == "server" and beside:  # what the server writes for its clients goes where the jobs write
        command += ["--artifacts-destination", beside]
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnrepro.tracking.ui", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("ui", "server"), help="the MLflow UI, or a tracking server for many writers")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    uri = tracking_uri()
    try:
        client = open_store(uri)
    except TrackingError as error:
        print(f"bnrepro: error: {error}", file=sys.stderr)
        return 2
    if is_server(uri):  # the store already is a server: it serves its own UI
        if args.kind == "server":
            print(f"bnrepro: error: MLFLOW_TRACKING_URI is already a tracking server ({uri})", file=sys.stderr)
            return 2
        print(f"the store is the tracking server {uri}; its UI:")
        print("\n".join(startup_lines(client, ui_base(uri))))
        return 0
    print(f"MLflow {args.kind} over {uri}:")
    print("\n".join(startup_lines(client, ui_base(uri, args.host, args.port))), flush=True)
    command = server_command(args.kind, uri, args.host, args.port)
    # MLflow 3's server also starts a GenAI job runner (7 huey consumer processes) that nothing here uses;
    # the UI starts without it (MLflow's own switch; a value already set wins).
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(command[0], command)  # the server owns this process (Ctrl+C stops it)


if __name__ == "__main__":
    raise SystemExit(main())
