"""The one LightningModule: trains any classification network with cross-entropy and momentum SGD.

It knows nothing of which network it trains. Training batches are chunks of K optimizer steps
(see `data.tensor_stream`): `training_step` takes K SGD steps under manual optimization, so the
Trainer's fixed per-batch cost is paid once per K steps while `global_step` still counts every
optimizer step. Metrics are logged against `global_step` (the optimizer step), never the chunk index.

The module does no per-step host work: the training loss is summed on the device and written to
the loggers once per logging interval (the Trainer's ``log_every_n_steps`` chunks, set from
``loop.log_every_n_steps`` optimizer steps), as the mean over the interval, with one device sync. (The
default divergence check, `callbacks.divergence`, reads each chunk's mean loss: one sync per chunk.)

Each SGD step goes through Lightning's public manual-optimization API (`manual_backward`,
`LightningOptimizer.step`), which counts it in `global_step` and applies the precision plugin's loss
scaling, DDP's gradient sync and every callback's per-step hooks (benchmarks/README.md measures its
cost against a hand-written loop).
"""

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from bnrepro.optim import OptimizerFactory, SchedulerFactory

LOSS_ACCUMULATOR_KEY = "train_loss_accumulator"  # the checkpoint's entry for the partial logging interval


class Classifier(L.LightningModule):
    def __init__(
        self, net: nn.Module, optimizer: OptimizerFactory, num_classes: int, scheduler: SchedulerFactory | None = None
    ):
        """`optimizer` and `scheduler` are the config's `_partial_` nodes (conf/optim/): called with the
        network's parameters and with the optimizer; a scheduler is stepped after every optimizer step."""
        super().__init__()
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.automatic_optimization = False
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro") if num_classes > 5 else None
        self.eval_loss = MeanMetric()
        self.eval_count = SumMetric()  # examples in the evaluation split, over all ranks
        self.eval_examples = 0  # their number at the last evaluation (the n of its binomial error)
        # The training loss since it was last logged: a device scalar and a step count (no sync per step).
        self._loss_sum: Tensor | None = None
        self._loss_steps = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.net.parameters())
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory is not None else None
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, chunk: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        losses = []
        for inputs, targets in zip(*chunk, strict=True):
            loss = F.cross_entropy(self.net(inputs), targets)
            self._sgd_step(optimizer, loss)  # counts one optimizer step in global_step
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.detach())
        chunk_losses = torch.stack(losses)
        self._accumulate_loss(chunk_losses)
        return chunk_losses.mean()  # what callbacks see (e.g. divergence checks), once per chunk

    def _sgd_step(self, optimizer, loss: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def _accumulate_loss(self, chunk_losses: Tensor) -> None:
        """Sum the chunk's losses on the device; at a logging boundary (or the last step) log their mean."""
        total = chunk_losses.sum()
        self._loss_sum = total if self._loss_sum is None else self._loss_sum + total
        self._loss_steps += len(chunk_losses)
        step, every = self.global_step, self.trainer.log_every_n_steps * len(chunk_losses)
        crossed = every > 0 and step // every > (step - len(chunk_losses)) // every
        if not (crossed or step == self.trainer.max_steps):
            return
        if self.loggers:
            mean = float(self._loss_sum / self._loss_steps)  # the one host sync of the interval
            for logger in self.loggers:
                logger.log_metrics({"train/loss": mean}, step=step)
        self._loss_sum, self._loss_steps = None, 0

    # A checkpoint taken inside a logging interval (a stop at any chunk boundary) carries the interval's
    # partial sum and count, so the resumed run logs the same mean at the interval's end as an uninterrupted one.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        partial = None if self._loss_sum is None else self._loss_sum.detach().cpu()
        checkpoint[LOSS_ACCUMULATOR_KEY] = {"sum": partial, "steps": self._loss_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(LOSS_ACCUMULATOR_KEY) or {"sum": None, "steps": 0}
        self._loss_sum, self._loss_steps = saved["sum"], saved["steps"]

    def on_train_start(self) -> None:
        if self._loss_sum is not None:  # restored on the CPU, before the module reached its device
            self._loss_sum = self._loss_sum.to(self.device)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _evaluate(self, batch: tuple[Tensor, Tensor]) -> None:
        inputs, targets = batch
        logits = self.net(inputs)
        self.eval_loss.update(F.cross_entropy(logits, targets), weight=len(targets))
        self.eval_count.update(len(targets))
        self.top1.update(logits, targets)
        if self.top5 is not None:
            self.top5.update(logits, targets)

    def _log_evaluation(self, prefix: str) -> None:
        metrics = {f"{prefix}/loss": self.eval_loss, f"{prefix}/acc": self.top1}
        if self.top5 is not None:
            metrics[f"{prefix}/acc_top5"] = self.top5
        # torchmetrics objects: Lightning computes (synced across ranks) and resets them at epoch end.
        self.log_dict(metrics)
        self.eval_examples = int(self.eval_count.compute())  # synced across ranks, like the metrics
        self.eval_count.reset()
        self.log("step", float(self.global_step))
