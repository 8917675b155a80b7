"""End the `train.py` process without the interpreter's teardown, once everything has been closed.

After importing torch and Lightning, Python's own finalization (freeing the module graph of torch,
dynamo, sympy, ...) takes about 1.4 s on a 2-core machine, as long as a 1,000-step MNIST run, and
does nothing a user can observe: by then the job has closed its MLflow run and checkpoints and the
ranks it started. So `install` registers an exit handler *first*: atexit handlers run in reverse
order, so it runs after every other one (logging's flush, MLflow's, multiprocessing's and joblib's
child clean-up), flushes the standard streams and ends the process with `os._exit`, keeping the
exit status that `run` saw.
"""

import atexit
import contextlib
import os
import signal
import sys
from collections.abc import Callable

_status = 1  # until the entry point has returned or exited: an error that escapes it exits 1, as Python does


def install() -> None:
    """Call before importing anything that registers exit handlers (hydra, torch, MLflow)."""
    atexit.register(_exit_now)


def run(entry: Callable[[], object]) -> None:
    """Call `entry` and remember the exit status it leads to, for `_exit_now`.

    A Ctrl+C that reaches here (while Hydra composes, between a sweep's jobs, in a launcher waiting
    for its workers) is one line, not a traceback. Once `entry` is done every run is closed, so
    further SIGINT/SIGTERM are ignored: a late Ctrl+C cannot break the exit handlers (closing an
    abandoned sweep's run) with a KeyboardInterrupt traceback.
    """
    global _status
    try:
        entry()
        _status = 0
    except SystemExit as stop:
        _status = exit_status(stop.code)
        raise
    except KeyboardInterrupt:
        _status = 130  # 128 + SIGINT, what the shell reports for Ctrl+C
        print("bnrepro: interrupted by SIGINT", file=sys.stderr)
        raise SystemExit(_status) from None
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def exit_status(code: object) -> int:
    """The process status `sys.exit(code)` gives: None is 0, an int itself, anything else (a message) 1."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing left to flush
            stream.flush()
    os._exit(_status)
