"""The installed tool: a wheel of this checkout, installed outside it, trains a sweep from an empty directory
with its outputs and its store there, composing the configs the wheel ships."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bnrepro.shipped import shipped, with_sweeps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package's wheel, installed (without its dependencies, which this interpreter has) into a folder."""
    home = tmp_path_factory.mktemp("wheel")
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(home),
        str(ROOT),
    ]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = home.glob("bnrepro-*.whl")
    target = home / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return target


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")  # the wheel's bnrepro, not the checkout's
    command = [sys.executable, "-m", "bnrepro", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_the_sweeps(installed):
    shipped = {p.relative_to(installed / "bnrepro").as_posix() for p in (installed / "bnrepro").rglob("*.yaml")}
    assert {"conf/config.yaml", "conf/data/mnist_mini.yaml", "sweeps/mnist_fig1.yaml", "report/claims.yaml"} <= shipped


@pytest.mark.slow
def test_an_installed_bnrepro_runs_a_sweep_from_an_empty_directory(installed, tmp_path):
    done = run_installed(installed, tmp_path, "-m", "norm=bn,none", "trainer.max_steps=50",
                         "loop.eval_every_n_steps=10", "loop.log_every_n_steps=10")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.run_name for r in runs) == ["norm=bn", "norm=bn,none", "norm=none"]
    assert all(r.info.artifact_uri.startswith((tmp_path / "outputs" / "mlartifacts").as_uri()) for r in runs)


def test_sweeps_join_the_search_path_unless_the_command_names_a_config_dir():
    assert with_sweeps(["bnrepro-train", "-m", "-cn", "mnist_fig1"]) == [
        "bnrepro-train", "--config-dir", str(shipped("sweeps")), "-m", "-cn", "mnist_fig1",
    ]  # fmt: skip
    assert with_sweeps(["train.py", "-cd", "mine"]) == ["train.py", "-cd", "mine"]
    assert with_sweeps(["train.py", "--config-dir=mine"]) == ["train.py", "--config-dir=mine"]
