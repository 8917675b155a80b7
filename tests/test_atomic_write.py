"""Files replaced whole or not at all, and no temporary file left behind by a killed writer."""

import subprocess
import sys

from bnrepro.atomic_write import write_atomically


def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_a_temporary_file_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    leftover = tmp_path / f".last.ckpt.{dead_pid()}.tmp"  # what SIGKILL mid-write leaves
    leftover.write_bytes(b"half a checkpoint")

    write_atomically(tmp_path / "last.ckpt", lambda file: file.write(b"whole"))

    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]
