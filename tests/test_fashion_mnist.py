"""Fashion-MNIST as (C, H, W) images for the BN-Inception proxy: IDX files written by the tests."""

from pathlib import Path

import pytest
import torch

from bnrepro.data.errors import DatasetError
from bnrepro.data.fashion_mnist import FashionMNISTDataModule, read_idx
from tests.helpers import FASHION_TEST as TEST
from tests.helpers import FASHION_TRAIN as TRAIN
from tests.helpers import write_fashion_mnist


def splits(root: Path, **kwargs):
    dm = FashionMNISTDataModule(str(root), **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm.train_split, dm.test_split


def test_images_keep_their_channel_and_spatial_dims(tmp_path):
    train, test = splits(write_fashion_mnist(tmp_path), image_size=28, standardize=False)
    assert train.inputs.shape == (TRAIN, 1, 28, 28) and test.inputs.shape == (TEST, 1, 28, 28)
    assert train.inputs.dtype == torch.float32 and train.inputs.min() >= 0.0 and train.inputs.max() <= 1.0
    assert train.targets.dtype == torch.int64 and train.targets.tolist() == [i % 10 for i in range(TRAIN)]


def test_pixels_are_the_file_bytes_over_255(tmp_path):
    root = write_fashion_mnist(tmp_path)
    raw = read_idx(root / "train-images-idx3-ubyte.gz")
    train, _ = splits(root, image_size=28, standardize=False)
    assert torch.equal(train.inputs[:, 0], torch.from_numpy(raw.copy()).float() / 255)


def test_image_size_resizes_to_the_requested_square(tmp_path):
    train, test = splits(write_fashion_mnist(tmp_path), image_size=32)
    assert train.inputs.shape == (TRAIN, 1, 32, 32) and test.inputs.shape == (TEST, 1, 32, 32)


def test_channels_repeat_the_gray_channel(tmp_path):
    train, _ = splits(write_fashion_mnist(tmp_path), channels=3)
    assert train.inputs.shape == (TRAIN, 3, 28, 28)
    assert torch.equal(train.inputs[:, 0], train.inputs[:, 2])


def test_standardize_uses_the_training_splits_statistics(tmp_path):
    train, test = splits(write_fashion_mnist(tmp_path), standardize=True)
    assert train.inputs.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert train.inputs.std().item() == pytest.approx(1.0, abs=1e-5)
    assert test.inputs.mean().item() != pytest.approx(0.0, abs=1e-5)  # test split: the train statistics, not its own


def test_test_size_keeps_the_first_test_images(tmp_path):
    _, test = splits(write_fashion_mnist(tmp_path), test_size=5)
    assert len(test) == 5 and test.targets.tolist() == [0, 1, 2, 3, 4]


def test_train_size_keeps_the_first_training_images_and_their_statistics(tmp_path):
    train, _ = splits(write_fashion_mnist(tmp_path), train_size=7, standardize=True)
    assert len(train) == 7 and train.targets.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert train.inputs.mean().item() == pytest.approx(0.0, abs=1e-5)  # standardized with the subset's statistics


def test_uncompressed_idx_files_are_read(tmp_path):
    train, _ = splits(write_fashion_mnist(tmp_path, compress=False))
    assert len(train) == TRAIN


def test_missing_files_raise_a_dataset_error_naming_the_folder_and_the_package(tmp_path):
    dm = FashionMNISTDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "train-images-idx3-ubyte" in message
    assert "dataset-fashion-mnist" in message


def test_a_file_that_is_not_idx_raises_a_dataset_error(tmp_path):
    root = write_fashion_mnist(tmp_path)
    (root / "train-labels-idx1-ubyte.gz").unlink()
    (root / "train-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DatasetError, match="not an IDX file"):
        splits(root)


def test_training_chunks_are_image_batches(tmp_path):
    dm = FashionMNISTDataModule(str(write_fashion_mnist(tmp_path)), image_size=32, batch_size=4, steps_per_batch=2)
    dm.setup()
    trainer = type("T", (), {"max_steps": 4, "global_step": 0, "global_rank": 0, "world_size": 1})()
    dm.trainer = trainer
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 4, 1, 32, 32) and y.shape == (2, 4)


def test_binarize_with_standardize_is_refused():
    with pytest.raises(ValueError, match="standardize=False"):
        FashionMNISTDataModule(binarize=True, standardize=True)
