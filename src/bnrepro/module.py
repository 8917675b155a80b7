"""The one LightningModule: trains any classification network with cross-entropy and momentum SGD.

It knows nothing of which network it trains. Training batches are chunks of K optimizer steps
(see `data.tensor_stream`): `training_step` takes K SGD steps under manual optimization, so the
Trainer's fixed per-batch cost is paid once per K steps while `global_step` still counts every
optimizer step. Metrics are logged against `global_step` (the optimizer step), never the chunk index.
"""

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from bnrepro.optim import SGDRecipe


class Classifier(L.LightningModule):
    def __init__(self, net: nn.Module, recipe: SGDRecipe, num_classes: int):
        super().__init__()
        self.net, self.recipe = net, recipe
        self.automatic_optimization = False
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro") if num_classes > 5 else None
        self.eval_loss = MeanMetric()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self):
        optimizer, scheduler = self.recipe.build(self.net.parameters())
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, chunk: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        loss_sum = torch.zeros((), device=self.device)
        for inputs, targets in zip(*chunk):
            loss = F.cross_entropy(self.net(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach()
        mean_loss = loss_sum / len(chunk[1])
        # Logged every `log_every_n_steps` chunks by Lightning; converted to a float only then.
        self.log_dict({"train/loss": mean_loss, "step": float(self.global_step)}, on_step=True, on_epoch=False)
        return mean_loss

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
        self.top1.update(logits, targets)
        if self.top5 is not None:
            self.top5.update(logits, targets)

    def _log_evaluation(self, prefix: str) -> None:
        metrics = {f"{prefix}/loss": self.eval_loss, f"{prefix}/acc": self.top1}
        if self.top5 is not None:
            metrics[f"{prefix}/acc_top5"] = self.top5
        # torchmetrics objects: Lightning computes (synced across ranks) and resets them at epoch end.
        self.log_dict(metrics)
        self.log("step", float(self.global_step))
