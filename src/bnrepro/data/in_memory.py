"""A LightningDataModule for image classification datasets that fit in device memory.

Subclasses only say how to read their train and test splits; this class keeps them as tensors
on the training device and serves them through `tensor_stream` (no DataLoader workers).
"""

from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor

from bnrepro.data.errors import require_batch_fits
from bnrepro.data.tensor_stream import EvalBatches, StepStream


@dataclass
class Split:
    inputs: Tensor  # float32 in [0, 1], one row per sample
    targets: Tensor  # int64 class indices

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device) -> "Split":
        return Split(self.inputs.to(device), self.targets.to(device))


class InMemoryDataModule(L.LightningDataModule):
    num_classes = 10

    def __init__(
        self,
        batch_size: int = 60,
        eval_batch_size: int = 2000,
        steps_per_batch: int = 10,
        binarize: bool = False,
        seed: int = 0,
        shuffle: str = "examples",
    ):
        super().__init__()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.steps_per_batch, self.binarize, self.seed = steps_per_batch, binarize, seed
        self.shuffle = shuffle
        self.train_split: Split | None = None
        self.test_split: Split | None = None
        self._read: tuple[Split, Split] | None = None  # read_splits' result until setup moves it to the device

    def read_splits(self) -> tuple[Split, Split]:
        """Return the (train, test) splits on the CPU; subclasses implement this."""
        raise NotImplementedError

    def cpu_splits(self) -> tuple[Split, Split]:
        """`read_splits`, read once: a start-up check (the batch must fit the training split) and `setup` share it."""
        if self._read is None:
            self._read = self.read_splits()
        return self._read

    def setup(self, stage: str | None = None) -> None:
        if self.train_split is not None:
            return
        train, test = (self._prepare(split) for split in self.cpu_splits())
        self.train_split, self.test_split, self._read = train, test, None

    def _prepare(self, split: Split) -> Split:
        if self.binarize:  # the paper's MNIST inputs are binary images (Sec. 4.1)
            split = Split((split.inputs > 0.5).float(), split.targets)
        return split.to(self._device())

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def train_dataloader(self) -> StepStream:
        trainer = self.trainer
        require_batch_fits(self.batch_size, len(self.train_split), trainer.world_size)
        return StepStream(
            self.train_split.inputs,
            self.train_split.targets,
            batch_size=self.batch_size,
            steps_per_batch=self.steps_per_batch,
            seed=self.seed,
            total_steps=lambda: trainer.max_steps,
            start_step=lambda: trainer.global_step,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            # One Lightning epoch runs from step 0 to max_steps; a resumed run continues that epoch.
            epoch_start_step=lambda: 0,
            shuffle=self.shuffle,
        )

    def val_dataloader(self) -> EvalBatches:
        # The paper plots *test* accuracy during training (Fig. 1a); evaluation uses the test split.
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return EvalBatches(self.test_split.inputs, self.test_split.targets, self.eval_batch_size, rank, world_size)

    def test_dataloader(self) -> EvalBatches:
        return self.val_dataloader()
