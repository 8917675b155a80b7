"""The paper's MNIST network (Sec. 4.1) and where BN sits in it (Sec. 3.2)."""

import pytest
import torch
from torch import nn

from bnrepro.models.mlp import MLP


def test_default_shape_is_784_100_100_100_10():
    net = MLP()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 100), (100, 100), (100, 100), (100, 10)]


def test_hidden_units_are_sigmoid_by_default():
    assert all(isinstance(layer.activation, nn.Sigmoid) for layer in MLP().hidden)


def test_bn_sits_between_bias_free_affine_and_nonlinearity():
    for layer in MLP().hidden:  # default norm_layer: nn.BatchNorm1d
        assert layer.affine.bias is None
        assert isinstance(layer.bn, nn.BatchNorm1d)
        children = list(layer.children())
        assert children.index(layer.affine) < children.index(layer.bn) < children.index(layer.activation)


def test_bn_output_is_what_the_nonlinearity_receives():
    net = MLP().eval()
    layer, x = net.hidden[0], torch.rand(4, 784)
    seen = {}
    layer.activation.register_forward_hook(lambda module, inputs, output: seen.setdefault("input", inputs[0]))
    net(x)
    assert torch.equal(seen["input"], layer.bn(layer.affine(x)))


def test_no_bn_module_without_norm_and_affine_layers_keep_their_bias():
    net = MLP(norm_layer=None)
    assert not any("BatchNorm" in type(m).__name__ for m in net.modules())
    assert all(layer.affine.bias is not None for layer in net.hidden)


def test_widths_depth_and_activation_are_configurable():
    net = MLP(widths=(50, 20), activation="relu", num_classes=3)
    assert len(net.hidden) == 2 and isinstance(net.hidden[0].activation, nn.ReLU)
    assert net(torch.rand(5, 784)).shape == (5, 3)


def test_weights_start_gaussian_with_the_configured_std():
    torch.manual_seed(0)
    weight = MLP(init_std=0.05).hidden[0].affine.weight
    assert weight.std().item() == pytest.approx(0.05, rel=0.02)
    assert weight.mean().item() == pytest.approx(0.0, abs=0.002)


def test_diagnostic_sites_end_with_the_last_hidden_layer():
    net = MLP()
    sites = net.diagnostic_sites()
    assert list(sites) == ["hidden1", "hidden2", "hidden3"] and sites["hidden3"] is net.hidden[-1].bn


def test_the_norm_layer_callable_builds_each_hidden_layers_normalization():
    net = MLP(widths=(8, 4), norm_layer=nn.LayerNorm)
    assert [type(layer.bn) for layer in net.hidden] == [nn.LayerNorm, nn.LayerNorm]
    assert [layer.bn.normalized_shape for layer in net.hidden] == [(8,), (4,)]


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="tanh")
