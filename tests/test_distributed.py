"""DDP on CPU (gloo): two processes train like one over the same global batches, one MLflow run per job,
and a Hydra multirun launches each job's ranks itself (Lightning's launcher would re-run the sweep)."""

import os
import stat
import sys
import time

import pytest
import torch
from conftest import compose_config, run_train
from mlflow.tracking import MlflowClient

from bnrepro.lifecycle.distributed import DeviceSlot, RankFailed, RankProcesses, global_rank, rank_command

STEPS = [
    "trainer.max_steps=30",
    "loop.eval_every_n_steps=10",
    "loop.log_every_n_steps=10",
    "trainer.enable_progress_bar=false",
]


def job_runs(uri: str) -> list:
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in runs if r.data.tags.get("bnrepro.role") == "job"]


def history(uri: str, run, key: str) -> list[tuple[int, float]]:
    return [
        (m.step, m.value)
        for m in sorted(MlflowClient(uri).get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    ]


def test_two_cpu_processes_train_like_one_process_over_the_same_global_batches(tmp_path, monkeypatch):
    stores = {}
    for name, overrides in {
        "ddp": ["trainer=ddp_cpu", "data.batch_size=30"],  # 2 ranks x 30 = the single process's 60
        "single": ["data.steps_per_batch=1"],
    }.items():
        stores[name] = f"sqlite:///{tmp_path / name}.db"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", stores[name])
        result = run_train(tmp_path / name, *overrides, *STEPS)
        assert result.returncode == 0, result.stderr[-3000:]
    (ddp,), (single,) = job_runs(stores["ddp"]), job_runs(stores["single"])
    assert ddp.data.params["global_batch_size"] == "60" and ddp.data.params["batchnorm_class"] == "DistributedBatchNorm"
    for key in ("val/loss", "val/acc"):
        ours, reference = history(stores["ddp"], ddp, key), history(stores["single"], single, key)
        assert [s for s, _ in ours] == [s for s, _ in reference] == [10, 20, 30]
        assert [v for _, v in ours] == pytest.approx([v for _, v in reference], abs=1e-4)


def test_ddp_multirun_gives_one_run_and_one_directory_per_job(store, tmp_path):
    result = run_train(
        tmp_path, "trainer=ddp_cpu", "norm=bn,none", "data.batch_size=30", *STEPS[:1], *STEPS[3:], multirun=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Launching 2 jobs") + result.stderr.count("Launching 2 jobs") == 1
    assert sorted(r.data.tags["norm"] for r in job_runs(store)) == ["bn", "none"]
    job_dirs = [d for d in (tmp_path / "sweep").iterdir() if d.is_dir()]
    assert len(job_dirs) == 2 and all((d / "rank1.log").exists() for d in job_dirs)
    assert not (tmp_path / "run").exists()


def test_rank_that_fails_stops_rank_zero_with_its_exit_code():
    failing_rank = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with (
        pytest.raises(RankFailed, match="rank 1 of this job exited with code 3"),
        RankProcesses(2, failing_rank, poll_seconds=0.05),
    ):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # rank 0 "waiting for its peers"
            time.sleep(0.01)
    assert "LOCAL_RANK" not in os.environ  # the process's own environment is restored


def test_rank_command_runs_only_this_job_in_its_own_directory():
    command = rank_command("mnist_fig1", ["sweeps"], ["norm=bn", "seed=1"], "/out/0_norm=bn,seed=1")
    assert command[1:3] == ["-m", "bnrepro"] and command.count("-m") == 1  # a single run, not a multirun
    assert command[-4:-2] == ["norm=bn", "seed=1"]
    assert command[3:7] == ["--config-name", "mnist_fig1", "--config-dir", "sweeps"]
    assert 'hydra.run.dir="/out/0_norm=bn,seed=1"' in command and "hydra.output_subdir=null" in command


@pytest.mark.parametrize(
    "env,rank",
    [
        ({}, 0),
        ({"RANK": "5"}, 5),
        ({"SLURM_PROCID": "3"}, 3),
        ({"LOCAL_RANK": "1", "NODE_RANK": "2", "LOCAL_WORLD_SIZE": "4"}, 9),
    ],
)
def test_global_rank_comes_from_the_launchers_environment(monkeypatch, env, rank):
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert global_rank() == rank


def test_slurm_launcher_asks_for_the_trainers_nodes_and_gpus(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    fake_srun = tmp_path / "bin" / "srun"  # submitit only checks that srun exists before writing the script
    fake_srun.parent.mkdir()
    fake_srun.write_text("#!/bin/sh\nexit 0\n")
    fake_srun.chmod(fake_srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_srun.parent}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_config(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=8",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=str(tmp_path / "%j"), slurm_max_num_timeout=launcher.max_num_timeout
    )
    executor.update_parameters(
        nodes=launcher.nodes,
        gpus_per_node=launcher.gpus_per_node,
        tasks_per_node=launcher.tasks_per_node,
        timeout_min=launcher.timeout_min,
        cpus_per_task=launcher.cpus_per_task,
        slurm_partition=launcher.partition,
        slurm_signal_delay_s=launcher.signal_delay_s,
    )
    script = executor._executor._make_submission_file_text("srun python -m submitit.core._submit", "uid")
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --partition=gpu",
    ):
        assert line in script


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ddp_on_one_gpu_trains_with_torch_syncbatchnorm(store, tmp_path):
    result = run_train(tmp_path, "trainer=ddp", "trainer.devices=1", *STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = job_runs(store)
    assert run.data.params["batchnorm_class"] == "SyncBatchNorm"


def test_parallel_sweep_that_needs_more_cores_than_the_machine_fails_with_the_fix(store, tmp_path):
    n_jobs = os.cpu_count()  # n_jobs workers x 2 processes each can never fit
    result = run_train(
        tmp_path,
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={n_jobs}",
        "trainer=ddp_cpu",
        "norm=bn,none",
        *STEPS,
        multirun=True,
    )
    assert result.returncode != 0
    assert (
        f"need {2 * n_jobs} CPU cores" in result.stderr
        and "lower hydra.launcher.n_jobs or trainer.devices" in result.stderr
    )
    assert job_runs(store) == []


def test_device_slots_give_concurrent_jobs_disjoint_gpus(tmp_path):
    with (
        DeviceSlot(str(tmp_path), slots=2, per_job=2) as first,
        DeviceSlot(str(tmp_path), slots=2, per_job=2) as second,
    ):
        assert (first.devices, second.devices) == ([0, 1], [2, 3])
        with pytest.raises(RuntimeError, match="all 2 device slots"):
            DeviceSlot(str(tmp_path), slots=2, per_job=2).__enter__()
    with DeviceSlot(str(tmp_path), slots=2, per_job=2) as again:
        assert again.devices == [0, 1]  # released slots are reused


BLOCKED_RANK_ZERO = """
import sys, threading
from bnrepro.lifecycle.distributed import RankProcesses
record = lambda reason: open(sys.argv[1], "w").write(reason)
with RankProcesses(2, [sys.executable, "-c", "import sys; sys.exit(4)"], poll_seconds=0.05,
                   on_abandon=record, grace_seconds=0.5):
    threading.Event().wait()  # blocked where no Python exception can reach it, like a C++ rendezvous
"""


def test_rank_zero_blocked_beyond_reach_records_the_failure_and_exits(tmp_path):
    import subprocess

    reason = tmp_path / "reason.txt"
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_RANK_ZERO, str(reason)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert reason.read_text() == "rank 1 of this job exited with code 4 (see its log in the job directory)"
