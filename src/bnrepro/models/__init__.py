"""Networks of the paper: plain torch.nn.Modules that know nothing of Hydra, Lightning or MLflow.

Importing this package registers BN-Inception with timm: ``timm.create_model("bn_inception", ...)``.
"""

from bnrepro.models.inception_bn import BNInception, bn_inception
from bnrepro.models.mlp import MLP

__all__ = ["MLP", "BNInception", "bn_inception"]
