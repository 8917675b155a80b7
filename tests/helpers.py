"""Test helpers shared by several test modules (so that no test module imports another)."""

import contextlib
import gzip
import logging
import os
import re
import signal
import sqlite3
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger

from bnrepro.data.in_memory import InMemoryDataModule, Split
from bnrepro.lifecycle.interruption import GracefulStop


class StopAtStep(GracefulStop):
    """GracefulStop that, at `step`, does what a pre-empting scheduler (or Ctrl+C) does: signal this process.

    action: "sigterm" or "sigint" (a real signal, handled like any other, sent `times` times in a row),
    or "crash" (an exception).
    """

    def __init__(self, step: int, action: str = "sigterm", times: int = 1):
        self.step, self.action, self.times = step, action, times

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and self.action in ("sigterm", "sigint"):
            # deferred by GracefulStop: the stop happens at the next step boundary
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGTERM if self.action == "sigterm" else signal.SIGINT)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and self.action == "crash":  # after step `step` was logged
            raise RuntimeError(f"simulated crash at step {self.step}")
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


class OverflowParameterAt(L.Callback):
    """Sets one weight to +inf at the end of the chunk that reaches `step`, after that chunk's loss was computed:
    the loss stays finite while a parameter has reached "machine infinity" (Sec. 4.2.1)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("inf")


class RecordingLogger(Logger):
    """Keeps every (step, metrics) the trainer's logger receives."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    name, version = "recording", "0"

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class RandomDigits(InMemoryDataModule):
    """40 training and 30 test samples of 12 features, 3 classes, written by the test."""

    num_classes = 3

    def read_splits(self):
        generator = torch.Generator().manual_seed(0)
        make = lambda n: Split(torch.rand(n, 12, generator=generator), torch.randint(0, 3, (n,), generator=generator))  # noqa: E731
        return make(40), make(30)


# --- tiny data sets in the files' real formats -----------------------------------------------------
FASHION_TRAIN, FASHION_TEST = 40, 12


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write `array` (uint8) in the IDX format MNIST ships in (magic, dimensions, raw bytes); `.gz` if `compress`."""
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as file:
            file.write(data)
    else:
        path.write_bytes(data)


def write_mnist_raw(root: Path, train: int, test: int, seed: int = 0) -> Path:
    """A synthetic MNIST in torchvision's raw layout (<root>/MNIST/raw/*-ubyte) with the given split sizes."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count))
    return root


def write_fashion_mnist(
    root: Path, train: int = FASHION_TRAIN, test: int = FASHION_TEST, compress: bool = True, seed: int = 0
) -> Path:
    """Debian's layout: <root>/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz, 28x28 uint8 images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)), compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10, compress)
    return root


def quiet_trainer(max_steps: int, logger, callbacks: list, eval_every_batches: int | None = None) -> L.Trainer:
    """A CPU Trainer for callback tests: no checkpoints, bar or summary; evaluation every n batches, or none."""
    evaluation = (
        {"val_check_interval": eval_every_batches, "check_val_every_n_epoch": None}
        if eval_every_batches
        else {"limit_val_batches": 0}
    )
    return L.Trainer(
        max_steps=max_steps,
        logger=logger,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **evaluation,
    )


# --- fault injection ---
def wait_for(condition, process: subprocess.Popen, timeout: float = 180.0) -> None:
    """Poll `condition` until it holds; fail the test if `process` (train.py) exits or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"train.py exited early ({process.returncode}): {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("train.py did not reach the expected state in time")
        time.sleep(0.2)


class OnLogLine(logging.Handler):
    """Calls `action` once, when a log record's message first matches the regular expression `pattern`."""

    def __init__(self, pattern: str, action: Callable[[], None]):
        super().__init__()
        self.pattern, self.action, self.fired = re.compile(pattern), action, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and self.pattern.search(record.getMessage()):
            self.fired = True
            self.action()


@contextlib.contextmanager
def on_log_line(logger_name: str, pattern: str, action: Callable[[], None]) -> Iterator[OnLogLine]:
    """Fault injection at a named moment: `action` runs when `logger_name` logs a line matching `pattern`."""
    logger = logging.getLogger(logger_name)
    handler, level = OnLogLine(pattern, action), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def signal_on_log_line(logger_name: str, pattern: str, signum: int):
    """Sends `signum` to this process when `logger_name` logs a line matching `pattern`."""
    return on_log_line(logger_name, pattern, lambda: os.kill(os.getpid(), signum))


def fill(folder: Path) -> None:
    """Write a file in `folder` until its file system is full."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as filler:
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()


class StoreLock:
    """Holds a SQLite store's exclusive lock (as a long write by another process would) until released."""

    def __init__(self, database: Path):
        self.database, self._connection = database, None

    def take(self) -> None:
        self._connection = sqlite3.connect(self.database, isolation_level=None, check_same_thread=False)
        self._connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self._connection is not None:
            self._connection.execute("ROLLBACK")
            self._connection.close()
            self._connection = None


class LockStoreWhenTrainingEnds(GracefulStop):
    """GracefulStop that takes `lock` once the last step is done, before the logger and the run are closed."""

    def __init__(self, lock: StoreLock):
        self.lock = lock

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.lock.take()
