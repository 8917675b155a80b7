"""BN-Inception: the Inception variant of the paper's appendix (Figure 5), Sec. 4.2.

Every convolution is a `ConvUnit`: conv -> BN -> nonlinearity (Sec. 3.2: BN goes right before
the nonlinearity, per feature map, and the conv bias is dropped because BN's beta subsumes it).
The BN layer is ``norm_layer(channels)`` (default ``nn.BatchNorm2d``); with ``norm_layer=None`` it
is left out and the conv keeps its bias (the Inception baseline). There are no fully connected
layers but the classifier. Differences from GoogLeNet listed in the appendix: the 5x5
convolutions are replaced by two stacked 3x3 ("double 3x3"), 28x28 gets 3 modules (3a-3c),
pooling is average or max, and stride-2 modules (3c, 4e) replace the pooling layers between
stages, with a pass-through (max-pool) branch instead of a projection.

The appendix table vs. its text. Summing the branch columns of Figure 5 gives 608 output
channels for 4c and 4d (the output column says 576) and 1056 for 4e (1024). Two readings:

* ``channel_reading="branches"`` (default): follow the branch columns exactly, like the Caffe
  and MXNet ports of BN-Inception: 4c/4d output 608, 4e outputs 1056, 5a-5b 1024.
  **11,278,528 parameters** with 1000 classes (separable stem, with BN; BN gamma/beta
  included, running statistics are buffers and not counted).
* ``channel_reading="outputs"``: keep the output column, as TF-slim's ``inception_v2`` does, by
  using a 96-channel pool projection in 4c and 4d: 4c/4d output 576, 4e 1024.
  **11,188,288 parameters** with 1000 classes (same conditions).

Neither reaches the 13.6 M parameters the appendix text quotes; the table is what is built.

The first convolution. Figure 5's first row is "convolution* 7x7/2", the asterisk: "separable with
depth multiplier 8". ``stem="separable"`` (default) builds it as TF-slim does: a 7x7/2 depthwise
conv with 8 filters per input channel (linear, no bias, no BN), then a 1x1 pointwise conv to 64,
BN + nonlinearity only after the pointwise. ``stem="plain_7x7_ports"`` is the Caffe and MXNet
ports' plain 7x7/2 conv to 64 (6,696 parameters more with 3 input channels: 11,285,224
"branches" / 11,194,984 "outputs").
Without BN (``norm_layer=None``) every conv keeps a bias instead of BN's (gamma, beta), one parameter per conv
channel fewer: 11,268,512 ("branches") / 11,178,336 ("outputs") with the separable stem.

timm's ``pretrained_cfg`` (there are no weights; timm's data helpers read it): ImageNet's RGB mean
and std for 3 input channels; for any other channel count, 0.5 and 0.5 per channel (TF-slim's
Inception preprocessing, which maps [0, 1] to [-1, 1] whatever the channels), so a 1-channel model
never advertises a 3-channel normalization.

Spatial sizes: every 3x3 conv and pool uses padding 1, so 224 -> 112 (conv1) -> 56 (pool1) ->
28 (pool2) -> 14 (3c) -> 7 (4e); the final average pool is adaptive, so small inputs
(32x32 -> 1x1 after 4e, 64x64 -> 2x2) work for CPU proxy runs. The in-module average pools
exclude padding from the average (``count_include_pad=False``).

Init: convolutions use Kaiming-normal (fan-in, gain of the chosen nonlinearity: sqrt(2) for
ReLU, 1 for sigmoid); the classifier uses Kaiming-normal with linear gain (std 1/sqrt(1024));
all biases start at 0, BN at gamma=1, beta=0.
"""

from collections import OrderedDict
from typing import Any, NamedTuple

import torch
from timm.models import register_model
from torch import Tensor, nn

from bnrepro.models.activations import activation as make_activation
from bnrepro.nn.batchnorm import NormLayer

__all__ = [
    "BNInception",
    "ConvUnit",
    "InceptionModule",
    "InceptionRow",
    "INCEPTION_TABLE",
    "PARAMETER_COUNTS",
    "inception_rows",
]  # timm's register_model appends "bn_inception"

CHANNEL_READINGS = ("branches", "outputs")
STEMS = ("separable", "plain_7x7_ports")  # Figure 5's first convolution; the Caffe/MXNet ports' plain 7x7
STEM_MIN_CHANNELS = 8  # a width multiplier never shrinks a stem conv below this many channels
SEPARABLE_DEPTH_MULTIPLIER = 8  # Figure 5, first row: "separable with depth multiplier 8"


