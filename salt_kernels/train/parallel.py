"""FSDP2 for the trainer (--fsdp): how the student is sharded, and full state dicts for
checkpoints and the final model.

Sharding: fully_shard on every transformer block, then on the whole model as the root unit,
which keeps the embedding, the final norm and lm_head. The root is not resharded after its
forward, so lm_head's weight is still gathered when the loss reads it (the fused linear loss
reads it outside lm_head's forward); FSDP's final backward callback reduce-scatters it with the
rest of the root's parameters. The teacher stays replicated on every process (inference only),
or with --fsdp-teacher is sharded the same way and resharded after each forward.

Checkpoints hold full (unsharded) state dicts, gathered with torch.distributed.checkpoint's
get_state_dict / set_state_dict: the same checkpoint.pt format as unsharded runs (the optimizer
state keyed by parameter names), resumable with the same number of processes.
"""

from __future__ import annotations

import torch

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch without DTensor never shards
    DTensor = None


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (model.model.layers and its kin)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if isinstance(obj, torch.nn.ModuleList) and len(obj):
            return list(obj)
    raise ValueError(f"--fsdp: found no transformer blocks in {type(model).__name__} "
                     "(looked for model.layers, transformer.h, gpt_neox.layers, model.decoder.layers)")


def shard_student(model: torch.nn.Module) -> torch.nn.Module:
    """fully_shard per block, then the root (embedding, final norm, lm_head), not resharded
    after its forward; returns the model (sharded in place)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks(model):
        fully_shard(block)
    fully_shard(model, reshard_after_forward=False)
    return model


def shard_teacher(model: torch.nn.Module) -> torch.nn.Module:
    """The frozen teacher (--fsdp-teacher): fully_shard per block and the root, every unit
    resharded after its forward (no backward follows to reshard it); the fused linear loss then
    reads lm_head's weight as a sharded DTensor and gathers it (salt_kernels/distributed/dtensor.py)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks(model):
        fully_shard(block, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=True)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return DTensor is not None and any(isinstance(p, DTensor) for p in model.parameters())


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def full_states(model, optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state dicts, unsharded on the CPU; a collective when sharded."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer, options=_options())


def load_full_states(model, optimizer, model_state: dict, optim_state: dict) -> None:
    """The inverse of full_states: every process holds the full dicts and keeps its shards."""
    if not is_sharded(model):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=_options())


def full_model_state(model) -> dict | None:
    """The model's unsharded state dict (a collective) when sharded, else None (the model's own
    state_dict serves)."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())
