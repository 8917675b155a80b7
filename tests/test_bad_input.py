"""Bad input: every case fails with a message naming the problem and the fix, exit code != 0, and no
run recorded as a success. Cases run through Hydra's real command-line path, in-process (cli_inprocess).

Hydra reports composition errors itself (exit 1, its own few lines); everything bnrepro checks is
one line, ``bnrepro: error: ...``, exit 2.
"""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_inprocess import cli
from conftest import QUICK
from mlflow.tracking import MlflowClient
from PIL import Image

from bnrepro import run as run_module
from bnrepro.callbacks import checkpointing
from bnrepro.callbacks.checkpointing import LAST, checkpoint_dir, load_checkpoint
from bnrepro.lifecycle.interruption import GracefulStop
from bnrepro.tracking.run import TrackedRun
from tests.helpers import fill, write_mnist_raw

SHORT = ("trainer.max_steps=20", *QUICK)


def mnist_folder(tmp_path: Path, damage: str) -> str:
    """A data_dir for data=mnist: missing, empty, or a synthetic MNIST with one file damaged."""
    root = tmp_path / "mnist"
    if damage == "missing":
        return str(root)
    root.mkdir()
    if damage == "empty":
        return str(root)
    raw = write_mnist_raw(root, train=100, test=20) / "MNIST" / "raw"
    broken = raw / "train-images-idx3-ubyte"
    if damage == "truncated":
        broken.write_bytes(broken.read_bytes()[:5000])  # header says 100 images, the file holds fewer
    else:
        broken.write_bytes(b"this is not an IDX file")  # wrong magic number
    return str(root)


def corrupt_store(tmp_path: Path, monkeypatch) -> str:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 64)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
    return f"sqlite:///{path}"


