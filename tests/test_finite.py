"""nonfinite_parameters: the parameter half of the divergence check (Sec. 4.2.1, "machine infinity")."""

import pytest
import torch
from torch import nn

from bnrepro.nn.finite import nonfinite_parameters


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_finite_parameters_are_not_flagged_even_near_the_float32_maximum():
    net = small_net()
    with torch.no_grad():
        net[2].weight.fill_(3e38)  # a sum or a 2-norm of these would overflow

    flagged = nonfinite_parameters(net)

    assert flagged.dtype == torch.bool and flagged.dim() == 0
    assert not bool(flagged)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_one_nonfinite_entry_anywhere_is_flagged(value):
    net = small_net()
    with torch.no_grad():
        net[1].bias[2] = value

    assert bool(nonfinite_parameters(net))


def test_a_module_without_parameters_is_finite():
    assert not bool(nonfinite_parameters(nn.ReLU()))
