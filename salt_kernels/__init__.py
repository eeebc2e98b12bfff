"""salt_kernels: fused SALT (small-model-aided LLM training) loss kernels.

    import salt_kernels as sk
    loss = sk.salt_loss(student_logits, teacher_logits, labels, kd_weight=0.5, temperature=2.0)
"""

from .backends.registry import available_backends
from .functional import SaltParts, linear_salt_loss, linear_topk_salt_loss, salt_loss, topk_salt_loss
from .modules import LinearSaltLoss, SaltLoss

__version__ = "0.1.0"

__all__ = [
    "salt_loss",
    "topk_salt_loss",
    "SaltLoss",
    "SaltParts",
    "linear_salt_loss",
    "linear_topk_salt_loss",
    "LinearSaltLoss",
    "available_backends",
    "__version__",
]
