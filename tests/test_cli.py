"""`python train.py` as users run it: a multirun's grouping in MLflow, and bad input's one clear message."""

from conftest import QUICK, run_train
from mlflow.tracking import MlflowClient

from bnrepro.tracking.tags import PARENT_TAG, ROLE_TAG, SWEEP_ID_TAG


def all_runs(store: str) -> list:
    client = MlflowClient(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_sweep_of_four_jobs_gives_four_tagged_runs_under_one_parent(store, tmp_path):
    result = run_train(tmp_path, "norm=bn,none", "optim=lr_x5,lr_x30", "trainer.max_steps=20", *QUICK, multirun=True)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = all_runs(store)
    jobs = [r for r in runs if r.data.tags[ROLE_TAG] == "job"]
    (parent,) = [r for r in runs if r.data.tags[ROLE_TAG] == "sweep"]
    assert len(jobs) == 4 and parent.info.status == "FINISHED"
    assert {(r.data.tags["norm"], r.data.tags["optim"]) for r in jobs} == {
        ("bn", "lr_x5"),
        ("bn", "lr_x30"),
        ("none", "lr_x5"),
        ("none", "lr_x30"),
    }
    assert {r.data.tags[PARENT_TAG] for r in jobs} == {parent.info.run_id}
    assert {r.data.tags[SWEEP_ID_TAG] for r in jobs} == {parent.data.tags[SWEEP_ID_TAG]}
    base_lr = float(jobs[0].data.params["model.base_lr"])
    assert {r.data.params["optim.lr"] for r in jobs} == {str(base_lr * 5), str(base_lr * 30)}
    assert len({r.data.tags["bnrepro.output_dir"] for r in jobs}) == 4
    assert len([d for d in (tmp_path / "sweep").iterdir() if d.is_dir()]) == 4


def test_unknown_group_option_shows_hydras_list_of_options(store, tmp_path):
    result = run_train(tmp_path, "optim=lr_x7")
    assert result.returncode != 0
    assert "Could not find 'optim/lr_x7'" in result.stderr and "lr_x30" in result.stderr
    assert all_runs(store) == []


def test_wrong_type_fails_before_anything_is_tracked(store, tmp_path):
    result = run_train(tmp_path, "trainer.max_steps=many")
    assert result.returncode != 0 and "trainer.max_steps" in result.stderr
    assert all_runs(store) == []


def test_negative_learning_rate_is_one_line_and_exit_code_2(store, tmp_path):
    result = run_train(tmp_path, "model.base_lr=-0.5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "bnrepro: error: model.base_lr must be > 0, got -0.5"
    assert all_runs(store) == []


def test_missing_mnist_offline_is_one_line_and_records_nothing(store, tmp_path):
    result = run_train(tmp_path, "data=mnist", f"data.data_dir={tmp_path}/absent", "data.download=false")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bnrepro: error: MNIST is not readable under") and "data=mnist_mini" in last
    assert all_runs(store) == []
