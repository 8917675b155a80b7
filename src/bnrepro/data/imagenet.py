"""ImageNet (ILSVRC-2012) classification data for BN-Inception (Sec. 4.2), and a synthetic stand-in.

`ImageNetDataModule` reads the standard folder layout::

    data_dir/train/<wnid>/*.JPEG      (1,281,167 images, 1000 class folders)
    data_dir/val/<wnid>/*.JPEG        (50,000 images; the official flat val/ folder must first be
                                       sorted into <wnid> folders, e.g. with the common valprep.sh)

File names ending in .jpeg / .jpg / .png (any case) are read; class indices are the sorted wnids
(folder names), 0..n-1, and train and val must hold the same class folders. ImageNet's test labels
are not public, so the validation set is also the test set (as in the paper's Sec. 4.2 results).

Training augmentation: RandomResizedCrop(image_size) (Inception-style scale/aspect crops),
horizontal flip, then photometric distortions chosen by ``photometric``. The paper (Sec. 4.2.1,
"Reduce the photometric distortions") weakens them for its accelerated BN networks without
saying by how much, so here:

* ``"full"``: ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1) followed by
  AlexNet-style PCA lighting noise (std 0.1 on the ImageNet RGB eigenvectors), the common
  fb.resnet.torch recipe, standing in for the original Inception distortions.
* ``"reduced"``: ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1), no hue change,
  no lighting noise (a quarter of "full" strength).
* ``"none"``: crop + flip only.

Evaluation: resize the shorter side to round(image_size * 256 / 224), center-crop image_size.
All images are normalized with the ImageNet mean/std.

Batches follow the project convention: training batches are (x, y) with x (1, B, 3, S, S) and
y (1, B) (one optimizer step per chunk, ``steps_per_batch = 1``); evaluation batches are plain
(x (B, 3, S, S), y (B,)). ``batch_size`` is per device; under DDP Lightning injects a
DistributedSampler into the training loader. With ``channels_last=True`` each (B, 3, S, S)
image block is laid out channels-last in memory (x[0] of a training batch included).

Unreadable image files: ``on_corrupt="fail"`` raises `DatasetError` naming the file;
``on_corrupt="skip"`` drops the sample from its batch (batches may come out smaller) and counts
it in `num_skipped` (shared across DataLoader workers; a file read again in a later epoch counts
again). A batch whose every sample is unreadable raises `DatasetError` naming the files.
These errors are raised in the main process (see `UnusableBatch`), so the user sees our own
one-line message, not the DataLoader's re-raise of a worker's exception with its traceback.

`FakeImageNetDataModule` serves synthetic, already-normalized image tensors of the same shapes
and batch format, generated deterministically per index from a seed, for pipeline and
throughput work without the dataset.
"""

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info
from torchvision.datasets.folder import make_dataset
from torchvision.transforms import v2

from bnrepro.data.errors import DatasetError, require_batch_fits

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")  # matched case-insensitively (".JPEG" included)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SKIP_COUNTER_SLOTS = 1024  # main process + up to 1023 DataLoader workers per dataset

# AlexNet's PCA of ImageNet RGB pixels (values in [0, 1]), as used by fb.resnet.torch.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# PIL raises these for missing, truncated or undecodable files (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


# ---------------------------------------------------------------------------------------------
# Transforms


