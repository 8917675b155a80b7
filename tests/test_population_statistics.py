"""Algorithm 2 (steps 8-11): population statistics over training mini-batches, with frozen weights.

The truth is computed directly on tiny float64 data: the training network N_BN^tr is run by hand
(every BN normalizing with its mini-batch statistics), mu_B and the unbiased m/(m-1) sigma_B^2 of
every BN input are averaged over the mini-batches.
"""

import os
import socket
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from bnrepro.nn.population import estimate_population_statistics, population_statistics
from bnrepro.nn.sync_batchnorm import DistributedBatchNorm

BATCH, FEATURES, BATCHES = 6, 4, 5


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, FEATURES, bias=False), nn.BatchNorm1d(FEATURES), nn.ReLU(),
        nn.Linear(FEATURES, FEATURES, bias=False), nn.BatchNorm1d(FEATURES),
    ).double()  # fmt: skip


def mlp_batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [3.0 + 2.0 * torch.randn(BATCH, 3, generator=generator, dtype=torch.float64) for _ in range(BATCHES)]


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, FEATURES, 3, bias=False), nn.BatchNorm2d(FEATURES)).double()


def conv_batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [1.0 + torch.randn(BATCH, 2, 5, 5, generator=generator, dtype=torch.float64) for _ in range(BATCHES)]


def unbiased_moments(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mu_B and m/(m-1) sigma_B^2 per channel over the effective mini-batch (Sec. 3.2)."""
    values = h.transpose(0, 1).reshape(h.shape[1], -1)
    return values.mean(1), values.var(1, correction=1)


def averaged(moments: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([m for m, _ in moments]).mean(0), torch.stack([v for _, v in moments]).mean(0)


def direct_mlp_statistics(model: nn.Sequential, batches) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    first, second = [], []
    for x in batches:
        h1 = model[0](x)
        first.append(unbiased_moments(h1))
        z1 = F.relu(F.batch_norm(h1, None, None, model[1].weight, model[1].bias, training=True, eps=model[1].eps))
        second.append(unbiased_moments(model[3](z1)))
    return {"1": averaged(first), "4": averaged(second)}


def assert_statistics_equal(actual, expected) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-12, atol=1e-12)


def test_mlp_estimates_are_the_mean_of_batch_means_and_unbiased_batch_variances():
    model = mlp()
    with torch.no_grad():
        expected = direct_mlp_statistics(model, mlp_batches())

    assert_statistics_equal(estimate_population_statistics(model, mlp_batches()), expected)


def test_conv_estimates_use_the_effective_mini_batch_of_all_locations():
    model = conv_net()
    with torch.no_grad():
        expected = {"1": averaged([unbiased_moments(model[0](x)) for x in conv_batches()])}

    assert_statistics_equal(estimate_population_statistics(model, conv_batches()), expected)


def test_cpu_sync_batchnorm_layers_are_estimated_like_torch_batchnorm():
    model = conv_net()
    synced = nn.Sequential(model[0], DistributedBatchNorm(FEATURES).double())

    assert_statistics_equal(
        estimate_population_statistics(synced, conv_batches()),
        estimate_population_statistics(model, conv_batches()),
    )


def test_inside_the_context_evaluation_normalizes_with_the_estimates():
    model = mlp().eval()
    x = mlp_batches()[0]
    with population_statistics(model, mlp_batches()) as estimates:
        for name, (mean, var) in estimates.items():
            layer = model.get_submodule(name)
            torch.testing.assert_close(layer.running_mean, mean, rtol=0, atol=0)
            torch.testing.assert_close(layer.running_var, var, rtol=0, atol=0)
        output = model(x)
    assert not torch.equal(output, model(x))


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {name: tensor.clone() for name, tensor in model.state_dict().items()},
        "training": {name: module.training for name, module in model.named_modules()},
        "momentum": {name: module.momentum for name, module in model.named_modules() if hasattr(module, "momentum")},
    }


def test_training_state_is_restored_and_no_randomness_is_consumed():
    model = mlp()
    model[1].momentum, model[4].momentum = 0.3, None
    model(mlp_batches()[0])  # running statistics and num_batches_tracked away from their initial values
    model[4].eval()
    before = snapshot(model)
    rng_before = torch.get_rng_state()

    with population_statistics(model, mlp_batches(), forward=lambda batch: model(batch)):
        pass

    after = snapshot(model)
    torch.testing.assert_close(after["state"], before["state"], rtol=0, atol=0)
    assert (after["training"], after["momentum"]) == (before["training"], before["momentum"])
    assert torch.equal(torch.get_rng_state(), rng_before)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def estimate_on_rank(rank: int, port: int, out_dir: Path) -> None:
    """Spawned worker: rank r estimates over every second mini-batch, starting at r."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=30))
    try:
        estimates = estimate_population_statistics(mlp(), mlp_batches()[rank::2][:2])
        torch.save(estimates, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_reduce_to_the_estimates_over_all_their_batches(tmp_path):
    mp.spawn(estimate_on_rank, args=(free_port(), tmp_path), nprocs=2)
    expected = estimate_population_statistics(mlp(), mlp_batches()[:4])

    for rank in range(2):
        assert_statistics_equal(torch.load(tmp_path / f"rank{rank}.pt"), expected)
