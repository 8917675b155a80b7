"""Resume a run: a CPU run stopped at step k and resumed ends exactly where an uninterrupted one does.

Runs are in-process (`train` with Hydra-composed configs) to stay fast; the stop is a real SIGTERM
that the process sends itself at a chosen step, handled by the same code as a pre-emption.
"""

import os
import shutil

import pytest
import torch
from conftest import compose_config, store_template
from helpers import StopAtStep
from mlflow.tracking import MlflowClient

from bnrepro import run as run_module
from bnrepro.callbacks.checkpointing import (
    FORMAT_VERSION,
    LAST,
    CheckpointError,
    checkpoint_dir,
    load_checkpoint,
    save_atomically,
)
from bnrepro.lifecycle.interruption import RunInterrupted, interruptible
from bnrepro.lifecycle.resume import ResumeError
from bnrepro.run import train
from bnrepro.tracking.job import JobInfo
from bnrepro.tracking.tags import FAILURE_TAG, OUTCOME_TAG, RESUMES_TAG, START_TAG

# Dropout draws from the torch RNG every step, so equality also proves the RNG state is restored.
SETTINGS = (
    "trainer.max_steps=60",
    "loop.eval_every_n_steps=20",
    "loop.log_every_n_steps=10",
    "trainer.enable_progress_bar=false",
    "trainer.deterministic=true",
    "callbacks.checkpoint.every_n_steps=20",
    "reg=dropout",
    "optim.momentum=0.9",
    "optim.decay_rate=0.5",
    "optim.decay_every_steps=25",
)
METRICS = ("train/loss", "val/loss", "val/acc")


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def only_run_id(client: MlflowClient) -> str:
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run.info.run_id


# Stops at steps 30 and 50 fall inside a logging interval (0-20-40-60): the partial loss sums must survive.
OFF_BOUNDARY = (*(s for s in SETTINGS if not s.startswith("loop.log_every_n_steps=")), "loop.log_every_n_steps=20")


def uninterrupted_history(folder, settings) -> dict[str, list[tuple[int, float]]]:
    """The metric histories of an uninterrupted run (in a store of its own)."""
    shutil.copyfile(store_template(), folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        train(compose_config(*settings), JobInfo(output_dir=str(folder / "run")))
    client = MlflowClient(uri)
    run_id = only_run_id(client)
    return {key: history(client, run_id, key) for key in METRICS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, list[tuple[int, float]]]:
    """Shared by this module's tests."""
    return uninterrupted_history(tmp_path_factory.mktemp("reference"), SETTINGS)


def interrupted_run(tmp_path, step: int, action: str, settings=SETTINGS, folder: str = "interrupted") -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "GracefulStop", lambda: StopAtStep(step, action))
        with interruptible(), pytest.raises(RuntimeError if action == "crash" else RunInterrupted):
            train(compose_config(*settings), JobInfo(output_dir=str(tmp_path / folder)))


def test_sigterm_at_step_k_then_resume_ends_exactly_like_an_uninterrupted_run(store, tmp_path, reference):
    expected = reference
    client = MlflowClient(store)
    interrupted_run(tmp_path, step=30, action="sigterm")
    run_id = only_run_id(client)
    stopped = client.get_run(run_id)
    assert stopped.info.status == "KILLED" and stopped.data.tags[OUTCOME_TAG] == "interrupted"
    assert "SIGTERM at step 30" in stopped.data.tags[FAILURE_TAG]  # the step boundary after the signal
    assert load_checkpoint(checkpoint_dir(tmp_path / "interrupted") / LAST)["global_step"] == 30

    final = train(compose_config(*SETTINGS, f"resume={run_id}"), JobInfo(output_dir=str(tmp_path / "resumed")))

    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags[START_TAG] == "resumed"
    assert resumed.data.tags[RESUMES_TAG] == "1"
    assert {key: history(client, run_id, key) for key in METRICS} == expected  # every value, exactly
    assert final["val/acc"] == expected["val/acc"][-1][1]


def test_crash_after_checkpoint_resumes_without_duplicating_logged_steps(store, tmp_path, reference):
    expected = reference
    client = MlflowClient(store)
    interrupted_run(tmp_path, step=50, action="crash")  # last checkpoint: step 40
    run_id = only_run_id(client)
    assert client.get_run(run_id).info.status == "FAILED"
    assert history(client, run_id, "train/loss")[-1][0] == 50  # steps 41..50 reached the store

    train(compose_config(*SETTINGS, "resume=" + str(tmp_path / "interrupted")), JobInfo(output_dir=str(tmp_path / "r")))

    assert client.get_run(run_id).info.status == "FINISHED"
    assert {key: history(client, run_id, key) for key in METRICS} == expected  # no step logged twice


