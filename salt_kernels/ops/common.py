"""Pieces shared by the ops: their signatures, row counts and reductions, the gradient scale, the
hand-out of a gradient computed in the forward pass (setup_context and backward), and the checks
that guard compiled code."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import torch
from torch import Tensor

from .._validation import bad_label_error
from ..backends.base import LossOptions

try:  # the tensor types torch.compile / make_fx trace with
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    _TRACING_TYPES: tuple = (FakeTensor, FunctionalTensor)
except ImportError:  # pragma: no cover - older torch
    _TRACING_TYPES = ()

# Schema types of the LossOptions field annotations (strings: backends/base.py postpones annotations).
_SCHEMA_TYPES = {"float | None": "float?", "int | None": "SymInt?", "str": "str", "float": "float"}


def options_params(*names: str) -> str:
    """The LossOptions fields `names` (all when none are named) as schema parameters, in field order."""
    return ", ".join(f"{_SCHEMA_TYPES[f.type]} {f.name}" for f in fields(LossOptions) if not names or f.name in names)


# The scalar arguments every loss op takes after its tensors.
LOSS_PARAMS = "float kd_weight, float temperature, SymInt ignore_index, str reduction, str backend"


class OpSignature:
    """The parameters of a custom op, written once as schema fragments: its schema string, and
    the names under which the implementation reads its positional arguments (bind)."""

    def __init__(self, *fragments: str):
        self.params = tuple(p.strip() for f in fragments for p in f.split(",") if p.strip())
        self.names = tuple(p.split()[-1] for p in self.params)
        self.n_tensors = sum(p.startswith("Tensor") for p in self.params)  # the tensors come first

    def schema(self, n_outputs: int) -> str:
        out = "Tensor" if n_outputs == 1 else f"({', '.join(['Tensor'] * n_outputs)})"
        return f"({', '.join(self.params)}) -> {out}"

    def bind(self, args: tuple) -> SimpleNamespace:
        return SimpleNamespace(**dict(zip(self.names, args)))


def op_signatures(tensors: str, extra: str, forward_flags: str, backward_flags: str = "") -> tuple:
    """(forward, backward) signatures of a loss op and its backward op: (*tensors, LOSS_PARAMS,
    *extra, *forward_flags) and (*tensors, grad_output, LOSS_PARAMS, *extra, *backward_flags)."""
    return (OpSignature(tensors, LOSS_PARAMS, extra, forward_flags),
            OpSignature(tensors, "Tensor grad_output", LOSS_PARAMS, extra, backward_flags))


def loss_options(a: SimpleNamespace) -> LossOptions:
    """The LossOptions of an op's bound arguments (a field the op does not take keeps its default)."""
    return LossOptions(**{f.name: getattr(a, f.name) for f in fields(LossOptions) if hasattr(a, f.name)})


def row_kwargs(a, options: LossOptions) -> dict:
    """The keyword arguments of a backend's rows() / topk_rows() besides grad and grad_scale."""
    return dict(kd_weight=a.kd_weight, temperature=a.temperature, ignore_index=a.ignore_index, options=options)


def n_valid_rows(labels: Tensor, ignore_index: int) -> Tensor:
    """max(1, number of non-ignored rows), as an fp32 tensor on the labels' device."""
    return (labels != ignore_index).sum().clamp_(min=1).to(torch.float32)


ACCURACY = 4  # position of the accuracy among the parts (loss, ce, kd, z_loss, accuracy)


def part_reduction(reduction: str, position: int) -> str:
    """The reduction of a part: the loss's, except that accuracy is a share for "sum" too."""
    return "mean" if position == ACCURACY and reduction == "sum" else reduction


def reduce_rows(rows: Tensor, reduction: str, n_valid: Tensor) -> Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    return total / n_valid.to(total.dtype) if reduction == "mean" else total


def z_loss_rows(out, z_loss: float) -> Tensor:
    """The z-loss part per row, z_loss * lse_z^2 (lse_z is 0 on ignored rows)."""
    lse_z = out.lse[:, 0]
    return z_loss * lse_z * lse_z if z_loss > 0 else torch.zeros_like(lse_z)


