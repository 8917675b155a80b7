"""Divergence as the paper saw it (Sec. 4.2.1): "the model parameters reach machine infinity".

`nonfinite_parameters` answers "is any parameter NaN or +-Inf?" as a 0-d bool tensor on the
parameters' device, without a host sync: the caller decides when to read it (once per chunk).
The max-abs norm is used because it is fused over all parameters (torch.nn.utils.get_total_norm
with foreach kernels), propagates NaN and, unlike a sum or the 2-norm, cannot overflow on finite values.
"""

import torch
from torch import Tensor, nn


def nonfinite_parameters(module: nn.Module) -> Tensor:
    """0-d bool tensor: True iff some parameter of `module` holds a NaN or an infinity."""
    parameters = [p.detach() for p in module.parameters()]
    if not parameters:
        return torch.tensor(False)
    largest = torch.nn.utils.get_total_norm(parameters, norm_type=float("inf"), error_if_nonfinite=False)
    return ~torch.isfinite(largest)
