"""The paper's Figure 3 configurations (Sec. 4.2) as experiments: each composes to the paper's recipe,
trains a few steps on small fake ImageNet, and has a CPU proxy that trains on (tiny) Fashion-MNIST files."""

import functools
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bnrepro.config import validate
from bnrepro.module import Classifier
from bnrepro.run import train
from bnrepro.tracking.job import JobInfo
from tests.helpers import write_fashion_mnist

FIGURE3 = ("inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid")
EXTRA_RUNS = ("inception_x5", "inception_sigmoid")  # the paper's diverging and non-training runs
EXPERIMENTS = FIGURE3 + EXTRA_RUNS
# The proxy's Sec. 4.2.1 ablations: BN-x5 with one of its changes undone
ABLATIONS = ("bn_x5_with_dropout", "bn_x5_full_l2", "bn_x5_slow_decay", "bn_x5_with_lrn", "bn_x5_batch_shuffle")
SWEEPS = ROOT / "sweeps"
CONF = ROOT / "conf"

# The paper's recipes: (norm, lr, dropout, lrn, activation, photometric, weight decay, decay every n steps)
BASELINE_WD, BASELINE_DECAY = 4e-5, 320_292  # 8 epochs of 1,281,167 images at batch 32, one replica
ACCELERATED = dict(weight_decay=BASELINE_WD / 5, decay_every_steps=BASELINE_DECAY // 6)
BASELINE = dict(weight_decay=BASELINE_WD, decay_every_steps=BASELINE_DECAY)
RECIPES = {
    "inception": dict(norm="none", lr=0.0015, dropout=0.4, lrn=True, activation="relu", photometric="full", **BASELINE),
    "bn_baseline": dict(norm="bn", lr=0.0015, dropout=0.4, lrn=True, activation="relu", photometric="full", **BASELINE),
    "bn_x5": dict(
        norm="bn", lr=0.0075, dropout=0.0, lrn=False, activation="relu", photometric="reduced", **ACCELERATED
    ),
    "bn_x30": dict(
        norm="bn", lr=0.045, dropout=0.0, lrn=False, activation="relu", photometric="reduced", **ACCELERATED
    ),
    "bn_x5_sigmoid": dict(
        norm="bn", lr=0.0075, dropout=0.0, lrn=False, activation="sigmoid", photometric="reduced", **ACCELERATED
    ),
    "inception_x5": dict(
        norm="none", lr=0.0075, dropout=0.4, lrn=True, activation="relu", photometric="full", **BASELINE
    ),
    "inception_sigmoid": dict(
        norm="none", lr=0.0015, dropout=0.4, lrn=True, activation="sigmoid", photometric="full", **BASELINE
    ),
}

SMALL_FAKE_IMAGENET = (
    "data=fake_imagenet",
    "data.image_size=32",
    "data.num_classes=10",
    "data.train_size=16",
    "data.val_size=8",
    "data.batch_size=4",
    "model.net.width_multiplier=0.125",
    "trainer=cpu",
    "logger=none",
    "trainer.max_steps=2",
    "loop.eval_every_n_steps=2",
    "loop.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
)


@functools.cache
def composed(*overrides: str):
    """compose_config, cached: tests only read the configs they share."""
    return compose_config(*overrides)


def recipe_of(cfg) -> dict:
    return dict(
        norm=cfg.norm.kind,
        lr=pytest.approx(cfg.optim.lr),
        dropout=cfg.model.net.dropout,
        lrn=cfg.model.net.lrn,
        activation=cfg.model.net.activation,
        photometric=cfg.data.get("photometric"),
        weight_decay=pytest.approx(cfg.optim.optimizer.weight_decay),  # what SGD gets
        decay_every_steps=cfg.optim.scheduler.every_n_steps,
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_to_the_papers_recipe(experiment):
    cfg = composed(f"experiment={experiment}")
    validate(cfg)
    assert recipe_of(cfg) == {**RECIPES[experiment], "lr": pytest.approx(RECIPES[experiment]["lr"])}
    assert cfg.model.name == "inception_bn" and cfg.model.net.width_multiplier == 1.0
    assert cfg.data._target_.endswith("ImageNetDataModule") and cfg.data.batch_size == 32  # per replica
    assert cfg.optim.optimizer.momentum == 0.9 and cfg.optim.scheduler.rate == 0.96


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_trains_a_few_steps_on_small_fake_imagenet(experiment):
    cfg = compose_config(f"experiment={experiment}", *SMALL_FAKE_IMAGENET)
    final = train(cfg, JobInfo(name=experiment))
    assert set(final) == {"val/acc", "val/acc_top5", "val/loss"}
    assert math.isfinite(final["val/loss"])


def test_a_group_option_on_the_command_line_replaces_the_experiments_choice():
    cfg = compose_config("experiment=bn_x5", "optim=baseline")
    assert cfg.optim.lr == pytest.approx(0.0015)
    # ... while the experiment's own values still apply on top of the option it now gets
    assert cfg.optim.optimizer.weight_decay == pytest.approx(8e-6) and cfg.optim.scheduler.every_n_steps == 53_382


def test_a_key_on_the_command_line_wins_over_the_experiment():
    cfg = compose_config("experiment=bn_x5", "optim.optimizer.weight_decay=1e-3", "model.net.lrn=true")
    assert cfg.optim.optimizer.weight_decay == 1e-3 and cfg.model.net.lrn is True


def test_the_accelerated_recipes_ratios_apply_to_a_baseline_set_on_the_command_line():
    cfg = compose_config("experiment=bn_x5", "optim.weight_decay=1e-4", "optim.decay_every_steps=600")
    assert cfg.optim.optimizer.weight_decay == pytest.approx(2e-5) and cfg.optim.scheduler.every_n_steps == 100


def test_the_accelerated_recipes_ratios_are_stated_in_one_experiment_only():
    """Only bn_x5 states a ratio; the Sec. 4.2.1 ablations may only undo one (back to 1)."""
    stating = sorted(
        str(path.relative_to(CONF))
        for path in (CONF / "experiment").rglob("*.yaml")
        if any(
            value != 1
            for key in ("weight_decay_divisor", "decay_speedup")
            if (value := OmegaConf.select(OmegaConf.load(path), f"optim.{key}")) is not None
        )
    )
    assert stating == ["experiment/bn_x5.yaml"]


def test_the_module_builds_the_configs_optimizer_and_schedule():
    cfg = compose_config("experiment=inception_proxy/bn_x5", "model.net.width_multiplier=0.125")
    net = instantiate(cfg.model.net, num_classes=10)
    module = Classifier(net, instantiate(cfg.optim.optimizer), 10, scheduler=instantiate(cfg.optim.scheduler))
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD) and configured["lr_scheduler"]["interval"] == "step"
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == pytest.approx((0.1, 0.9, 8e-6))
    for _ in range(37):  # the proxy's baseline decays every 225 steps: 6x faster is every 37 (floor)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.96)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_proxy_keeps_the_recipe_relative_to_the_proxys_baseline(experiment):
    full, proxy = composed(f"experiment={experiment}"), composed(f"experiment=inception_proxy/{experiment}")
    validate(proxy)
    base = composed("experiment=inception_proxy")
    assert proxy.data._target_.endswith("FashionMNISTDataModule") and proxy.model.net.in_channels == 1
    assert proxy.model.net.width_multiplier == 0.125 and proxy.logger.experiment_name == "inception_proxy"
    assert proxy.norm.kind == full.norm.kind and proxy.optim.lr_multiplier == full.optim.lr_multiplier
    assert proxy.optim.lr == pytest.approx(base.model.base_lr * full.optim.lr_multiplier)
    for key in ("dropout", "lrn", "activation"):
        assert proxy.model.net[key] == full.model.net[key]
    ratio = proxy.optim.optimizer.weight_decay / base.optim.optimizer.weight_decay
    assert ratio == pytest.approx(full.optim.optimizer.weight_decay / BASELINE_WD)
    speedup = base.optim.scheduler.every_n_steps / proxy.optim.scheduler.every_n_steps
    assert speedup == pytest.approx(BASELINE_DECAY / full.optim.scheduler.every_n_steps, rel=0.05)


def flat(cfg) -> dict:
    """The resolved config as {dotted key: value}."""
    items = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                items[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return items


@pytest.mark.parametrize(
    "ablation,expected",
    [
        ("bn_x5_with_dropout", {"reg.dropout": 0.4, "model.net.dropout": 0.4}),
        ("bn_x5_full_l2", {"optim.weight_decay_divisor": 1, "optim.optimizer.weight_decay": 4e-5}),
        ("bn_x5_slow_decay", {"optim.decay_speedup": 1, "optim.scheduler.every_n_steps": 225}),
        ("bn_x5_with_lrn", {"model.net.lrn": True}),
        ("bn_x5_batch_shuffle", {"data.shuffle": "batches"}),
    ],
)
def test_each_ablation_undoes_exactly_one_of_bn_x5s_changes(ablation, expected):
    """Sec. 4.2.1 one change at a time: the ablation differs from the proxy's BN-x5 in that change alone."""
    reference = flat(composed("experiment=inception_proxy/bn_x5"))
    changed = flat(composed(f"experiment=inception_proxy/{ablation}"))
    differing = {key: changed[key] for key in reference if reference[key] != changed[key]}
    assert differing == expected


# One proxy run stays in the fast suite; the sweep (make reproduce-proxy) runs all of them for real.
@pytest.mark.parametrize(
    "experiment", [name if name == "bn_x5" else pytest.param(name, marks=pytest.mark.slow) for name in EXPERIMENTS]
)
def test_proxy_trains_a_few_steps_on_fashion_mnist_files(experiment, tmp_path):
    root = write_fashion_mnist(tmp_path / "fashion-mnist", train=64, test=16)
    cfg = compose_config(
        f"experiment=inception_proxy/{experiment}",
        f"data.data_dir={root}",
        "data.test_size=null",
        "model.net.width_multiplier=0.125",
        "logger=none",
        "trainer.max_steps=10",
        "loop.eval_every_n_steps=10",
        "loop.log_every_n_steps=10",
        "trainer.enable_progress_bar=false",
    )
    final = train(cfg, JobInfo(name=experiment))
    assert math.isfinite(final["val/loss"])


@pytest.mark.parametrize(
    "sweep,expected",
    [
        ("imagenet_fig3", list(EXPERIMENTS)),
        ("inception_proxy", [f"inception_proxy/{name}" for name in EXPERIMENTS + ABLATIONS]),
    ],
)
def test_sweep_lists_the_five_configurations_the_two_extra_runs_and_the_proxys_ablations(sweep, expected):
    params = OmegaConf.load(SWEEPS / f"{sweep}.yaml").hydra.sweeper.params
    experiments = [name.strip() for name in str(params.experiment).split(",")]
    assert experiments == expected
    for experiment in experiments:
        validate(composed(f"experiment={experiment}"))


@pytest.mark.slow
@pytest.mark.parametrize("sweep", ["imagenet_fig3", "inception_proxy"])
def test_sweep_file_composes_as_the_makefile_runs_it(sweep, tmp_path):
    """`-cd sweeps -cn <sweep> data.data_dir=...`: the base config Hydra composes before sweeping must take it."""
    command = [sys.executable, "train.py", "-cd", "sweeps", "-cn", sweep, f"data.data_dir={tmp_path}", "--cfg", "all"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"sweep_name: {sweep}" in result.stdout and "bn_x30" in result.stdout
    assert f"data_dir: {tmp_path}" in result.stdout
