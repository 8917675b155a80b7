"""Files replaced whole or not at all: parallel jobs and a resume after a crash never read half of one."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, write: Callable[[BinaryIO], None], durable: bool = False) -> None:
    """`write` into a temporary file beside `path`, then rename it over `path`; on any error the
    temporary file is removed and the error raised. `durable`: fsync the file and its folder, so a
    power loss right after cannot leave the rename without the data (checkpoints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _remove_dead_writers_temporaries(path)
    if durable:
        _fsync_directory(path.parent)


def _remove_dead_writers_temporaries(path: Path) -> None:
    """Temporary files of `path` left by a writer that was killed mid-write (SIGKILL skips the clean-up)."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        pid = leftover.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and not _is_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