class InceptionRow(NamedTuple):
    """One inception row of Figure 5 (columns in the table's order).

    ``n1x1 = 0`` means no 1x1 branch; ``proj = 0`` means a pass-through pool branch (no 1x1
    projection); ``stride = 2`` puts the stride on the last conv of each branch and on the pool.
    ``table_out`` is the table's output-size column, kept for reference (see module docstring).
    """

    name: str
    table_out: int
    n1x1: int
    n3x3_reduce: int
    n3x3: int
    double_reduce: int
    double_3x3: int
    pool: str  # "avg" | "max"
    proj: int
    stride: int = 1


# Figure 5, rows "inception 3a" .. "inception 5b", as printed.
INCEPTION_TABLE: tuple[InceptionRow, ...] = (
    InceptionRow("3a", 256, 64, 64, 64, 64, 96, "avg", 32),
    InceptionRow("3b", 320, 64, 64, 96, 64, 96, "avg", 64),
    InceptionRow("3c", 576, 0, 128, 160, 64, 96, "max", 0, stride=2),
    InceptionRow("4a", 576, 224, 64, 96, 96, 128, "avg", 128),
    InceptionRow("4b", 576, 192, 96, 128, 96, 128, "avg", 128),
    InceptionRow("4c", 576, 160, 128, 160, 128, 160, "avg", 128),
    InceptionRow("4d", 576, 96, 128, 192, 160, 192, "avg", 128),
    InceptionRow("4e", 1024, 0, 128, 192, 192, 256, "max", 0, stride=2),
    InceptionRow("5a", 1024, 352, 192, 320, 160, 224, "avg", 128),
    InceptionRow("5b", 1024, 352, 192, 320, 192, 224, "max", 128),
)

# channel_reading="outputs": TF-slim inception_v2 projects the pool branch of 4c and 4d to 96
# channels so that those modules output the table's 576 (and 4e its 1024).
OUTPUT_READING_PROJ = {"4c": 96, "4d": 96}

PARAMETER_COUNTS = {  # num_classes=1000, 3 input channels, with BN, width 1, separable stem (see docstring)
    "branches": 11_278_528,
    "outputs": 11_188_288,
}
IMAGENET_RGB_MEAN, IMAGENET_RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN_STD = 0.5  # TF-slim's Inception preprocessing: (x - 0.5) / 0.5, any channel count


def inception_rows(channel_reading: str) -> tuple[InceptionRow, ...]:
    """The table rows under one reading of Figure 5's channel counts."""
    if channel_reading not in CHANNEL_READINGS:
        raise ValueError(f"channel_reading must be one of {CHANNEL_READINGS}, got {channel_reading!r}")
    if channel_reading == "branches":
        return INCEPTION_TABLE
    return tuple(row._replace(proj=OUTPUT_READING_PROJ.get(row.name, row.proj)) for row in INCEPTION_TABLE)


