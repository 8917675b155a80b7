"""DistributedBatchNorm: Algorithm 1 of Ioffe & Szegedy (2015) with mini-batch statistics over all ranks.

The distributed tests spawn two real processes talking gloo on CPU. Each rank normalizes its
shard of one global batch; the results must equal single-process torch.nn.BatchNorm on the whole
batch.

Gradient bookkeeping (checked explicitly below). The reference loss is
R = sum(out * w) over the whole batch. Rank r uses L_r = WORLD_SIZE * sum(out_r * w_r), so the
mean over ranks of L_r, which is what DDP minimizes by averaging gradients, equals R. Then:
  - gamma/beta gradients, all-reduced (SUM) and divided by WORLD_SIZE as DDP does, equal dR/dgamma;
  - the input gradient on rank r is d(sum_r L_r)/dx_r = WORLD_SIZE * dR/dx_r: the all-reduce in
    the forward all-reduces the gradient in the backward, so each rank gets the gradient of the
    *summed* losses; DDP's 1/WORLD_SIZE reaches the layers upstream only when it averages their
    parameter gradients.
"""

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bnrepro.nn.sync_batchnorm import DistributedBatchNorm, convert_sync_batchnorm

WORLD_SIZE = 2
CHANNELS = 3
TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}


@dataclass(frozen=True)
class Scenario:
    shard_sizes: tuple[int, ...]
    sample_shape: tuple[int, ...] = ()  # trailing dims after (N, C)

    def shard(self, rank: int) -> slice:
        start = sum(self.shard_sizes[:rank])
        return slice(start, start + self.shard_sizes[rank])


def global_batch(scenario: Scenario) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with non-zero mean and non-unit variance, and the fixed weights of the loss."""
    generator = torch.Generator().manual_seed(0)
    shape = (sum(scenario.shard_sizes), CHANNELS, *scenario.sample_shape)
    inputs = 2.0 + 3.0 * torch.randn(shape, generator=generator, dtype=torch.float64)
    loss_weights = torch.randn(shape, generator=generator, dtype=torch.float64)
    return inputs, loss_weights


def with_random_affine(bn: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bn.weight.copy_(1.0 + 0.5 * torch.randn(CHANNELS, generator=generator))
        bn.bias.copy_(torch.randn(CHANNELS, generator=generator))
    return bn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_step_on_shard(rank: int, scenario: Scenario, port: int, out_dir: Path) -> None:
    """Spawned worker: one training forward/backward of DistributedBatchNorm on this rank's shard."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=30))
    try:
        inputs, loss_weights = global_batch(scenario)
        shard = scenario.shard(rank)
        x = inputs[shard].clone().requires_grad_()
        bn = with_random_affine(DistributedBatchNorm(CHANNELS).double())
        out = bn(x)
        (WORLD_SIZE * (out * loss_weights[shard]).sum()).backward()
        for param in bn.parameters():  # DDP: average parameter gradients over ranks
            dist.all_reduce(param.grad)
            param.grad /= WORLD_SIZE
        torch.save(
            {
                "out": out.detach(),
                "input_grad": x.grad,
                "weight_grad": bn.weight.grad,
                "bias_grad": bn.bias.grad,
                "state": bn.state_dict(),
            },
            out_dir / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def train_step_on_ranks(scenario: Scenario, out_dir: Path) -> list[dict]:
    """Run the worker on WORLD_SIZE processes; an exception in any of them fails the test."""
    mp.spawn(train_step_on_shard, args=(scenario, free_port(), out_dir), nprocs=WORLD_SIZE)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def train_step_full_batch(scenario: Scenario) -> dict:
    """Single-process torch.nn.BatchNorm on the concatenated batch, loss R = sum(out * w)."""
    inputs, loss_weights = global_batch(scenario)
    x = inputs.clone().requires_grad_()
    torch_bn = nn.BatchNorm1d if not scenario.sample_shape else nn.BatchNorm2d
    bn = with_random_affine(torch_bn(CHANNELS).double())
    out = bn(x)
    (out * loss_weights).sum().backward()
    return {
        "out": out.detach(),
        "input_grad": x.grad,
        "weight_grad": bn.weight.grad,
        "bias_grad": bn.bias.grad,
        "state": bn.state_dict(),
    }


def assert_shards_match_full_batch(scenario: Scenario, out_dir: Path) -> None:
    ranks = train_step_on_ranks(scenario, out_dir)
    full = train_step_full_batch(scenario)
    for rank, result in enumerate(ranks):
        shard = scenario.shard(rank)
        torch.testing.assert_close(result["out"], full["out"][shard], **TOLERANCE)
        torch.testing.assert_close(result["input_grad"], WORLD_SIZE * full["input_grad"][shard], **TOLERANCE)
        torch.testing.assert_close(result["weight_grad"], full["weight_grad"], **TOLERANCE)
        torch.testing.assert_close(result["bias_grad"], full["bias_grad"], **TOLERANCE)
        torch.testing.assert_close(result["state"], full["state"], **TOLERANCE)


def test_two_ranks_equal_full_batch_batchnorm(tmp_path):
    assert_shards_match_full_batch(Scenario(shard_sizes=(4, 4)), tmp_path)


def test_two_ranks_with_unequal_batch_sizes_equal_full_batch_batchnorm(tmp_path):
    assert_shards_match_full_batch(Scenario(shard_sizes=(3, 5)), tmp_path)


def test_two_ranks_with_feature_maps_equal_full_batch_batchnorm(tmp_path):
    assert_shards_match_full_batch(Scenario(shard_sizes=(2, 3), sample_shape=(4, 5)), tmp_path)


def test_rank_with_empty_shard_does_not_change_full_batch_batchnorm(tmp_path):
    assert_shards_match_full_batch(Scenario(shard_sizes=(0, 4)), tmp_path)


def test_eval_mode_normalizes_with_running_statistics_like_torch_batchnorm():
    generator = torch.Generator().manual_seed(2)
    reference = nn.BatchNorm1d(CHANNELS)
    reference.running_mean.copy_(torch.randn(CHANNELS, generator=generator))
    reference.running_var.copy_(torch.rand(CHANNELS, generator=generator) + 0.5)
    bn = DistributedBatchNorm(CHANNELS)
    bn.load_state_dict(reference.state_dict())
    x = torch.randn(4, CHANNELS, 6, generator=generator)

    torch.testing.assert_close(bn.eval()(x), reference.eval()(x), rtol=0, atol=0)


def test_training_without_process_group_equals_torch_batchnorm():
    assert not dist.is_initialized()
    x = torch.randn(8, CHANNELS, 5, 5, generator=torch.Generator().manual_seed(3))
    reference = nn.BatchNorm2d(CHANNELS, momentum=None)
    bn = DistributedBatchNorm(CHANNELS, momentum=None)

    torch.testing.assert_close(bn(x), reference(x), rtol=0, atol=0)
    torch.testing.assert_close(bn.state_dict(), reference.state_dict(), rtol=0, atol=0)


class ConvBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.3)


