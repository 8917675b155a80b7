"""`python train.py ARGS` run inside the test process: Hydra's real command-line path (composition,
error reporting, sweeps, callbacks, exit codes) without paying a new interpreter's start-up each time."""

import sys
from pathlib import Path

import hydra
import pytest

from bnrepro.run import main

ROOT = Path(__file__).resolve().parents[1]


@hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="config")
def _train(cfg):
    """train.py's entry point; Hydra resolves a relative config_path against the calling module, so absolute here."""
    return main(cfg)


def cli(tmp_path: Path, *args: str) -> int:
    """Exit code of `train.py *args` with its run and sweep directories under tmp_path (unless args set them)."""
    dirs = [f"hydra.{kind}.dir={tmp_path}/{kind}" for kind in ("run", "sweep")]
    argv = ["train.py", *args, *(d for d in dirs if not any(a.startswith(d.split("=")[0] + "=") for a in args))]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        try:
            _train()
        except SystemExit as exit:
            return exit.code if isinstance(exit.code, int) else 1
    return 0
