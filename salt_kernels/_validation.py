"""Every input check of the public API (docs/design.md, "Errors"): each bad input raises
ValueError or TypeError naming the argument, what was expected and what came, before any work
is done. The functional layer calls these; nothing below it checks again."""

from __future__ import annotations

import math
import numbers

import torch

from .backends.base import DEFAULT_OPTIONS, DIVERGENCES, LossOptions

try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # torch built without distributed support
    _DTensor = None

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LABEL_DTYPES = (torch.int64, torch.int32)
REDUCTIONS = ("mean", "sum", "none")


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def reject_subclass(name: str, x) -> None:
    """Tensor subclasses never reach the kernels: a DTensor gets a TypeError that says what to pass."""
    if _DTensor is not None and isinstance(x, _DTensor):
        raise TypeError(
            f"{name} is a DTensor (placements {tuple(x.placements)}); salt_kernels takes plain tensors here: "
            f"pass {name}.full_tensor() (gathers it), or the local shard to a loss that combines shards "
            "across the process group"
        )


def check_logits(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    reject_subclass(name, x)
    if x.dtype not in LOGIT_DTYPES:
        raise TypeError(
            f"{name} must have dtype {_dtype_names(LOGIT_DTYPES)}, got {str(x.dtype).replace('torch.', '')}"
        )
    if x.dim() < 1:
        raise ValueError(f"{name} must have shape (..., vocab), got a 0-d tensor")
    if x.shape[-1] < 1:
        raise ValueError(f"{name} must have a vocabulary dimension of at least 1, got shape {tuple(x.shape)}")


def check_scalar(name: str, value, *, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    lo_ok = value > low if low_open else value >= low
    if not (math.isfinite(value) and lo_ok and value <= high):
        lo = "(" if low_open else "["
        hi = "inf)" if math.isinf(high) else f"{high:g}]"
        raise ValueError(f"{name} must be finite and in {lo}{low:g}, {hi}, got {value!r}")
    return value


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_options(*, kd_weight, temperature, ignore_index, reduction) -> tuple[float, float, int]:
    """The keyword options shared by every loss; returns (kd_weight, temperature, ignore_index)
    as Python numbers."""
    kd_weight = check_scalar("kd_weight", kd_weight, low=0.0, high=1.0)
    temperature = check_scalar("temperature", temperature, low=0.0, high=math.inf, low_open=True)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    ignore_index = int(ignore_index)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return kd_weight, temperature, ignore_index


def check_labels(labels, lead: tuple, device, what: str) -> None:
    """labels: an int64/int32 tensor of shape `lead` on `device`; `what` names the tensor whose
    leading shape it must match (e.g. "student_logits")."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    reject_subclass("labels", labels)
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(f"labels must have dtype {_dtype_names(LABEL_DTYPES)}, got {_name(labels.dtype)}")
    if tuple(labels.shape) != tuple(lead):
        raise ValueError(f"labels must have shape {what}.shape[:-1] = {tuple(lead)}, got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels must be on the device of {what} ({device}), got {labels.device}")


def _optional_positive(name: str, value) -> float | None:
    if value is None:
        return None
    return check_scalar(name, value, low=0.0, high=math.inf, low_open=True)


_D = DEFAULT_OPTIONS


def check_loss_options(
    *, softcap=_D.softcap, teacher_softcap=_D.teacher_softcap, kd_vocab=_D.kd_vocab, divergence=_D.divergence,
    beta=_D.beta, label_smoothing=_D.label_smoothing, z_loss=_D.z_loss,
) -> LossOptions:
    """The distillation options (docs/design.md, "Distillation options"), each range-checked; an
    option not given has its LossOptions default."""
    softcap = _optional_positive("softcap", softcap)
    teacher_softcap = _optional_positive("teacher_softcap", teacher_softcap)
    if kd_vocab is not None:
        if isinstance(kd_vocab, bool) or not isinstance(kd_vocab, numbers.Integral):
            raise TypeError(f"kd_vocab must be a positive int or None, got {type(kd_vocab).__name__}")
        kd_vocab = int(kd_vocab)
        if kd_vocab < 1:
            raise ValueError(f"kd_vocab must be a positive int or None, got {kd_vocab}")
    if not isinstance(divergence, str) or divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    beta = check_scalar("beta", beta, low=0.0, high=1.0)
    if not 0.0 < beta < 1.0:
        raise ValueError(
            f"beta must be in the open interval (0, 1), got {beta!r}; beta=0 and beta=1 of other "
            "libraries' generalized JSD are divergence='forward_kl' and 'reverse_kl' here"
        )
    label_smoothing = check_scalar("label_smoothing", label_smoothing, low=0.0, high=1.0)
    z_loss = check_scalar("z_loss", z_loss, low=0.0, high=math.inf)
    return LossOptions(softcap, teacher_softcap, kd_vocab, divergence, beta, label_smoothing, z_loss)


def check_kd_vocab(options: LossOptions, v_s: int, v_t: int, student_name: str, teacher_name: str) -> None:
    """V_t must equal V_s unless kd_vocab says how much of both the KD compares."""
    k = options.kd_vocab
    if k is None:
        if v_t != v_s:
            raise ValueError(
                f"{teacher_name} has vocabulary size {v_t} but {student_name} has {v_s}; when the two "
                f"models pad their vocabularies differently pass kd_vocab= with the tokenizer's size "
                f"(e.g. kd_vocab=len(tokenizer), at most {min(v_s, v_t)}) so the KD compares only real tokens"
            )
    elif k > min(v_s, v_t):
        raise ValueError(
            f"kd_vocab must be at most min(student vocab {v_s}, teacher vocab {v_t}) = {min(v_s, v_t)}, got {k}"
        )


def validate_salt_inputs(
    student,
    teacher,
    labels,
    *,
    kd_weight, temperature, ignore_index, reduction,
    check_label_range: bool,
    options: LossOptions = DEFAULT_OPTIONS,
) -> tuple[float, float, int]:
    """Checks every argument of salt_loss; returns (kd_weight, temperature, ignore_index) as
    Python numbers. Labels are range-checked when check_label_range is set (a device sync on GPU)."""
    check_logits("student_logits", student)
    kd_weight, temperature, ignore_index = check_options(
        kd_weight=kd_weight, temperature=temperature, ignore_index=ignore_index, reduction=reduction
    )
    if options.kd_vocab is not None and options.kd_vocab > student.shape[-1]:
        check_kd_vocab(options, student.shape[-1], student.shape[-1], "student_logits", "student_logits")
    if teacher is None:
        if kd_weight > 0:
            raise ValueError(
                f"teacher_logits is None but kd_weight is {kd_weight:g}; pass the teacher's logits "
                "or set kd_weight=0 for plain cross-entropy"
            )
    else:
        check_logits("teacher_logits", teacher)
        if teacher.shape[:-1] != student.shape[:-1]:
            raise ValueError(
                f"teacher_logits must have the shape of student_logits {tuple(student.shape)} "
                f"(the last dimension may differ with kd_vocab), got {tuple(teacher.shape)}"
            )
        check_kd_vocab(options, student.shape[-1], teacher.shape[-1], "student_logits", "teacher_logits")
        if teacher.device != student.device:
            raise ValueError(
                f"teacher_logits must be on the device of student_logits ({student.device}), got {teacher.device}"
            )
    check_labels(labels, student.shape[:-1], student.device, "student_logits")
    if check_label_range and labels.numel() > 0:
        check_label_values(labels, student.shape[-1], ignore_index)
    return kd_weight, temperature, ignore_index


def _check_tensor(name: str, x, *, dims: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    reject_subclass(name, x)
    if x.dtype not in LOGIT_DTYPES:
        raise TypeError(f"{name} must have dtype {_dtype_names(LOGIT_DTYPES)}, got {_name(x.dtype)}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must be {dims}-d, got shape {tuple(x.shape)}")
    if dims is None and x.dim() < 1:
        raise ValueError(f"{name} must have shape (..., hidden), got a 0-d tensor")


def _check_side(prefix: str, hidden, weight, bias, vocab: int | None) -> None:
    """Shapes and devices of one model's (hidden, weight, bias)."""
    _check_tensor(f"{prefix}_hidden", hidden)
    _check_tensor(f"{prefix}_weight", weight, dims=2)
    d = hidden.shape[-1]
    if weight.shape[1] != d:
        raise ValueError(
            f"{prefix}_weight must have shape (vocab, {d}) to match {prefix}_hidden's last dimension, "
            f"got {tuple(weight.shape)}"
        )
    if weight.shape[0] < 1:
        raise ValueError(f"{prefix}_weight must have at least one row (the vocabulary), got {tuple(weight.shape)}")
    if vocab is not None and weight.shape[0] != vocab:
        raise ValueError(
            f"{prefix}_weight must have the student's vocabulary size {vocab} rows, got {tuple(weight.shape)}"
        )
    if bias is not None:
        _check_tensor(f"{prefix}_bias", bias, dims=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{prefix}_bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in ((f"{prefix}_weight", weight), (f"{prefix}_bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} must be on the device of student_hidden ({hidden.device}), got {t.device}")


def matmul_dtype(prefix: str, hidden, weight, bias, autocast_dtype) -> torch.dtype:
    """The dtype one model's projection runs in: the autocast dtype under torch.autocast (as
    F.linear would), else the common dtype of hidden, weight and bias, which must agree."""
    if autocast_dtype is not None:
        return autocast_dtype
    for name, t in ((f"{prefix}_weight", weight), (f"{prefix}_bias", bias)):
        if t is not None and t.dtype != hidden.dtype:
            raise TypeError(
                f"{name} must have the dtype of {prefix}_hidden ({_name(hidden.dtype)}), got {_name(t.dtype)}; "
                "cast one of them or run under torch.autocast"
            )
    return hidden.dtype


def validate_linear_inputs(
    student_hidden,
    student_weight,
    student_bias,
    teacher_hidden,
    teacher_weight,
    teacher_bias,
    labels,
    *,
    kd_weight, temperature, ignore_index, reduction,
    chunk_size,
    check_label_range: bool,
    options: LossOptions = DEFAULT_OPTIONS,
) -> tuple[float, float, int]:
    """Checks every argument of linear_salt_loss; returns (kd_weight, temperature, ignore_index)."""
    _check_side("student", student_hidden, student_weight, student_bias, None)
    vocab = student_weight.shape[0]
    device = student_hidden.device
    kd_weight, temperature, ignore_index = check_options(
        kd_weight=kd_weight, temperature=temperature, ignore_index=ignore_index, reduction=reduction
    )
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
            raise TypeError(f"chunk_size must be a positive int or None, got {type(chunk_size).__name__}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
    lead = tuple(student_hidden.shape[:-1])
    if kd_weight > 0:
        if teacher_hidden is None or teacher_weight is None:
            missing = "teacher_hidden" if teacher_hidden is None else "teacher_weight"
            raise ValueError(
                f"{missing} is None but kd_weight is {kd_weight:g}; pass the teacher's hidden states "
                "and output weight, or set kd_weight=0 for plain cross-entropy"
            )
        _check_side("teacher", teacher_hidden, teacher_weight, teacher_bias, None)
        check_kd_vocab(options, vocab, teacher_weight.shape[0], "student_weight", "teacher_weight")
        if tuple(teacher_hidden.shape[:-1]) != lead:
            raise ValueError(
                f"teacher_hidden must have the leading shape of student_hidden {lead} (any last dimension), "
                f"got {tuple(teacher_hidden.shape)}"
            )
        if teacher_hidden.device != device:
            raise ValueError(
                f"teacher_hidden must be on the device of student_hidden ({device}), got {teacher_hidden.device}"
            )
    elif options.kd_vocab is not None:
        check_kd_vocab(options, vocab, vocab, "student_weight", "student_weight")
    check_labels(labels, lead, device, "student_hidden")
    if check_label_range and labels.numel() > 0:
        check_label_values(labels, vocab, ignore_index)
    return kd_weight, temperature, ignore_index


def check_label_values(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Host-side label range check (reads labels back: on a GPU this is a sync). The ops check
    labels themselves; this eager check is what validate=True adds on a GPU."""
    bad = ((labels < 0) | (labels >= vocab)) & (labels != ignore_index)
    if bool(bad.any()):
        raise bad_label_error(labels, bad, vocab, ignore_index)


def bad_label_error(labels: torch.Tensor, bad: torch.Tensor, vocab: int, ignore_index: int) -> ValueError:
    position = tuple(int(i) for i in bad.nonzero()[0])
    value = int(labels[position])
    return ValueError(
        f"labels must be in [0, {vocab}) or equal ignore_index ({ignore_index}); got {value} at position {position}"
    )


INDEX_DTYPES = (torch.int64, torch.int32)
TAILS = ("bucket", "renormalize")


def validate_topk_inputs(student, indices, logprobs, labels, *, kd_weight, tail, lead_name: str) -> None:
    """teacher_indices / teacher_logprobs of an offline top-k teacher: (..., k) with the leading
    shape of the student side, int32/int64 indices and floating log-probs on the same device.
    Index ranges, duplicates and log-probs > 0 are checked inside the op."""
    if not isinstance(tail, str) or tail not in TAILS:
        raise ValueError(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")
    lead = tuple(student.shape[:-1])
    device = student.device
    if kd_weight > 0 and (indices is None or logprobs is None):
        missing = "teacher_indices" if indices is None else "teacher_logprobs"
        raise ValueError(f"{missing} is None but kd_weight is {kd_weight:g}; pass the cached top-k or set kd_weight=0")
    if indices is None:
        return
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"teacher_indices must be a torch.Tensor, got {type(indices).__name__}")
    reject_subclass("teacher_indices", indices)
    if indices.dtype not in INDEX_DTYPES:
        raise TypeError(f"teacher_indices must have dtype {_dtype_names(INDEX_DTYPES)}, got {_name(indices.dtype)}")
    if indices.dim() < 1 or tuple(indices.shape[:-1]) != lead or indices.shape[-1] < 1:
        raise ValueError(
            f"teacher_indices must have shape {lead_name}.shape[:-1] + (k,) = {lead + ('k',)}, got {tuple(indices.shape)}"
        )
    check_logits("teacher_logprobs", logprobs)
    if tuple(logprobs.shape) != tuple(indices.shape):
        raise ValueError(
            f"teacher_logprobs must have the shape of teacher_indices {tuple(indices.shape)}, got {tuple(logprobs.shape)}"
        )
    for name, t in (("teacher_indices", indices), ("teacher_logprobs", logprobs)):
        if t.device != device:
            raise ValueError(f"{name} must be on the device of {lead_name} ({device}), got {t.device}")
