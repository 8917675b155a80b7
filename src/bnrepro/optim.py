"""The learning-rate schedule of the recipe: step-wise exponential decay (Sec. 4.2), and the factories' types.

Sec. 4.2 trains Inception with momentum SGD and an exponentially decaying learning rate; the
"accelerated" BN networks (Sec. 4.2.1) decay it 6x faster. The config (conf/optim/baseline.yaml)
gives the optimizer and this schedule as `_partial_` nodes; the LightningModule calls them.
"""

from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LRScheduler, StepLR

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], LRScheduler | None]


def staircase_decay(optimizer: torch.optim.Optimizer, rate: float, every_n_steps: int) -> StepLR | None:
    """lr * rate ** (step // every_n_steps), stepped once per optimizer step; None when the rate is constant
    (every_n_steps 0 or rate 1), so constant-rate runs make no scheduler call per step."""
    if every_n_steps <= 0 or rate == 1.0:
        return None
    return StepLR(optimizer, step_size=every_n_steps, gamma=rate)