def unreachable_server(tmp_path: Path, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    return "http://127.0.0.1:9"


# (case, overrides (may use {tmp}), expected exit code, substrings of the message)
CASES = [
    ("unknown group option", ["optim=lr_x7"], 1, ["Could not find 'optim/lr_x7'", "Available options", "lr_x30"]),
    (
        "unknown key",
        ["trainer.max_stepz=5"],
        1,
        ["Could not override 'trainer.max_stepz'", "Key 'max_stepz' not in 'TrainerConfig'"],
    ),
    ("appended unknown key", ["+trainer.speed=9"], 2, ["bnrepro: error: unknown key trainer.speed", "known keys:"]),
    (
        "wrong type",
        ["trainer.max_steps=many"],
        1,
        ["trainer.max_steps", "Value 'many' of type 'str' could not be converted to Integer"],
    ),
    ("negative lr", ["model.base_lr=-0.5"], 2, ["bnrepro: error: model.base_lr must be > 0, got -0.5"]),
    ("dropout of 1", ["reg.dropout=1.0"], 2, ["bnrepro: error: reg.dropout must be in [0, 1), got 1.0"]),
    (
        "batch of 1 with BN",
        ["data.batch_size=1"],
        2,
        ["data.batch_size=1 cannot train with norm=bn", "use a larger batch or norm=none"],
    ),
    (
        "checkpoint off the chunk grid",
        ["callbacks.checkpoint.every_n_steps=15"],
        2,
        ["callbacks.checkpoint.every_n_steps=15 must be 0 or a positive multiple of data.steps_per_batch=10"],
    ),
    (
        "rerun and resume together",
        ["rerun=true", "resume=0123abcd"],
        2,
        ["rerun=true starts a fresh run but resume=0123abcd", "drop one"],
    ),
    (
        "resume of an unknown run",
        ["resume=0123abcd"],
        2,
        ["resume=0123abcd: no such directory and no MLflow run with that id in sqlite:///"],
    ),
    ("resume of a directory without checkpoint", ["resume={tmp}"], 2, ["no checkpoint at {tmp}/checkpoints/last.ckpt"]),
    (
        "MNIST folder missing",
        ["data=mnist", "data.data_dir={tmp}/mnist", "data.download=false"],
        2,
        [
            "MNIST is not readable under {tmp}/mnist/MNIST/raw",
            "Dataset not found",
            "or run offline with data=mnist_mini",
        ],
    ),
    (
        "MNIST folder empty",
        ["data=mnist", "data.data_dir={tmp}/mnist", "data.download=false"],
        2,
        ["Dataset not found"],
    ),
    (
        "MNIST IDX truncated",
        ["data=mnist", "data.data_dir={tmp}/mnist", "data.download=false"],
        2,
        ["MNIST is not readable", "is invalid for input of size", "Download them"],
    ),
    (
        "MNIST IDX corrupt",
        ["data=mnist", "data.data_dir={tmp}/mnist", "data.download=false"],
        2,
        ["MNIST is not readable", "AssertionError", "Download them"],
    ),
    (
        "output directory not writable",
        ["hydra.run.dir={tmp}/a_file/run"],
        2,
        [
            "bnrepro: error: output directory {tmp}/a_file/run cannot be written: {tmp}/a_file is not a directory",
            "set hydra.run.dir",
        ],
    ),
    (
        "tracking store corrupt",
        [],
        2,
        [
            "bnrepro: error: MLflow tracking store sqlite:///{tmp}/corrupt.db is not usable",
            "move the broken file aside",
        ],
    ),
    (
        "tracking server unreachable",
        [],
        2,
        ["bnrepro: error: MLflow tracking server http://127.0.0.1:9 is unreachable", "make tracking-server"],
    ),
]
SETUP = {
    "MNIST folder missing": lambda tmp, mp: mnist_folder(tmp, "missing"),
    "MNIST folder empty": lambda tmp, mp: mnist_folder(tmp, "empty"),
    "MNIST IDX truncated": lambda tmp, mp: mnist_folder(tmp, "truncated"),
    "MNIST IDX corrupt": lambda tmp, mp: mnist_folder(tmp, "corrupt"),
    "output directory not writable": lambda tmp, mp: (tmp / "a_file").write_text("a file, not a folder"),
    "tracking store corrupt": corrupt_store,
    "tracking server unreachable": unreachable_server,
}


def finished_runs(store: str) -> list:
    if not Path(store.removeprefix("sqlite:///")).exists():
        return []
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [run for run in runs if run.info.status == "FINISHED"]


@pytest.mark.parametrize(("case", "overrides", "code", "expected"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_fails_with_a_clear_message_and_records_no_success(
    case, overrides, code, expected, store, tmp_path, capsys, monkeypatch
):
    if case in SETUP:
        SETUP[case](tmp_path, monkeypatch)
    args = [override.format(tmp=tmp_path) for override in overrides]
    if not any(arg.startswith("hydra.run.dir=") for arg in args):
        args.append(f"hydra.run.dir={tmp_path}/run")

    assert cli(tmp_path, *SHORT, *args) == code

    stderr = capsys.readouterr().err
    for text in expected:
        assert text.format(tmp=tmp_path) in stderr
    if code == 2:  # bnrepro's own checks: exactly one line
        assert [line for line in stderr.splitlines() if line.startswith("bnrepro: error:")] == [
            stderr.strip().splitlines()[-1]
        ]
    assert finished_runs(store) == []


def test_disk_full_while_checkpointing_fails_the_run_and_keeps_the_previous_checkpoint(
    store, tmp_path, capsys, monkeypatch
):
    real_save = torch.save

    def full_after_step_20(state, file, *args, **kwargs):
        if state["global_step"] > 20:
            file.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        real_save(state, file, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "save", full_after_step_20)
    code = cli(tmp_path, "trainer.max_steps=40", "callbacks.checkpoint.every_n_steps=20", *QUICK)
    monkeypatch.undo()

    assert code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(f"bnrepro: error: could not write checkpoint {tmp_path}/run/checkpoints/")
    assert "No space left on device" in last_line and "the previous checkpoint there is intact" in last_line
    assert load_checkpoint(checkpoint_dir(tmp_path / "run") / LAST)["global_step"] == 20
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"


def test_corrupt_checkpoint_on_resume_is_one_line(store, tmp_path, capsys):
    folder = checkpoint_dir(tmp_path / "old")
    folder.mkdir(parents=True)
    (folder / LAST).write_bytes(b"PK\x03\x04 truncated zip")
    assert cli(tmp_path, *SHORT, f"resume={tmp_path / 'old'}") == 2
    assert (
        f"bnrepro: error: checkpoint {folder / LAST} is unreadable" in capsys.readouterr().err.strip().splitlines()[-1]
    )


def write_jpeg_folder(root: Path, images_per_class: int = 4) -> Path:
    """root/{train,val}/<wnid>/*.JPEG, 2 classes of small random JPEGs, and one corrupt train file (returned)."""
    for split in ("train", "val"):
        for c, wnid in enumerate(("n01440764", "n01443537")):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(images_per_class):
                pixels = np.random.default_rng(10 * c + i).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")
    corrupt = root / "train" / "n01440764" / "corrupt.JPEG"
    corrupt.write_bytes(b"this is not a JPEG" * 10)
    return corrupt


def test_corrupt_jpeg_read_by_dataloader_workers_is_one_line_naming_the_file(store, tmp_path, capsys):
    corrupt = write_jpeg_folder(tmp_path / "imagenet")
    overrides = (
        "experiment=bn_x5",
        "data=imagenet",
        f"data.data_dir={tmp_path}/imagenet",
        "data.num_workers=2",
        "data.batch_size=9",  # every training batch holds the corrupt file
        "data.pin_memory=false",
        "data.image_size=32",
        "model.net.width_multiplier=0.125",
        "trainer=cpu",
        "logger=none",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert cli(tmp_path, *SHORT, *overrides) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr.splitlines()[-1].startswith(f"bnrepro: error: unreadable image file {corrupt} (")
    assert "Traceback" not in stderr  # our own error, raised in the main process, not a worker's re-raise


def test_store_is_checked_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    corrupt_store(tmp_path, monkeypatch)
    damaged = (tmp_path / "corrupt.db").read_bytes()
    # a missing dataset would be reported first if data were read before the store was checked
    assert cli(tmp_path, *SHORT, "data=mnist", f"data.data_dir={tmp_path}/absent", "data.download=false") == 2
    assert "tracking store" in capsys.readouterr().err.strip().splitlines()[-1]
    assert (tmp_path / "corrupt.db").read_bytes() == damaged  # untouched: still the user's file to inspect


def test_an_empty_checkpoint_file_is_a_checkpoint_error_naming_it(tmp_path):
    from bnrepro.callbacks.checkpointing import CheckpointError, load_checkpoint

    empty = tmp_path / "last.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"checkpoint {empty} is unreadable"):
        load_checkpoint(empty)


# --- a store on a broken file system (a real small tmpfs; needs the right to mount, else skipped) ---------
def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)


class FillDiskWhenTrainingStarts(GracefulStop):
    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        fill(self.folder)


@pytest.mark.slow
def test_a_read_only_store_is_one_line_exit_2_and_records_no_run(small_filesystem, tmp_path, capsys, monkeypatch):
    uri = f"sqlite:///{small_filesystem / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    remount(small_filesystem, "ro")

    assert cli(tmp_path, *SHORT) == 2

    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bnrepro:")]
    assert line.startswith(f"bnrepro: error: MLflow tracking store {uri} is read-only") and "make it writable" in line
    remount(small_filesystem, "rw")
    client = MlflowClient(uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.mark.slow
def test_a_store_whose_disk_fills_during_training_is_one_line_exit_2(small_filesystem, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{small_filesystem / 'mlflow.db'}")
    monkeypatch.setattr(run_module, "GracefulStop", lambda: FillDiskWhenTrainingStarts(small_filesystem))
    monkeypatch.setattr(TrackedRun, "CLOSE_PAUSE_SECONDS", 0.1)  # the disk stays full: no point waiting

    assert cli(tmp_path, "trainer.max_steps=40", "callbacks.checkpoint.every_n_steps=20", *QUICK) == 2

    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bnrepro:")]
    assert line.startswith("bnrepro: error: ") and "metrics could not be written" in line
    assert "free disk space" in line
