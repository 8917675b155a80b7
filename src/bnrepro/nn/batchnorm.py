"""Batch normalization as the models use it (Ioffe & Szegedy 2015, Algorithm 1).

Models ask for a BN layer through `batch_norm` so every network gets the same torch defaults
(momentum 0.1, eps 1e-5, learnable gamma/beta); under DDP `nn.sync_batchnorm` swaps these
modules for synchronized ones.
"""

from torch import nn

NORMS = ("bn", "none")


def batch_norm(num_features: int, spatial: bool) -> nn.Module:
    """Per-activation BN for (N, C) inputs, per-feature-map BN for (N, C, H, W) (Sec. 3.2)."""
    return nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def batchnorm_classes(module: nn.Module) -> str:
    """The BN implementations inside `module` ("none" without BN): shows whether BN was synchronized."""
    names = {type(m).__name__ for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    return ",".join(sorted(names)) or "none"