class ConvUnit(nn.Module):
    """conv (bias only without BN) -> BN per feature map (optional) -> nonlinearity (Sec. 3.2)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        activation: str = "relu",
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=norm_layer is None
        )
        self.bn = norm_layer(out_channels) if norm_layer is not None else None
        # Not in-place: diagnostics hook the BN output, which an in-place ReLU would overwrite.
        self.act = make_activation(activation)
        self.out_channels = out_channels

    @property
    def nonlinearity_input(self) -> nn.Module:
        """The module whose output feeds the nonlinearity (BN when present, else the conv)."""
        return self.bn if self.bn is not None else self.conv

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class SeparableStem(nn.Module):
    """Figure 5's first row with ``stem="separable"``: 7x7/2 depthwise conv with depth
    multiplier 8 (linear, no bias, no BN, as TF-slim's separable_conv2d), then a 1x1 ConvUnit."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormLayer | None, activation: str):
        super().__init__()
        multiplier = min(max(1, out_channels // in_channels), SEPARABLE_DEPTH_MULTIPLIER)
        depthwise_channels = in_channels * multiplier
        self.depthwise = nn.Conv2d(
            in_channels, depthwise_channels, 7, stride=2, padding=3, groups=in_channels, bias=False
        )
        self.pointwise = ConvUnit(depthwise_channels, out_channels, 1, norm_layer=norm_layer, activation=activation)
        self.out_channels = out_channels

    @property
    def nonlinearity_input(self) -> nn.Module:
        return self.pointwise.nonlinearity_input

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


def pool_3x3(kind: str, stride: int) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if kind == "avg":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    raise ValueError(f"pool must be 'avg' or 'max', got {kind!r}")


class InceptionModule(nn.Module):
    """One row of Figure 5: up to four parallel branches concatenated along channels.

    Branch names follow the Caffe port: ``1x1``; ``3x3_reduce`` -> ``3x3``;
    ``double_3x3_reduce`` -> ``double_3x3_1`` -> ``double_3x3_2``; pool -> ``pool_proj``.
    """

    def __init__(
        self,
        in_channels: int,
        row: InceptionRow,
        norm_layer: NormLayer | None,
        activation: str,
        width: "ChannelScaler",
    ):
        super().__init__()
        unit = lambda c_in, c_out, k, stride=1: ConvUnit(c_in, c_out, k, stride, norm_layer, activation)  # noqa: E731
        s = row.stride
        self.branch_1x1 = unit(in_channels, width(row.n1x1), 1) if row.n1x1 else None
        reduce3, n3 = width(row.n3x3_reduce), width(row.n3x3)
        self.branch_3x3 = nn.Sequential(
            OrderedDict([("3x3_reduce", unit(in_channels, reduce3, 1)), ("3x3", unit(reduce3, n3, 3, s))])
        )
        reduce_d, nd = width(row.double_reduce), width(row.double_3x3)
        self.branch_double_3x3 = nn.Sequential(
            OrderedDict(
                [
                    ("double_3x3_reduce", unit(in_channels, reduce_d, 1)),
                    ("double_3x3_1", unit(reduce_d, nd, 3)),
                    ("double_3x3_2", unit(nd, nd, 3, s)),
                ]
            )
        )
        pool_layers: list[tuple[str, nn.Module]] = [("pool", pool_3x3(row.pool, s))]
        if row.proj:
            pool_layers.append(("pool_proj", unit(in_channels, width(row.proj), 1)))
        self.branch_pool = nn.Sequential(OrderedDict(pool_layers))
        proj_out = width(row.proj) if row.proj else in_channels  # pass-through keeps its input
        self.out_channels = (width(row.n1x1) if row.n1x1 else 0) + n3 + nd + proj_out

    def conv_units(self) -> dict[str, ConvUnit]:
        """The module's ConvUnits by branch-layer name, in forward order."""
        units: dict[str, ConvUnit] = {}
        if self.branch_1x1 is not None:
            units["1x1"] = self.branch_1x1
        for branch in (self.branch_3x3, self.branch_double_3x3, self.branch_pool):
            units.update((name, layer) for name, layer in branch.named_children() if isinstance(layer, ConvUnit))
        return units

    def forward(self, x: Tensor) -> Tensor:
        branches = [] if self.branch_1x1 is None else [self.branch_1x1(x)]
        branches += [self.branch_3x3(x), self.branch_double_3x3(x), self.branch_pool(x)]
        return torch.cat(branches, dim=1)


class ChannelScaler:
    """``width_multiplier`` applied to one conv's channel count: rounded, at least ``minimum``."""

    def __init__(self, multiplier: float, minimum: int = 1):
        if multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {multiplier}")
        self.multiplier, self.minimum = multiplier, minimum

    def __call__(self, channels: int) -> int:
        return max(min(self.minimum, channels), int(round(channels * self.multiplier)))


def pretrained_cfg(in_channels: int, num_classes: int, first_conv: str) -> dict[str, Any]:
    """What timm's data helpers (``timm.data.resolve_data_config``) read; one mean/std per input channel."""
    rgb = in_channels == 3
    mean = IMAGENET_RGB_MEAN if rgb else (INCEPTION_MEAN_STD,) * in_channels
    std = IMAGENET_RGB_STD if rgb else (INCEPTION_MEAN_STD,) * in_channels
    return {
        "input_size": (in_channels, 224, 224),
        "interpolation": "bilinear",
        "crop_pct": 224 / 256,
        "mean": mean,
        "std": std,
        "num_classes": num_classes,
        "first_conv": first_conv,
        "classifier": "classifier",
    }


def local_response_norm() -> nn.Module:
    """GoogLeNet's LRN (Caffe: local_size 5, alpha 1e-4, beta 0.75; torch also divides alpha by size)."""
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)


class BNInception(nn.Module):
    """BN-Inception of Figure 5 (224x224x3 input). See the module docstring for the readings.

    Args:
        num_classes: classifier outputs (the only fully connected layer).
        norm_layer: a channel count -> the normalization layer before every nonlinearity (conv bias
            dropped; default per-feature-map BN, ``nn.BatchNorm2d``), or None: none (conv bias kept).
        activation: "relu" or "sigmoid" (Sec. 4.2.2's BN-x5-Sigmoid).
        dropout: dropout probability before the classifier; 0 disables it (Sec. 4.2.1 removes
            it for the accelerated BN nets; the original Inception used 0.4).
        lrn: GoogLeNet's local response normalization in the stem, after pool1 and after conv2
            (before pool2), for the non-BN Inception baseline; Sec. 4.2.1 removes it.
        stem: "separable" (default): Figure 5's depthwise-separable first conv (depth multiplier 8);
            "plain_7x7_ports": the Caffe/MXNet ports' plain 7x7 conv.
        width_multiplier: scales every conv's channel count (rounded, >= 1; stem convs >= 8).
        channel_reading: "branches" (default) or "outputs", see the module docstring.
        in_channels: input image channels.
    """

    num_features = 1024  # classifier input width at width_multiplier 1 (1024 under both readings)

    def __init__(
        self,
        num_classes: int = 1000,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        activation: str = "relu",
        dropout: float = 0.0,
        lrn: bool = False,
        stem: str = "separable",
        width_multiplier: float = 1.0,
        channel_reading: str = "branches",
        in_channels: int = 3,
    ):
        super().__init__()
        make_activation(activation)  # an unknown name fails before anything is built
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        rows = inception_rows(channel_reading)
        self.num_classes, self.activation_name = num_classes, activation
        self.channel_reading = channel_reading
        width = ChannelScaler(width_multiplier)
        stem_width = ChannelScaler(width_multiplier, minimum=STEM_MIN_CHANNELS)
        unit = lambda c_in, c_out, k, stride=1: ConvUnit(c_in, c_out, k, stride, norm_layer, activation)  # noqa: E731

        c1, c2_reduce, c2 = stem_width(64), stem_width(64), stem_width(192)
        if stem == "separable":
            conv1: nn.Module = SeparableStem(in_channels, c1, norm_layer, activation)
        else:
            conv1 = unit(in_channels, c1, 7, 2)
        layers: list[tuple[str, nn.Module]] = [("conv1", conv1), ("pool1", nn.MaxPool2d(3, 2, padding=1))]
        if lrn:  # GoogLeNet places LRN after pool1 and after conv2 (before pool2)
            layers.append(("lrn1", local_response_norm()))
        layers += [("conv2_reduce", unit(c1, c2_reduce, 1)), ("conv2", unit(c2_reduce, c2, 3))]
        if lrn:
            layers.append(("lrn2", local_response_norm()))
        layers.append(("pool2", nn.MaxPool2d(3, 2, padding=1)))

        channels = c2
        for row in rows:
            module = InceptionModule(channels, row, norm_layer, activation, width)
            layers.append((f"inception_{row.name}", module))
            channels = module.out_channels
        self.features = nn.Sequential(OrderedDict(layers))
        self.num_features = channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)  # Figure 5's "avg pool 7x7/1", any input size
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)
        first_conv = "features.conv1.depthwise" if stem == "separable" else "features.conv1.conv"
        self.pretrained_cfg = pretrained_cfg(in_channels, num_classes, first_conv)
        self.default_cfg = self.pretrained_cfg  # timm's older name for the same dict
        self._init_weights(activation)

    def _init_weights(self, activation: str) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=activation)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def stages(self) -> dict[str, nn.Module]:
        """Figure 5's rows up to the last inception module, by name, in forward order."""
        return dict(self.features.named_children())

    def diagnostic_sites(self) -> dict[str, nn.Module]:
        """Inputs to every nonlinearity (BN outputs with BN), in forward order, e.g.
        ``conv1``, ..., ``inception_3a.1x1``, ``inception_3a.3x3_reduce``, ...; the last entry is
        ``inception_5b.pool_proj``, the last conv of the last inception module (128 channels)."""
        sites: dict[str, nn.Module] = {}
        for stage_name, stage in self.features.named_children():
            if isinstance(stage, (ConvUnit, SeparableStem)):
                sites[stage_name] = stage.nonlinearity_input
            elif isinstance(stage, InceptionModule):
                for unit_name, unit in stage.conv_units().items():
                    sites[f"{stage_name}.{unit_name}"] = unit.nonlinearity_input
        return sites

    # timm-style accessors
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = self.pretrained_cfg["num_classes"] = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)
        nn.init.kaiming_normal_(self.classifier.weight, mode="fan_in", nonlinearity="linear")
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(self.global_pool(x).flatten(1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
_TIMM_ALIASES = {"drop_rate": "dropout", "in_chans": "in_channels"}


@register_model
def bn_inception(pretrained: bool = False, **kwargs: Any) -> BNInception:
    """timm entry point: ``timm.create_model("bn_inception", num_classes=10, ...)``.

    Accepts BNInception's keywords plus timm's ``drop_rate``/``in_chans`` aliases; there are no
    pretrained weights, so ``pretrained=True`` raises.
    """
    if pretrained:
        raise ValueError(
            "bn_inception has no pretrained weights in bnrepro; use timm.create_model('bn_inception', "
            "pretrained=False, ...) and train it."
        )
    for key in _TIMM_ONLY_KWARGS:
        kwargs.pop(key, None)
    for timm_name, our_name in _TIMM_ALIASES.items():
        if timm_name in kwargs:
            kwargs[our_name] = kwargs.pop(timm_name)
    return BNInception(**kwargs)
