"""The paper's MNIST network (Sec. 4.1): 784-100-100-100-10, sigmoid hidden units.

With a ``norm_layer`` (default: per-activation BN, ``nn.BatchNorm1d``) each hidden layer is
``Linear(bias=False) -> norm -> nonlinearity``: BN is applied to x = Wu, right before the
nonlinearity, and the bias is dropped because BN's beta subsumes it (Sec. 3.2). With
``norm_layer=None`` (the paper's baseline) it is ``Linear -> nonlinearity``.
"""

from torch import Tensor, nn

from bnrepro.models.activations import activation as make_activation
from bnrepro.nn.batchnorm import NormLayer


class HiddenLayer(nn.Module):
    """affine -> (BN) -> nonlinearity -> (dropout)."""

    def __init__(
        self, in_features: int, out_features: int, norm_layer: NormLayer | None, activation: str, dropout: float
    ):
        super().__init__()
        self.affine = nn.Linear(in_features, out_features, bias=norm_layer is None)
        self.bn = norm_layer(out_features) if norm_layer is not None else None
        self.activation = make_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    @property
    def nonlinearity_input(self) -> nn.Module:
        """The module whose output feeds the nonlinearity (BN's output when BN is on)."""
        return self.bn if self.bn is not None else self.affine

    def forward(self, x: Tensor) -> Tensor:
        x = self.affine(x)
        if self.bn is not None:
            x = self.bn(x)
        x = self.activation(x)
        return self.dropout(x) if self.dropout is not None else x


class MLP(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_features: int = 784,
        widths: tuple[int, ...] = (100, 100, 100),
        norm_layer: NormLayer | None = nn.BatchNorm1d,
        activation: str = "sigmoid",
        dropout: float = 0.0,
        init_std: float = 0.1,
    ):
        super().__init__()
        sizes = [in_features, *widths]
        self.hidden = nn.ModuleList(
            HiddenLayer(n_in, n_out, norm_layer, activation, dropout)
            for n_in, n_out in zip(sizes, sizes[1:], strict=False)
        )
        self.classifier = nn.Linear(sizes[-1], num_classes)
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        # Sec. 4.1 initializes weights "to small random Gaussian values"; biases start at zero.
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=std)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def diagnostic_sites(self) -> dict[str, nn.Module]:
        """Inputs to each nonlinearity, in forward order; the last is the last hidden layer (Fig. 1b/c)."""
        return {f"hidden{i + 1}": layer.nonlinearity_input for i, layer in enumerate(self.hidden)}

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = layer(x)
        return self.classifier(x)
