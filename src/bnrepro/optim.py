"""The optimization recipe: momentum SGD with optional step-wise exponential learning-rate decay.

Sec. 4.2 trains Inception with momentum SGD and an exponentially decaying learning rate; the
"accelerated" BN networks (Sec. 4.2.1) decay it 6x faster. Decay is applied per optimizer step
in staircase form: lr * decay_rate ** (step // decay_every_steps).
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LRScheduler, StepLR


@dataclass(frozen=True)
class SGDRecipe:
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    decay_rate: float = 1.0
    decay_every_steps: int = 0  # 0: constant learning rate

    @property
    def decays(self) -> bool:
        return self.decay_every_steps > 0 and self.decay_rate != 1.0

    def build(self, parameters: Iterable[torch.nn.Parameter]) -> tuple[torch.optim.SGD, LRScheduler | None]:
        optimizer = torch.optim.SGD(
            parameters,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )
        scheduler = StepLR(optimizer, self.decay_every_steps, self.decay_rate) if self.decays else None
        return optimizer, scheduler
