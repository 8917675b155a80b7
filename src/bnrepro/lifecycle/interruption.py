"""SIGINT / SIGTERM / SIGUSR2 (Ctrl+C, pre-emption) as a clean, recorded stop instead of a dead process.

Outside training a signal raises `RunInterrupted` at once: nothing is half-done that a checkpoint
could keep. While the Trainer trains, `GracefulStop` (a Lightning callback that run.py always adds)
*defers* it: the handler only records the signal, and the next chunk boundary (after that chunk's
evaluation, if one was due) raises `RunInterrupted(at_boundary=True)`, so the model, optimizer,
LR schedule, step counter and RNG states all describe the same optimizer step and the checkpoint
callback can save them (`callbacks.checkpointing`). A second signal stops at once, without a
checkpoint; the same signal again within `REPEAT_SECONDS` is the same request (a terminal's Ctrl+C
reaches a parallel sweep's workers directly and again through the sweep: `lifecycle.sweep_stop`). The run then
ends KILLED in MLflow with the signal as its reason (`tracking.TrackedRun`), and the process exits
with 128 + the signal number. Once the run starts closing, signals are held (`hold_signals`): the
closing finishes, then the job reports them.

The stop decision is reduced across ranks (any rank's signal stops all of them at the same
step), so it also holds under DDP.

Under submitit (hydra/launcher=slurm or local) the scheduler warns a job with `PREEMPTION_SIGNAL`
before its time limit or a pre-emption. Training stops on it like on SIGTERM (checkpoint, run KILLED);
then `hand_preemption_to_scheduler` passes the signal on to the handler submitit had installed before
the job, which calls the launcher's public `checkpoint()` and requeues the job; the requeued job
resumes (resume=auto) into the same MLflow run.
"""

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

import lightning as L
import submitit

log = logging.getLogger(__name__)

# submitit 1.5.4's pre-emption / time-limit warning: SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another.
PREEMPTION_SIGNAL = signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, PREEMPTION_SIGNAL)
REPEAT_SECONDS = 1.0  # a second signal sooner than this is one request delivered twice, not "stop at once"


class RunInterrupted(BaseException):
    """The job was asked to stop by a signal; a BaseException so no `except Exception` swallows it."""

    def __init__(self, signum: int, step: int | None = None, at_boundary: bool = False):
        self.signum, self.step, self.at_boundary = signum, step, at_boundary
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"interrupted by {signal.Signals(signum).name}{where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "terminated by signal N"


class _SignalState:
    """The signal received (if any), whether training defers it to a chunk boundary, and whether the
    run is being closed (`hold_signals`), when signals are only recorded."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.received_at = 0.0  # time.monotonic() of the last signal taken as a request
        self.deferred = False
        self.holding = False
        self.held: int | None = None

    def reset(self) -> None:
        self.received, self.deferred, self.holding, self.held = None, False, False, None

    def handle(self, signum: int, frame) -> None:
        if self.holding:
            self.held = signum
            log.warning("received %s while the run is being closed: closing it first", signal.Signals(signum).name)
            return
        again = self.received is not None
        if again and signum == self.received and time.monotonic() - self.received_at < REPEAT_SECONDS:
            return  # the same request, delivered twice (directly and forwarded)
        self.received_at = time.monotonic()
        if not again:
            self.received = signum
        if not self.deferred or again:  # a second Ctrl+C stops at once, without a checkpoint
            raise RunInterrupted(signum)
        log.warning(
            "received %s: stopping at the next step boundary (send it again to stop at once)",
            signal.Signals(signum).name,
        )


_state = _SignalState()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn the `STOP_SIGNALS` into `RunInterrupted` for the duration of one job (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _state.reset()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _state.handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state.reset()


def hold_signals() -> None:
    """From now until the job ends (`interruptible` exits), the `STOP_SIGNALS` are recorded, never raised.

    Called when a run starts closing (`tracking.run.TrackedRun`): a signal raised halfway through
    writing its last metrics, tags and status would leave it RUNNING. `held_signal` says what
    arrived, for the job to report once the run is closed.
    """
    _state.holding = True


def held_signal() -> int | None:
    """The last signal received while signals were held (None: none)."""
    return _state.held


def hand_preemption_to_scheduler(signum: int) -> None:
    """After a run stopped on `PREEMPTION_SIGNAL` has been closed (`interruptible` has exited and
    restored the job's previous handlers), deliver the signal to the handler installed before the job:
    submitit's checkpoint-and-requeue, which exits the process. A plain run has no such handler
    (the default action would kill the process), so it returns and the job exits as usual."""
    if signum == PREEMPTION_SIGNAL and callable(signal.getsignal(signum)):
        signal.raise_signal(signum)


def validation_follows(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the Trainer validates after training batch `batch_idx` (integer `val_check_interval`)."""
    interval = trainer.val_check_interval
    return isinstance(interval, int) and (batch_idx + 1) % interval == 0


class GracefulStop(L.Callback):
    """Defers the `STOP_SIGNALS` during training to the next chunk boundary (see the module docstring).

    Signals are entirely ours. Lightning 2.6 always installs a SIGTERM handler when `fit` starts
    (its signal connector, with no public switch to turn it off), which would raise `SIGTERMException`
    mid-evaluation or, under DDP, at the next batch. `on_train_start` is the first hook after that
    registration, so ours replaces it there for the training loop; Lightning restores the job-level
    handler (ours, from `interruptible`) at teardown. This is the one place that works around it.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, _state.handle)
        # Outside training a signal raises at once, so nothing received before now is still pending.
        _state.received, _state.deferred = None, True

    # A stop raises where Lightning's restore expects a checkpoint: after the batch, or after the
    # validation that follows it (see `validation_follows`).
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not validation_follows(trainer, batch_idx):
            self._stop_if_asked(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop_if_asked(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_asked(trainer)  # a signal during the last chunk still ends the run KILLED
        _state.deferred = False

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        _state.deferred = False

    @staticmethod
    def _stop_if_asked(trainer: L.Trainer) -> None:
        if trainer.strategy.reduce_boolean_decision(_state.received is not None, all=False):
            _state.deferred = False
            raise RunInterrupted(_state.received or signal.SIGTERM, trainer.global_step, at_boundary=True)
