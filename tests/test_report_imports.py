"""The report reads the store without the training stack: importing it loads neither torch nor Lightning."""

import subprocess
import sys


def test_importing_the_report_loads_neither_torch_nor_lightning():
    code = (
        "import sys, bnrepro.report.__main__, bnrepro.report.summary; "
        "print(sorted(name for name in ('torch', 'lightning') if name in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
