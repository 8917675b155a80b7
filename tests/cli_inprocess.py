"""`python train.py ARGS` run inside the test process: Hydra's real command-line path (composition,
error reporting, sweeps, callbacks, exit codes) without paying a new interpreter's start-up each time."""

import atexit
import functools
import shutil
import sys
import tempfile
from pathlib import Path

import hydra
import pytest

from bnrepro.run import main

ROOT = Path(__file__).resolve().parents[1]


@hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="config")
def _train(cfg):
    """train.py's entry point; Hydra resolves a relative config_path against the calling module, so absolute here."""
    return main(cfg)


@functools.lru_cache(maxsize=1)
def store_template() -> Path:
    """An empty MLflow SQLite store with its tables created once per test process (migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    folder = tempfile.mkdtemp(prefix="bnrepro-store-template-")
    atexit.register(shutil.rmtree, folder, True)
    path = Path(folder) / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """conftest's `store` (a fresh SQLite store for this test, via MLFLOW_TRACKING_URI), copied from a
    migrated template instead of created from scratch. Import it into a test module to use it."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(store_template(), path)
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


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
