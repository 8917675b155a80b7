"""Typed schemas for every config group, registered with Hydra, and start-up validation.

Each YAML option under ``conf/<group>/`` extends the schema registered here for its group, so an
unknown key or a value of the wrong type fails while Hydra composes the config, before anything
runs. `validate` then checks ranges and cross-group rules that types cannot express; it raises
`ConfigError` with one line that names the key and the fix.
"""

import dataclasses
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


# --- model -------------------------------------------------------------------------------------
@dataclass
class MLPNet:
    _target_: str = "bnrepro.models.mlp.MLP"  # num_classes comes from the data module
    in_features: int = 784
    widths: list[int] = field(default_factory=lambda: [100, 100, 100])
    norm: str = "${norm.kind}"
    activation: str = "sigmoid"
    dropout: float = "${reg.dropout}"  # type: ignore[assignment]
    init_std: float = 0.1


@dataclass
class ModelConfig:
    name: str = MISSING
    base_lr: float = MISSING  # the learning rate that optim=baseline uses; lr_x5 / lr_x30 multiply it
    net: Any = MISSING


@dataclass
class MLPModel(ModelConfig):
    net: MLPNet = field(default_factory=MLPNet)


@dataclass
class InceptionNet:
    """BN-Inception of the paper's appendix (Figure 5); see bnrepro.models.inception_bn for each option."""

    _target_: str = "bnrepro.models.inception_bn.BNInception"  # num_classes comes from the data module
    norm: str = "${norm.kind}"
    activation: str = "relu"  # "relu" | "sigmoid" (BN-x5-Sigmoid, Sec. 4.2.2)
    dropout: float = "${reg.dropout}"  # type: ignore[assignment]
    lrn: bool = False  # GoogLeNet's local response normalization (the Inception baseline; Sec. 4.2.1 removes it)
    separable_stem: bool = False  # Figure 5's "separable with depth multiplier 8" first convolution
    width_multiplier: float = 1.0  # scales every conv's channels (proxy runs on CPU)
    channel_reading: str = "branches"  # "branches" | "outputs": two readings of Figure 5's channel counts
    in_channels: int = 3


@dataclass
class InceptionModel(ModelConfig):
    net: InceptionNet = field(default_factory=InceptionNet)


# --- norm, optim, reg --------------------------------------------------------------------------
@dataclass
class NormConfig:
    kind: str = MISSING  # "bn" | "none"
    sync: bool = True  # under DDP, BN statistics over the global batch (all ranks); no effect on one process


@dataclass
class OptimConfig:
    lr_multiplier: float = 1.0
    lr: float = "${mul:${model.base_lr},${optim.lr_multiplier}}"  # type: ignore[assignment]
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    decay_rate: float = 1.0
    decay_every_steps: int = 0  # 0: constant learning rate


@dataclass
class RegConfig:
    dropout: float = 0.0


# --- data --------------------------------------------------------------------------------------
@dataclass
class InMemoryData:
    _target_: str = MISSING
    batch_size: int = 60  # per device
    eval_batch_size: int = 2000
    steps_per_batch: int = 10  # optimizer steps per Trainer batch (amortizes the Trainer's overhead)
    binarize: bool = False
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class MNISTData(InMemoryData):
    _target_: str = "bnrepro.data.mnist.MNISTDataModule"
    data_dir: str = "data"
    download: bool = True


@dataclass
class MNISTMiniData(InMemoryData):
    _target_: str = "bnrepro.data.mnist.MNISTMiniDataModule"
    test_fraction: float = 0.2
    split_seed: int = 0


@dataclass
class FashionMNISTData(InMemoryData):
    """Fashion-MNIST as (channels, image_size, image_size) images: the BN-Inception proxy's data."""

    _target_: str = "bnrepro.data.fashion_mnist.FashionMNISTDataModule"
    data_dir: str = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package
    image_size: int = 32
    channels: int = 1
    standardize: bool = True
    test_size: Optional[int] = None  # evaluate on the first N test images (None: all 10,000)


@dataclass
class ImageBatchData:
    """What every DataLoader-fed image data module takes: one optimizer step per batch."""

    _target_: str = MISSING
    image_size: int = 224
    batch_size: int = 32  # per device: the paper's 32 per replica
    eval_batch_size: Optional[int] = None  # None: batch_size
    num_workers: int = 8
    pin_memory: bool = True
    channels_last: bool = False
    drop_last: bool = True


