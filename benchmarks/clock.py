"""A Lightning callback the benchmark injects into `train.py` runs to time them from the inside.

It is not part of the product: `bench_mnist.py` adds it on the command line with
``+callbacks.bench_clock._target_=benchmarks.clock.TrainClock +callbacks.bench_clock.path=<file>``.
It reads the wall clock and the process CPU time at the first training step and when training
ends, and the wall clock around every evaluation, and writes them to a JSON file; it adds no
per-step work.
"""

import json
import time
from pathlib import Path

import lightning as L
import torch


class TrainClock(L.Callback):
    """Wall clock (time.time()) and process CPU time at the first training step and at the end of training."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.first_step: float | None = None
        self.first_step_cpu = 0.0
        self.start_step = 0
        self.evaluations, self.evaluation_seconds, self._evaluation_start = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.first_step is None:
            self.first_step, self.first_step_cpu = time.time(), time.process_time()
            self.start_step = trainer.global_step

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_start = time.time()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluations += 1
        self.evaluation_seconds += time.time() - self._evaluation_start

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        record = {
            "first_step": self.first_step,
            "train_end": time.time(),
            "cpu_seconds": time.process_time() - self.first_step_cpu,
            "evaluations": self.evaluations,
            "evaluation_seconds": self.evaluation_seconds,
            "steps": trainer.global_step - self.start_step,
            "torch_threads": torch.get_num_threads(),
            "device": str(trainer.strategy.root_device),
            "final": {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(record))
