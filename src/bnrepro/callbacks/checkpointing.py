"""Checkpoints every N optimizer steps (last + best), written atomically and loaded safely.

A checkpoint is Lightning's own (`trainer.save_checkpoint`; restored by `trainer.fit(ckpt_path=...)`):
the model (parameters and BN running statistics), the optimizer (momentum buffers, learning rate),
the LR schedule and the loop counters, plus this callback's state (the RNG states: torch, CUDA,
Python, NumPy; the best value) and ``format``/``meta`` (run id, identity, config). The data order
needs nothing more: the in-memory streams are a pure function of (seed, step) (`data.tensor_stream`),
so a run restored to step k reads exactly the batches an uninterrupted run reads after step k.
(DataLoader-based data, e.g. ImageNet, restarts its shuffled order at the resumed step instead.)

Files, under ``<run output dir>/checkpoints/``:

* ``last.ckpt``: the latest step boundary, every ``every_n_steps`` steps, when training ends, and
  when a signal stops the run (`interruption`); pending metrics are flushed to the tracking store
  *before* it is written, so the store always holds the history up to the checkpoint's step.
* ``best.ckpt``: the state at the evaluation with the best ``monitor`` value (``mode`` max or min).

Writes go to a temporary file that is renamed over the old one (`os.replace`, atomic on POSIX):
a crash or a full disk mid-write leaves the previous checkpoint intact, and the failure stops the
run with `CheckpointError` naming the file. Loading uses ``torch.load(weights_only=True)``: a
checkpoint holds only tensors and plain containers, so a crafted file cannot run code.
"""

import logging
import math
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bnrepro.atomic_write import write_atomically
from bnrepro.lifecycle.interruption import RunInterrupted, validation_follows
from bnrepro.messages import cause

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST, BEST = "last.ckpt", "best.ckpt"
FORMAT_VERSION = 2  # 2: Lightning's checkpoint dict plus our format and meta


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file and the fix."""


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The run directory's last.ckpt, or None if it has none."""
    path = checkpoint_dir(output_dir) / LAST
    return path if path.is_file() else None


# --- files -------------------------------------------------------------------------------------
def save_atomically(state: dict[str, Any], path: Path) -> None:
    """torch.save `state` to `path`, whole or not at all, fsynced (`atomic_write`)."""
    try:
        write_atomically(path, lambda file: torch.save(state, file), durable=True)
    except (OSError, RuntimeError) as error:  # torch reports a failed write as RuntimeError
        kept = "the previous checkpoint there is intact" if path.exists() else "no earlier checkpoint exists"
        raise CheckpointError(
            f"could not write checkpoint {path} ({cause(error)}); "
            f"{kept}. Free space on that disk (or set hydra.run.dir to a disk with room), then resume the run."
        ) from error


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True (tensors and plain containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint {path} does not exist") from error
    except Exception as error:  # truncated, corrupt or not a checkpoint at all
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({cause(error)}); resume from another run or start a new one (rerun=true)"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not a bnrepro checkpoint (format {FORMAT_VERSION}); start a new run (rerun=true)"
        )
    return state


# --- RNG ---------------------------------------------------------------------------------------
def rng_states() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain values (weights_only-safe)."""
    numpy_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(_as_tuples(states["python"]))
    saved = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": saved["bit_generator"],
            "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]},
            "has_gauss": saved["has_gauss"],
            "gauss": saved["gauss"],
        }
    )
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


# --- Lightning's checkpoint file ----------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with this module's file rules: atomic writes, weights_only reads.

    `trainer.save_checkpoint` and `trainer.fit(ckpt_path=...)` both go through the strategy's
    CheckpointIO, so installing this one (Trainer `plugins`) is all the public wiring they need.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        save_atomically(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path)


def _flush_loggers(trainer: L.Trainer) -> None:
    """Make the store hold every metric logged so far, so a resume never leaves a gap."""
    for logger in trainer.loggers:
        flush = getattr(logger, "flush", None)
        if flush is not None:
            flush(wait=True)


class StepCheckpoint(L.Callback):
    """Saves last.ckpt every `every_n_steps` optimizer steps and best.ckpt at the best evaluation.

    `every_n_steps` must be a multiple of the data's steps_per_batch (config.validate checks it);
    0 saves only when training ends or is interrupted. run.py resumes by passing last.ckpt to
    `fit(ckpt_path=...)`, which restores this callback through `load_state_dict`. `meta` (run id,
    identity, config) is stored in every checkpoint so a run can be found again from its directory alone.
    """

    def __init__(self, every_n_steps: int = 1000, monitor: str | None = "val/acc", mode: str = "max"):
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.every_n_steps, self.monitor, self.mode = every_n_steps, monitor, mode
        self.meta: dict[str, Any] = {}
        self.best_value: float | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._saved_step: int | None = None
        self._directory: Path | None = None

    def state_dict(self) -> dict[str, Any]:
        # Lightning saves no RNG states; the next step's dropout/shuffling draws need them.
        return {"best_value": self.best_value, "rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_value = state_dict["best_value"]
        self._resume_rng = state_dict["rng"]

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["format"] = FORMAT_VERSION
        checkpoint["meta"] = {**self.meta, "best_value": self.best_value, "monitor": self.monitor}

    @property
    def directory(self) -> Path:
        assert self._directory is not None, "setup() has not run"
        return self._directory

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._directory = checkpoint_dir(trainer.default_root_dir)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores the callbacks' state before on_fit_start and nothing draws random numbers
        # between here and the first step, so the RNGs continue exactly where the checkpoint left them.
        if self._resume_rng is not None:
            restore_rng_states(self._resume_rng)
            self._resume_rng = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_step = trainer.global_step  # (restored by now) nothing new to save before the next step

    # Lightning's restore (`fit(ckpt_path=...)`) expects a mid-epoch checkpoint taken after a batch, or
    # after the validation that follows it: saved earlier or later, the loop would count a batch twice
    # or skip an evaluation.
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._at_interval(trainer) and not validation_follows(trainer, batch_idx):
            self.save_last(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._save_best(trainer, pl_module)
        if self._at_interval(trainer):
            self.save_last(trainer, pl_module)

    def _at_interval(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        return bool(self.every_n_steps) and step > 0 and step % self.every_n_steps == 0

    def _save_best(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor is None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.best_value is None or (value > self.best_value if self.mode == "max" else value < self.best_value):
            self.best_value = value
            self._save(trainer, pl_module, BEST)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save_last(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Only a stop at a step boundary leaves a consistent state; after any other error the
        # last periodic checkpoint is the one to resume from.
        if isinstance(exception, RunInterrupted) and exception.at_boundary:
            self.save_last(trainer, pl_module)

    def save_last(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved_step == trainer.global_step and (self.directory / LAST).exists():
            return
        _flush_loggers(trainer)
        self._save(trainer, pl_module, LAST)
        self._saved_step = trainer.global_step

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        # Every rank calls it (it ends in a barrier); the strategy writes on rank 0 only.
        trainer.save_checkpoint(self.directory / name, weights_only=False)  # the full training state, to resume
        log.debug("saved %s at step %d", name, trainer.global_step)
