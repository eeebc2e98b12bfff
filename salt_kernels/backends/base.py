"""The row-level contract every backend implements (the launcher layer).

    backend.rows(student [N, V_s], teacher [N, V_t] or None, labels [N], *, kd_weight, temperature,
                 ignore_index, grad=None, grad_scale=None, options=DEFAULT_OPTIONS) -> RowOutputs
    (the arguments are those of RowArgs, which each backend builds from them)
    backend.supports_options(options) -> (bool, reason)

computes per row the loss, its CE and KD parts, the accuracy (when the backend can) and the
three log-sum-exps (lse_z over the student's vocabulary, lse_zt of z/tau and lse_u of u/tau over
the KD vocabulary; zeros for ignored rows), in fp32, or float64 for float64 inputs (which only
the reference backend takes). When `grad` ([N, V_s], student dtype) is given it also writes
d loss_i / d student_i scaled by grad_scale ([N] or [1] fp32), zeros for ignored rows. The
vocabulary dimension of every tensor is contiguous; rows may have any stride. A backend never
reads the teacher when kd_weight == 0 and never writes it. `options` (LossOptions) carries the
distillation options; a backend that cannot compute some of them says so in supports_options,
and "auto" routes around it.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, fields

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


@dataclass(frozen=True)
class LossOptions:
    """The distillation options of docs/design.md, "Distillation options"; the defaults give the
    plain SALT loss (and its speed). Validated by salt_kernels._validation before any backend
    sees them."""

    softcap: float | None = None  # student: z <- c * tanh(z / c), before everything else
    teacher_softcap: float | None = None  # teacher: u <- c_t * tanh(u / c_t)
    kd_vocab: int | None = None  # KD over the first k entries; None: all (V_t == V_s)
    divergence: str = "forward_kl"  # "forward_kl" | "reverse_kl" | "jsd"
    beta: float = 0.5  # JSD mixture weight of the teacher, in (0, 1)
    label_smoothing: float = 0.0  # torch's definition
    z_loss: float = 0.0  # + z_loss * lse(z)^2

    def non_default(self) -> list[str]:
        """Names of the options that differ from the plain SALT loss."""
        default = DEFAULT_OPTIONS
        out = [f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)]
        if self.divergence != "jsd" and "beta" in out:
            out.remove("beta")  # beta only matters for JSD
        return out

    def kd_columns(self, start: int, local: int, vocab: int) -> int:
        """How many columns of the vocabulary slice [start, start + local) of a `vocab`-wide row
        take part in the KD term: the global columns below kd_vocab (all of them without it)."""
        return min(local, max(0, (self.kd_vocab or vocab) - start))

    def as_args(self) -> tuple:
        """The options in field order, as the custom ops take them."""
        return tuple(getattr(self, f.name) for f in fields(self))


DEFAULT_OPTIONS = LossOptions()


@dataclass
class RowOutputs:
    loss: torch.Tensor  # [N] fp32
    ce: torch.Tensor  # [N] fp32
    kd: torch.Tensor  # [N] fp32
    lse: torch.Tensor  # [N, 3] fp32: lse_z, lse_zt, lse_u
    # 1.0 where argmax_j z_j (the capped z, ties to the lowest index) equals the label, else 0;
    # None from a backend that does not compute it (the op then derives it when asked).
    accuracy: torch.Tensor | None = None

    @classmethod
    def empty(cls, n: int, device, dtype: torch.dtype = torch.float32) -> "RowOutputs":
        return cls(
            loss=torch.empty(n, dtype=dtype, device=device),
            ce=torch.empty(n, dtype=dtype, device=device),
            kd=torch.empty(n, dtype=dtype, device=device),
            lse=torch.empty(n, 3, dtype=dtype, device=device),
        )


@dataclass(frozen=True)
class RowArgs:
    """The arguments of the row contract: rows(student, teacher, labels, **keywords) is
    RowArgs(student, teacher, labels, **keywords) computed (see the module docstring)."""

    student: torch.Tensor
    teacher: torch.Tensor | None
    labels: torch.Tensor
    _: KW_ONLY
    kd_weight: float
    temperature: float
    ignore_index: int
    grad: torch.Tensor | None = None
    grad_scale: torch.Tensor | None = None
    options: LossOptions = DEFAULT_OPTIONS

    @property
    def use_teacher(self) -> bool:
        """Whether the teacher is read: given, with kd_weight > 0."""
        return self.teacher is not None and self.kd_weight > 0

    def kernel_args(self, out: "RowOutputs", *, with_options: bool = True) -> dict:
        """The fields of salt::RowsArgs (csrc/salt_math.h) as keyword arguments of the pybind11
        `rows` functions: addresses, strides and dtype codes. Address 0 stands for "absent"; the
        teacher is passed as absent when kd_weight == 0, so no kernel can read it.

        with_options adds the distillation option fields and the accuracy output (out.accuracy,
        absent when None), under their RowsArgs names, an option that is off as RowsArgs' "off"
        value (0 for softcap, teacher_softcap and kd_vocab); without, only the plain loss's
        fields (for a binding that does not take the options)."""
        student, teacher, labels, grad, grad_scale = self.student, self.teacher, self.labels, self.grad, self.grad_scale
        n, vocab = student.shape
        use_teacher = self.use_teacher
        if grad is not None:
            grad_scale = grad_scale.to(device=student.device, dtype=torch.float32).contiguous()
        extra = {}
        if with_options:
            options = self.options
            extra = dict(
                kd_vocab=options.kd_vocab or 0,
                softcap=options.softcap or 0.0,
                teacher_softcap=options.teacher_softcap or 0.0,
                divergence=DIVERGENCES.index(options.divergence),  # salt::Divergence
                beta=options.beta,
                label_smoothing=options.label_smoothing,
                z_loss=options.z_loss,
                accuracy=out.accuracy.data_ptr() if out.accuracy is not None else 0,
            )
        return dict(
            student=student.data_ptr(),
            student_row_stride=student.stride(0),
            student_dtype=DTYPE_CODES[student.dtype],
            teacher=teacher.data_ptr() if use_teacher else 0,
            teacher_row_stride=teacher.stride(0) if use_teacher else 0,
            teacher_dtype=DTYPE_CODES[teacher.dtype] if use_teacher else 0,
            labels=labels.data_ptr(),
            labels_stride=labels.stride(0) if labels.dim() else 0,
            labels_int64=labels.dtype == torch.int64,
            n_rows=n,
            vocab=vocab,
            kd_weight=self.kd_weight if use_teacher else 0.0,
            temperature=self.temperature,
            ignore_index=self.ignore_index,
            loss=out.loss.data_ptr(),
            ce=out.ce.data_ptr(),
            kd=out.kd.data_ptr(),
            lse=out.lse.data_ptr(),
            grad=grad.data_ptr() if grad is not None else 0,
            grad_row_stride=grad.stride(0) if grad is not None else 0,
            grad_scale=grad_scale.data_ptr() if grad is not None else 0,
            grad_scale_stride=(1 if grad_scale.numel() > 1 else 0) if grad is not None else 0,
            **extra,
        )


def result_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    """Loss and parts come back in float32 (as autocast's cross_entropy), float64 for float64."""
    return torch.float64 if logits_dtype == torch.float64 else torch.float32


# dtype codes of csrc/salt_math.h (salt::Dtype), shared by the compiled backends' launchers.
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def compiled_rows_args(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, out: RowOutputs, *,
                       options: LossOptions | None = None, **keywords) -> dict:
    """RowArgs.kernel_args of these arguments, with the option fields only when `options` is given."""
    args = RowArgs(student, teacher, labels, options=options or DEFAULT_OPTIONS, **keywords)
    return args.kernel_args(out, with_options=options is not None)


def unit_columns(x: torch.Tensor) -> torch.Tensor:
    """x with unit column stride (its rows may keep any stride): x itself when it has one (or at
    most one column), else a contiguous copy."""
    return x if x.stride(-1) == 1 or x.shape[-1] <= 1 else x.contiguous()


def topk_kernel_args(args: RowArgs, indices: torch.Tensor, logprobs: torch.Tensor, tail: str) -> tuple[dict, tuple]:
    """The fields of salt::TopkArgs beyond its rows, as keyword arguments of the compiled backends'
    `topk_rows` (python/bind_args.h), with kd_weight (RowArgs.kernel_args passes 0 without a full
    teacher; the slots are read when it is > 0 and k > 0). Slots whose last dimension is strided
    are copied contiguous: the second value holds the tensors the addresses point into, to be kept
    alive until the kernel has run."""
    use_teacher = args.kd_weight > 0 and indices.shape[-1] > 0
    if use_teacher:
        indices, logprobs = unit_columns(indices), unit_columns(logprobs)
    fields = dict(
        kd_weight=args.kd_weight if use_teacher else 0.0,
        indices=indices.data_ptr() if use_teacher else 0,
        indices_row_stride=indices.stride(0) if use_teacher else 0,
        indices_int64=indices.dtype == torch.int64,
        logprobs=logprobs.data_ptr() if use_teacher else 0,
        logprobs_row_stride=logprobs.stride(0) if use_teacher else 0,
        logprobs_dtype=DTYPE_CODES[logprobs.dtype] if use_teacher else 0,
        k=indices.shape[-1] if use_teacher else 0,
        bucket=tail == "bucket",
    )
    return fields, (indices, logprobs)
