"""Batch normalization as the models take it (Ioffe & Szegedy 2015, Algorithm 1).

Models take a `NormLayer`, the torchvision/timm idiom: a callable from a channel count to a layer
(e.g. ``torch.nn.BatchNorm2d``), or None for no normalization; the config gives it as a `_partial_`
node (conf/norm/). Under DDP `nn.sync_batchnorm` swaps the BN layers for synchronized ones.
"""

from collections.abc import Callable

from torch import nn

NormLayer = Callable[[int], nn.Module]


def batchnorm_classes(module: nn.Module) -> str:
    """The BN implementations inside `module` ("none" without BN), by class name: shows whether BN was synchronized.

    By name because torch has no public base class shared by BatchNorm1d/2d/3d, SyncBatchNorm and
    bnrepro's DistributedBatchNorm.
    """
    names = {type(m).__name__ for m in module.modules() if "BatchNorm" in type(m).__name__}
    return ",".join(sorted(names)) or "none"
