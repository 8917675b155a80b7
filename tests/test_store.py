"""Where a store keeps its artifacts, and how a new experiment is set up for the MLflow UI."""

from cli_inprocess import cli
from conftest import QUICK
from mlflow.tracking import MlflowClient

from bnrepro.tracking.store import artifact_root, experiment_id, open_store
from bnrepro.tracking.tags import EXPERIMENT_KIND_TAG


def test_a_sqlite_stores_artifacts_go_beside_its_database_file(store, tmp_path):
    client = open_store(store)
    experiment = client.get_experiment(experiment_id(client, "fig1"))
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_a_tracking_server_decides_where_artifacts_go():
    assert artifact_root("http://127.0.0.1:5001") is None


def test_a_new_experiment_opens_on_the_model_training_view(store):
    client = open_store(store)
    experiment = client.get_experiment(experiment_id(client, "fig1"))
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_run_writes_nothing_into_the_directory_it_was_started_from(store, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli(tmp_path / "out", "trainer.max_steps=10", *QUICK) == 0
    assert list(elsewhere.iterdir()) == []
    (run,) = MlflowClient(store).search_runs([e.experiment_id for e in MlflowClient(store).search_experiments()])
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
