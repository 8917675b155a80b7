"""train.py ends without the interpreter's teardown, keeping its exit status, output and exit handlers."""

import subprocess
import sys
import textwrap

import pytest

from bnrepro.lifecycle.fast_exit import exit_status

SCRIPT = """
import atexit, sys
from bnrepro.lifecycle import fast_exit
fast_exit.install()
atexit.register(lambda: print("later handler ran", flush=False))
def entry():
    print("partial line without newline", end="")
    {body}
fast_exit.run(entry)
"""


def run_script(body: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(SCRIPT).format(body=body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("body", "status"),
    [("return", 0), ("sys.exit(3)", 3), ("sys.exit('bad input')", 1), ("raise ValueError('boom')", 1)],
)
def test_process_keeps_the_exit_status_of_its_entry_point(body, status):
    assert run_script(body).returncode == status


def test_buffered_output_and_later_exit_handlers_are_not_lost():
    result = run_script("return")
    assert result.stdout == "partial line without newline" + "later handler ran\n"


def test_an_escaping_error_is_still_reported_with_its_traceback():
    result = run_script("raise ValueError('boom')")
    assert "Traceback" in result.stderr and "ValueError: boom" in result.stderr


def test_ctrl_c_reaching_the_entry_point_is_one_line_and_exit_130():
    result = run_script("raise KeyboardInterrupt")
    assert result.returncode == 130 and result.stderr == "bnrepro: interrupted by SIGINT\n"


def test_ctrl_c_during_the_exit_handlers_is_ignored():
    result = run_script("import os, signal; atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT)); return")
    assert result.returncode == 0 and result.stderr == ""


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (2, 2), (130, 130), ("a message", 1)])
def test_exit_status_follows_sys_exit(code, status):
    assert exit_status(code) == status