class PCALighting(torch.nn.Module):
    """AlexNet's lighting noise: add sum_i alpha_i * eigval_i * eigvec_i to every pixel,
    alpha_i ~ N(0, std^2) per image; expects a float (3, H, W) tensor in [0, 1]."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std
        self.register_buffer("eigval", torch.tensor(IMAGENET_PCA_EIGVAL))
        self.register_buffer("eigvec", torch.tensor(IMAGENET_PCA_EIGVEC))

    def forward(self, image: Tensor) -> Tensor:
        if self.std == 0:
            return image
        alpha = torch.randn(3) * self.std
        rgb_shift = self.eigvec @ (alpha * self.eigval)
        return image + rgb_shift.view(3, 1, 1)


# (transforms on the PIL image, transforms on the [0, 1] float tensor) for each setting of `photometric`.
PHOTOMETRIC_TRANSFORMS: dict[str, Callable[[], tuple[list[Any], list[Any]]]] = {
    "full": lambda: ([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)], [PCALighting(0.1)]),
    "reduced": lambda: ([v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1)], []),
    "none": lambda: ([], []),
}


def photometric_transforms(photometric: str) -> tuple[list[Any], list[Any]]:
    """(transforms on the PIL image, transforms on the [0, 1] float tensor) for one setting."""
    if photometric not in PHOTOMETRIC_TRANSFORMS:
        raise ValueError(f"photometric must be one of {tuple(PHOTOMETRIC_TRANSFORMS)}, got {photometric!r}")
    return PHOTOMETRIC_TRANSFORMS[photometric]()


def _to_normalized_tensor() -> list[Any]:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]  # plain tensors, values in [0, 1]


def train_transform(image_size: int, photometric: str) -> Callable:
    """RandomResizedCrop + flip + photometric distortions + ImageNet normalization."""
    on_image, on_tensor = photometric_transforms(photometric)
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            *on_image,
            *_to_normalized_tensor(),
            *on_tensor,
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_resize_size(image_size: int) -> int:
    return round(image_size * 256 / 224)


def eval_transform(image_size: int) -> Callable:
    """Resize the shorter side to round(S * 256/224), center-crop S, normalize."""
    return v2.Compose(
        [
            v2.Resize(eval_resize_size(image_size), antialias=True),
            v2.CenterCrop(image_size),
            *_to_normalized_tensor(),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Folder layout and datasets


def _split_dir(data_dir: Path, split: str) -> Path:
    if not data_dir.is_dir():
        raise DatasetError(
            f"ImageNet data_dir {data_dir} does not exist or is not a directory: expected "
            f"{data_dir}/train/<wnid>/*.JPEG and {data_dir}/val/<wnid>/*.JPEG."
        )
    path = data_dir / split
    if not path.is_dir():
        raise DatasetError(
            f"ImageNet split folder {path} is missing: expected {path}/<wnid>/*.JPEG "
            "(one sub-folder per class, e.g. n01440764)."
        )
    return path


def find_class_names(split_dir: Path) -> list[str]:
    """Sorted class-folder names (wnids) of one split; hidden folders are ignored."""
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DatasetError(
            f"no class folders in {split_dir}: expected {split_dir}/<wnid>/*.JPEG, one sub-folder per class."
        )
    return names


def _check_same_classes(train: list[str], val: list[str], data_dir: Path) -> None:
    if train == val:
        return
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    raise DatasetError(
        f"train/ and val/ under {data_dir} must hold the same class folders: train has {len(train)}, "
        f"val has {len(val)}; only in train: {only_train[:5]}{'...' if len(only_train) > 5 else ''}, "
        f"only in val: {only_val[:5]}{'...' if len(only_val) > 5 else ''}."
    )


@dataclass(frozen=True)
class Unreadable:
    """What a sample becomes when its file cannot be decoded (either on_corrupt policy)."""

    path: str
    reason: str


@dataclass(frozen=True)
class UnusableBatch:
    """What a batch becomes when it cannot be used: the `DatasetError` message, carried as data.

    A DatasetError raised in a DataLoader worker reaches the main process re-wrapped, its message
    buried in the worker's traceback text; `CheckedDataLoader` raises this one there instead.
    """

    message: str


class ImageFolderSplit(Dataset):
    """One split folder as (image, class index) samples, with the on_corrupt policy.

    Decoding errors (and only those) are caught and the sample becomes an `Unreadable` marker, which
    `collate_readable` turns into an `UnusableBatch` ("fail") or drops ("skip"); under "skip" it is
    also counted, in a counter shared with DataLoader worker processes.
    """

    def __init__(self, split_dir: Path, class_names: list[str], transform: Callable, on_corrupt: str):
        self.split_dir, self.transform, self.on_corrupt = split_dir, transform, on_corrupt
        self.class_to_idx = {name: index for index, name in enumerate(class_names)}
        try:
            self.samples: list[tuple[str, int]] = make_dataset(
                str(split_dir), self.class_to_idx, extensions=IMAGE_EXTENSIONS
            )
        except FileNotFoundError as error:  # torchvision: some class folder holds no image file
            empty = [name for name in class_names if not _has_image_file(split_dir / name)]
            raise DatasetError(
                f"class folder(s) without image files in {split_dir}: {empty[:5]}"
                f"{'...' if len(empty) > 5 else ''}; expected <wnid>/*.JPEG (.jpeg/.jpg/.png, any case)."
            ) from error
        # One slot per process (main = 0, DataLoader worker i = 1 + i), in shared memory so that
        # the main process sees the workers' counts; one writer per slot, so no lock is needed.
        self._skip_counts = torch.zeros(SKIP_COUNTER_SLOTS, dtype=torch.int64).share_memory_()

    @property
    def num_skipped(self) -> int:
        return int(self._skip_counts.sum())

    def _count_skip(self) -> None:
        worker = get_worker_info()
        slot = 0 if worker is None else 1 + worker.id % (SKIP_COUNTER_SLOTS - 1)
        self._skip_counts[slot] += 1

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | Unreadable:
        path, target = self.samples[index]
        try:
            with open(path, "rb") as file, Image.open(file) as image:
                image = image.convert("RGB")  # forces the full decode inside the try
        except DECODE_ERRORS as error:
            reason = f"{type(error).__name__}: {error}"
            if self.on_corrupt == "skip":
                self._count_skip()
                warnings.warn(f"skipping unreadable image file {path} ({reason})", stacklevel=2)
            return Unreadable(path, reason)
        return self.transform(image), target


def _has_image_file(folder: Path) -> bool:
    return any(name.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in os.walk(folder) for name in files)


def collate_readable(samples: list[Any], on_corrupt: str) -> tuple[Tensor, Tensor] | UnusableBatch:
    """default_collate over the readable samples, or an `UnusableBatch` saying why there is no batch."""
    unreadable = [sample for sample in samples if isinstance(sample, Unreadable)]
    if unreadable and on_corrupt != "skip":  # "fail"
        first = unreadable[0]
        return UnusableBatch(
            f"unreadable image file {first.path} ({first.reason}); fix or remove it, or set on_corrupt='skip'."
        )
    if len(unreadable) == len(samples):
        paths = [sample.path for sample in samples]
        return UnusableBatch(f"every image in this batch is unreadable: {paths[:5]}{'...' if len(paths) > 5 else ''}")
    return default_collate([sample for sample in samples if not isinstance(sample, Unreadable)])


class BatchCollator:
    """Collate to the project's batch format (picklable for DataLoader workers).

    ``add_step_dim``: training batches get the leading K = 1 dimension, (1, B, ...) and (1, B).
    ``channels_last``: the (B, 3, S, S) image block is made channels-last before that.
    ``on_corrupt``: the policy for `Unreadable` samples (see `collate_readable`).
    """

    def __init__(self, add_step_dim: bool, channels_last: bool, on_corrupt: str):
        self.add_step_dim, self.channels_last, self.on_corrupt = add_step_dim, channels_last, on_corrupt

    def __call__(self, samples: list[Any]) -> tuple[Tensor, Tensor] | UnusableBatch:
        batch = collate_readable(samples, self.on_corrupt)
        return batch if isinstance(batch, UnusableBatch) else self.format(*batch)

    def format(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.add_step_dim:
            return images.unsqueeze(0), targets.unsqueeze(0)
        return images, targets


class CheckedDataLoader(DataLoader):
    """A DataLoader that raises `DatasetError` in the main process for an `UnusableBatch`.

    A DataLoader subclass rather than a wrapper, so that Lightning can still re-create it (e.g.
    with a DistributedSampler under DDP).
    """

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, UnusableBatch):
                raise DatasetError(batch.message)
            yield batch


# ---------------------------------------------------------------------------------------------
# Data modules


class _LoaderSettings(L.LightningDataModule):
    """DataLoader construction shared by the real and the fake ImageNet modules."""

    steps_per_batch = 1  # DataLoader batches are one optimizer step each (K = 1)
    on_corrupt = "fail"  # ImageNetDataModule's setting; the fake module has no files to be unreadable

    def __init__(
        self,
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        pin_memory: bool,
        channels_last: bool,
        drop_last: bool,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.channels_last, self.drop_last = channels_last, drop_last

    def _loader(self, dataset: Dataset, train: bool) -> CheckedDataLoader:
        if train and self.drop_last:  # else an epoch of no batches: a run that never steps
            require_batch_fits(self.batch_size, len(dataset), self.trainer.world_size if self.trainer else 1)
        return CheckedDataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=self.drop_last if train else False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=BatchCollator(add_step_dim=train, channels_last=self.channels_last, on_corrupt=self.on_corrupt),
        )


class ImageNetDataModule(_LoaderSettings):
    """ILSVRC-2012 from ``data_dir/{train,val}/<wnid>/*.JPEG`` (see the module docstring).

    Nothing touches the disk at construction; `num_classes` (or `setup`) checks the layout and
    raises `DatasetError` for a missing data_dir, a missing train/ or val/ folder, a split with
    no class folders, train/val class folders that differ, or class folders with no images.
    """

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 8,
        pin_memory: bool = True,
        image_size: int = 224,
        photometric: str = "full",
        channels_last: bool = False,
        on_corrupt: str = "fail",
        drop_last: bool = True,
    ):
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, channels_last, drop_last)
        self.data_dir = Path(data_dir).expanduser()
        self.image_size, self.photometric, self.on_corrupt = image_size, photometric, on_corrupt
        self._class_names: list[str] | None = None
        self.train_set: ImageFolderSplit | None = None
        self.val_set: ImageFolderSplit | None = None

    @property
    def class_names(self) -> list[str]:
        """Sorted wnids; index i is class i. Checks the folder layout on first use."""
        if self._class_names is None:
            train = find_class_names(_split_dir(self.data_dir, "train"))
            val = find_class_names(_split_dir(self.data_dir, "val"))
            _check_same_classes(train, val, self.data_dir)
            self._class_names = train
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_skipped(self) -> int:
        """Unreadable files skipped so far (on_corrupt="skip"), over all splits and workers."""
        return sum(split.num_skipped for split in (self.train_set, self.val_set) if split is not None)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        names = self.class_names
        self.train_set = ImageFolderSplit(
            self.data_dir / "train", names, train_transform(self.image_size, self.photometric), self.on_corrupt
        )
        self.val_set = ImageFolderSplit(self.data_dir / "val", names, eval_transform(self.image_size), self.on_corrupt)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()  # ImageNet's test labels are not public


class FakeImageNetDataset(Dataset):
    """Synthetic normalized images: sample i is a function of (stream_seed, i) only.

    Image = N(0, 1) noise + its class's per-channel offset (``class_offsets``, (num_classes, 3)),
    so a model can learn something and loss curves move; labels are uniform over classes.
    """

    def __init__(self, size: int, image_size: int, class_offsets: Tensor, stream_seed: int):
        self.size, self.image_size, self.seed = size, image_size, stream_seed
        self.class_offsets = class_offsets
        self.num_classes = len(class_offsets)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        target = int(torch.randint(self.num_classes, (), generator=generator))
        image = torch.randn(3, self.image_size, self.image_size, generator=generator)
        return image + self.class_offsets[target].view(3, 1, 1), target


class FakeImageNetDataModule(_LoaderSettings):
    """Synthetic ImageNet-shaped data, same batch format as `ImageNetDataModule`, no files."""

    def __init__(
        self,
        num_classes: int = 1000,
        image_size: int = 224,
        train_size: int = 10_000,
        val_size: int = 1_000,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        channels_last: bool = False,
        seed: int = 0,
        class_signal: float = 1.0,
        drop_last: bool = True,
    ):
        super().__init__(batch_size, eval_batch_size, num_workers, pin_memory, channels_last, drop_last)
        if num_classes < 1 or train_size < 1 or val_size < 1:
            raise ValueError("num_classes, train_size and val_size must be >= 1")
        self.num_classes, self.image_size = num_classes, image_size
        self.train_size, self.val_size, self.seed, self.class_signal = train_size, val_size, seed, class_signal
        self.train_set: FakeImageNetDataset | None = None
        self.val_set: FakeImageNetDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        offsets = torch.randn(self.num_classes, 3, generator=generator) * self.class_signal
        # train and val: distinct sample streams, both fixed by `seed`, sharing the class offsets
        self.train_set = FakeImageNetDataset(self.train_size, self.image_size, offsets, 2 * self.seed)
        self.val_set = FakeImageNetDataset(self.val_size, self.image_size, offsets, 2 * self.seed + 1)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
