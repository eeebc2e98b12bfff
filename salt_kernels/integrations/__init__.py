"""Integrations with other libraries. Each submodule imports its library when imported itself:

    from salt_kernels.integrations.hf import SaltTrainer, causal_lm_hidden   # needs transformers
"""
