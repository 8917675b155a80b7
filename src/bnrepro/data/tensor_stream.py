"""Device-resident loaders for datasets that fit in memory.

The MNIST network is so small that a `DataLoader` (worker processes, per-sample collation) and
the Trainer's per-batch work cost more than the arithmetic. Here the whole split lives as tensors
on the training device and batches are taken by index:

* `StepStream` serves training data as a deterministic function of the optimizer step: step ``s``
  reads batch ``s mod S`` of data-epoch ``s // S`` (``S`` steps per epoch), where every data-epoch
  is a fresh seeded permutation (``shuffle="examples"``, Sec. 4.2.1's thorough shuffle) or a seeded
  reordering of mini-batches fixed once (``shuffle="batches"``: the same examples always share a
  mini-batch, the less thorough shuffle that Sec. 4.2.1 replaced). It starts wherever the trainer's global step is, so a resumed run
  sees exactly the batches an uninterrupted one would. Each item is a *chunk* of ``K`` steps,
  shape (K, B, ...), so the Trainer's per-batch overhead is paid once per K optimizer steps.
* Under DDP every rank takes a disjoint, equally long shard of the same epoch permutation.
* `EvalBatches` walks an evaluation split in large batches, in order (under DDP, each rank its own block).
"""

from collections.abc import Callable, Iterator

import torch
from torch import Tensor


SHUFFLES = ("examples", "batches")


def epoch_permutation(num_samples: int, seed: int, epoch: int, fixed_batch: int = 0) -> Tensor:
    """The sample order of one data-epoch: seeded by (seed, epoch) so any epoch can be recomputed.

    With `fixed_batch` > 0 the mini-batches are fixed: epoch 0's permutation cut into blocks of
    `fixed_batch` samples, of which every epoch only reorders the blocks (the tail is dropped).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if fixed_batch <= 0:
        return torch.randperm(num_samples, generator=generator)
    blocks = num_samples // fixed_batch
    first = epoch_permutation(num_samples, seed, 0)[: blocks * fixed_batch].view(blocks, fixed_batch)
    return first[torch.randperm(blocks, generator=generator)].flatten()


def rank_shard(permutation: Tensor, rank: int, world_size: int) -> Tensor:
    """Every `world_size`-th sample, starting at `rank`, after dropping the tail that would make shards unequal."""
    usable = len(permutation) - len(permutation) % world_size
    return permutation[:usable][rank::world_size]


class StepStream:
    """Training chunks of `steps_per_batch` optimizer steps, from `start_step()` up to `total_steps()`."""

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        batch_size: int,
        steps_per_batch: int,
        seed: int,
        total_steps: Callable[[], int],
        start_step: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_start_step: Callable[[], int] | None = None,
        shuffle: str = "examples",
    ):
        if shuffle not in SHUFFLES:
            raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.steps_per_batch = batch_size, steps_per_batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.total_steps, self.start_step = total_steps, start_step
        self.epoch_start_step = epoch_start_step or start_step
        self.steps_per_epoch = (len(targets) // world_size) // batch_size
        # Fixed batches are global (all ranks' shares of one step): rank_shard then keeps each rank's share fixed too.
        self.fixed_batch = batch_size * world_size if shuffle == "batches" else 0
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(targets)} samples over {world_size} rank(s) cannot fill one batch of {batch_size}")
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        """Chunks from `epoch_start_step()`: Lightning, resuming mid-epoch, counts the chunks it already ran
        against this length, so then it must include them although iteration starts at `start_step()`."""
        remaining = max(self.total_steps() - self.epoch_start_step(), 0)
        return -(-remaining // self.steps_per_batch)

    # Lightning's resumable-loader interface: the position is `start_step()` (the trainer's global step,
    # restored from the checkpoint), so there is nothing more to save.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        step, end = self.start_step(), self.total_steps()
        while step < end:
            count = min(self.steps_per_batch, end - step)
            index = self.chunk_indices(step, count)
            shape = (count, self.batch_size)
            # index_select copies whole rows; on the CPU it is several times faster than inputs[index].
            inputs = self.inputs.index_select(0, index).view(*shape, *self.inputs.shape[1:])
            yield inputs, self.targets.index_select(0, index).view(shape)
            step += count

    def chunk_indices(self, step: int, count: int) -> Tensor:
        """Sample indices (on the data's device) of this rank's batches for steps [step, step + count)."""
        pieces = []
        while count > 0:
            epoch, position = divmod(step, self.steps_per_epoch)
            taken = min(count, self.steps_per_epoch - position)
            order = self._epoch_order(epoch)
            pieces.append(order[position * self.batch_size : (position + taken) * self.batch_size])
            step, count = step + taken, count - taken
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _epoch_order(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            permutation = epoch_permutation(len(self.targets), self.seed, epoch, self.fixed_batch)
            self._order = rank_shard(permutation, self.rank, self.world_size).to(self.targets.device)
            self._epoch = epoch
        return self._order


class EvalBatches:
    """An evaluation split in order, `batch_size` samples at a time (the last batch may be short).

    Under DDP each rank walks its own contiguous block of the split (block sizes differ by at most
    one sample), so every sample is evaluated exactly once over all ranks; the metrics' sync at the
    end of evaluation then gives the value on the whole split.
    """

    def __init__(self, inputs: Tensor, targets: Tensor, batch_size: int, rank: int = 0, world_size: int = 1):
        start, stop = rank_block(len(targets), rank, world_size)
        self.inputs, self.targets, self.batch_size = inputs[start:stop], targets[start:stop], batch_size

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.targets), self.batch_size):
            stop = start + self.batch_size
            yield self.inputs[start:stop], self.targets[start:stop]


def rank_block(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s contiguous block when `num_samples` are split as evenly as possible."""
    return rank * num_samples // world_size, (rank + 1) * num_samples // world_size
