"""A job end to end: compose, train on real (tiny) data, track in MLflow, close with a truthful status."""

import pytest
from conftest import QUICK, compose_config
from mlflow.tracking import MlflowClient

from bnrepro.run import train
from bnrepro.tracking.job import JobInfo
from bnrepro.tracking.tags import EVAL_EXAMPLES_PARAM, FAILURE_TAG
from tests.helpers import write_mnist_raw


def only_run(store: str):
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def test_mnist_mini_run_learns_and_is_tracked_finished(store):
    cfg = compose_config("trainer.max_steps=40", *QUICK)
    final = train(cfg, JobInfo(choices={"norm": "bn", "model": "mlp"}, name="norm=bn"))
    client, run = only_run(store)
    assert run.info.status == "FINISHED" and run.info.run_name == "norm=bn"
    assert final["val/acc"] > 0.3  # 10 classes: chance is 0.1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [10, 20, 30, 40]
    assert run.data.tags["norm"] == "bn" and run.data.tags["seed"] == "0"


def test_every_resolved_config_value_is_a_dotted_param(store):
    cfg = compose_config("trainer.max_steps=10", "optim=lr_x5", *QUICK)
    train(cfg, JobInfo())
    _, run = only_run(store)
    params = run.data.params
    assert params["optim.lr"] == str(cfg.model.base_lr * 5) and params["model.net.widths"] == "[100, 100, 100]"
    assert params["data.batch_size"] == "60" and params["global_batch_size"] == "60"


def test_resolved_config_is_an_artifact(store):
    train(compose_config("trainer.max_steps=10", *QUICK), JobInfo(overrides=["trainer.max_steps=10"]))
    client, run = only_run(store)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "overrides.txt"}


def test_run_that_raises_ends_failed_with_the_reason(store):
    cfg = compose_config("trainer.max_steps=10", "model.net.in_features=100", *QUICK)  # 784 pixels in
    with pytest.raises(RuntimeError):
        train(cfg, JobInfo())
    _, run = only_run(store)
    assert run.info.status == "FAILED" and "RuntimeError" in run.data.tags[FAILURE_TAG]


def test_official_mnist_layout_trains_end_to_end(store, tmp_path):
    root = write_mnist_raw(tmp_path, train=600, test=100)
    cfg = compose_config("data=mnist", f"data.data_dir={root}", "data.download=false", "trainer.max_steps=20", *QUICK)
    final = train(cfg, JobInfo())
    assert set(final) == {"val/acc", "val/acc_top5", "val/loss"}


def test_the_number_of_evaluated_examples_is_a_param(store, tmp_path):
    root = write_mnist_raw(tmp_path, train=600, test=100)
    cfg = compose_config("data=mnist", f"data.data_dir={root}", "data.download=false", "trainer.max_steps=20", *QUICK)
    train(cfg, JobInfo())
    _, run = only_run(store)
    assert run.data.params[EVAL_EXAMPLES_PARAM] == "100"  # the whole test split, the n of the accuracy's error


def test_logger_none_writes_nothing(store):
    train(compose_config("trainer.max_steps=10", "logger=none", *QUICK), JobInfo())
    client = MlflowClient(store)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.mark.slow  # torch.compile takes tens of seconds on CPU
def test_compiled_network_trains_like_the_eager_one(store):
    eager = train(compose_config("trainer.max_steps=20", "logger=none", *QUICK), JobInfo())
    compiled = train(compose_config("trainer.max_steps=20", "logger=none", "loop.compile=true", *QUICK), JobInfo())
    assert compiled == pytest.approx(eager, rel=1e-4)
