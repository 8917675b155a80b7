"""A sweep as a person follows it: runs named by what varies, "job k/N done" lines, a summary of
this invocation's jobs only, and a failed job that fails alone."""

import pytest
from cli_inprocess import cli
from conftest import QUICK
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from bnrepro import run as run_module
from bnrepro.tracking.job import run_name
from bnrepro.tracking.sweep import FailedJobs, JobFailed, failed_jobs_line, plan_sweep
from bnrepro.tracking.tags import FAILURE_TAG, ROLE_TAG

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_config(params: dict, task: list[str]):
    return OmegaConf.create(
        {"hydra": {"sweeper": {"_target_": BASIC_SWEEPER, "params": params}, "overrides": {"task": task}}}
    )


def test_plan_multiplies_sweep_file_params_and_command_line_where_the_command_line_wins():
    plan = plan_sweep(
        sweep_config({"seed": "0,1,2", "data": "mnist", "norm": "bn,none"}, ["seed=0,1", "data=mnist_mini"])
    )
    assert plan.jobs == 4 and plan.sweeps == ("seed=0,1", "norm=bn,none")


def test_a_job_is_named_by_the_keys_its_sweep_varies_only():
    overrides = ["experiment=mnist_fig1", "data=mnist_mini", "norm=bn", "seed=0", "trainer.max_steps=50"]
    assert run_name(overrides, ["seed", "norm"]) == "norm=bn,seed=0"


def runs_by_role(store: str) -> dict[str, list]:
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {role: [r for r in runs if r.data.tags[ROLE_TAG] == role] for role in ("sweep", "job")}


def test_sweep_runs_are_named_by_what_varies_and_each_job_reports_k_of_n(store, tmp_path, capsys):
    assert cli(tmp_path, "-m", "data=mnist_mini", "norm=bn,none", "seed=0,1", "trainer.max_steps=20", *QUICK) == 0
    runs = runs_by_role(store)
    assert {r.info.run_name for r in runs["job"]} == {
        "norm=bn,seed=0",
        "norm=bn,seed=1",
        "norm=none,seed=0",
        "norm=none,seed=1",
    }
    assert [r.info.run_name for r in runs["sweep"]] == ["norm=bn,none seed=0,1"]
    out = capsys.readouterr().out
    assert "job 1/4 done (completed, val/acc " in out and "ETA " in out and "job 4/4 done (completed" in out


def test_summary_counts_only_the_jobs_of_this_invocation(store, tmp_path, capsys):
    same_dir = f"hydra.sweep.dir={tmp_path}/sweep"
    assert cli(tmp_path, "-m", "seed=0,1", same_dir, "trainer.max_steps=20", *QUICK) == 0
    capsys.readouterr()
    assert cli(tmp_path, "-m", "seed=0", same_dir, "trainer.max_steps=20", *QUICK) == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if " jobs: " in line]
    assert summary == [summary[0]] and summary[0].endswith("1 jobs: 0 run, 0 resumed, 1 skipped (already finished)")


def crash_when_seed_is_1(monkeypatch) -> None:
    """An error while the job's run is open (building its Trainer), for the job with seed=1 only."""
    build_trainer = run_module.build_trainer

    def build_or_crash(cfg, *args, **kwargs):
        if cfg.seed == 1:
            raise RuntimeError("simulated crash")
        return build_trainer(cfg, *args, **kwargs)

    monkeypatch.setattr(run_module, "build_trainer", build_or_crash)


# (the failing job's seed value, how it fails, the sweep's exit code, the reason its job records)
FAILURES = [
    ("-1", "rejected value", 2, "ConfigError: seed must be in [0, 4294967295]"),
    ("1", "error while training", 1, "RuntimeError: simulated crash"),
]


@pytest.mark.parametrize(("seed", "kind", "code", "reason"), FAILURES, ids=[failure[1] for failure in FAILURES])
def test_a_failing_job_fails_alone_and_the_sweep_ends_failed_naming_it(
    seed, kind, code, reason, store, tmp_path, capsys, monkeypatch
):
    crash_when_seed_is_1(monkeypatch)

    assert cli(tmp_path, "-m", f"seed={seed},0", "trainer.max_steps=20", *QUICK) == code

    runs = runs_by_role(store)
    finished = [r.info.run_name for r in runs["job"] if r.info.status == "FINISHED"]
    assert finished == ["seed=0"]  # the job after the failed one still ran
    failed = [(r.info.run_name, r.data.tags[FAILURE_TAG]) for r in runs["job"] if r.info.status == "FAILED"]
    assert failed == ([] if kind == "rejected value" else [("seed=1", "RuntimeError: simulated crash")])
    (parent,) = runs["sweep"]
    assert parent.info.status == "FAILED"
    assert parent.data.tags[FAILURE_TAG].startswith(f"1 of 2 jobs failed: seed={seed} ({reason}")
    stderr = capsys.readouterr().err
    assert stderr.strip().splitlines()[-1].startswith(f"bnrepro: error: sweep seed={seed},0: 1 of 2 jobs failed")
    assert "Traceback" not in stderr  # (the crash's traceback is in the job's log: Hydra's console is stdout)


def test_a_rejected_job_opens_no_run(store, tmp_path):
    assert cli(tmp_path, "-m", "seed=-1,4294967296", "trainer.max_steps=20", *QUICK) == 2
    assert runs_by_role(store)["job"] == []


def test_failed_jobs_recorded_by_other_processes_are_read_back_in_job_order(tmp_path):
    for number in (10, 2):  # a parallel launcher's jobs end in any order, each in its own process
        FailedJobs(tmp_path, "invocation").add(number, JobFailed(f"seed={number}", "ConfigError: no", 2))
    assert [failure.job for failure in FailedJobs(tmp_path, "invocation").read()] == ["seed=2", "seed=10"]


def test_failed_jobs_line_names_each_job_and_its_reason():
    failures = [JobFailed("seed=-1", "ConfigError: bad seed", 2), JobFailed("seed=3", "RuntimeError: boom", 1)]
    assert (
        failed_jobs_line(failures, 4)
        == "2 of 4 jobs failed: seed=-1 (ConfigError: bad seed); seed=3 (RuntimeError: boom)"
    )
