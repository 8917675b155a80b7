"""Shared fixtures: an isolated MLflow store per test, composed configs, and train.py subprocesses."""

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from bnrepro.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
QUICK = ["trainer.enable_progress_bar=false", "loop.eval_every_n_steps=10", "loop.log_every_n_steps=10"]

# Tiny models on a 2-core machine: one intra-op thread avoids oversubscription when tests run beside other work.
torch.set_num_threads(1)
register_configs()


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
    """A fresh SQLite MLflow store for this test, selected the way users do (MLFLOW_TRACKING_URI),
    copied from a migrated template instead of created from scratch."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(store_template(), path)
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def compose_config(*overrides: str, return_hydra_config: bool = False):
    """The config `python train.py <overrides>` would run, composed with Hydra's compose API."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def run_train(
    tmp_path: Path, *overrides: str, multirun: bool = False, timeout: int = 240
) -> subprocess.CompletedProcess:
    """Run train.py in a subprocess with its outputs under tmp_path; the caller's env (store) is inherited."""
    dirs = [f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    command = [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), *overrides, *dirs]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tmp_path.mkdir(parents=True, exist_ok=True)
    # cwd=tmp_path: anything a run wrongly wrote into its working directory stays inside the test's folder.
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def small_filesystem(tmp_path) -> Iterator[Path]:
    """A 3 MB tmpfs holding a fresh store (the test points MLFLOW_TRACKING_URI at it); skipped where
    this machine does not allow mounting one."""
    folder = tmp_path / "small_fs"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("this machine does not allow mounting a small file system")
    try:
        shutil.copyfile(store_template(), folder / "mlflow.db")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
