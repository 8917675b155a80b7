"""What a job's run records besides its metrics, as Lightning callbacks: its data splits as MLflow dataset
inputs (the UI's "Datasets" column: name, size, a digest of the tensors, the split's seed), and optionally
MLflow's system metrics while it trains and its best network as an MLflow model."""

import copy
import hashlib
import json
import math
import tempfile

from lightning.pytorch.callbacks import Callback

from bnrepro.data.in_memory import InMemoryDataModule, Split

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag for what a dataset was used for
DIGEST_LENGTH = 16  # hex characters (MLflow keeps at most 36)


def split_digest(split: Split) -> str:
    """A digest of the split's exact contents: inputs and targets, bytes and shapes."""
    digest = hashlib.sha256()
    for tensor in (split.inputs, split.targets):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:DIGEST_LENGTH]


def dataset_input(name: str, split: Split, context: str, source: dict, seed: int | None):
    """The MLflow entity of one split, tagged with its context (train / eval); `seed` drew the split (None: a
    fixed split, e.g. MNIST's official one)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = {"num_rows": len(split), "split_seed": seed, "input_shape": list(split.inputs.shape[1:])}
    dataset = Dataset(
        name=f"{name}/{context}",
        digest=split_digest(split),
        source_type="bnrepro",
        source=json.dumps(source, sort_keys=True),
        schema=json.dumps({"inputs": str(split.inputs.dtype), "targets": str(split.targets.dtype)}),
        profile=json.dumps(profile, sort_keys=True),
    )
    return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, context)])


class DatasetInputs(Callback):
    """Logs the train and evaluation splits of an in-memory data module to one MLflow run at the start of fit.

    (A data module that streams files from disk, e.g. ImageNet, is not digested: reading every file to
    hash it would cost an epoch.)"""

    def __init__(self, client, run_id: str, name: str, source: dict):
        self.client, self.run_id, self.name, self.source = client, run_id, name, source

    def on_fit_start(self, trainer, pl_module) -> None:
        data = trainer.datamodule
        if not isinstance(data, InMemoryDataModule) or data.train_split is None:
            return
        splits = (("train", data.train_split), ("eval", data.test_split))
        seed = getattr(data, "split_seed", None)  # (only a data module that splits a set itself draws it)
        inputs = [dataset_input(self.name, split, context, self.source, seed) for context, split in splits]
        self.client.log_inputs(self.run_id, datasets=inputs)


class SystemMetrics(Callback):
    """MLflow's system-metrics monitor (CPU, memory, disk, network, GPU; needs psutil) over this run while
    it fits: `client.create_run` has no `log_system_metrics` switch, so the monitor is started here."""

    def __init__(self, run_id: str, tracking_uri: str):
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self._monitor = None

    def on_fit_start(self, trainer, pl_module) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=True, tracking_uri=self.tracking_uri)
        self._monitor.start()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None


MODEL_STEP_TAG = "bnrepro.model_step"  # the step whose network the run's MLflow model holds
MODEL_ARTIFACT = "model"


class BestNetwork(Callback):
    """logger.log_model=best: keeps the network of the evaluation with the highest `monitor` (CPU copies of its
    weights) and, when training ends, logs it as the run's MLflow model (artifact `model/`, loadable with
    `mlflow.pytorch.load_model(f"runs:/{run_id}/model")`). The model is written with `mlflow.pytorch.save_model`
    to a temporary folder and uploaded with the client: `mlflow.pytorch.log_model` (MLflow 3) works only on
    the fluent API's active run, which this project never starts."""

    def __init__(self, client, run_id: str, monitor: str = "val/acc"):
        self.client, self.run_id, self.monitor = client, run_id, monitor
        self.best: tuple[float, int, dict] | None = None  # (score, step, weights)

    def on_validation_end(self, trainer, pl_module) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or not trainer.is_global_zero or score is None or not math.isfinite(score):
            return
        if self.best is None or float(score) > self.best[0]:
            weights = {key: value.detach().cpu().clone() for key, value in pl_module.net.state_dict().items()}
            self.best = (float(score), trainer.global_step, weights)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.best is None or not trainer.is_global_zero:
            return
        import mlflow.pytorch
        import torch

        score, step, weights = self.best
        network = copy.deepcopy(pl_module.net).cpu()
        network.load_state_dict(weights)
        with tempfile.TemporaryDirectory() as folder:
            # Listing the requirement skips MLflow's inference of the environment (seconds of import scanning).
            # "pickle" keeps the nn.Module as it is (its class: bnrepro.models.*) and needs no example input;
            # MLflow 3's default, "pt2", traces the network and needs one.
            requirements = [f"torch=={torch.__version__}"]
            path = f"{folder}/{MODEL_ARTIFACT}"
            mlflow.pytorch.save_model(network, path, pip_requirements=requirements, serialization_format="pickle")
            self.client.log_artifacts(self.run_id, path, MODEL_ARTIFACT)
        self.client.set_tag(self.run_id, MODEL_STEP_TAG, str(step))
