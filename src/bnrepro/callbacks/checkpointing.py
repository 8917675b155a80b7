"""Checkpoints every N optimizer steps (last + best), written atomically and loaded safely.

A checkpoint holds everything a run needs to continue exactly where it stopped: the model
(parameters and BN running statistics), the optimizer (momentum buffers, learning rate), the LR
schedule, the optimizer-step counter and the RNG states (torch, CUDA, Python, NumPy). The data order
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

from bnrepro.atomic_write import write_atomically
from bnrepro.lifecycle.interruption import RunInterrupted
from bnrepro.messages import cause

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST, BEST = "last.ckpt", "best.ckpt"
FORMAT_VERSION = 1


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


# --- training state ----------------------------------------------------------------------------
def training_state(trainer: L.Trainer, module: L.LightningModule, meta: dict[str, Any]) -> dict[str, Any]:
    """The state at a step boundary: everything `restore_training_state` needs to continue from it."""
    return {
        "format": FORMAT_VERSION,
        "global_step": trainer.global_step,
        "batches": _epoch_loop(trainer).batch_progress.total.completed,
        "model": module.state_dict(),
        "optimizers": [optimizer.state_dict() for optimizer in trainer.optimizers],
        "schedulers": [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs],
        "rng": rng_states(),
        "meta": dict(meta),
    }


def restore_training_state(trainer: L.Trainer, module: L.LightningModule, state: dict[str, Any]) -> None:
    """Load a checkpoint into a Trainer whose `fit` has set up the optimizers but not yet the data.

    Lightning's own resume (`fit(ckpt_path=...)`) replays its loop bookkeeping, which assumes
    epochs of fixed length and re-runs or skips evaluations around mid-epoch checkpoints. Here
    the three counters the loop reads are set directly: the optimizer-step counter
    (`global_step`, which the data stream starts from), the batch counter (evaluation
    schedule) and the batches-that-stepped counter (logging schedule).
    """
    module.load_state_dict(state["model"])
    for optimizer, saved in zip(trainer.optimizers, state["optimizers"], strict=True):
        optimizer.load_state_dict(saved)
    for config, saved in zip(trainer.lr_scheduler_configs, state["schedulers"], strict=True):
        config.scheduler.load_state_dict(saved)
    step, batches = int(state["global_step"]), int(state["batches"])
    loop = _epoch_loop(trainer)
    if module.automatic_optimization:
        raise CheckpointError("resuming supports manual optimization only (bnrepro.module.Classifier)")
    steps = loop.manual_optimization.optim_step_progress.total
    steps.ready = steps.completed = step
    progress = loop.batch_progress.total
    progress.ready = progress.started = progress.processed = progress.completed = batches
    loop._batches_that_stepped = batches
    if trainer.global_step != step:  # a Lightning upgrade moved the counters: fail loudly, never silently
        raise CheckpointError(f"could not restore the step counter (wanted {step}, got {trainer.global_step})")
    restore_rng_states(state["rng"])


def _epoch_loop(trainer: L.Trainer):
    return trainer.fit_loop.epoch_loop


def _flush_loggers(trainer: L.Trainer) -> None:
    """Make the store hold every metric logged so far, so a resume never leaves a gap."""
    for logger in trainer.loggers:
        flush = getattr(logger, "flush", None)
        if flush is not None:
            flush(wait=True)


class StepCheckpoint(L.Callback):
    """Saves last.ckpt every `every_n_steps` optimizer steps and best.ckpt at the best evaluation.

    `every_n_steps` must be a multiple of the data's steps_per_batch (config.validate checks it);
    0 saves only when training ends or is interrupted. `resume_from(state)` (set by run.py before
    `fit`) restores a loaded checkpoint when `fit` starts. `meta` (run id, identity, config) is
    stored in every checkpoint so a run can be found again from its directory alone.
    """

    def __init__(self, every_n_steps: int = 1000, monitor: str | None = "val/acc", mode: str = "max"):
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.every_n_steps, self.monitor, self.mode = every_n_steps, monitor, mode
        self.meta: dict[str, Any] = {}
        self.best_value: float | None = None
        self._resume_state: dict[str, Any] | None = None
        self._saved_step: int | None = None
        self._directory: Path | None = None

    def resume_from(self, state: dict[str, Any]) -> None:
        self._resume_state = state
        self.best_value = state["meta"].get("best_value")

    @property
    def directory(self) -> Path:
        assert self._directory is not None, "setup() has not run"
        return self._directory

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._directory = checkpoint_dir(trainer.default_root_dir)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._resume_state is not None:
            restore_training_state(trainer, pl_module, self._resume_state)
            log.info("resumed at step %d from %s", trainer.global_step, self.directory / LAST)
            self._resume_state = None  # free the memory; the live objects hold the state now
        self._saved_step = trainer.global_step  # nothing new to save before the next step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.save_last(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.monitor is None:
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
        if not trainer.is_global_zero:
            return
        meta = {**self.meta, "best_value": self.best_value, "monitor": self.monitor}
        save_atomically(training_state(trainer, pl_module, meta), self.directory / name)
        log.debug("saved %s at step %d", name, trainer.global_step)
