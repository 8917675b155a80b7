"""Divergence as a result, not a crash: stop a run whose training loss is NaN/Inf or above a bound, or
whose parameters are no longer finite (the paper's "model parameters reach machine infinity").

The paper reports such runs as outcomes (Sec. 4.2.1: without BN, Inception at 5x the learning
rate diverges; Sec. 3.3: BN makes higher learning rates trainable). `DivergenceStop` checks the
mean loss of every training chunk (the value `Classifier.training_step` returns, one device sync
per chunk of steps_per_batch steps) and raises `Diverged` at once; run.py catches it, tags the run
``bnrepro.outcome=diverged`` with the step (`tracking.TrackedRun.mark_diverged`), ends it FINISHED
and returns normally, so a sweep carries on with its other jobs.

The parameters are checked at the same chunk boundary with one fused reduction
(`nn.finite.nonfinite_parameters`), read in the same host transfer as the loss.

The reported step is the optimizer step at the end of the chunk in which the loss first became
non-finite (or exceeded `max_loss`): the divergence happened at most steps_per_batch - 1 steps earlier.
"""

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from bnrepro.nn.finite import nonfinite_parameters


class Diverged(Exception):
    """Training diverged at `step`: the loss was `loss` (NaN, +-Inf, or above the configured bound)."""

    def __init__(self, step: int, loss: float, bound: float | None = None, parameters_finite: bool = True):
        self.step, self.loss, self.bound = step, loss, bound
        if not parameters_finite:
            super().__init__(f"training diverged at step {step}: a parameter is not finite (loss {loss})")
            return
        if not math.isfinite(loss):
            why = "not finite"
        elif bound is not None and loss > bound:
            why = f"above the bound {bound}"
        else:
            why = "finite here, but not on another rank"
        super().__init__(f"training diverged at step {step}: loss {loss} is {why}")


class DivergenceStop(L.Callback):
    """Raise `Diverged` when a chunk's mean training loss is NaN/Inf or exceeds `max_loss` (null: no bound)."""

    def __init__(self, max_loss: float | None = None):
        if max_loss is not None and not max_loss > 0:
            raise ValueError(f"max_loss must be > 0 or null, got {max_loss}")
        self.max_loss = max_loss

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs: Any, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        # One host transfer per chunk for both checks.
        value, bad_parameters = torch.stack([loss.detach().float(), nonfinite_parameters(pl_module).float()]).tolist()
        bad_loss = not math.isfinite(value) or (self.max_loss is not None and value > self.max_loss)
        # Any rank's divergence stops every rank at the same step (DDP).
        if trainer.strategy.reduce_boolean_decision(bool(bad_parameters) or bad_loss, all=False):
            raise Diverged(trainer.global_step, value, self.max_loss, parameters_finite=not bad_parameters)