@dataclass
class ImageNetData(ImageBatchData):
    """ILSVRC-2012 from data_dir/{train,val}/<wnid>/*.JPEG (Sec. 4.2)."""

    _target_: str = "bnrepro.data.imagenet.ImageNetDataModule"
    data_dir: str = "data/imagenet"
    photometric: str = "full"  # "full" | "reduced" (Sec. 4.2.1) | "none"
    on_corrupt: str = "fail"  # "fail" | "skip"


@dataclass
class FakeImageNetData(ImageBatchData):
    """Synthetic ImageNet-shaped tensors, same batch format as ImageNetData: pipeline tests and benchmarks."""

    _target_: str = "bnrepro.data.imagenet.FakeImageNetDataModule"
    num_classes: int = 1000
    train_size: int = 10_000
    val_size: int = 1_000
    num_workers: int = 0
    pin_memory: bool = False
    seed: int = "${seed}"  # type: ignore[assignment]
    class_signal: float = 1.0


# --- trainer, logger ---------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 50_000
    eval_every_n_steps: int = 500
    log_every_n_steps: int = 100
    deterministic: bool = False
    enable_progress_bar: bool = True
    # torch.compile the network in place (state_dict keys unchanged): a one-off compile of tens of
    # seconds; no faster for the MNIST net on CPU; `make bench` compares it with eager on CUDA.
    compile: bool = False


@dataclass
class LoggerConfig:
    kind: str = MISSING  # "mlflow" | "none"
    tracking_uri: Optional[str] = None  # MLFLOW_TRACKING_URI wins; default: sqlite under outputs/
    experiment_name: str = "bnrepro"
    heartbeat_seconds: float = 60.0  # how often a running job refreshes its run's bnrepro.heartbeat tag (0: never)
    stale_after_seconds: float = 600.0  # a RUNNING run silent this long is marked FAILED ("lost") at the next start


@dataclass
class TrainConfig:
    seed: int = 0
    sweep_name: Optional[str] = None  # names a multirun's parent run (set by the files in sweeps/)
    model: ModelConfig = MISSING
    norm: NormConfig = MISSING
    optim: OptimConfig = MISSING
    reg: RegConfig = MISSING
    data: Any = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    # Lightning callbacks by name, each a `_target_` node (null disables one): conf/callbacks/.
    callbacks: dict[str, Any] = field(default_factory=dict)
    # Where to continue from: a run id, a run's output directory, or "auto" (the checkpoint of an
    # unfinished run with this job's identity; skip if one already FINISHED). null: "auto" for the
    # jobs of a multirun, a fresh run otherwise. See bnrepro.resume.
    resume: Optional[str] = None
    rerun: bool = False  # true: always start a fresh run, even if an identical one finished or can be resumed


SCHEMAS: dict[str, dict[str, Any]] = {
    "model": {"mlp": MLPModel, "inception_bn": InceptionModel},
    "norm": {"norm": NormConfig},
    "optim": {"optim": OptimConfig},
    "reg": {"reg": RegConfig},
    "data": {
        "mnist": MNISTData,
        "mnist_mini": MNISTMiniData,
        "fashion_mnist": FashionMNISTData,
        "imagenet": ImageNetData,
        "fake_imagenet": FakeImageNetData,
    },
    "trainer": {"trainer": TrainerConfig},
    "logger": {"logger": LoggerConfig},
}


def register_configs() -> None:
    """Store the schemas as `schema/<group>/<name>`; YAML options extend them in their defaults list."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: float(a) * float(b))


# --- ranges and cross-group rules --------------------------------------------------------------
def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Reject values that compose but cannot run, before any data is loaded."""
    _reject_unknown_keys(cfg)
    _require(cfg.model.base_lr > 0, f"model.base_lr must be > 0, got {cfg.model.base_lr}")
    _require(cfg.optim.lr_multiplier > 0, f"optim.lr_multiplier must be > 0, got {cfg.optim.lr_multiplier}")
    _require(0 <= cfg.optim.momentum < 1, f"optim.momentum must be in [0, 1), got {cfg.optim.momentum}")
    _require(cfg.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay}")
    _require(0 < cfg.optim.decay_rate <= 1, f"optim.decay_rate must be in (0, 1], got {cfg.optim.decay_rate}")
    _require(cfg.optim.decay_every_steps >= 0, "optim.decay_every_steps must be >= 0 (0 = constant lr)")
    _require(0 <= cfg.reg.dropout < 1, f"reg.dropout must be in [0, 1), got {cfg.reg.dropout}")
    _require(cfg.norm.kind in ("bn", "none"), f"norm.kind must be 'bn' or 'none', got {cfg.norm.kind!r}")
    _require(cfg.logger.kind in ("mlflow", "none"), f"logger.kind must be 'mlflow' or 'none', got {cfg.logger.kind!r}")
    _validate_schedule(cfg)
    _validate_option_values(cfg)
    _validate_reliability(cfg)
    _require(cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}")
    _require(
        cfg.norm.kind != "bn" or cfg.data.batch_size > 1,
        "data.batch_size=1 cannot train with norm=bn: batch statistics need at least 2 examples "
        "(Sec. 3.1); use a larger batch or norm=none",
    )


