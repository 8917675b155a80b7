"""Sec. 3.3's "stabilizing effect on parameter growth": norms of BN-followed weights and their gradients.

BN makes a layer invariant to the scale of its weights W, and dBN(aWu)/d(aW) = (1/a) dBN(Wu)/dW:
as ||W|| grows the gradient shrinks, so the effective step ||dW|| / ||W|| falls. `WeightNorms`
logs, every `every_n_steps` optimizer steps, ||W|| and ||dL/dW|| (Frobenius) of each weight layer
whose output goes straight into a BN layer, as ``weights/<layer>/norm`` and ``weights/<layer>/grad_norm``
against the optimizer step, from `on_before_optimizer_step` (gradients complete, DDP-averaged and
unscaled, the update not yet applied). Cost: at logging steps only, one norm per layer, one host
transfer.

Which layers are BN-followed is observed, not guessed from module order: during the first training
forward pass hooks note which Linear/Conv output is the very tensor a BN layer receives.
"""

import lightning as L
import torch
from torch import Tensor, nn

from bnrepro.nn.batchnorm import BATCHNORM_TYPES

WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class BatchNormInputs:
    """Hooks that record, over forward passes, which weight layers' outputs feed a BN layer directly."""

    def __init__(self, model: nn.Module):
        self.outputs: dict[int, tuple[str, Tensor]] = {}
        self.followed: dict[str, nn.Module] = {}
        weights = {name: module for name, module in model.named_modules() if isinstance(module, WEIGHT_TYPES)}
        self.handles = [module.register_forward_hook(self.note_output(name)) for name, module in weights.items()]
        self.handles += [
            module.register_forward_pre_hook(self.note_input(weights))
            for module in model.modules()
            if isinstance(module, BATCHNORM_TYPES)
        ]

    def note_output(self, name: str):
        def hook(module, inputs, output):
            self.outputs[id(output)] = (name, output)  # the tensor is kept, so its id is not reused

        return hook

    def note_input(self, weights: dict[str, nn.Module]):
        def hook(module, inputs):
            source = self.outputs.get(id(inputs[0]))
            if source is not None and source[1] is inputs[0]:
                self.followed[source[0]] = weights[source[0]]

        return hook

    def remove(self) -> dict[str, nn.Module]:
        for handle in self.handles:
            handle.remove()
        self.outputs = {}
        return self.followed


def weight_and_gradient_norms(layers: dict[str, nn.Module]) -> Tensor:
    """(layers, 2) tensor of ||W|| and ||dL/dW|| (NaN where no gradient), on the weights' device."""
    rows = []
    for layer in layers.values():
        grad = layer.weight.grad
        grad_norm = torch.linalg.vector_norm(grad) if grad is not None else layer.weight.new_tensor(float("nan"))
        rows.append(torch.stack([torch.linalg.vector_norm(layer.weight.detach()), grad_norm.detach()]))
    return torch.stack(rows)


class WeightNorms(L.Callback):
    """Every `every_n_steps` optimizer steps, ||W|| and ||dL/dW|| of each BN-followed weight layer."""

    def __init__(self, every_n_steps: int = 100):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.layers: dict[str, nn.Module] | None = None
        self._probe: BatchNormInputs | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.layers is None and self._probe is None:
            self._probe = BatchNormInputs(pl_module)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self._probe is not None:
            self.layers, self._probe = self._probe.remove(), None
        if not self.layers or trainer.global_step % self.every_n_steps != 0:
            return
        with torch.no_grad():
            table = weight_and_gradient_norms(self.layers).cpu().tolist()
        metrics = {}
        for name, (weight_norm, grad_norm) in zip(self.layers, table, strict=True):
            metrics[f"weights/{name}/norm"] = weight_norm
            metrics[f"weights/{name}/grad_norm"] = grad_norm
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._probe is not None:
            self._probe.remove()
            self._probe = None