def test_resume_with_a_different_configuration_names_the_differing_key(store, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "GracefulStop", lambda: StopAtStep(20))
    with interruptible(), pytest.raises(RunInterrupted):
        train(compose_config(*SETTINGS), JobInfo(output_dir=str(tmp_path / "a")))
    with pytest.raises(ResumeError, match=r"optim.lr_multiplier: 1.0 -> 5"):
        train(
            compose_config(*SETTINGS, "optim=lr_x5", f"resume={tmp_path / 'a'}"),
            JobInfo(output_dir=str(tmp_path / "b")),
        )


def test_checkpoint_write_failure_keeps_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoints" / LAST
    save_atomically({"format": FORMAT_VERSION, "global_step": 20, "weights": torch.ones(3)}, path)

    def disk_full(obj, file, *args, **kwargs):
        file.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", disk_full)
        with pytest.raises(CheckpointError, match=r"No space left on device.*previous checkpoint there is intact"):
            save_atomically({"format": FORMAT_VERSION, "global_step": 40, "weights": torch.zeros(3)}, path)
    assert load_checkpoint(path)["global_step"] == 20
    assert [p.name for p in path.parent.iterdir()] == [LAST]  # no temporary file left behind


def test_checkpoints_refuse_to_unpickle_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"format": FORMAT_VERSION, "payload": os.system}, path)  # pickle would import os.system
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_stops_inside_logging_intervals_then_resumes_log_exactly_the_uninterrupted_history(
    store, tmp_path, tmp_path_factory
):
    expected = uninterrupted_history(tmp_path_factory.mktemp("reference_off_boundary"), OFF_BOUNDARY)
    client = MlflowClient(store)
    interrupted_run(tmp_path, step=30, action="sigterm", settings=OFF_BOUNDARY, folder="first")
    run_id = only_run_id(client)
    interrupted_run(tmp_path, step=50, action="sigterm", settings=(*OFF_BOUNDARY, f"resume={run_id}"), folder="second")

    train(compose_config(*OFF_BOUNDARY, f"resume={run_id}"), JobInfo(output_dir=str(tmp_path / "third")))

    assert client.get_run(run_id).data.tags[RESUMES_TAG] == "2"
    assert {key: history(client, run_id, key) for key in METRICS} == expected  # train/loss at 40 and 60 too


def test_a_resumed_run_that_finishes_keeps_no_failure_reason(store, tmp_path):
    client = MlflowClient(store)
    interrupted_run(tmp_path, step=30, action="sigterm")
    run_id = only_run_id(client)

    train(compose_config(*SETTINGS, f"resume={run_id}"), JobInfo(output_dir=str(tmp_path / "resumed")))

    assert FAILURE_TAG not in client.get_run(run_id).data.tags


def test_resuming_a_finished_run_by_directory_skips_it_as_by_run_id(store, tmp_path):
    client = MlflowClient(store)
    train(compose_config(*SETTINGS), JobInfo(output_dir=str(tmp_path / "done")))

    train(compose_config(*SETTINGS, f"resume={tmp_path / 'done'}"), JobInfo(output_dir=str(tmp_path / "again")))

    tags = client.get_run(only_run_id(client)).data.tags
    assert tags[START_TAG] == "skipped" and RESUMES_TAG not in tags


def test_resuming_a_run_whose_folder_was_moved_says_so(store, tmp_path):
    client = MlflowClient(store)
    interrupted_run(tmp_path, step=30, action="sigterm")
    (tmp_path / "interrupted").rename(tmp_path / "moved")

    with pytest.raises(ResumeError, match=r"output directory .*interrupted no longer exists; if it was moved"):
        train(compose_config(*SETTINGS, f"resume={only_run_id(client)}"), JobInfo(output_dir=str(tmp_path / "r")))


def test_resume_auto_continues_the_unfinished_run_that_got_furthest_not_the_newest(store, tmp_path):
    client = MlflowClient(store)
    interrupted_run(tmp_path, step=40, action="sigterm", folder="further")
    (further,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    interrupted_run(tmp_path, step=20, action="sigterm", settings=(*SETTINGS, "rerun=true"), folder="newer")

    train(compose_config(*SETTINGS, "resume=auto"), JobInfo(output_dir=str(tmp_path / "auto")))

    assert client.get_run(further.info.run_id).data.tags.get(RESUMES_TAG) == "1"
