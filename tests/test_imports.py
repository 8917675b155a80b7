"""Reading the store needs no training stack: tag names, store and report load neither torch nor Lightning."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning")


def loaded_heavy_modules(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint('loaded:' + ','.join(name for name in {HEAVY!r} if name in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    loaded = done.stdout.rsplit("loaded:", 1)[-1].strip()
    return [name for name in loaded.split(",") if name]


@pytest.mark.parametrize(
    "module", ["bnrepro.tracking.tags", "bnrepro.tracking.store", "bnrepro.tracking.sweep", "bnrepro.report"]
)
def test_importing_a_store_reader_loads_neither_torch_nor_lightning(module):
    assert loaded_heavy_modules(f"import {module}") == []


def test_the_report_help_loads_neither_torch_nor_lightning():
    code = (
        "import runpy, sys\nsys.argv = ['report', '--help']\n"
        "try:\n    runpy.run_module('bnrepro.report', run_name='__main__')\nexcept SystemExit:\n    pass"
    )
    assert loaded_heavy_modules(code) == []
