"""PopulationEvaluation: Algorithm 2's accuracy logged beside val/acc, training left exactly as it was."""

import functools

import pytest
import torch
from conftest import QUICK, compose_config
from mlflow.tracking import MlflowClient
from torch import nn

from bnrepro.callbacks.population import PopulationEvaluation, population_batches
from bnrepro.config import ConfigError, validate
from bnrepro.models.mlp import MLP
from bnrepro.module import Classifier
from bnrepro.nn.population import population_statistics
from bnrepro.run import train
from bnrepro.tracking.job import JobInfo
from tests.helpers import RandomDigits, RecordingLogger, quiet_trainer

STEPS_PER_BATCH, EVAL_EVERY, MAX_STEPS, BATCHES = 5, 10, 20, 4


def fit(callbacks):
    torch.manual_seed(0)
    net = MLP(num_classes=3, in_features=12, widths=(8, 6), norm_layer=nn.BatchNorm1d)
    module = Classifier(net, functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), num_classes=3)
    data, logger = RandomDigits(batch_size=4, eval_batch_size=8, steps_per_batch=STEPS_PER_BATCH), RecordingLogger()
    trainer = quiet_trainer(MAX_STEPS, logger, callbacks, eval_every_batches=EVAL_EVERY // STEPS_PER_BATCH)
    trainer.fit(module, datamodule=data)
    return module, data, logger


def steps_logging(logger, key):
    return [step for step, metrics in logger.calls if key in metrics]


@pytest.fixture(scope="module")
def with_population():
    return fit([PopulationEvaluation(batches=BATCHES, when="every", seed=3)])


def test_both_accuracies_are_logged_at_every_evaluation(with_population):
    _, _, logger = with_population
    expected = list(range(EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY))
    assert steps_logging(logger, "val/acc") == expected
    assert steps_logging(logger, "val_population/acc") == expected


def test_logged_accuracy_is_the_networks_under_population_statistics(with_population):
    module, data, logger = with_population
    batches = population_batches(data.train_split.inputs, data.batch_size, BATCHES, seed=3, rank=0, world_size=1)
    module.net.eval()
    with torch.no_grad(), population_statistics(module.net, batches):
        expected = (module.net(data.test_split.inputs).argmax(1) == data.test_split.targets).float().mean()
    logged = [m["val_population/acc"] for step, m in logger.calls if "val_population/acc" in m][-1]
    assert logged == pytest.approx(float(expected))


def test_training_is_exactly_as_without_the_callback(with_population):
    module, _, _ = with_population
    plain, _, _ = fit([])
    torch.testing.assert_close(module.state_dict(), plain.state_dict(), rtol=0, atol=0)


def test_final_only_logs_at_the_last_step():
    _, _, logger = fit([PopulationEvaluation(batches=BATCHES, when="final")])
    assert steps_logging(logger, "val_population/acc") == [MAX_STEPS]


def test_batches_are_disjoint_and_of_the_training_batch_size():
    inputs = torch.arange(12.0).unsqueeze(1)
    batches = list(population_batches(inputs, batch_size=4, count=3, seed=0, rank=0, world_size=1))
    assert [len(b) for b in batches] == [4, 4, 4]
    assert sorted(torch.cat(batches).squeeze(1).tolist()) == list(range(12))


def test_every_rank_gets_the_same_number_of_batches_and_together_they_are_disjoint():
    inputs = torch.arange(40.0).unsqueeze(1)
    shares = [list(population_batches(inputs, batch_size=4, count=5, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(share) for share in shares] == [3, 3]
    values = torch.cat([batch for share in shares for batch in share]).squeeze(1).tolist()
    assert len(set(values)) == len(values) == 24


def test_norm_inference_population_logs_both_accuracies_in_the_tracked_run(store):
    cfg = compose_config("norm.inference=population", "norm.population_batches=4", "trainer.max_steps=20", *QUICK)
    train(cfg, JobInfo())
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {"val/acc", "val_population/acc"} <= set(run.data.metrics)
    assert [p.step for p in client.get_metric_history(run.info.run_id, "val_population/acc")] == [10, 20]


def test_population_inference_without_bn_layers_is_refused():
    with pytest.raises(ConfigError, match="norm.inference=population needs BN layers"):
        validate(compose_config("norm=none", "norm.inference=population"))


def test_population_inference_on_data_streamed_from_files_is_refused_before_a_run(store):
    cfg = compose_config("experiment=bn_x5", "data=fake_imagenet", "norm.inference=population", *QUICK)
    with pytest.raises(ConfigError, match="needs an in-memory training split"):
        train(cfg, JobInfo())
    client = MlflowClient(store)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
