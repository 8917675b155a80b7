"""A sweep as a person follows it: runs named by what varies, "job k/N done" lines, and a summary of
this invocation's jobs only."""

from cli_inprocess import cli
from conftest import QUICK
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from bnrepro.tracking.job import run_name
from bnrepro.tracking.sweep import plan_sweep
from bnrepro.tracking.tags import ROLE_TAG

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
