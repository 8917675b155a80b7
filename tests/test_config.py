"""Every option of every config group composes, validates and instantiates; bad values fail at start-up."""

import inspect

import lightning as L
import pytest
from conftest import CONF, compose_config
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ValidationError
from torch import nn

from bnrepro.config import SCHEMAS, ConfigError, validate

GROUPS = (*SCHEMAS, "experiment")


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose_config(f"{group}={option}")
    validate(cfg)
    assert cfg.optim.lr == pytest.approx(cfg.model.base_lr * cfg.optim.lr_multiplier)


@pytest.mark.parametrize("option", group_options("model"))
def test_every_model_option_instantiates(option):
    cfg = compose_config(f"model={option}")
    net = instantiate(cfg.model.net, num_classes=10)
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("option", ["mnist_mini"])
def test_offline_data_options_instantiate(option):
    datamodule = instantiate(compose_config(f"data={option}").data)
    assert datamodule.num_classes == 10


@pytest.mark.parametrize("option,multiplier", [("baseline", 1), ("lr_x5", 5), ("lr_x30", 30)])
def test_optim_options_scale_the_models_base_learning_rate(option, multiplier):
    cfg = compose_config(f"optim={option}", "model.base_lr=0.002")
    assert cfg.optim.lr == pytest.approx(0.002 * multiplier)


@pytest.mark.parametrize("model,layer", [("mlp", nn.BatchNorm1d), ("inception_bn", nn.BatchNorm2d)])
def test_norm_option_gives_each_model_its_batch_norm_layer(model, layer):
    net = instantiate(compose_config(f"model={model}", "norm=bn").model.net, num_classes=10)
    assert any(type(m) is layer for m in net.modules())


@pytest.mark.parametrize("model", ["mlp", "inception_bn"])
def test_norm_none_builds_the_network_without_normalization(model):
    cfg = compose_config(f"model={model}", "norm=none")
    assert cfg.model.net.norm_layer is None
    net = instantiate(cfg.model.net, num_classes=10)
    assert not any("BatchNorm" in type(m).__name__ for m in net.modules())


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.net.activation=tanh"],
        ["model=inception_bn", "model.net.channel_reading=columns"],
        ["data=imagenet", "data.photometric=strong"],
        ["data=imagenet", "data.on_corrupt=ignore"],
        ["norm.kind=layer"],
        ["logger.kind=wandb"],
    ],
)
def test_a_value_outside_a_choice_fails_at_composition_naming_the_allowed_ones(overrides):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(*overrides)
    assert isinstance(error.value.__cause__, ValidationError) and "expected one of" in str(error.value.__cause__)


def test_choice_values_reach_the_network_as_their_names():
    net = instantiate(compose_config("model.net.activation=relu").model.net, num_classes=10)
    assert isinstance(net.hidden[0].activation, nn.ReLU)


def test_the_trainer_group_holds_trainer_arguments_only():
    trainer_arguments = set(inspect.signature(L.Trainer).parameters)
    for option in group_options("trainer"):
        assert set(compose_config(f"trainer={option}").trainer) <= trainer_arguments


def test_unknown_group_option_lists_the_available_options():
    with pytest.raises(ConfigCompositionException, match="Available options") as error:
        compose_config("norm=batchnorm")
    assert "bn" in str(error.value) and "none" in str(error.value)


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("model.net.widht=3")
    assert "widht" in str(error.value.__cause__) and "MLPNet" in str(error.value.__cause__)


def test_appended_unknown_key_fails_validation():
    with pytest.raises(ConfigError, match=r"unknown key model\.net\.widht .*MLPNet"):
        validate(compose_config("+model.net.widht=3"))


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("model.base_lr=fast")
    assert isinstance(error.value.__cause__, ValidationError)


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.base_lr=-0.1", "model.base_lr"),
        ("reg.dropout=1.0", "reg.dropout"),
        ("optim.momentum=1.5", "optim.momentum"),
        ("data.batch_size=1", "data.batch_size=1"),
        ("loop.eval_every_n_steps=15", "loop.eval_every_n_steps"),
    ],
)
def test_out_of_range_values_raise_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config(override))


def test_batch_size_one_is_fine_without_batch_norm():
    validate(compose_config("data.batch_size=1", "norm=none"))


def test_seed_zero_is_a_valid_seed():
    assert compose_config("seed=0").seed == 0