def accuracy_rows(out, student: Tensor, labels: Tensor, ignore_index: int, wanted: bool) -> Tensor:
    """1 where argmax_j z_j == label (ties to the lowest index; softcapping is monotone so the raw
    logits give the same argmax), 0 elsewhere and on ignored rows; the backend's own when it
    computed it, else derived here only when wanted (zeros otherwise)."""
    if out.accuracy is not None:
        return out.accuracy
    if not wanted or student.shape[0] == 0:
        return torch.zeros_like(out.loss)
    hit = (student.argmax(dim=-1) == labels) & (labels != ignore_index)
    return hit.to(out.loss.dtype)


def grad_scale_for(reduction: str, n_valid: Tensor, grad_output: Tensor | None) -> Tensor:
    """The rows' gradient scale: grad_output per row for "none", grad_output / n_valid for
    "mean", grad_output for "sum" (grad_output None stands for 1). fp32, shape [N] or [1]."""
    f32 = torch.float32
    if reduction == "none":
        return grad_output.reshape(-1).to(f32).contiguous()
    g = torch.ones(1, dtype=f32, device=n_valid.device) if grad_output is None else grad_output.to(f32).reshape(1)
    return g / n_valid if reduction == "mean" else g


def tracing(t: Tensor) -> bool:
    """True while torch.compile (dynamo or AOTAutograd) traces, rather than runs, this code."""
    return torch.compiler.is_compiling() or isinstance(t, _TRACING_TYPES)


def scale_inplace(t: Tensor | None, factor: Tensor) -> Tensor | None:
    """t *= factor for a gradient buffer owned by the op; a CPU factor of 1 costs nothing and a
    GPU factor is applied without reading it back (no sync)."""
    if t is None:
        return None
    if factor.device.type == "cpu":
        f = float(factor)
        if f != 1.0:
            t.mul_(f)
        return t
    return t.mul_(factor.to(t.dtype))


def finish_backward(grad: Tensor, grad_output: Tensor) -> Tensor:
    """The gradient computed in the forward pass, scaled by grad_output. In eager mode the buffer
    is scaled in place and handed out (autograd adopts it as .grad without a copy); while
    traced, a plain product keeps the graph functional."""
    if tracing(grad) or tracing(grad_output):
        return grad * grad_output.to(grad.dtype)
    return scale_inplace(grad, grad_output)


def once_differentiable(name: str, grads: tuple) -> tuple:
    """Under create_graph=True, tie the gradients to a node that raises when differentiated, so a
    second-order gradient fails loudly instead of silently treating them as constants."""
    if not torch.is_grad_enabled() or torch._C._functorch.maybe_current_level() is not None:
        return grads  # no create_graph, or inside a torch.func transform (which handles levels)
    live = [g for g in grads if isinstance(g, Tensor)]
    if not live:
        return grads
    err = torch._C._functions.DelayedError(
        f"{name}: second-order gradients are not implemented (the backward of the loss is not "
        "differentiable); compute the loss without create_graph=True".encode(),
        len(live),
    )

    def detached(g):
        g = g.detach()
        g.requires_grad_(g.is_floating_point())
        return g

    wrapped = err(*[detached(g) for g in live])
    wrapped = list(wrapped) if isinstance(wrapped, (tuple, list)) else [wrapped]
    out = []
    for g in grads:
        out.append(wrapped.pop(0) if isinstance(g, Tensor) else g)
    return tuple(out)


def check_addressable(*tensors: Tensor | None) -> None:
    """Compiled kernels get raw addresses: refuse any tensor without addressable storage (a
    tensor subclass or a meta tensor that slipped through) instead of passing address 0."""
    for t in tensors:
        if t is None:
            continue
        if type(t) not in (Tensor, torch.nn.Parameter) or t.device.type == "meta":
            raise TypeError(
                f"salt_kernels: got a {type(t).__name__} on {t.device}; the kernels need plain tensors "
                "with storage (pass plain tensors, e.g. a DTensor's full_tensor())"
            )
        if t.numel() > 0 and t.data_ptr() == 0:
            raise TypeError(f"salt_kernels: a {type(t).__name__} of shape {tuple(t.shape)} has no addressable storage")


