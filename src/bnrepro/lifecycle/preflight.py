"""The one output-directory check, run before Hydra creates anything and again before training, so bad
input fails with one clear line.

`OutputDirectoryCheck` is a Hydra callback (conf/hydra/bnrepro.yaml): before a run or a sweep
starts it checks that the output directory (hydra.run.dir / hydra.sweep.dir) can be created and
written, and otherwise prints ``bnrepro: error: ...`` naming the directory and the fix, and exits 2.
Hydra would fail later with a bare traceback from ``mkdir``. Nothing is created by the check
itself (the directory name may hold a timestamp that Hydra resolves again).
"""

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class OutputDirectoryError(ValueError):
    """The run's output directory cannot be created or written; the message names it and the fix."""


def check_writable(directory: str | os.PathLike, key: str = "hydra.run.dir") -> None:
    """Fail now, not at the first checkpoint, when `directory` cannot be created and written."""
    problem = directory_problem(directory)
    if problem:
        raise OutputDirectoryError(
            f"output directory {directory} cannot be written: {problem}; set {key} to a writable folder"
        )


def directory_problem(directory: str | os.PathLike) -> str | None:
    """Why `directory` cannot be created and written, or None if it can (judged from its nearest existing ancestor)."""
    path = Path(directory).absolute()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable" + (" (read-only file system)" if _read_only(existing) else "")
    return None


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class OutputDirectoryCheck(_HydraCallback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(directory: str, key: str) -> None:
        try:
            check_writable(directory, key)
        except OutputDirectoryError as error:
            print(f"bnrepro: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
