"""Values that compose but cannot run (issue 16, item 7): each fails with one line naming the key and
the fix, exit code 2, through train.py's real command-line path (in-process, cli_inprocess).

`bnrepro.config.validate` rejects all but two before a run exists: a batch larger than the training
split needs the data (the data module says so when training asks for batches: the run ends FAILED),
and a GPU accelerator without a GPU depends on the machine (`validate_machine`).
"""

import os
import subprocess
import sys

import pytest
from cli_inprocess import cli
from conftest import CONF, QUICK, compose_config
from mlflow.tracking import MlflowClient

from bnrepro.config import ConfigError, validate, validate_machine

SHORT = ("trainer.max_steps=20", *QUICK)

# (override, the key the message must start with)
REJECTED_BEFORE_ANY_RUN = [
    ("seed=-1", "seed must be in [0, 4294967295]"),
    ("seed=4294967296", "seed must be in [0, 4294967295]"),
    ("data.eval_batch_size=0", "data.eval_batch_size must be >= 1"),
    ("model.net.widths=[]", "model.net.widths must list at least one hidden layer"),
    ("model.net.widths=[0]", "model.net.widths must list at least one hidden layer"),
    ("model.net.init_std=-1", "model.net.init_std must be > 0"),
    ("data.test_fraction=0", "data.test_fraction must be in (0, 1)"),
    ("data.test_fraction=1.5", "data.test_fraction must be in (0, 1)"),
    ("trainer.devices=0", "trainer.devices must be >= 1"),
    ("trainer.precision=foo", "trainer.precision=foo is not a Lightning precision"),
]


def recorded_runs() -> list:
    """Every run in the test's store (the `store` fixture selects it through MLFLOW_TRACKING_URI)."""
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def only_error_line(stderr: str) -> str:
    """The message of bnrepro's one-line error, asserting there is exactly one and nothing after it."""
    errors = [line for line in stderr.splitlines() if line.startswith("bnrepro: error: ")]
    assert errors == [stderr.strip().splitlines()[-1]], stderr[-2000:]
    return errors[0].removeprefix("bnrepro: error: ")


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize(("override", "message"), REJECTED_BEFORE_ANY_RUN, ids=[c[0] for c in REJECTED_BEFORE_ANY_RUN])
def test_a_value_that_cannot_run_exits_2_with_one_line_before_any_run(override, message, tmp_path, capsys):
    assert cli(tmp_path, *SHORT, override) == 2
    assert only_error_line(capsys.readouterr().err).startswith(message)
    assert recorded_runs() == []


def test_every_lightning_precision_passes_validation():
    for precision in ("32-true", "16-mixed", "bf16-mixed", "64-true", "32"):
        validate(compose_config(f"trainer.precision={precision}"))


@pytest.mark.parametrize("devices", ["-1", "auto", "[0]", "2"])
def test_lightning_device_counts_pass_validation(devices):
    validate(compose_config(f"trainer.devices={devices}"))


@pytest.mark.usefixtures("store")
def test_a_batch_larger_than_the_training_split_exits_2_with_one_line_and_no_successful_run(tmp_path, capsys):
    assert cli(tmp_path, *SHORT, "data.batch_size=100000") == 2
    message = only_error_line(capsys.readouterr().err)
    # data=mnist_mini: 5,000 digits, 20 % held out for testing
    assert message.startswith("data.batch_size=100000 is larger than the training split's 4000 examples")
    assert message.endswith("use data.batch_size <= 4000")
    assert recorded_runs() == []  # checked once the data is read, before a run is recorded


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_accelerator_on_a_machine_without_one_is_a_config_error(accelerator, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=f"trainer.accelerator={accelerator} but this machine has no CUDA GPU"):
        validate_machine(compose_config("trainer=gpu", f"trainer.accelerator={accelerator}"))


def test_a_cpu_accelerator_never_asks_for_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("checked for a GPU on trainer=cpu"))
    validate_machine(compose_config("trainer=cpu"))


def test_composing_and_validating_a_cpu_config_does_not_import_torch():
    code = (
        "import sys; from hydra import compose, initialize_config_dir; "
        "from bnrepro.config import register_configs, validate, validate_machine; register_configs(); "
        f"initialize_config_dir(config_dir={str(CONF)!r}, version_base='1.3'); cfg = compose('config'); "
        "validate(cfg); validate_machine(cfg); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"


def test_a_dataloader_fed_module_names_the_batch_larger_than_its_training_set():
    from bnrepro.data.errors import DatasetError
    from bnrepro.data.imagenet import FakeImageNetDataModule

    datamodule = FakeImageNetDataModule(num_classes=2, image_size=8, train_size=16, val_size=4, batch_size=32)
    datamodule.setup()
    with pytest.raises(DatasetError, match=r"data.batch_size=32 is larger than the training split's 16 examples"):
        datamodule.train_dataloader()  # drop_last would give an epoch without a single batch
