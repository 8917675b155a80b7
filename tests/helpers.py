"""Test helpers shared by several test modules (so that no test module imports another)."""

import os
import signal

import lightning as L

from bnrepro.lifecycle.interruption import GracefulStop


class StopAtStep(GracefulStop):
    """GracefulStop that, at `step`, does what a pre-empting scheduler (or Ctrl+C) does: signal this process.

    action: "sigterm" or "sigint" (a real signal, handled like any other), or "crash" (an exception).
    """

    def __init__(self, step: int, action: str = "sigterm"):
        self.step, self.action = step, action

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and self.action in ("sigterm", "sigint"):
            # deferred by GracefulStop: the stop happens at the next step boundary
            os.kill(os.getpid(), signal.SIGTERM if self.action == "sigterm" else signal.SIGINT)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and self.action == "crash":  # after step `step` was logged
            raise RuntimeError(f"simulated crash at step {self.step}")
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
