"""Evaluate with Algorithm 2's population statistics beside torch's running averages (``norm.inference``).

At an evaluation point `PopulationEvaluation` recomputes every BN layer's statistics with frozen
weights over `batches` training mini-batches of the training batch size (bnrepro.nn.population,
Algorithm 2 steps 8-11), evaluates the network once more on the evaluation loader with them, logs
``val_population/acc`` and ``val_population/loss`` beside the module's ``val/acc``, and puts the
running averages back. The mini-batches are drawn from the in-memory training split with the
callback's own seeded generator, never from the training stream or the global RNG, so training,
and a resumed run, are exactly as without the callback. Under DDP each rank takes its share of the
batches and the statistics and the accuracy are reduced over ranks.

`when="every"`: at every evaluation; `"final"`: only at the evaluation of the last step (a pass
over N training batches per evaluation is not free).
"""

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from bnrepro.nn.population import population_statistics

WHEN = ("every", "final")


def population_batches(inputs: Tensor, batch_size: int, count: int, seed: int, rank: int, world_size: int):
    """This rank's share of `count` disjoint training mini-batches fixed by `seed` (the split is reused if short).

    Every rank gets the same number, ceil(count / world_size), since a synchronized BN layer runs a
    collective per batch."""
    per_rank = -(-count // world_size)
    needed = per_rank * world_size * batch_size
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(inputs), generator=generator) for _ in range(-(-needed // len(inputs)))])
    for index in range(rank, per_rank * world_size, world_size):
        yield inputs[order[index * batch_size : (index + 1) * batch_size].to(inputs.device)]


class PopulationEvaluation(L.Callback):
    def __init__(self, batches: int = 100, when: str = "every", seed: int = 0):
        if batches < 1:
            raise ValueError(f"batches must be >= 1, got {batches}")
        if when not in WHEN:
            raise ValueError(f"when must be one of {WHEN}, got {when!r}")
        self.batches, self.when, self.seed = batches, when, seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (self.when == "final" and trainer.global_step != trainer.max_steps):
            return
        data = trainer.datamodule
        batches = population_batches(
            data.train_split.inputs, data.batch_size, self.batches, self.seed, trainer.global_rank, trainer.world_size
        )
        with torch.no_grad(), population_statistics(pl_module.net, batches):
            correct, loss_sum, count = self.evaluate(trainer, pl_module)
        totals = trainer.strategy.reduce(torch.stack([correct, loss_sum, count]), reduce_op="sum")
        metrics = {
            "val_population/acc": float(totals[0] / totals[2]),
            "val_population/loss": float(totals[1] / totals[2]),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @staticmethod
    def evaluate(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[Tensor, Tensor, Tensor]:
        """(correct, summed loss, examples) of the eval-mode network over this rank's evaluation batches."""
        pl_module.net.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=pl_module.device)
        for inputs, targets in trainer.val_dataloaders:
            inputs, targets = inputs.to(pl_module.device), targets.to(pl_module.device)
            logits = pl_module.net(inputs)
            totals += torch.stack([
                (logits.argmax(1) == targets).sum().double(),
                F.cross_entropy(logits, targets, reduction="sum").double(),
                torch.tensor(len(targets), dtype=torch.float64, device=pl_module.device),
            ])  # fmt: skip
        return totals[0], totals[1], totals[2]
