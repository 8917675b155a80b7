"""Resume a sweep: re-running the same sweep command skips finished jobs, resumes interrupted ones, runs the rest."""

import pytest
from cli_inprocess import cli
from helpers import StopAtStep
from mlflow.tracking import MlflowClient

from bnrepro import run as run_module
from bnrepro.tracking.tags import IDENTITY_TAG, ROLE_TAG, START_TAG, SWEEP_ID_TAG

SETTINGS = (
    "trainer.max_steps=40",
    "loop.eval_every_n_steps=20",
    "loop.log_every_n_steps=10",
    "trainer.enable_progress_bar=false",
    "callbacks.checkpoint.every_n_steps=20",
)


def job_runs(store: str) -> dict[str, object]:
    """seed -> the newest job run with that seed."""
    client = MlflowClient(store)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], order_by=["attributes.start_time ASC"]
    )
    return {r.data.tags["seed"]: r for r in runs if r.data.tags[ROLE_TAG] == "job"}


def test_rerun_sweep_skips_finished_resumes_interrupted_and_runs_the_rest(store, tmp_path, capsys):
    assert cli(tmp_path / "first", "-m", "seed=0,1", *SETTINGS) == 0
    with pytest.MonkeyPatch.context() as patch:  # seed 2 is pre-empted (SIGTERM) after step 30
        patch.setattr(run_module, "GracefulStop", lambda: StopAtStep(30))
        assert cli(tmp_path / "single", "seed=2", *SETTINGS) == 143  # 128 + SIGTERM
    before = job_runs(store)
    assert before["2"].info.status == "KILLED"
    capsys.readouterr()

    assert cli(tmp_path / "again", "-m", "seed=0,1,2,3", *SETTINGS) == 0

    assert "4 jobs: 1 run, 1 resumed, 2 skipped (already finished)" in capsys.readouterr().out
    after = job_runs(store)
    assert {seed: run.data.tags[START_TAG] for seed, run in after.items()} == {
        "0": "skipped",
        "1": "skipped",
        "2": "resumed",
        "3": "fresh",
    }
    assert {seed: run.info.run_id for seed, run in after.items() if seed != "3"} == {
        seed: run.info.run_id for seed, run in before.items()
    }  # no new run for a skipped or resumed job
    assert {run.info.status for run in after.values()} == {"FINISHED"}
    assert len({run.data.tags[SWEEP_ID_TAG] for run in after.values()}) == 1  # all four belong to the new sweep
    steps = [m.step for m in MlflowClient(store).get_metric_history(after["2"].info.run_id, "train/loss")]
    assert steps == [10, 20, 30, 40]


def test_rerun_true_forces_a_new_run_of_a_finished_job(store, tmp_path, capsys):
    assert cli(tmp_path / "first", "-m", "seed=0", *SETTINGS) == 0
    assert cli(tmp_path / "forced", "-m", "seed=0", "rerun=true", *SETTINGS) == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if " jobs: " in line]
    assert "1 jobs: 1 run, 0 resumed, 0 skipped" in summary[-1]  # the forced re-run's summary
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.`{ROLE_TAG}` = 'job'")
    assert len(runs) == 2 and len({r.data.tags[IDENTITY_TAG] for r in runs}) == 1