def _validate_reliability(cfg: DictConfig) -> None:
    """Checkpoint interval, divergence bound, heartbeat and resume settings (bnrepro.resume)."""
    chunk = cfg.data.get("steps_per_batch", 1)
    checkpoint = cfg.callbacks.get("checkpoint")
    if checkpoint is not None:
        every = checkpoint.get("every_n_steps", 0)
        _require(
            isinstance(every, int) and every >= 0 and every % chunk == 0,
            f"callbacks.checkpoint.every_n_steps={every} must be 0 or a positive multiple of "
            f"data.steps_per_batch={chunk} so checkpoints land on exact optimizer steps",
        )
    divergence = cfg.callbacks.get("divergence")
    if divergence is not None and divergence.get("max_loss") is not None:
        bound = divergence.max_loss
        _require(bound > 0, f"callbacks.divergence.max_loss must be > 0 or null (no bound), got {bound}")
    beat, stale = cfg.logger.heartbeat_seconds, cfg.logger.stale_after_seconds
    _require(beat >= 0 and stale >= 0, f"logger.heartbeat_seconds and logger.stale_after_seconds must be >= 0, got {beat} and {stale}")
    _require(
        stale == 0 or 0 < beat < stale,
        f"logger.stale_after_seconds={stale} must exceed logger.heartbeat_seconds={beat} > 0, or be 0 "
        "(never mark silent runs lost): a run without heartbeats would be marked lost while it trains",
    )
    resume = cfg.get("resume")
    _require(
        not (cfg.rerun and resume not in (None, "auto")),
        f"rerun=true starts a fresh run but resume={resume} asks to continue one: drop one of the two",
    )
    _require(
        resume is None or resume == "auto" or checkpoint is not None,
        "resume needs checkpoints, but callbacks.checkpoint is null: remove that override",
    )


def _reject_unknown_keys(node: DictConfig, path: str = "") -> None:
    """Keys appended with `+key=value` bypass Hydra's struct check; every schema-typed node is checked here."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = {f.name for f in dataclasses.fields(schema)}
        unknown = sorted(set(node.keys()) - known)
        _require(
            not unknown,
            f"unknown key {path}{unknown[0] if unknown else ''} (not in {schema.__name__}; "
            f"known keys: {', '.join(sorted(known - {'_target_'}))})",
        )
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _reject_unknown_keys(child, f"{path}{key}.")


# Keys that only some group options have (BN-Inception, ImageNet): checked where present.
ALLOWED_VALUES = {
    "model.net.activation": ("relu", "sigmoid"),
    "model.net.channel_reading": ("branches", "outputs"),
    "data.photometric": ("full", "reduced", "none"),
    "data.on_corrupt": ("fail", "skip"),
}


def _validate_option_values(cfg: DictConfig) -> None:
    for key, allowed in ALLOWED_VALUES.items():
        value = OmegaConf.select(cfg, key, default=None)
        _require(value is None or value in allowed, f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    width = OmegaConf.select(cfg, "model.net.width_multiplier", default=None)
    _require(width is None or width > 0, f"model.net.width_multiplier must be > 0, got {width}")


def _validate_schedule(cfg: DictConfig) -> None:
    trainer, chunk = cfg.trainer, cfg.data.get("steps_per_batch", 1)
    _require(trainer.max_steps > 0, f"trainer.max_steps must be > 0, got {trainer.max_steps}")
    _require(chunk >= 1, f"data.steps_per_batch must be >= 1, got {chunk}")
    for key in ("eval_every_n_steps", "log_every_n_steps"):
        value = trainer[key]
        _require(
            value > 0 and value % chunk == 0,
            f"trainer.{key}={value} must be a positive multiple of data.steps_per_batch={chunk} "
            "so evaluation and logging land on exact optimizer steps",
        )


def flatten(config: Mapping[str, Any], leaf: Callable[[Any], str] = str, prefix: str = "") -> dict[str, str]:
    """A resolved config as dotted keys -> `leaf(value)` (lists are leaves, kept whole)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, leaf, f"{dotted}."))
        else:
            flat[dotted] = leaf(value)
    return flat
