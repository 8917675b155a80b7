"""BN-Inception (Figure 5): shapes, parameter counts, BN placement, timm registration, diagnostics."""

import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

from bnrepro.models.inception_bn import INCEPTION_TABLE, PARAMETER_COUNTS, BNInception, ConvUnit, SeparableStem

# Figure 5 at 224x224 input, channel_reading="branches": (channels, spatial size) after each row.
BRANCHES_STAGE_SHAPES = {
    "conv1": (64, 112),
    "pool1": (64, 56),
    "conv2_reduce": (64, 56),
    "conv2": (192, 56),
    "pool2": (192, 28),
    "inception_3a": (256, 28),
    "inception_3b": (320, 28),
    "inception_3c": (576, 14),
    "inception_4a": (576, 14),
    "inception_4b": (576, 14),
    "inception_4c": (608, 14),  # branch columns sum to 608 (table's output column: 576)
    "inception_4d": (608, 14),
    "inception_4e": (1056, 7),  # 192 + 256 + 608 pass-through (table: 1024)
    "inception_5a": (1024, 7),
    "inception_5b": (1024, 7),
}


def stage_shapes(model: BNInception, size: int) -> dict[str, tuple[int, int]]:
    shapes = {}
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        for name, stage in model.stages().items():
            x = stage(x)
            assert x.shape[2] == x.shape[3]
            shapes[name] = (x.shape[1], x.shape[2])
    return shapes


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_stage_shapes_at_224_follow_the_branch_columns():
    assert stage_shapes(BNInception().eval(), 224) == BRANCHES_STAGE_SHAPES


def test_outputs_reading_matches_the_tables_output_column():
    shapes = stage_shapes(BNInception(channel_reading="outputs").eval(), 224)
    for row in INCEPTION_TABLE:
        assert shapes[f"inception_{row.name}"][0] == row.table_out


# The pinned counts were measured by building the model (count_parameters, 1000 classes, BN, 3 input
# channels): the separable stem is the default, the ports' plain 7x7 stem differs by the stem alone.
def test_parameter_count_of_the_branches_reading():
    assert count_parameters(BNInception(num_classes=1000)) == PARAMETER_COUNTS["branches"] == 11_278_528


def test_parameter_count_of_the_outputs_reading():
    model = BNInception(num_classes=1000, channel_reading="outputs")
    assert count_parameters(model) == PARAMETER_COUNTS["outputs"] == 11_188_288


def test_the_default_stem_is_figure_5s_separable_convolution_with_depth_multiplier_8():
    stem = BNInception().features.conv1
    assert isinstance(stem, SeparableStem)
    assert stem.depthwise.groups == 3 and stem.depthwise.out_channels == 3 * 8
    assert stem.depthwise.kernel_size == (7, 7) and stem.depthwise.stride == (2, 2)


def test_the_ports_plain_7x7_stem_parameter_count():
    # 7x7x3x64 (9,408) instead of 7x7 depthwise 3 -> 24 (1,176 weights) + 1x1 24 -> 64 (1,536)
    model = BNInception(stem="plain_7x7_ports")
    assert isinstance(model.features.conv1, ConvUnit)
    assert count_parameters(model) == 11_278_528 + 9_408 - 1_176 - 1_536 == 11_285_224


def test_unknown_stem_is_rejected():
    with pytest.raises(ValueError, match="stem"):
        BNInception(stem="separable_stem")


@pytest.mark.parametrize("stem", ["separable", "plain_7x7_ports"])
def test_timm_first_conv_names_the_conv_that_reads_the_input(stem):
    model = BNInception(in_channels=1, stem=stem, width_multiplier=0.25)
    assert model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels == 1


def test_a_1_channel_model_advertises_1_channel_mean_and_std_to_timm():
    model = timm.create_model("bn_inception", in_chans=1, width_multiplier=0.25)
    config = timm.data.resolve_data_config(model=model)
    assert config["input_size"] == (1, 224, 224)
    assert config["mean"] == (0.5,) and config["std"] == (0.5,)
    assert model.default_cfg is model.pretrained_cfg


def test_reset_classifier_updates_the_advertised_number_of_classes():
    model = BNInception(num_classes=10, width_multiplier=0.25)
    model.reset_classifier(4)
    assert model.get_classifier().out_features == model.pretrained_cfg["num_classes"] == 4


