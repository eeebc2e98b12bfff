"""DTensor inputs of salt_loss and linear_salt_loss (docs/design.md, "Vocab-parallel"): which
placements mean what.

salt_loss(student_logits, teacher_logits, labels) (and topk_salt_loss, whose top-k ids are global):
  - logits sharded along the vocabulary, Shard(-1) on one mesh dimension (Replicate on any
    other): the vocab-parallel loss over that dimension's process group, each rank on its local
    columns; the teacher may be a DTensor with the same placements or a plain tensor holding the
    whole vocabulary (each rank then uses its columns);
  - logits Replicate on every mesh dimension: the ordinary loss on the local (full) tensor.
linear_salt_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, labels):
  - weight Shard(0) (rows = vocabulary) with hidden states given as Replicate DTensors on the same
    mesh (tensor parallelism): the vocab-parallel linear loss; the teacher's weight a Shard(0)
    DTensor on the same mesh or a plain tensor with every row;
  - weights DTensors while the hidden states are plain tensors (FSDP2: a fully_shard-ed lm_head
    read outside its forward, the student's or the teacher's): the weights are all-gathered inside
    autograd and the student's gradient goes back as a reduce-scatter that averages over the
    mesh, as FSDP2 averages gradients;
  - everything Replicate: the ordinary loss on the local tensors.
Labels may be plain tensors or Replicate DTensors. The loss comes back as a plain tensor, the
same on every rank. Any other placement raises a TypeError that names the argument.
"""

from __future__ import annotations

import functools

import torch

try:
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # a torch without DTensor: nothing here is ever called
    DTensor = None


def is_dtensor(x) -> bool:
    return DTensor is not None and isinstance(x, DTensor)


def any_dtensor(*xs) -> bool:
    return any(is_dtensor(x) for x in xs)


