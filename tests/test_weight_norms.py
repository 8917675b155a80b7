"""WeightNorms: ||W|| and ||dL/dW|| of every BN-followed weight layer (Sec. 3.3), logged every n steps."""

import functools

import lightning as L
import pytest
import torch
from torch import nn

from bnrepro.callbacks.weight_norms import BatchNormInputs, WeightNorms, weight_and_gradient_norms
from bnrepro.models.mlp import MLP
from bnrepro.module import Classifier
from tests.helpers import RandomDigits, RecordingLogger, quiet_trainer

EVERY, MAX_STEPS = 5, 20


class GradientProbe(L.Callback):
    """The Frobenius norms of the weights and gradients the optimizer is about to use, per step."""

    def __init__(self):
        self.seen: dict[int, dict[str, tuple[float, float]]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.seen[trainer.global_step] = {
            name: (float(p.detach().norm()), float(p.grad.norm()))
            for name, p in pl_module.named_parameters()
            if name.endswith("weight") and p.grad is not None
        }


@pytest.fixture(scope="module", params=[nn.BatchNorm1d, None], ids=["bn", "none"])
def fitted(request):
    torch.manual_seed(0)
    net = MLP(num_classes=3, in_features=12, widths=(8, 6), norm_layer=request.param)
    module = Classifier(net, functools.partial(torch.optim.SGD, lr=0.1, momentum=0.0), num_classes=3)
    callback, probe, logger = WeightNorms(every_n_steps=EVERY), GradientProbe(), RecordingLogger()
    trainer = quiet_trainer(MAX_STEPS, logger, [callback, probe])
    trainer.fit(module, datamodule=RandomDigits(batch_size=4, eval_batch_size=8, steps_per_batch=1))
    return request.param, callback, probe, logger


def weight_calls(logger):
    return [(step, m) for step, m in logger.calls if any(key.startswith("weights/") for key in m)]


def test_only_the_weight_layers_feeding_batchnorm_are_followed(fitted):
    norm_layer, callback, _, _ = fitted
    expected = ["net.hidden.0.affine", "net.hidden.1.affine"] if norm_layer else []
    assert sorted(callback.layers) == expected


def test_logs_every_n_steps_the_norms_the_optimizer_used(fitted):
    norm_layer, callback, probe, logger = fitted
    if norm_layer is None:
        assert weight_calls(logger) == []
        return
    calls = weight_calls(logger)
    assert [step for step, _ in calls] == list(range(0, MAX_STEPS, EVERY))
    for step, metrics in calls:
        for name in callback.layers:
            weight_norm, grad_norm = probe.seen[step][f"{name}.weight"]
            assert metrics[f"weights/{name}/norm"] == pytest.approx(weight_norm, rel=1e-6)
            assert metrics[f"weights/{name}/grad_norm"] == pytest.approx(grad_norm, rel=1e-6)


def test_conv_feeding_batchnorm_is_followed_and_a_linear_behind_an_activation_is_not():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.BatchNorm1d(4)
    )
    probe = BatchNormInputs(model)
    model(torch.randn(3, 1, 4, 4))

    assert list(probe.remove()) == ["0"]
    model(torch.randn(3, 1, 4, 4))  # hooks are gone
    assert probe.outputs == {}


def test_norms_are_frobenius_norms_and_nan_without_gradient():
    with_grad, without_grad = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        with_grad.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
    with_grad.weight.grad = torch.tensor([[1.0, 2.0], [2.0, 4.0]])

    table = weight_and_gradient_norms({"a": with_grad, "b": without_grad})

    torch.testing.assert_close(table[0], torch.tensor([5.0, 5.0]))
    assert torch.isnan(table[1, 1])
