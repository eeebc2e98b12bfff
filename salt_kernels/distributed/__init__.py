"""SALT losses past one device (docs/design.md, "Vocab-parallel"): the vocabulary split over a
process group, for tensor-parallel output layers."""

from .vocab_parallel import vocab_parallel_linear_salt_loss, vocab_parallel_salt_loss, vocab_parallel_topk_salt_loss

__all__ = ["vocab_parallel_salt_loss", "vocab_parallel_linear_salt_loss", "vocab_parallel_topk_salt_loss"]