def routes_dtensors(route):
    """Decorator of a public loss: calls `route` instead when any argument is a DTensor."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if DTensor is not None and any_dtensor(*args, *kwargs.values()):
                return route(*args, **kwargs)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def _placements(x) -> str:
    return f"placements {tuple(x.placements)} on a {x.device_mesh.ndim}-D mesh"


def _vocab_dim(name: str, x, dim: int) -> int | None:
    """The mesh dimension over which x is Shard(dim) (dim counted from the end when negative),
    None when x is Replicate everywhere; TypeError for anything else."""
    found = None
    for i, p in enumerate(x.placements):
        if isinstance(p, Replicate):
            continue
        if isinstance(p, Shard) and p.dim % x.dim() == dim % x.dim() and found is None:
            found = i
            continue
        what = "the vocabulary (last) dimension, Shard(-1)" if dim == -1 else "rows, Shard(0)"
        raise TypeError(f"{name} is a DTensor with {_placements(x)}; salt_kernels takes DTensors sharded along "
                        f"{what}, on one mesh dimension (Replicate elsewhere), or replicated")
    return found


def _replicated(name: str, x):
    """The local tensor of a Replicate DTensor (or x itself); TypeError otherwise."""
    if not is_dtensor(x):
        return x
    if not all(isinstance(p, Replicate) for p in x.placements):
        raise TypeError(f"{name} is a DTensor with {_placements(x)}; it must be Replicate (or a plain tensor)")
    return x.to_local()


def _columns(name: str, x, mesh, dim: int, student_local: torch.Tensor, group, along: int):
    """This rank's slice of a teacher: its local shard when it is a DTensor placed like the
    student, else the slice of a plain tensor holding the whole vocabulary."""
    if is_dtensor(x):
        if x.device_mesh != mesh or _vocab_dim(name, x, along) != dim:
            raise TypeError(f"{name} is a DTensor with {_placements(x)}; it must be placed like the student's")
        return x.to_local()
    from .vocab_parallel import Shard as VocabShard

    shard = VocabShard(student_local.shape[along], group, student_local.device)
    if x.shape[along] != shard.vocab:
        raise ValueError(f"{name} is a plain tensor: it must hold the whole vocabulary ({shard.vocab} along "
                         f"dimension {along}), got {x.shape[along]}")
    return x.narrow(along, shard.start, shard.local)


def salt_loss(student, teacher, labels, **kw):
    """salt_loss for DTensor inputs (see the module's docstring)."""
    from .. import functional
    from .vocab_parallel import vocab_parallel_salt_loss

    labels = _replicated("labels", labels)
    if not is_dtensor(student):
        raise TypeError("teacher_logits is a DTensor but student_logits is not; pass both as DTensors sharded along "
                        "the vocabulary, or plain tensors")
    dim = _vocab_dim("student_logits", student, -1)
    if dim is None:
        return functional.salt_loss(student.to_local(), _replicated("teacher_logits", teacher), labels, **kw)
    kw.pop("backend", None)
    group = student.device_mesh.get_group(dim)
    local = student.to_local()
    teacher_local = None if teacher is None else _columns("teacher_logits", teacher, student.device_mesh, dim,
                                                          local, group, -1)
    return vocab_parallel_salt_loss(local, teacher_local, labels, group=group, **kw)


def topk_salt_loss(student, teacher_indices, teacher_logprobs, labels, **kw):
    """topk_salt_loss for DTensor inputs: Shard(-1) student logits (the top-k ids are global,
    plain tensors or Replicate DTensors) -> the vocab-parallel top-k loss."""
    from .. import functional
    from .vocab_parallel import vocab_parallel_topk_salt_loss

    labels = _replicated("labels", labels)
    indices = _replicated("teacher_indices", teacher_indices)
    logprobs = _replicated("teacher_logprobs", teacher_logprobs)
    if not is_dtensor(student):
        return functional.topk_salt_loss(student, indices, logprobs, labels, **kw)
    dim = _vocab_dim("student_logits", student, -1)
    if dim is None:
        return functional.topk_salt_loss(student.to_local(), indices, logprobs, labels, **kw)
    kw.pop("backend", None)
    return vocab_parallel_topk_salt_loss(student.to_local(), indices, logprobs, labels,
                                         group=student.device_mesh.get_group(dim), **kw)


def gather_weight(weight):
    """The full weight of a DTensor parameter, gathered inside autograd; its gradient returns as
    a reduce-scatter averaged over the mesh (FSDP2's convention for data parallelism)."""
    grad = [Partial("avg")] * weight.device_mesh.ndim
    return weight.redistribute(placements=[Replicate()] * weight.device_mesh.ndim).to_local(grad_placements=grad)


def linear_salt_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, labels, *, student_bias=None,
                     teacher_bias=None, **kw):
    """linear_salt_loss for DTensor inputs (see the module's docstring)."""
    from .. import functional
    from .vocab_parallel import vocab_parallel_linear_salt_loss

    labels = _replicated("labels", labels)
    hidden_dt = is_dtensor(student_hidden)
    if not hidden_dt and not is_dtensor(teacher_hidden):
        # FSDP2 (student or teacher): data parallel, every rank its own tokens; gather the weights,
        # reduce-scatter the student's gradients.
        def full(x):
            return gather_weight(x) if is_dtensor(x) else x

        return functional.linear_salt_loss(
            student_hidden, full(student_weight), _replicated("teacher_hidden", teacher_hidden),
            full(teacher_weight), labels, student_bias=full(student_bias), teacher_bias=full(teacher_bias), **kw)
    if not is_dtensor(student_weight):
        raise TypeError("student_hidden is a DTensor but student_weight is not: for tensor parallelism pass the "
                        "output weight as a DTensor sharded by rows (Shard(0)) on the same mesh")
    dim = _vocab_dim("student_weight", student_weight, 0)
    h_s = _replicated("student_hidden", student_hidden)
    h_t = _replicated("teacher_hidden", teacher_hidden)
    if dim is None:
        return functional.linear_salt_loss(
            h_s, student_weight.to_local(), h_t, _replicated("teacher_weight", teacher_weight), labels,
            student_bias=_replicated("student_bias", student_bias),
            teacher_bias=_replicated("teacher_bias", teacher_bias), **kw)
    if student_hidden.device_mesh != student_weight.device_mesh:
        raise TypeError("student_hidden and student_weight must be DTensors on the same mesh")
    mesh = student_weight.device_mesh
    group = mesh.get_group(dim)
    w_s = student_weight.to_local()

    def rows(name, x):
        return None if x is None else _columns(name, x, mesh, dim, w_s, group, 0)

    kw.pop("backend", None)
    if kw.pop("return_parts", False):
        raise NotImplementedError("return_parts is not available with vocabulary-sharded (Shard(0)) weights yet; "
                                  "call it with return_parts=False")
    return vocab_parallel_linear_salt_loss(
        h_s, w_s, h_t, rows("teacher_weight", teacher_weight), labels, student_bias_shard=rows("student_bias", student_bias),
        teacher_bias_shard=rows("teacher_bias", teacher_bias), group=group, **kw)
