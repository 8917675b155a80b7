"""Batch normalization as the models take it (Ioffe & Szegedy 2015, Algorithm 1).

Models take a `NormLayer`, the torchvision/timm idiom: a callable from a channel count to a layer
(e.g. ``torch.nn.BatchNorm2d``), or None for no normalization; the config gives it as a `_partial_`
node (conf/norm/). Under DDP `nn.sync_batchnorm` swaps the BN layers for synchronized ones.
"""

from collections.abc import Callable

from torch import nn

from bnrepro.nn.sync_batchnorm import DistributedBatchNorm

NormLayer = Callable[[int], nn.Module]


# Every BN layer class a network here may hold (torch's shared base class, _BatchNorm, is private).
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, DistributedBatchNorm)


def batchnorm_classes(module: nn.Module) -> str:
    """The BN implementations inside `module` ("none" without BN): shows whether BN was synchronized."""
    names = {type(m).__name__ for m in module.modules() if isinstance(m, BATCHNORM_TYPES)}
    return ",".join(sorted(names)) or "none"
