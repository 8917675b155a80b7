"""Training progress counted in optimizer steps, the unit of `trainer.max_steps` and of every message.

On a terminal: one tqdm bar, `step 20,450/50,000 [01:10<02:30, 290 steps/s] val/acc 91.2%`, with no
evaluation sub-bar. Piped or redirected (a log file, CI): one line per evaluation, at most about ten
per run (at each further tenth of the run's steps, and at the end), so a sweep's log stays readable.
"""

import logging
import sys
import time

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from tqdm import tqdm

from bnrepro.messages import duration

log = logging.getLogger(__name__)

BAR_FORMAT = "step {n:,}/{total:,} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}, {rate_fmt}]{postfix}"
LINES_PER_RUN = 10
SHOWN_METRIC = "val/acc"


class StepProgressBar(ProgressBar):
    """Lightning's progress-bar slot, counted in `trainer.global_step` (optimizer steps, not batches)."""

    def __init__(self, interactive: bool | None = None):
        super().__init__()
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._enabled = True
        self._bar = None
        self._started_at = 0.0
        self._first_step = 0
        self._next_line_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._enabled:
            return
        self._started_at, self._first_step = time.monotonic(), trainer.global_step
        self._next_line_step = trainer.global_step
        if self.interactive:
            self._bar = tqdm(
                total=trainer.max_steps, initial=trainer.global_step, unit=" steps", bar_format=BAR_FORMAT,
                file=sys.stdout, dynamic_ncols=True, leave=True,
            )  # fmt: skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._bar is not None:
            self._bar.update(trainer.global_step - self._bar.n)  # tqdm redraws at most ~10 times a second

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._enabled or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # (a validation after fit, e.g. the final one of a cut-short run, adds nothing to show)
        accuracy = trainer.callback_metrics.get(SHOWN_METRIC)
        if self._bar is not None:
            if accuracy is not None:
                self._bar.set_postfix_str(f"{SHOWN_METRIC} {float(accuracy):.1%}")
            return
        step = trainer.global_step
        if step >= self._next_line_step or step >= trainer.max_steps:
            elapsed = time.monotonic() - self._started_at
            log.info(progress_line(step, trainer.max_steps, self._first_step, elapsed, accuracy))
            self._next_line_step = step + max(1, trainer.max_steps // LINES_PER_RUN)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.update(trainer.global_step - self._bar.n)
            self._bar.close()
            self._bar = None

    def print(self, *args, **kwargs) -> None:
        if self._bar is not None:
            self._bar.write(" ".join(map(str, args)))
        else:
            print(*args, **kwargs)


def progress_line(step: int, max_steps: int, first_step: int, elapsed: float, accuracy=None) -> str:
    """'step 1,500/3,000 (50%), 120 steps/s, ETA 13s, val/acc 91.2%' (the rate since this process started)."""
    done = step - first_step
    rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
    eta = duration((max_steps - step) / rate) if rate else "?"
    line = f"step {step:,}/{max_steps:,} ({step / max_steps:.0%}), {rate:,.0f} steps/s, ETA {eta}"
    return line + (f", {SHOWN_METRIC} {float(accuracy):.1%}" if accuracy is not None else "")
