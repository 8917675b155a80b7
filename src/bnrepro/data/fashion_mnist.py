"""Fashion-MNIST as images for convolutional networks: the data of the BN-Inception proxy (issue 5).

The paper's ImageNet experiments (Sec. 4.2, Figure 3) cannot run on a CPU. The proxy trains a
width-reduced BN-Inception on a small real dataset that is available offline: Fashion-MNIST
(60,000 training / 10,000 test images, 28x28 grayscale, 10 classes), which Debian ships in the
package ``dataset-fashion-mnist`` under ``/usr/share/datasets/fashion-mnist`` in MNIST's IDX
format (``train-images-idx3-ubyte.gz`` etc.; uncompressed files are read too).

Unlike the MNIST modules, which flatten digits to 784 features for the MLP, this module keeps
images as (C, H, W): ``image_size`` resizes them (bilinear, e.g. 28 -> 32 so BN-Inception's
five stride-2 stages end at 1x1), ``channels`` repeats the gray channel (3 for a network built
for RGB input; 1 is cheaper), and ``standardize`` subtracts the training split's pixel mean and
divides by its standard deviation. ``test_size`` evaluates on the first N test images only, so
frequent evaluation stays cheap on a CPU, and ``train_size`` trains on the first N training images,
so that a short CPU run still sees its training set many times (neither split is sorted by class).
Training batches come from the device-resident step stream of `InMemoryDataModule`.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bnrepro.data.errors import DatasetError
from bnrepro.data.in_memory import InMemoryDataModule, Split
from bnrepro.data.mnist import find_idx_file, read_idx

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
NATIVE_SIZE = 28
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
class FashionMNISTDataModule(InMemoryDataModule):
    """Fashion-MNIST's official 60,000/10,000 split as (C, image_size, image_size) float tensors."""

    def __init__(
        self,
        data_dir: str = DEFAULT_DIR,
        image_size: int = NATIVE_SIZE,
        channels: int = 1,
        standardize: bool = True,
        test_size: int | None = None,
        train_size: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if image_size < 1 or channels < 1:
            raise ValueError(f"image_size and channels must be >= 1, got {image_size} and {channels}")
        for name, size in (("test_size", test_size), ("train_size", train_size)):
            if size is not None and size < 1:
                raise ValueError(f"{name} must be >= 1 or None (the whole split), got {size}")
        if standardize and self.binarize:
            raise ValueError("binarize thresholds [0, 1] pixels: use it with standardize=False")
        self.data_dir = Path(data_dir).expanduser()
        self.image_size, self.channels, self.standardize = image_size, channels, standardize
        self.test_size, self.train_size = test_size, train_size

    def prepare_data(self) -> None:
        for split in SPLIT_FILES:
            for name in SPLIT_FILES[split]:
                self._find(name)

    def read_splits(self) -> tuple[Split, Split]:
        train, test = (self._read_split(split) for split in ("train", "test"))
        train, test = first(train, self.train_size), first(test, self.test_size)
        if self.standardize:
            mean, std = train.inputs.mean(), train.inputs.std()
            train, test = (Split((s.inputs - mean) / std, s.targets) for s in (train, test))
        if self.channels > 1:  # a view: the gray channel is stored once
            train, test = (Split(s.inputs.expand(-1, self.channels, -1, -1), s.targets) for s in (train, test))
        return train, test

    def _read_split(self, split: str) -> Split:
        image_file, label_file = (self._find(name) for name in SPLIT_FILES[split])
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(
                f"{image_file} / {label_file}: expected (N, H, W) images and N labels, "
                f"got {images.shape} and {labels.shape}"
            )
        return Split(self._to_images(torch.from_numpy(images.copy())), torch.from_numpy(labels.astype(np.int64)))

    def _to_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, H, W) uint8 -> (N, 1, image_size, image_size) float32 in [0, 1]."""
        images = pixels.unsqueeze(1).float().div_(255.0)
        if images.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
        return images

    def _find(self, name: str) -> Path:
        found = find_idx_file(self.data_dir, name)
        if found is not None:
            return found
        expected = ", ".join(f"{a}.gz, {b}.gz" for a, b in SPLIT_FILES.values())
        raise DatasetError(
            f"Fashion-MNIST file {name}(.gz) not found in {self.data_dir.resolve()}: expected {expected} "
            f"(IDX format, gzip optional). Install them with `apt-get install dataset-fashion-mnist` "
            f"(Debian puts them in {DEFAULT_DIR}) or point data.data_dir at a folder holding them."
        )


def first(split: Split, size: int | None) -> Split:
    """The first `size` samples (all for None): Fashion-MNIST's splits are not sorted by class."""
    return split if size is None else Split(split.inputs[:size], split.targets[:size])
