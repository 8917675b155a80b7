"""Batch normalization with mini-batch statistics shared across data-parallel ranks.

Ioffe & Szegedy (2015), Algorithm 1 (Batch Normalizing Transform) normalizes every activation
with the mean and variance of the *mini-batch*. Under data parallelism each rank only sees its
shard of the batch, so plain BN would normalize with per-shard statistics. `DistributedBatchNorm`
computes Algorithm 1's mean and (biased) variance over the union of all ranks' shards: each rank
reduces its input to per-channel count, mean and *centred* sum of squares (two passes over its own
shard), one differentiable all-gather collects these, and every rank combines them with Chan, Golub
& LeVeque's parallel variance formula (M2 = sum_r M2_r + n_r (mean_r - mean)^2). Unlike the one-pass
E[x^2] - E[x]^2 this loses no precision when the mean is large against the spread. Statistics are
accumulated in the input's dtype promoted to at least float32. The gradient of the loss flows back
through the global statistics (the all-gather's backward all-reduces the gradient, so every rank
receives the contributions of every other rank's loss, as the paper's backward pass through mu_B
and sigma_B^2 requires).

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
from torch import Tensor, nn

# The one place this project uses a private torch name. torch 2.14: the public BN classes each fix the input
# rank (BatchNorm1d 2-3-d, BatchNorm2d 4-d), and DistributedDataParallel refuses a torch.nn.SyncBatchNorm
# subclass on CPU ("SyncBatchNorm layers only work with GPU modules"); _BatchNorm is their shared base for
# any (N, C, *) input, whose `_check_input_dim` hook this class overrides to accept it.
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

    def _check_input_dim(self, input: Tensor) -> None:  # _BatchNorm's hook: any (N, C, *) input
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
        return dist.is_available() and dist.is_initialized() and (dist.get_world_size(self.process_group) > 1)

    def _global_batch_statistics(self, input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Algorithm 1's mu_B and biased sigma_B^2 over all ranks' shards, plus the global count m."""
        channels = input.shape[1]
        local = local_moments(input.to(accumulator_dtype(input.dtype)))
        per_rank = AllGather.apply(local, self.process_group).view(-1, 2 * channels + 1)
        mean, var, count = combine_moments(per_rank[:, :channels], per_rank[:, channels:-1], per_rank[:, -1])
        if count.item() < 2:
            raise ValueError(
                f"expected more than 1 value per channel across all ranks when training, got {int(count.item())}"
            )
        return mean, var, count

    @torch.no_grad()
    def _update_running_statistics(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """Population estimates for inference (Sec. 3.1), with the unbiased variance m/(m-1)."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased_var = var * count / (count - 1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)

    def _normalize(self, input: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """Algorithm 1: x_hat = (x - mu_B) / sqrt(sigma_B^2 + eps); y = gamma * x_hat + beta."""
        shape = (1, -1) + (1,) * (input.dim() - 2)
        accumulator = mean.dtype
        output = (input.to(accumulator) - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            output = output * self.weight.to(accumulator).view(shape)
        if self.bias is not None:
            output = output + self.bias.to(accumulator).view(shape)
        return output.to(input.dtype)


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The input's dtype, widened to at least float32 (half-precision sums lose too much)."""
    return torch.promote_types(dtype, torch.float32)


def local_moments(input: Tensor) -> Tensor:
    """This shard's per-channel [mean (C), centred sum of squares M2 (C), count (1)] as one vector.

    Two passes (mean first, then squared deviations from it), so no cancellation; an empty shard
    contributes zeros and count 0."""
    channels = input.shape[1]
    count = input.numel() // channels
    if count == 0:
        return input.new_zeros(2 * channels + 1) + input.sum() * 0  # keeps the autograd graph
    reduce_dims = [0, *range(2, input.dim())]
    var, mean = torch.var_mean(input, dim=reduce_dims, correction=0)
    return torch.cat([mean, var * count, input.new_full((1,), count)])


def combine_moments(means: Tensor, m2s: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Chan et al.'s parallel variance: global mean, biased variance and count of R shards.

    `means` and `m2s` are (R, C), `counts` is (R,). mean = sum n_r mean_r / n;
    M2 = sum_r [M2_r + n_r (mean_r - mean)^2]; variance = M2 / n."""
    count = counts.sum()
    weights = (counts / count).unsqueeze(1)
    mean = (weights * means).sum(0)
    m2 = m2s.sum(0) + (counts.unsqueeze(1) * (means - mean) ** 2).sum(0)
    return mean, m2 / count, count


class AllGather(torch.autograd.Function):
    """Differentiable all-gather of one vector per rank into a (world_size * K,) vector.

    Backward: rank r's vector influenced every rank's loss through the gathered result, so its
    gradient is the sum over ranks of their gradients for slot r: an all-reduce, then slot r.
    Written with torch.distributed's public collectives (torch.distributed.nn.functional is
    deprecated)."""

    @staticmethod
    def forward(ctx, local: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        slots = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(slots, local.contiguous(), group=group)
        return torch.cat(slots)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad.view(dist.get_world_size(ctx.group), -1)[ctx.rank], None


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


# torch's public per-process BN classes (their common base, _BatchNorm, is private).
PER_PROCESS_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _swap_batchnorms(module: nn.Module, process_group: dist.ProcessGroup | None) -> nn.Module:
    converted = module
    if isinstance(module, PER_PROCESS_BATCHNORMS):
        converted = _distributed_twin(module, process_group)
    for name, child in module.named_children():
        converted.add_module(name, _swap_batchnorms(child, process_group))
    return converted


def _distributed_twin(bn: nn.Module, process_group: dist.ProcessGroup | None) -> DistributedBatchNorm:
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
