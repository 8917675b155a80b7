"""Algorithm 2 (steps 8-11) of Ioffe & Szegedy (2015): population statistics for inference.

After training, the paper freezes the weights and replaces every BN layer's statistics with
population estimates taken over training mini-batches B of the training batch size m:

    E[x]   <- E_B[mu_B]
    Var[x] <- m / (m - 1) * E_B[sigma_B^2]

For a convolutional BN layer the mini-batch is the "effective mini-batch" of Sec. 3.2, all
m' = |B| * H * W values of a feature map. The mini-batches are processed by the *training*
network N_BN^tr (every BN layer normalizing with its own mini-batch statistics), so each layer
sees the inputs it saw during training.

`population_statistics` is a context manager: inside it every BN layer's running_mean and
running_var hold Algorithm 2's estimates (so `model.eval()` inference uses them); on exit the
original running statistics and num_batches_tracked are back and nothing else was changed: the
weights are frozen (no_grad), only the BN layers are switched to training mode, momentum is not
touched, and the batches come from the caller, so no RNG or training data stream is consumed here.
Under torch.distributed the per-rank sums are all-reduced, so every rank holds the same estimates.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bnrepro.nn.batchnorm import BATCHNORM_TYPES

ACCUMULATOR = torch.float64  # sums over many batches; the estimates are cast to the buffers' dtype


# Named public classes only (their common base class is private in torch 2.x).
def batchnorm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every BN layer that keeps running statistics (torch's BatchNorm*d, SyncBatchNorm, the CPU sync BN)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, BATCHNORM_TYPES) and module.track_running_stats
    }


@dataclass
class MomentSums:
    """Running sums over mini-batches of one layer: sum of mu_B, of unbiased sigma_B^2, batch count."""

    mean_sum: Tensor
    var_sum: Tensor
    batches: Tensor

    def add(self, input: Tensor) -> None:
        """Steps 9-10 for one mini-batch: mu_B and m/(m-1) * sigma_B^2 over the effective mini-batch."""
        reduce_dims = [0, *range(2, input.dim())]
        var, mean = torch.var_mean(input.to(ACCUMULATOR), dim=reduce_dims, correction=1)
        self.mean_sum += mean
        self.var_sum += var
        self.batches += 1

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            packed = torch.cat([self.mean_sum, self.var_sum, self.batches])
            dist.all_reduce(packed)
            channels = self.mean_sum.numel()
            self.mean_sum, self.var_sum, self.batches = packed[:channels], packed[channels:-1], packed[-1:]

    def estimates(self) -> tuple[Tensor, Tensor]:
        """Step 10: E[x] = E_B[mu_B], Var[x] = E_B[m/(m-1) sigma_B^2]."""
        if int(self.batches.item()) == 0:
            raise ValueError("population statistics need at least one mini-batch")
        return self.mean_sum / self.batches, self.var_sum / self.batches


def estimate_population_statistics(
    model: nn.Module,
    batches: Iterable,
    forward: Callable[[object], object] | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """{layer name: (E[x], Var[x])} of Algorithm 2 over `batches`, leaving `model` exactly as it was.

    `forward(batch)` runs the network on one batch (default: `model(batch)`)."""
    layers = batchnorm_layers(model)
    run = forward if forward is not None else model
    sums = {name: zero_sums(layer) for name, layer in layers.items()}
    hooks = [layer.register_forward_pre_hook(accumulate_into(sums[name])) for name, layer in layers.items()]
    saved = {name: saved_state(layer) for name, layer in layers.items()}
    try:
        with torch.no_grad():
            for layer in layers.values():
                layer.train()  # N_BN^tr: each BN layer normalizes with its mini-batch statistics
            for batch in batches:
                run(batch)
    finally:
        for hook in hooks:
            hook.remove()
        for name, layer in layers.items():
            restore_state(layer, saved[name])
    for layer_sums in sums.values():
        layer_sums.all_reduce()
    return {name: layer_sums.estimates() for name, layer_sums in sums.items()}


@contextmanager
def population_statistics(
    model: nn.Module,
    batches: Iterable,
    forward: Callable[[object], object] | None = None,
) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
    """Inside: every BN layer's running statistics are Algorithm 2's estimates. On exit: the originals."""
    estimates = estimate_population_statistics(model, batches, forward)
    layers = batchnorm_layers(model)
    saved = {name: saved_state(layer) for name, layer in layers.items()}
    try:
        with torch.no_grad():
            for name, (mean, var) in estimates.items():
                layers[name].running_mean.copy_(mean)
                layers[name].running_var.copy_(var)
        yield estimates
    finally:
        for name, layer in layers.items():
            restore_state(layer, saved[name])


def zero_sums(layer: nn.Module) -> MomentSums:
    like = layer.running_mean
    zeros = torch.zeros(like.shape, dtype=ACCUMULATOR, device=like.device)
    return MomentSums(zeros.clone(), zeros.clone(), torch.zeros(1, dtype=ACCUMULATOR, device=like.device))


def accumulate_into(sums: MomentSums) -> Callable:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        sums.add(inputs[0].detach())

    return hook


@dataclass(frozen=True)
class LayerState:
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor | None
    training: bool


def saved_state(layer: nn.Module) -> LayerState:
    tracked = layer.num_batches_tracked
    return LayerState(
        layer.running_mean.clone(),
        layer.running_var.clone(),
        tracked.clone() if tracked is not None else None,
        layer.training,
    )


@torch.no_grad()
def restore_state(layer: nn.Module, state: LayerState) -> None:
    """Copy back in place, so any reference to the buffers (optimizer, DDP, checkpoint) stays valid."""
    layer.running_mean.copy_(state.running_mean)
    layer.running_var.copy_(state.running_var)
    if state.num_batches_tracked is not None:
        layer.num_batches_tracked.copy_(state.num_batches_tracked)
    layer.train(state.training)
