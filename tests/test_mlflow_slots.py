"""MLflow's own slots filled: source and user tags, the data splits as dataset inputs, system metrics."""

import json

import pytest
from conftest import QUICK, compose_config
from mlflow.tracking import MlflowClient

from bnrepro.run import train
from bnrepro.tracking.job import JobInfo

MNIST_MINI = JobInfo(choices={"data": "mnist_mini"})


def only_run(store: str):
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run


def inputs_by_context(run) -> dict[str, object]:
    return {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}


def test_a_job_run_carries_mlflows_source_and_user_tags(store):
    train(compose_config("trainer.max_steps=10", *QUICK), JobInfo())
    tags = only_run(store).data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] and tags["mlflow.user"]


def test_each_split_is_a_dataset_input_with_its_size_and_split_seed(store):
    train(compose_config("trainer.max_steps=10", *QUICK), MNIST_MINI)
    datasets = inputs_by_context(only_run(store))
    assert {name: d.name for name, d in datasets.items()} == {"train": "mnist_mini/train", "eval": "mnist_mini/eval"}
    assert json.loads(datasets["train"].profile)["num_rows"] == 4000
    assert json.loads(datasets["eval"].profile) == {"input_shape": [784], "num_rows": 1000, "split_seed": 0}


def test_the_digest_tells_splits_of_different_split_seeds_apart(store):
    train(compose_config("trainer.max_steps=10", *QUICK), MNIST_MINI)
    first = inputs_by_context(only_run(store))["train"].digest
    client = MlflowClient(store)
    client.delete_run(only_run(store).info.run_id)
    train(compose_config("trainer.max_steps=10", "data.split_seed=1", *QUICK), MNIST_MINI)
    second = inputs_by_context(only_run(store))["train"]
    assert len(first) == 16 and second.digest != first and json.loads(second.profile)["split_seed"] == 1


def test_system_metrics_are_logged_when_asked(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    overrides = ("trainer.max_steps=1000", "loop.eval_every_n_steps=500", "logger.system_metrics=true")
    train(compose_config(*overrides, "trainer.enable_progress_bar=false"), JobInfo())
    assert any(key.startswith("system/cpu_utilization") for key in only_run(store).data.metrics)


def test_log_model_best_logs_the_network_of_the_best_evaluation_loadable_with_mlflow(store):
    import mlflow.pytorch
    import torch

    from bnrepro.data.mnist import MNISTMiniDataModule

    overrides = ("trainer.max_steps=60", "loop.eval_every_n_steps=20", "logger.log_model=best")
    train(compose_config(*overrides, "trainer.enable_progress_bar=false"), MNIST_MINI)
    run = only_run(store)
    history = dict((m.step, m.value) for m in MlflowClient(store).get_metric_history(run.info.run_id, "val/acc"))
    step = int(run.data.tags["bnrepro.model_step"])
    assert history[step] == max(history.values())
    network = mlflow.pytorch.load_model(f"{run.info.artifact_uri}/model")
    data = MNISTMiniDataModule()
    data.setup()
    with torch.no_grad():
        accuracy = (network.eval()(data.test_split.inputs).argmax(1) == data.test_split.targets).float().mean()
    assert accuracy.item() == pytest.approx(history[step], abs=1e-6)  # the best evaluation's network, not the last
