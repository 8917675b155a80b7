"""ImageNet folder data module on a tiny folder of real JPEGs, and the synthetic FakeImageNet."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnrepro.data.errors import DatasetError
from bnrepro.data.imagenet import (
    FakeImageNetDataModule,
    ImageNetDataModule,
    eval_transform,
    train_transform,
)

WNIDS = ("n01440764", "n01443537", "n01484850")  # written out of order below on purpose
IMAGES_PER_CLASS = 4
SIZE = 32


def write_jpeg(path: Path, seed: int, suffix_case: str = ".JPEG") -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path.with_suffix(suffix_case), format="JPEG")


@pytest.fixture
def imagenet_dir(tmp_path: Path) -> Path:
    """data/{train,val}/<wnid>/*.JPEG, 3 classes x 4 images of 40x48 px (one .jpg per class)."""
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for c, wnid in enumerate(reversed(WNIDS)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(IMAGES_PER_CLASS):
                write_jpeg(folder / f"{wnid}_{i}", seed=100 * c + i, suffix_case=".jpg" if i == 0 else ".JPEG")
    return root


def datamodule(root: Path, **kwargs) -> ImageNetDataModule:
    settings = dict(batch_size=4, num_workers=0, pin_memory=False, image_size=SIZE, drop_last=False)
    return ImageNetDataModule(str(root), **{**settings, **kwargs})


def test_classes_are_the_sorted_wnids(imagenet_dir):
    dm = datamodule(imagenet_dir)
    dm.setup()
    assert dm.num_classes == 3 and dm.class_names == sorted(WNIDS)
    for path, target in dm.train_set.samples:
        assert Path(path).parent.name == WNIDS[target]
    assert len(dm.train_set) == len(dm.val_set) == 3 * IMAGES_PER_CLASS  # .jpg and .JPEG both read


def test_training_batches_have_the_step_dim(imagenet_dir):
    dm = datamodule(imagenet_dir, photometric="full")
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    x, y = batches[0]
    assert dm.steps_per_batch == 1
    assert x.shape == (1, 4, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert y.shape == (1, 4) and y.dtype == torch.int64
    assert sorted(torch.cat([b[1].flatten() for b in batches]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_validation_batches_are_plain(imagenet_dir):
    dm = datamodule(imagenet_dir)
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, SIZE, SIZE) and y.shape == (4,)
    assert y.tolist() == [0, 0, 0, 0]  # unshuffled, sorted by class


def test_eval_transform_is_deterministic_and_normalized():
    mean_pixel = np.array([124, 116, 104], dtype=np.uint8)  # the ImageNet mean, 0..255
    image = Image.fromarray(np.broadcast_to(mean_pixel, (40, 48, 3)).copy())
    a, b = eval_transform(SIZE)(image), eval_transform(SIZE)(image)
    assert type(a) is torch.Tensor and a.shape == (3, SIZE, SIZE) and torch.equal(a, b)
    assert a.abs().max() < 0.1


@pytest.mark.parametrize("photometric", ["full", "reduced", "none"])
def test_train_transform_crops_to_image_size(photometric):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    out = train_transform(SIZE, photometric)(image)
    assert type(out) is torch.Tensor and out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32


def test_channels_last_batches(imagenet_dir):
    dm = datamodule(imagenet_dir, channels_last=True)
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert x[0].is_contiguous(memory_format=torch.channels_last)
    x, _ = next(iter(dm.val_dataloader()))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*train/<wnid>"):
        _ = datamodule(tmp_path / "nowhere").num_classes


def test_missing_split_is_a_clear_error(imagenet_dir):
    (imagenet_dir / "val").rename(imagenet_dir / "validation")
    with pytest.raises(DatasetError, match=r"val is missing"):
        datamodule(imagenet_dir).setup()


def test_split_without_class_folders_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match="no class folders in .*train"):
        datamodule(tmp_path).setup()


def test_empty_class_folder_is_a_clear_error(imagenet_dir):
    for image in (imagenet_dir / "val" / WNIDS[1]).iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match=f"without image files.*{WNIDS[1]}"):
        datamodule(imagenet_dir).setup()


def test_train_and_val_classes_must_agree(imagenet_dir):
    (imagenet_dir / "val" / WNIDS[2]).rename(imagenet_dir / "val" / "n99999999")
    with pytest.raises(DatasetError, match="same class folders.*n99999999"):
        datamodule(imagenet_dir).setup()


@pytest.fixture
def corrupt_file(imagenet_dir) -> Path:
    path = imagenet_dir / "train" / WNIDS[0] / "corrupt.JPEG"
    path.write_bytes(b"this is not a JPEG" * 10)
    return path


def test_corrupt_jpeg_fails_naming_the_file(imagenet_dir, corrupt_file):
    dm = datamodule(imagenet_dir, on_corrupt="fail", batch_size=13)
    dm.setup()
    with pytest.raises(DatasetError, match=f"unreadable image file {corrupt_file}"):
        list(dm.train_dataloader())


def test_corrupt_jpeg_in_worker_processes_fails_in_the_main_process_with_its_own_message(imagenet_dir, corrupt_file):
    dm = datamodule(imagenet_dir, on_corrupt="fail", batch_size=13, num_workers=2)
    dm.setup()
    with pytest.raises(DatasetError) as caught:
        list(dm.train_dataloader())
    # raised by CheckedDataLoader, not re-raised by the DataLoader with the worker's traceback in the message
    assert str(caught.value).startswith(f"unreadable image file {corrupt_file} (")
    assert str(caught.value).endswith("; fix or remove it, or set on_corrupt='skip'.")
    assert len(str(caught.value).splitlines()) == 1


def test_a_batch_of_only_unreadable_files_fails_naming_them(imagenet_dir, corrupt_file):
    dm = datamodule(imagenet_dir, on_corrupt="skip", batch_size=1, num_workers=1)
    dm.setup()
    dm.train_set.samples = [(str(corrupt_file), 0)]
    with pytest.raises(DatasetError, match=f"every image in this batch is unreadable: \\['{corrupt_file}'\\]"):
        list(dm.train_dataloader())


def test_corrupt_jpeg_is_skipped_and_counted(imagenet_dir, corrupt_file):
    dm = datamodule(imagenet_dir, on_corrupt="skip", batch_size=13)
    dm.setup()
    with pytest.warns(UserWarning, match="corrupt.JPEG"):
        batches = list(dm.train_dataloader())
    assert [tuple(x.shape) for x, _ in batches] == [(1, 12, 3, SIZE, SIZE)]
    assert sorted(batches[0][1].flatten().tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert dm.num_skipped == 1


def test_skip_count_is_shared_with_worker_processes(imagenet_dir, corrupt_file):
    dm = datamodule(imagenet_dir, on_corrupt="skip", batch_size=13, num_workers=1)
    dm.setup()
    assert sum(x.shape[1] for x, _ in dm.train_dataloader()) == 12
    assert dm.num_skipped == 1


def test_fake_imagenet_batch_shapes():
    dm = FakeImageNetDataModule(num_classes=10, image_size=SIZE, train_size=12, val_size=6, batch_size=4)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert dm.num_classes == 10 and dm.steps_per_batch == 1
    assert x.shape == (1, 4, 3, SIZE, SIZE) and y.shape == (1, 4) and y.dtype == torch.int64
    assert y.min() >= 0 and y.max() < 10
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, SIZE, SIZE) and y.shape == (4,)
    assert len(list(dm.train_dataloader())) == 3


def test_fake_imagenet_is_deterministic_given_the_seed():
    def samples(seed: int) -> list[tuple[torch.Tensor, int]]:
        dm = FakeImageNetDataModule(num_classes=10, image_size=16, train_size=5, val_size=5, seed=seed)
        dm.setup()
        return [dm.train_set[i] for i in range(5)] + [dm.val_set[i] for i in range(5)]

    first, again, other = samples(0), samples(0), samples(1)
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][0], other[0][0])
    assert not torch.equal(first[0][0], first[5][0])  # train and val streams differ


def test_fake_imagenet_channels_last():
    dm = FakeImageNetDataModule(
        num_classes=3, image_size=SIZE, train_size=4, val_size=4, batch_size=4, channels_last=True
    )
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert x[0].is_contiguous(memory_format=torch.channels_last)
