"""Divergence is a result (Sec. 4.2.1): the run stops at once, is tagged, and a sweep carries on."""

from cli_inprocess import cli
from conftest import QUICK, compose_config
from mlflow.tracking import MlflowClient

from bnrepro.run import train
from bnrepro.tracking.job import JobInfo
from bnrepro.tracking.tags import DIVERGED_STEP_TAG, FAILURE_TAG, OUTCOME_TAG, ROLE_TAG

# ReLU units without BN at this learning rate overflow float32 within the first chunk: the loss is NaN/Inf.
EXPLODING = ("model.net.activation=relu", "model.base_lr=1e12")


def runs(store: str) -> list:
    client = MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_nan_loss_stops_the_run_at_once_finished_with_outcome_diverged(store):
    final = train(compose_config("norm=none", *EXPLODING, "trainer.max_steps=200", *QUICK), JobInfo())
    (run,) = runs(store)
    step = int(run.data.tags[DIVERGED_STEP_TAG])
    assert run.info.status == "FINISHED" and run.data.tags[OUTCOME_TAG] == "diverged"
    assert step < 200 and final == {"diverged_step": float(step)}
    assert "not finite" in run.data.tags[FAILURE_TAG]
    losses = MlflowClient(store).get_metric_history(run.info.run_id, "train/loss")
    assert all(point.step <= step for point in losses)  # nothing trained after the divergence


def test_loss_above_the_configured_bound_counts_as_diverged(store):
    # A fresh 10-class network starts near ln(10) = 2.3, far above the bound: the first chunk stops it.
    train(compose_config("callbacks.divergence.max_loss=0.01", "trainer.max_steps=100", *QUICK), JobInfo())
    (run,) = runs(store)
    assert run.data.tags[OUTCOME_TAG] == "diverged" and run.data.tags[DIVERGED_STEP_TAG] == "10"
    assert "above the bound 0.01" in run.data.tags[FAILURE_TAG]


def test_a_diverging_job_does_not_stop_its_sweep(store, tmp_path, capsys):
    code = cli(
        tmp_path,
        "-m",
        "norm=none",
        "model.net.activation=relu",
        "model.base_lr=0.5,1e12",
        "trainer.max_steps=30",
        *QUICK,
    )
    assert code == 0
    jobs = [r for r in runs(store) if r.data.tags[ROLE_TAG] == "job"]
    (parent,) = [r for r in runs(store) if r.data.tags[ROLE_TAG] == "sweep"]
    assert sorted(r.data.tags[OUTCOME_TAG] for r in jobs) == ["completed", "diverged"]
    assert {r.info.status for r in jobs} == {"FINISHED"} and parent.info.status == "FINISHED"
    assert "2 jobs: 2 run, 0 resumed, 0 skipped (already finished); 1 diverged" in capsys.readouterr().out


def test_a_non_finite_parameter_with_a_finite_loss_is_divergence_caused_by_the_parameters(store):
    # The overflow is injected before the divergence check of the same chunk runs (callbacks run in order).
    overrides = (
        "callbacks.divergence=null",
        "+callbacks.overflow={_target_:tests.helpers.OverflowParameterAt,step:20}",
        "+callbacks.divergence_check={_target_:bnrepro.callbacks.divergence.DivergenceStop}",
    )
    train(compose_config(*overrides, "trainer.max_steps=100", *QUICK), JobInfo())
    (run,) = runs(store)
    assert run.data.tags[OUTCOME_TAG] == "diverged" and run.data.tags[DIVERGED_STEP_TAG] == "20"
    assert "a parameter is not finite" in run.data.tags[FAILURE_TAG]
