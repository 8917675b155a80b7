"""`make ui` / `make tracking-server` over the store MLFLOW_TRACKING_URI names, and the links they print."""

from urllib.parse import unquote

from bnrepro.tracking.store import experiment_id, open_store
from bnrepro.tracking.tags import ROLE_TAG, SWEEP_NAME_TAG
from bnrepro.tracking.ui import jobs_link, run_link, runs_link, server_command, startup_lines, sweep_link, ui_base


def test_links_open_the_runs_list_a_run_and_a_runs_artifact():
    base = ui_base("sqlite:////tmp/x/mlflow.db", "127.0.0.1", 5055)
    assert runs_link(base, "3") == "http://127.0.0.1:5055/#/experiments/3/runs?workflowType=machine_learning"
    assert run_link(base, "3", "abc", "report/report.html") == (
        "http://127.0.0.1:5055/#/experiments/3/runs/abc/artifactPath/report/report.html?workflowType=machine_learning"
    )


def test_the_jobs_link_filters_the_runs_list_to_one_sweeps_jobs():
    link = jobs_link("http://127.0.0.1:5055", "3", "abc")
    assert link.startswith("http://127.0.0.1:5055/#/experiments/3/runs?workflowType=machine_learning&searchFilter=")
    assert (
        unquote(link.split("searchFilter=", 1)[1])
        == "tags.`bnrepro.role` = 'job' and tags.`mlflow.parentRunId` = 'abc'"
    )


def test_a_tracking_server_store_is_its_own_ui():
    assert ui_base("http://10.0.0.2:5000/") == "http://10.0.0.2:5000"


def test_startup_lines_link_each_experiment_and_the_latest_sweep(store):
    client = open_store(store)
    experiment = experiment_id(client, "fig1")
    parent = client.create_run(experiment, run_name="demo", tags={ROLE_TAG: "sweep", SWEEP_NAME_TAG: "demo"})
    lines = startup_lines(client, "http://127.0.0.1:5055")
    assert lines == [
        f"  experiment fig1: {runs_link('http://127.0.0.1:5055', experiment)}",
        f"  latest sweep demo: {run_link('http://127.0.0.1:5055', experiment, parent.info.run_id)}",
        f"    its jobs side by side: {jobs_link('http://127.0.0.1:5055', experiment, parent.info.run_id)}",
    ]
    expected = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{parent.info.run_id}"
    assert sweep_link(parent.info.run_id) == f"{expected}?workflowType=machine_learning"


def test_the_server_over_a_sqlite_store_keeps_artifacts_beside_it(store, tmp_path):
    command = server_command("server", store, "127.0.0.1", 5055)
    assert command[command.index("--artifacts-destination") + 1] == (tmp_path / "mlartifacts").as_uri()
    assert command[command.index("--backend-store-uri") + 1] == store
