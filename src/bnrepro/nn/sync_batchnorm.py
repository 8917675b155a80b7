"""Batch normalization with mini-batch statistics shared across data-parallel ranks.

Ioffe & Szegedy (2015), Algorithm 1 (Batch Normalizing Transform) normalizes every activation
with the mean and variance of the *mini-batch*. Under data parallelism each rank only sees its
shard of the batch, so plain BN would normalize with per-shard statistics. `DistributedBatchNorm`
computes Algorithm 1's mean and (biased) variance over the union of all ranks' shards: each rank
reduces its input to per-channel sum, sum of squares and element count, one differentiable
all-reduce adds these up, and the gradient of the loss flows back through the global statistics
(the all-reduce's backward all-reduces the gradient, so every rank receives the contributions of
every other rank's loss, as the paper's backward pass through mu_B and sigma_B^2 requires).

For inference (Sec. 3.1) the network uses population statistics instead; the running
estimates are updated from the global mini-batch statistics, with the unbiased variance
estimate m/(m-1) * sigma_B^2 where m is the global count, exactly as torch.nn.BatchNorm does
for a single process. In eval mode, and whenever no process group of more than one rank is
active, the layer is torch.nn.BatchNorm.

Why our own class: torch.nn.SyncBatchNorm only runs on CUDA tensors, while this project trains
data-parallel on CPU with the gloo backend. `convert_sync_batchnorm` picks torch's class for
CUDA models and this one otherwise.
"""

import itertools

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class DistributedBatchNorm(_BatchNorm):
    """BatchNorm over any input of shape (N, C, *) whose training statistics span all ranks.

    Drop-in for torch.nn.BatchNorm1d/2d/3d (same arguments, buffers and state dict) that also
    works on CPU. `process_group` selects the ranks sharing statistics (None: the default group).
    Per-rank batch sizes may differ, including empty shards, as long as the global batch holds
    more than one value per channel.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected input of shape (N, C, *), got {input.dim()}-d input")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and self._spans_several_ranks()):
            return super().forward(input)
        self._check_input_dim(input)
        mean, var, count = self._global_batch_statistics(input)
        if self.track_running_stats:
            self._update_running_statistics(mean, var, count)
        return self._normalize(input, mean, var)

    def _spans_several_ranks(self) -> bool:
        return dist.is_available() and dist.is_initialized() and (
            dist.get_world_size(self.process_group) > 1
        )

    def _global_batch_statistics(self, input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Algorithm 1's mu_B and biased sigma_B^2 over all ranks' shards, plus the global count m."""
        channels = input.shape[1]
        reduce_dims = [0, *range(2, input.dim())]
        local_count = input.new_full((1,), input.numel() // channels)
        packed = torch.cat(
            [input.sum(reduce_dims), (input * input).sum(reduce_dims), local_count]
        )
        packed = dist_fn.all_reduce(packed, group=self.process_group)  # None: default group
        total, total_sq, count = packed[:channels], packed[channels : 2 * channels], packed[-1]
        if count.item() < 2:
            raise ValueError(
                "expected more than 1 value per channel across all ranks when training, "
                f"got {int(count.item())}"
            )
        mean = total / count
        var = (total_sq / count - mean * mean).clamp(min=0)
        return mean, var, count

    @torch.no_grad()
    def _update_running_statistics(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """Population estimates for inference (Sec. 3.1), with the unbiased variance m/(m-1)."""
        self.num_batches_tracked.add_(1)
        factor = (
            1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        )
        unbiased_var = var * count / (count - 1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)

    def _normalize(self, input: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """Algorithm 1: x_hat = (x - mu_B) / sqrt(sigma_B^2 + eps); y = gamma * x_hat + beta."""
        shape = (1, -1) + (1,) * (input.dim() - 2)
        output = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            output = output * self.weight.view(shape)
        if self.bias is not None:
            output = output + self.bias.view(shape)
        return output


def convert_sync_batchnorm(
    module: nn.Module,
    device_type: str | None = None,
    process_group: dist.ProcessGroup | None = None,
) -> nn.Module:
    """Return `module` with every (not yet synchronized) BatchNorm layer synchronized across ranks.

    CUDA models get torch.nn.SyncBatchNorm; anything else gets `DistributedBatchNorm`.
    `device_type` defaults to the device of the module's first parameter (or buffer).
    Parameters and buffers are moved over, not copied, as torch's own conversion does.
    """
    if device_type is None:
        device_type = _device_type_of(module)
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    return _swap_batchnorms(module, process_group)


def _device_type_of(module: nn.Module) -> str:
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return first.device.type if first is not None else "cpu"


def _swap_batchnorms(module: nn.Module, process_group: dist.ProcessGroup | None) -> nn.Module:
    converted = module
    if isinstance(module, _BatchNorm) and not isinstance(
        module, (DistributedBatchNorm, nn.SyncBatchNorm)
    ):
        converted = _distributed_twin(module, process_group)
    for name, child in module.named_children():
        converted.add_module(name, _swap_batchnorms(child, process_group))
    return converted


def _distributed_twin(
    bn: _BatchNorm, process_group: dist.ProcessGroup | None
) -> DistributedBatchNorm:
    # Built on the meta device: every tensor is then replaced by `bn`'s own, keeping its
    # device, dtype and requires_grad.
    twin = DistributedBatchNorm(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        process_group,
        device="meta",
    )
    twin.weight, twin.bias = bn.weight, bn.bias
    twin.running_mean, twin.running_var = bn.running_mean, bn.running_var
    twin.num_batches_tracked = bn.num_batches_tracked
    twin.train(bn.training)
    return twin
