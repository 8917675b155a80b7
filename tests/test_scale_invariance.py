"""Sec. 3.3 of Ioffe & Szegedy (2015): batch normalization makes a layer invariant to its weights' scale.

For a scalar a, with BN normalizing over the mini-batch (training mode):
    BN(aWu) = BN(Wu),   dBN(aWu)/du = dBN(Wu)/du,   dBN(aWu)/d(aW) = (1/a) dBN(Wu)/dW.
They hold exactly for eps = 0 (torch refuses eps = 0 in training, so eps = 1e-30, far below float64's
resolution of a^2 sigma^2) and are checked in float64 over random scales, shapes and data, for a
linear and a convolutional layer; with eps > 0 the output moves by at most |x_hat| * eps/(2 sigma^2) * |1 - 1/a^2|.
In eval mode BN is a fixed affine map, so the invariance holds only if the statistics scale with the
weights (mean by a, variance by a^2), as population statistics estimated after the rescaling would.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

SCALES = st.floats(min_value=0.01, max_value=100.0).filter(lambda a: abs(a - 1.0) > 1e-3)
PROPERTY = settings(max_examples=25, deadline=None)
TOLERANCE = {"rtol": 1e-7, "atol": 1e-9}
NEGLIGIBLE_EPS = 1e-30


@dataclass(frozen=True)
class Layer:
    """A weight layer W followed by BN with random gamma, beta; u its input, g an upstream gradient."""

    kind: str
    weight: torch.Tensor
    u: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    upstream: torch.Tensor

    def pre_activation(self, weight: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return F.linear(u, weight) if self.kind == "linear" else F.conv2d(u, weight)

    def bn(self, weight: torch.Tensor, u: torch.Tensor, eps: float = NEGLIGIBLE_EPS, stats=None) -> torch.Tensor:
        x = self.pre_activation(weight, u)
        mean, var = stats if stats is not None else (None, None)
        return F.batch_norm(x, mean, var, self.gamma, self.beta, training=stats is None, eps=eps)

    def gradients(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dL/du, dL/dweight) for L = sum(g * BN(weight u))."""
        weight = weight.detach().requires_grad_()
        u = self.u.detach().requires_grad_()
        (self.bn(weight, u) * self.upstream).sum().backward()
        return u.grad, weight.grad


@st.composite
def layers(draw) -> Layer:
    kind = draw(st.sampled_from(["linear", "conv"]))
    batch, fan_in, fan_out = draw(st.integers(3, 8)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    if kind == "linear":
        weight, u = randn(fan_out, fan_in), randn(batch, fan_in)
        out_shape = (batch, fan_out)
    else:
        weight, u = randn(fan_out, fan_in, 2, 2), randn(batch, fan_in, 4, 3)
        out_shape = (batch, fan_out, 3, 2)
    return Layer(kind, weight, u, 1.0 + 0.5 * randn(fan_out), randn(fan_out), randn(*out_shape))


@PROPERTY
@given(layers(), SCALES)
def test_output_is_invariant_to_the_weight_scale(layer, a):
    torch.testing.assert_close(layer.bn(a * layer.weight, layer.u), layer.bn(layer.weight, layer.u), **TOLERANCE)


@PROPERTY
@given(layers(), SCALES)
def test_gradient_with_respect_to_the_input_is_invariant_to_the_weight_scale(layer, a):
    torch.testing.assert_close(layer.gradients(a * layer.weight)[0], layer.gradients(layer.weight)[0], **TOLERANCE)


@PROPERTY
@given(layers(), SCALES)
def test_gradient_with_respect_to_the_scaled_weight_shrinks_as_one_over_the_scale(layer, a):
    scaled = layer.gradients(a * layer.weight)[1]
    torch.testing.assert_close(scaled, layer.gradients(layer.weight)[1] / a, **TOLERANCE)


def normalized_and_variance(layer: Layer) -> tuple[torch.Tensor, torch.Tensor]:
    """|x_hat| and the per-channel batch variance (shaped to broadcast) of the unscaled layer."""
    x = layer.pre_activation(layer.weight, layer.u)
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    return ((x - mean) / var.sqrt()).abs(), var


@PROPERTY
@given(layers(), SCALES, st.sampled_from([1e-5, 1e-3]))
def test_with_eps_the_output_moves_at_most_by_eps_over_twice_the_variance(layer, a, eps):
    moved = (layer.bn(a * layer.weight, layer.u, eps) - layer.bn(layer.weight, layer.u, eps)).abs()
    x_hat, var = normalized_and_variance(layer)
    gamma = layer.gamma.abs().view((1, -1) + (1,) * (x_hat.dim() - 2))
    bound = gamma * x_hat * eps / (2 * var) * abs(1 - 1 / a**2)
    assert bool((moved <= bound * (1 + 1e-6) + 1e-12).all())


def batch_statistics(layer: Layer) -> tuple[torch.Tensor, torch.Tensor]:
    x = layer.pre_activation(layer.weight, layer.u)
    return torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)[::-1]


@PROPERTY
@given(layers(), SCALES.filter(lambda a: abs(a - 1.0) > 0.1))
def test_in_eval_mode_fixed_statistics_break_the_invariance(layer, a):
    stats = batch_statistics(layer)
    assert not torch.allclose(
        layer.bn(a * layer.weight, layer.u, stats=stats), layer.bn(layer.weight, layer.u, stats=stats)
    )


@PROPERTY
@given(layers(), SCALES)
def test_in_eval_mode_statistics_rescaled_with_the_weights_keep_the_invariance(layer, a):
    mean, var = batch_statistics(layer)
    scaled = layer.bn(a * layer.weight, layer.u, stats=(a * mean, a**2 * var))
    torch.testing.assert_close(scaled, layer.bn(layer.weight, layer.u, stats=(mean, var)), **TOLERANCE)