def check_labels_in_op(labels: Tensor, vocab: int, ignore_index: int) -> None:
    """Labels in [0, vocab) or ignore_index: a ValueError naming the position on the CPU; on a
    GPU a device-side assert (no host sync)."""
    if labels.numel() == 0:
        return
    bad = ((labels < 0) | (labels >= vocab)) & (labels != ignore_index)
    if labels.device.type == "cpu":
        if bool(bad.any()):
            raise bad_label_error(labels, bad, vocab, ignore_index)
    else:
        torch._assert_async(
            ~bad.any(), f"salt_kernels: labels must be in [0, {vocab}) or equal ignore_index ({ignore_index})"
        )


def forward_rows(rows, a: SimpleNamespace) -> tuple:
    """The forward of a row-wise loss op around `rows(flat_labels, grad, grad_scale) -> RowOutputs`,
    given its bound arguments (student, labels, ignore_index, reduction, z_loss, compute_grad,
    want_accuracy): label check, gradient buffer (mean/sum with compute_grad), reductions of the
    five parts. Returns (loss, ce, kd, z_loss, accuracy, grad); grad is empty when not computed."""
    student, reduction = a.student, a.reduction
    check_labels_in_op(a.labels, student.shape[1], a.ignore_index)
    shape, labels = a.labels.shape, a.labels.reshape(-1)
    n_valid = n_valid_rows(labels, a.ignore_index)
    grad = scale = None
    if a.compute_grad and reduction != "none":
        scale = grad_scale_for(reduction, n_valid, None)
        grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
    out = rows(labels, grad if student.shape[0] > 0 else None, scale)
    per_row = (out.loss, out.ce, out.kd, z_loss_rows(out, a.z_loss),
               accuracy_rows(out, student, labels, a.ignore_index, a.want_accuracy))
    out_shape = shape if reduction == "none" else ()
    parts = [reduce_rows(x, part_reduction(reduction, i), n_valid).reshape(out_shape) for i, x in enumerate(per_row)]
    return (*parts, student.new_empty(0) if grad is None else grad)


def backward_rows(rows, a: SimpleNamespace) -> Tensor:
    """The gradient of a row-wise loss op scaled by grad_output (the "none" reduction, or a
    second backward through a retained graph), given the backward op's bound arguments."""
    student, labels = a.student, a.labels.reshape(-1)
    grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
    if student.shape[0] > 0:
        rows(labels, grad, grad_scale_for(a.reduction, n_valid_rows(labels, a.ignore_index), a.grad_output))
    return grad


def fake_outputs(student: Tensor, labels: Tensor, reduction: str, compute_grad: bool) -> tuple:
    """What forward_rows returns, as shapes and dtypes only."""
    from ..backends.base import result_dtype

    dtype = result_dtype(student.dtype)
    shape = labels.shape if reduction == "none" else ()
    parts = [student.new_empty(shape, dtype=dtype) for _ in range(5)]
    grad_shape = student.shape if compute_grad and reduction != "none" else (0,)
    return (*parts, student.new_empty(grad_shape))


def fake_grad(student: Tensor, *_args) -> Tensor:
    """What a row-wise backward op returns, as shape and dtype only."""
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def computed(grad: Tensor, like: Tensor | None) -> bool:
    """Whether an op output holds a gradient (an empty 1-d tensor stands for "not computed")."""
    return like is not None and grad.shape == like.shape


