"""Covariate-shift diagnostics (Fig. 1b/c): percentiles of the nonlinearity input at evaluation points."""

import functools

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from bnrepro.callbacks import diagnostics
from bnrepro.callbacks.diagnostics import CovariateShiftDiagnostics, choose_units, compute_percentiles, unit_columns
from bnrepro.models.mlp import MLP
from bnrepro.module import Classifier
from tests.helpers import RandomDigits, RecordingLogger, quiet_trainer

STEPS_PER_BATCH, EVAL_EVERY, MAX_STEPS = 5, 10, 20


class HookProbe(L.Callback):
    """Counts forward hooks on the diagnosed module during training and evaluation batches."""

    def __init__(self):
        self.during_training, self.during_evaluation = set(), set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.during_training.add(len(pl_module.net.hidden[-1].nonlinearity_input._forward_hooks))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.during_evaluation.add(len(pl_module.net.hidden[-1].nonlinearity_input._forward_hooks))


@pytest.fixture(scope="module", params=[nn.BatchNorm1d, None], ids=["bn", "none"])
def trained(request):
    """A real fit of a small MLP: evaluation every 10 steps for 20 steps, diagnostics on, eval batch of 8."""
    torch.manual_seed(0)
    net = MLP(num_classes=3, in_features=12, widths=(8, 6), norm_layer=request.param)
    module = Classifier(net, functools.partial(torch.optim.SGD, lr=0.1, momentum=0.0), num_classes=3)
    data = RandomDigits(batch_size=4, eval_batch_size=8, steps_per_batch=STEPS_PER_BATCH)
    callback, probe, logger = CovariateShiftDiagnostics(units=3, unit_seed=1), HookProbe(), RecordingLogger()
    trainer = quiet_trainer(MAX_STEPS, logger, [callback, probe], eval_every_batches=EVAL_EVERY // STEPS_PER_BATCH)
    trainer.fit(module, datamodule=data)
    return module, data, callback, probe, logger


def diag_calls(logger):
    return [(step, metrics) for step, metrics in logger.calls if any(key.startswith("diag/") for key in metrics)]


def test_percentiles_equal_numpys():
    values = torch.randn(3, 1001, generator=torch.Generator().manual_seed(0))
    expected = np.percentile(values.numpy(), [15, 50, 85], axis=1).T
    np.testing.assert_allclose(compute_percentiles(values, (15, 50, 85)).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_percentiles_of_samples_too_large_for_torch_quantile_equal_numpys(monkeypatch):
    monkeypatch.setattr(diagnostics, "QUANTILE_MAX_ELEMENTS", 100)  # force the sort-based path
    values = torch.randn(2, 777, generator=torch.Generator().manual_seed(1))
    expected = np.percentile(values.numpy(), [15, 50, 85], axis=1).T
    np.testing.assert_allclose(compute_percentiles(values, (15, 50, 85)).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_logged_percentiles_equal_numpys_on_the_evaluated_activations(trained):
    module, data, callback, _, logger = trained
    site = module.net.diagnostic_sites()["hidden2"]
    seen = []
    handle = site.register_forward_hook(lambda mod, inputs, output: seen.append(output.detach()))
    module.eval()
    with torch.no_grad():
        module.net(data.test_split.inputs)  # the final model on the whole evaluation set
    handle.remove()
    activations = seen[0][:, callback.units].numpy()
    final_step, metrics = diag_calls(logger)[-1]
    assert final_step == MAX_STEPS
    for column, unit in enumerate(callback.units.tolist()):
        expected = np.percentile(activations[:, column], [15, 50, 85])
        logged = [metrics[f"diag/hidden2/u{unit}/p{q}"] for q in (15, 50, 85)]
        np.testing.assert_allclose(logged, expected, rtol=1e-5, atol=1e-6)


def test_logs_the_expected_keys_at_every_evaluation_step(trained):
    _, _, callback, _, logger = trained
    calls = diag_calls(logger)
    assert [step for step, _ in calls] == list(range(EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY))
    expected = {f"diag/hidden2/u{unit}/p{q}" for unit in callback.units.tolist() for q in (15, 50, 85)}
    assert all(set(metrics) == expected for _, metrics in calls)


def test_units_are_the_last_hidden_layers_fixed_by_the_seed(trained):
    _, _, callback, _, _ = trained
    assert callback.units.tolist() == choose_units(6, 3, seed=1).tolist()


def test_the_hook_exists_only_during_evaluation(trained):
    _, _, _, probe, _ = trained
    assert probe.during_training == {0}
    assert probe.during_evaluation == {1}


def test_chosen_units_are_distinct_in_range_and_reproducible():
    units = choose_units(100, 3, seed=0)
    assert len(set(units.tolist())) == 3 and all(0 <= u < 100 for u in units.tolist())
    assert torch.equal(units, choose_units(100, 3, seed=0))
    assert choose_units(2, 3, seed=0).tolist() == [0, 1]  # never more units than the layer has


def test_a_channel_of_a_conv_output_is_one_unit_pooled_over_batch_and_space():
    output = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    columns = unit_columns(output, torch.tensor([2]))
    assert columns.shape == (1, 8)
    assert sorted(columns[0].tolist()) == sorted(output[:, 2].flatten().tolist())


def test_a_model_without_declared_sites_is_a_clear_error():
    trainer_stub = type("T", (), {"sanity_checking": False})()
    with pytest.raises(TypeError, match="diagnostic_sites"):
        CovariateShiftDiagnostics().on_validation_epoch_start(trainer_stub, L.LightningModule())


def test_an_unknown_site_is_a_clear_error():
    module = Classifier(
        MLP(num_classes=3, in_features=12, widths=(4,)), functools.partial(torch.optim.SGD, lr=0.1), num_classes=3
    )
    trainer_stub = type("T", (), {"sanity_checking": False})()
    with pytest.raises(KeyError, match="hidden9"):
        CovariateShiftDiagnostics(site="hidden9").on_validation_epoch_start(trainer_stub, module)


def test_the_bn_site_is_what_the_sigmoid_receives():
    net = MLP(num_classes=3, in_features=12, widths=(4, 5), norm_layer=nn.BatchNorm1d)
    assert isinstance(net.diagnostic_sites()["hidden2"], nn.BatchNorm1d)
