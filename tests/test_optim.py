"""The learning-rate schedule of Sec. 4.2: staircase exponential decay, stepped every optimizer step."""

import pytest
import torch

from bnrepro.optim import staircase_decay


def sgd(lr: float = 1.0) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_the_rate_drops_by_the_decay_rate_every_n_steps():
    optimizer = sgd(lr=1.0)
    schedule = staircase_decay(optimizer, rate=0.5, every_n_steps=3)
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25])


@pytest.mark.parametrize("rate,every_n_steps", [(0.96, 0), (1.0, 100)])
def test_a_constant_rate_has_no_scheduler_to_step(rate, every_n_steps):
    assert staircase_decay(sgd(), rate=rate, every_n_steps=every_n_steps) is None