def nested_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(5, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), ConvBlock())
    with torch.no_grad():
        for bn in (model[1], model[3].bn):
            bn.weight.uniform_(0.5, 1.5)
            bn.running_mean.uniform_(-1.0, 1.0)
            bn.num_batches_tracked.fill_(7)
    model[3].bn.eval()
    model[3].bn.bias.requires_grad_(False)
    return model


def test_convert_sync_batchnorm_swaps_every_batchnorm_and_keeps_its_state():
    model = nested_model()
    before = {name: module for name, module in model.named_modules()}
    expected_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    converted = convert_sync_batchnorm(model)

    after = dict(converted.named_modules())
    assert after.keys() == before.keys()
    for name, module in after.items():
        if isinstance(before[name], nn.modules.batchnorm._BatchNorm):
            old = before[name]
            assert type(module) is DistributedBatchNorm
            assert (module.eps, module.momentum, module.training) == (old.eps, old.momentum, old.training)
            assert module.weight is old.weight and module.bias is old.bias
        else:
            assert module is before[name]
    assert not converted[3].bn.bias.requires_grad
    torch.testing.assert_close(converted.state_dict(), expected_state, rtol=0, atol=0)


def test_convert_sync_batchnorm_uses_torch_syncbatchnorm_for_cuda():
    converted = convert_sync_batchnorm(nested_model(), device_type="cuda")

    assert type(converted[1]) is nn.SyncBatchNorm
    assert type(converted[3].bn) is nn.SyncBatchNorm


def offset_batch(offset_over_spread: float) -> torch.Tensor:
    """float32 inputs whose mean is `offset_over_spread` times their spread (Issue 13's precision case)."""
    generator = torch.Generator().manual_seed(4)
    spread = torch.randn(9, CHANNELS, 2, 2, generator=generator)
    return (offset_over_spread + spread).float()


PRECISION_SHARDS = Scenario(shard_sizes=(4, 5), sample_shape=(2, 2))


def forward_offset_shard(rank: int, offset_over_spread: float, port: int, out_dir: Path) -> None:
    """Spawned worker: one float32 training forward of DistributedBatchNorm on this rank's shard."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=30))
    try:
        out = DistributedBatchNorm(CHANNELS)(offset_batch(offset_over_spread)[PRECISION_SHARDS.shard(rank)])
        torch.save(out.detach(), out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def float32_error_against_float64(offset_over_spread: float, out_dir: Path) -> tuple[float, float]:
    """Max output error of the two-rank float32 layer and of torch's float32 BatchNorm vs float64 truth."""
    mp.spawn(forward_offset_shard, args=(offset_over_spread, free_port(), out_dir), nprocs=WORLD_SIZE)
    ours = torch.cat([torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)])
    inputs = offset_batch(offset_over_spread)
    with torch.no_grad():
        truth = nn.BatchNorm2d(CHANNELS).double()(inputs.double())
        torch_float32 = nn.BatchNorm2d(CHANNELS)(inputs)
    assert ours.dtype == torch.float32
    return float((ours.double() - truth).abs().max()), float((torch_float32.double() - truth).abs().max())


def test_float32_mean_a_thousand_times_the_spread_is_as_precise_as_torch_batchnorm(tmp_path):
    ours, torch_error = float32_error_against_float64(1e3, tmp_path)
    assert ours <= 10 * max(torch_error, 1e-6)


def test_float32_mean_ten_thousand_times_the_spread_is_as_precise_as_torch_batchnorm(tmp_path):
    ours, torch_error = float32_error_against_float64(1e4, tmp_path)
    assert ours <= 10 * max(torch_error, 1e-6)