def test_a_3_channel_model_advertises_imagenets_rgb_mean_and_std_to_timm():
    config = timm.data.resolve_data_config(model=BNInception(width_multiplier=0.25))
    assert config["input_size"] == (3, 224, 224)
    assert config["mean"] == (0.485, 0.456, 0.406) and config["std"] == (0.229, 0.224, 0.225)


def test_forward_backward_on_a_tiny_input():
    model = BNInception(num_classes=5, width_multiplier=0.25, dropout=0.4)
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_32px_input_reaches_the_classifier():
    model = BNInception(num_classes=10, width_multiplier=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_bn_variant_normalizes_every_conv_and_drops_its_bias():
    model = BNInception(width_multiplier=0.25)  # default norm_layer: nn.BatchNorm2d
    units = [m for m in model.modules() if isinstance(m, ConvUnit)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(units) == 69 and len(convs) == 70  # the separable stem's depthwise conv is linear, without BN
    for unit in units:
        assert isinstance(unit.bn, nn.BatchNorm2d) and unit.bn.num_features == unit.conv.out_channels
        assert unit.conv.bias is None
        assert isinstance(unit.act, nn.ReLU)


def test_no_bn_variant_has_no_bn_and_keeps_conv_biases():
    model = BNInception(norm_layer=None, width_multiplier=0.25)
    assert not any("BatchNorm" in type(m).__name__ for m in model.modules())
    assert all(m.conv.bias is not None for m in model.modules() if isinstance(m, ConvUnit))


def test_sigmoid_variant_uses_sigmoid_only():
    model = BNInception(activation="sigmoid", width_multiplier=0.25)
    assert any(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_lrn_and_dropout_switches():
    model = BNInception(norm_layer=None, lrn=True, dropout=0.4, width_multiplier=0.25)
    assert [n for n, m in model.features.named_children() if isinstance(m, nn.LocalResponseNorm)] == ["lrn1", "lrn2"]
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.4
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in BNInception(width_multiplier=0.25).modules())


def test_width_multiplier_scales_convs_but_keeps_the_stem_at_least_8_wide():
    model = BNInception(width_multiplier=0.05)
    assert model.features.conv1.pointwise.conv.out_channels == 8
    assert model.features.inception_3a.branch_1x1.conv.out_channels == 3  # round(64 * 0.05)


def test_unknown_channel_reading_is_rejected():
    with pytest.raises(ValueError, match="channel_reading"):
        BNInception(channel_reading="caffe")


def test_timm_create_model_builds_bn_inception():
    model = timm.create_model("bn_inception", num_classes=7, width_multiplier=0.25)
    assert isinstance(model, BNInception) and model.get_classifier().out_features == 7
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_the_norm_layer_callable_builds_every_normalization_layer():
    model = BNInception(norm_layer=lambda channels: nn.GroupNorm(1, channels), width_multiplier=0.25)
    units = [m for m in model.modules() if isinstance(m, ConvUnit)]
    assert all(isinstance(unit.bn, nn.GroupNorm) and unit.bn.num_channels == unit.conv.out_channels for unit in units)
    assert all(unit.conv.bias is None for unit in units)


def test_importing_bnrepro_models_registers_bn_inception_with_timm():
    code = "import timm; import bnrepro.models; print(timm.is_model('bn_inception'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "True"


def test_timm_pretrained_weights_are_refused():
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("bn_inception", pretrained=True)


def test_diagnostic_sites_are_in_forward_order_and_end_in_inception_5b():
    model = BNInception(num_classes=3).eval()
    sites = model.diagnostic_sites()
    calls, outputs = [], {}

    def record(name):
        def hook(module, inputs, output):
            calls.append(name)
            outputs[name] = output

        return hook

    for name, module in sites.items():
        module.register_forward_hook(record(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert calls == list(sites)
    last = list(sites)[-1]
    assert last == "inception_5b.pool_proj"
    assert isinstance(sites[last], nn.BatchNorm2d)
    assert outputs[last].shape == (1, 128, 2, 2)


def test_diagnostic_sites_without_bn_are_the_convs():
    sites = BNInception(norm_layer=None, width_multiplier=0.25).diagnostic_sites()
    assert all(isinstance(m, nn.Conv2d) for m in sites.values())
    assert list(sites)[:4] == ["conv1", "conv2_reduce", "conv2", "inception_3a.1x1"]