def loss_autograd(name: str, forward: OpSignature, backward: OpSignature, backward_op, n_grads: int = 1):
    """setup_context and backward of a loss op with signature `forward`: inputs (*tensors, *args),
    outputs (loss, ce, kd, z_loss, accuracy, *grads), one gradient output for each of the first
    n_grads tensors (the inputs that can get a gradient). The gradients computed in the forward are
    kept on ctx, not saved, and handed out once: once handed out they belong to autograd, which may
    adopt them as .grad and add into them. "none" and a second backward through a retained graph
    call backward_op() with signature `backward`; its want_h / want_w / want_b flags, when it
    has them, say which gradients this backward needs."""
    # Plain values only below: torch.compile traces setup_context and backward.
    n_tensors, n_inputs = forward.n_tensors, len(forward.names)
    arg_names = forward.names[n_tensors:]
    backward_args = backward.names[n_tensors + 1:]  # after the tensors and grad_output

    def setup_context(ctx, inputs, output):
        tensors = inputs[:n_tensors]
        for arg, value in zip(arg_names, inputs[n_tensors:]):
            setattr(ctx, arg, value)
        grads = output[5:]
        ctx.mark_non_differentiable(*output[1:])
        # Outputs other than the loss get no gradient: without this autograd would hand backward
        # a zero tensor for each of them, one of which is as large as the logits.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*tensors)
        fresh = ctx.reduction != "none" and any(computed(g, t) for g, t in zip(grads, tensors))
        ctx.grads = grads if fresh else None

    def backward_fn(ctx, grad_loss, *_unused):
        if grad_loss is None:  # the loss got no gradient (grads are not materialized)
            return (None,) * n_inputs
        tensors = ctx.saved_tensors
        # What the forward was asked for may be more than this backward needs (e.g. the weight only).
        need = ctx.needs_input_grad[:n_grads]
        grads, ctx.grads = ctx.grads, None  # handed out once; a second backward recomputes below
        if grads is not None:
            out = [finish_backward(g, grad_loss) if n and computed(g, t) else None
                   for g, t, n in zip(grads, tensors, need)]
        else:
            wanted = {f"want_{x}": bool(n) for x, n in zip("hwb", need)}
            args = [wanted[arg] if arg in wanted else getattr(ctx, arg) for arg in backward_args]
            with torch.no_grad():  # not differentiable; once_differentiable below says so
                out = backward_op()(*tensors, grad_loss, *args)
            out = (out,) if isinstance(out, Tensor) else out
            out = [g if n and computed(g, t) else None for g, t, n in zip(out, tensors, need)]
        return once_differentiable(name, tuple(out)) + (None,) * (n_inputs - n_grads)

    return setup_context, backward_fn


def register_loss_ops(name: str, forward_op, backward_op, forward: OpSignature, backward: OpSignature,
                      n_grads: int = 1) -> type:
    """Registers the autograd of op salt_kernels::name and of its backward op (which is not
    differentiable again). Returns the op with that autograd as an autograd.Function with
    setup_context, so that torch.func.grad / vjp work on it (they refuse the wrapper
    torch.library builds)."""
    title = f"salt_kernels.{name}"
    setup_context, backward_fn = loss_autograd(
        title, forward, backward, lambda: getattr(torch.ops.salt_kernels, f"{name}_backward"), n_grads
    )
    forward_op.register_autograd(backward_fn, setup_context=setup_context)
    backward_op.register_autograd(no_second_order(title), setup_context=no_context)
    def forward_fn(*args):
        return getattr(torch.ops.salt_kernels, name)(*args)

    class_name = "".join(word.capitalize() for word in name.split("_")) + "Function"
    members = dict(forward=staticmethod(forward_fn), setup_context=staticmethod(setup_context),
                   backward=staticmethod(backward_fn), __doc__=f"torch.ops.{title} with its autograd.")
    return type(class_name, (torch.autograd.Function,), members)


def define_row_ops(name: str, forward: OpSignature, backward: OpSignature, rows_of, check=None) -> tuple:
    """Defines salt_kernels::name and salt_kernels::name_backward, row-wise loss ops with signatures
    `forward` and `backward` around rows_of(bound arguments) -> rows(flat_labels, grad, grad_scale)
    (see forward_rows); check(bound arguments), when given, runs in the forward once rows_of has
    run. Returns (op, backward op, the op's autograd.Function)."""

    def forward_impl(*args):
        a = forward.bind(args)
        rows = rows_of(a)
        if check is not None:
            check(a)
        return forward_rows(rows, a)

    def backward_impl(*args):
        a = backward.bind(args)
        return backward_rows(rows_of(a), a)

    def forward_fake(*args):
        a = forward.bind(args)
        return fake_outputs(a.student, a.labels, a.reduction, a.compute_grad)

    op = torch.library.custom_op(f"salt_kernels::{name}", forward_impl, mutates_args=(), schema=forward.schema(6))
    backward_op = torch.library.custom_op(f"salt_kernels::{name}_backward", backward_impl, mutates_args=(),
                                          schema=backward.schema(1))
    op.register_fake(forward_fake)
    backward_op.register_fake(fake_grad)
    return op, backward_op, register_loss_ops(name, op, backward_op, forward, backward)


def no_second_order(name: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"{name}: second-order gradients are not implemented")

    return backward


def no_context(ctx, inputs, output) -> None:
    return None
