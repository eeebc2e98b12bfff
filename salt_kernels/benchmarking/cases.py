"""The case builder of every benchmark (`salt-kernels bench`, the fixed-size scripts in
benchmarks/, the pytest-benchmark suite): variants (our backends and the baselines), shapes,
dtypes and passes, the inputs and the function a case times, the bytes it must move at the least,
and how much memory it needs (to skip what does not fit, saying so).

Two ops: "loss" times salt_loss and its baselines on [N x V] student and teacher logits;
"linear" times linear_salt_loss and its baselines on hidden states [N x d] and output
projections [V x d] (the logits are made inside the loss, or not at all).

The loss op also has an option grid (OPTIONS: each salt_kernels variant once per distillation
option of salt_loss, a backend that does not compute an option is skipped with its reason) and
the "topk" variant: topk_salt_loss with the top k of the same teacher's log_softmax, to compare
an offline top-k teacher with the full teacher on the same inputs."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch

# The full benchmark grid.
FULL_N = (1024, 4096, 16384)
FULL_V = (32000, 128256, 256000)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PASSES = ("fwd", "bwd", "fwdbwd")  # the default passes (and the pytest-benchmark suite's)
# Opt-in passes: fwd_nograd is the forward under torch.no_grad() with inputs that require grad
# (an evaluation step inside a training loop). The losses skip all gradient work then (no
# gradient buffer), so it shows the forward alone against a training step's forward + backward.
ALL_PASSES = PASSES + ("fwd_nograd",)
PASS_TITLES = {
    "fwd": "forward (loss only, no gradient)",
    "fwd_nograd": "forward under torch.no_grad() with inputs that require grad",
    "bwd": "backward alone (after an untimed forward)",
    "fwdbwd": "forward + backward (one training step of the loss)",
}
# On a CPU the full grid takes hours (eager at 16384 x 256000 fp32 holds ~150 GB and runs
# minutes a call): the default there is a small subset.
CPU_DEFAULT_N = (1024,)
CPU_DEFAULT_V = (32000, 128256)

TEMPERATURE = 2.0
KD_WEIGHT = 0.5

SALT_BACKENDS = ("cpu", "triton", "cuda", "reference")
BASELINES = ("eager", "compile", "liger")
VARIANTS = SALT_BACKENDS + BASELINES
# Run only when asked for: the reference backend is the plain-PyTorch oracle the kernels are
# tested against, not a performance backend (bf16 at 1024 x 32000 takes seconds).
OPT_IN = ("reference",)
# One launch plan of the triton backend: triton-<mode>[-b<block>-w<warps>] (never by default).
TRITON_PLAN = re.compile(r"triton-(fused|split|sync)(?:-b(\d+)-w(\d+))?$")
TRITON_SWEEP = tuple(
    f"triton-{mode}-b{block}-w{warps}"
    for mode in ("fused", "split", "sync")
    for block, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 16))
)
# One launch configuration of the cuda backend: cuda-b<threads>-c<cluster> (threads 32: one warp
# per row; 256 or 512: a block, or a cluster of `cluster` blocks, per row; never by default).
CUDA_PLAN = re.compile(r"cuda-b(32|256|512)-c(1|2|4|8)$")
CUDA_SWEEP = ("cuda-b32-c1",) + tuple(f"cuda-b{b}-c{c}" for b in (256, 512) for c in (1, 2, 4, 8))

# Known but never in the default set, nor in VARIANTS (whose functions take full teacher logits):
# topk_salt_loss with the top k of the teacher (--backends ...,topk).
TOPK = "topk"
TOPK_K = 64
EXTRA_VARIANTS = (TOPK,)

# The option grid of the loss op (`salt-kernels bench --options`): each name stands for these
# salt_loss keywords (kd_vocab depends on V: KD over the first V - KD_VOCAB_CUT entries, the
# teacher keeps its V columns).
OPTIONS = ("default", "softcap", "label_smoothing", "z_loss", "kd_vocab", "reverse_kl", "jsd")
KD_VOCAB_CUT = 128
OPTION_TITLES = {
    "default": "default",
    "softcap": "softcap=30",
    "label_smoothing": "label_smoothing=0.1",
    "z_loss": "z_loss=1e-4",
    "kd_vocab": f"kd_vocab=V-{KD_VOCAB_CUT}",
    "reverse_kl": "reverse_kl",
    "jsd": "jsd beta=0.5",
}
# The options topk_salt_loss takes (its divergence is the forward KL over the teacher's top k).
TOPK_OPTIONS = ("default", "softcap", "label_smoothing", "z_loss")

VARIANT_TITLES = {
    "cpu": "salt_kernels cpu (fused C++)",
    "triton": "salt_kernels triton",
    "cuda": "salt_kernels cuda",
    "reference": "salt_kernels reference (oracle)",
    "eager": "PyTorch eager",
    "compile": "torch.compile",
    "liger": "Liger-Kernel CE + KL",
    "topk": "topk_salt_loss (top-k teacher)",
}

LINEAR_VARIANTS = ("torch", "torch+salt", "linear", "compile", "liger")
LINEAR_TITLES = {
    "torch": "plain PyTorch (both logits, F.cross_entropy + F.kl_div)",
    "torch+salt": "logits + salt_loss",
    "linear": "linear_salt_loss (no logits held)",
    "compile": "torch.compile of plain PyTorch",
    "liger": "Liger-Kernel LigerFusedLinearJSDLoss",
}

# Memory a variant holds above its inputs, in fp32 [N x V] tensors (4 * N * V bytes), plus its
# gradient in the input dtype for the passes that make one. Upper estimates from the code paths:
# eager keeps log_softmax outputs for CE and both KL sides, z / tau, the KL rows and their
# masked copy (about 6, measured; 8 leaves room for the bf16 upcasts); torch.compile keeps about
# one; Liger's CE writes its gradient into the input, its KL side is plain PyTorch log_softmax.
# The linear variants add the logits they materialize (linear_salt_loss: one chunk of them).
FP32_TEMPORARIES = {
    "loss": {"cpu": 0.0, "triton": 0.0, "cuda": 0.0, "eager": 8.0, "compile": 2.0, "liger": 5.0,
             "reference": 0.5,  # chunked: a few fp32 copies of one chunk, not of the whole tensor
             "topk": 1.5},  # the full teacher while its top k is taken, then a chunked backend
    "linear": {"torch": 10.0, "torch+salt": 3.0, "compile": 4.0, "linear": 0.25, "liger": 1.0},
}


def triton_plan(variant: str) -> dict | None:
    """{"MODE", "BLOCK_V", "NUM_WARPS"} of a triton-<mode>[-b<block>-w<warps>] variant, else None."""
    m = TRITON_PLAN.match(variant)
    if not m:
        return None
    return {"MODE": m.group(1), "BLOCK_V": int(m.group(2)) if m.group(2) else None,
            "NUM_WARPS": int(m.group(3)) if m.group(3) else None}


def cuda_plan(variant: str) -> dict | None:
    """{"_BLOCK", "_CLUSTER"} (the cuda backend's overrides) of a cuda-b<threads>-c<cluster>
    variant, else None."""
    m = CUDA_PLAN.match(variant)
    return {"_BLOCK": int(m.group(1)), "_CLUSTER": int(m.group(2))} if m else None


def base_variant(variant: str) -> str:
    if triton_plan(variant):
        return "triton"
    return "cuda" if cuda_plan(variant) else variant


def fused_backward(variant: str) -> bool:
    """Whether the variant computes the gradient in the forward (its backward alone moves no
    logits-sized data)."""
    return base_variant(variant) in SALT_BACKENDS or variant == TOPK


def salt_variant(variant: str) -> bool:
    """A salt_kernels variant (a backend, a triton plan, or topk): the ones the option grid runs."""
    return fused_backward(variant)


def option_kwargs(option: str, v: int) -> dict:
    """The salt_loss keywords of an option of the grid (OPTIONS) at vocabulary size v."""
    if option not in OPTIONS:
        raise ValueError(f"unknown option {option!r}; choose from {', '.join(OPTIONS)}")
    return {
        "default": {},
        "softcap": {"softcap": 30.0},
        "label_smoothing": {"label_smoothing": 0.1},
        "z_loss": {"z_loss": 1e-4},
        "kd_vocab": {"kd_vocab": v - KD_VOCAB_CUT},
        "reverse_kl": {"divergence": "reverse_kl"},
        "jsd": {"divergence": "jsd", "beta": 0.5},
    }[option]


def loss_options(option: str, v: int):
    """The LossOptions (salt_kernels/backends/base.py) of an option of the grid."""
    from ..backends.base import LossOptions

    return LossOptions(**option_kwargs(option, v))


def title(variant: str, op: str = "loss") -> str:
    if op == "linear":
        return LINEAR_TITLES.get(variant, variant)
    return VARIANT_TITLES.get(variant, f"salt_kernels {variant}")


@dataclass(frozen=True)
class Case:
    variant: str
    n: int
    v: int
    dtype: str  # "fp32" | "bf16"
    op: str = "loss"  # "loss" | "linear"
    d_s: int | None = None  # linear: student and teacher hidden sizes
    d_t: int | None = None
    option: str = "default"  # loss: the distillation option of the grid (OPTIONS)
    k: int | None = None  # topk: the teacher's top k

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def logits_bytes(self) -> int:
        """One [N x V] logits tensor in the input dtype."""
        return self.n * self.v * self.element_size

    @property
    def topk_bytes(self) -> int:
        """topk: the teacher's indices (int64, as torch.topk gives them) and log-probs [N x k]."""
        return self.n * self.k * (8 + self.element_size) if self.variant == TOPK else 0

    def min_bytes(self, pass_: str) -> int | None:
        """The least traffic the pass needs: read student and teacher logits once (and labels),
        and for passes that make the gradient, write it once (docs/design.md, "Cost model").
        None for the linear op, which is bound by its matmuls."""
        if self.op == "linear":
            return None
        labels = self.n * 8
        # topk reads its [N x k] teacher instead of the teacher's logits
        teacher = self.topk_bytes if self.variant == TOPK else self.logits_bytes
        if pass_ in ("fwd", "fwd_nograd"):
            return self.logits_bytes + teacher + labels
        return 2 * self.logits_bytes + teacher + labels

    def output_bytes(self, pass_: str) -> int:
        """The gradients a pass returns (student logits; hidden states and weight for linear)."""
        if pass_ in ("fwd", "fwd_nograd"):
            return 0
        if self.op == "linear":
            return (self.n + self.v) * self.d_s * self.element_size
        return self.logits_bytes

    def input_bytes(self) -> int:
        if self.op == "linear":
            return (self.n + self.v) * (self.d_s + self.d_t) * self.element_size + self.n * 8
        if self.variant == TOPK:
            return self.logits_bytes + self.topk_bytes + self.n * 8
        return 2 * self.logits_bytes + self.n * 8

    def estimated_bytes(self) -> int:
        """Memory the case's process needs at its peak: inputs, the gradient, the variant's
        temporaries, and about 1 GiB for the runtime (and the compiler for torch.compile)."""
        temps = FP32_TEMPORARIES[self.op].get(base_variant(self.variant), 0.0) * 4 * self.n * self.v
        runtime = (2 << 30) if self.variant == "compile" else (1 << 30)
        return int(self.input_bytes() + self.output_bytes("fwdbwd") + temps + runtime)

    def label(self) -> str:
        dims = f" d_s={self.d_s} d_t={self.d_t}" if self.op == "linear" else ""
        k = f" k={self.k}" if self.variant == TOPK else ""
        option = f" [{self.option}]" if self.option != "default" else ""
        return f"{self.variant}{k} N={self.n} V={self.v}{dims} {self.dtype}{option}"


def parse_list(text: str | None, kind=str) -> list | None:
    """'1024,4096' -> [1024, 4096]; None stays None."""
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None


def default_grid(device: torch.device, full: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if device.type == "cpu" and not full:
        return CPU_DEFAULT_N, CPU_DEFAULT_V
    return FULL_N, FULL_V


def known_variant(variant: str, op: str = "loss") -> bool:
    if op == "linear":
        return variant in LINEAR_VARIANTS
    return (variant in VARIANTS or variant in EXTRA_VARIANTS or triton_plan(variant) is not None
            or cuda_plan(variant) is not None)


def variant_status(variant: str, device: torch.device, op: str = "loss", backend: str = "auto") -> tuple[bool, str]:
    """Whether a variant runs on this device, and why not (`backend`: the salt_kernels backend
    of the linear op's torch+salt and linear variants)."""
    from . import baselines
    from ..backends import registry as dispatch

    if not known_variant(variant, op):
        names = LINEAR_VARIANTS if op == "linear" else VARIANTS
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(names)}")
    if variant == "liger":
        if device.type != "cuda":
            return False, "Liger-Kernel runs on CUDA GPUs only"
        return baselines.liger_available(linear=op == "linear")
    if variant in ("eager", "compile", "torch"):
        return True, ""
    if op == "linear":  # torch+salt, linear
        try:
            dispatch.resolve(backend, device)
        except (ValueError, RuntimeError) as exc:
            return False, str(exc).splitlines()[0]
        return True, ""
    if variant == TOPK:
        ok, why = topk_backend(device)
        return (True, "") if ok else (False, why)
    if base_variant(variant) == "triton" and device.type == "cpu":
        return False, ("Triton runs on CUDA GPUs; on CPU only under its interpreter "
                       "(TRITON_INTERPRET=1), whose times mean nothing")
    return dispatch.backend_status(base_variant(variant), device)


def topk_backend(device: torch.device, dtype: torch.dtype | None = None, options=None) -> tuple[bool, str]:
    """(True, the backend topk_salt_loss runs on with backend="auto") or (False, why none can)."""
    from ..backends import registry as dispatch

    try:
        return True, dispatch.resolve_name("auto", device, dtype, options, kind="topk_rows")
    except (ValueError, RuntimeError) as exc:
        return False, " ".join(str(exc).split())


def case_status(case: "Case", device: torch.device) -> tuple[bool, str]:
    """Whether a loss case with its option (and top k) can run, and why not: a backend that does
    not compute the option gives its own reason (registry.backend_status with the LossOptions)."""
    from ..backends import registry as dispatch

    if case.op != "loss":
        return True, ""
    if case.option not in OPTIONS:
        raise ValueError(f"unknown option {case.option!r}; choose from {', '.join(OPTIONS)}")
    if not salt_variant(case.variant):
        if case.option != "default":
            return False, f"{title(case.variant)} computes the plain SALT loss only (the default option)"
        return True, ""
    if case.option == "kd_vocab" and case.v <= KD_VOCAB_CUT:
        return False, f"kd_vocab = V - {KD_VOCAB_CUT} needs V > {KD_VOCAB_CUT}, got V = {case.v}"
    if case.variant == TOPK:
        if case.option not in TOPK_OPTIONS:
            return False, ("topk_salt_loss takes no kd_vocab or divergence: its KD is the forward KL over "
                           "the teacher's top k")
        if not case.k or not 1 <= case.k <= case.v:
            return False, f"the teacher's top k must be in [1, V = {case.v}], got k = {case.k}"
        ok, why = topk_backend(device, case.torch_dtype, loss_options(case.option, case.v))
        return (True, "") if ok else (False, why)
    return dispatch.backend_status(base_variant(case.variant), device, case.torch_dtype,
                                   options=loss_options(case.option, case.v))


def choose_variants(requested: list[str] | None, device: torch.device) -> tuple[list[str], list[tuple[str, str]]]:
    """(variants to run, [(variant, reason it is left out)])."""
    if requested is not None:
        unknown = [v for v in requested if not known_variant(v)]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(VARIANTS + EXTRA_VARIANTS)} "
                             "(or a triton launch plan, triton-<fused|split|sync>[-b<block>-w<warps>], "
                             "or a cuda launch configuration, cuda-b<32|256|512>-c<1|2|4|8>)")
        names = requested
    else:
        names = [v for v in VARIANTS if v not in OPT_IN]
    run, left_out = [], []
    for name in names:
        ok, why = variant_status(name, device)
        (run.append(name) if ok else left_out.append((name, why)))
    if requested is None:
        for name in OPT_IN:
            left_out.append((name, "the plain-PyTorch oracle, not a performance backend; "
                                   f"add it with --backends ...,{name}"))
        left_out.append((TOPK, "topk_salt_loss with a top-k teacher, another loss; add it with "
                               f"--backends ...,{TOPK}"))
    return run, left_out


def make_cases(variants, ns, vs, dtypes, op: str = "loss", d_s: int | None = None, d_t: int | None = None,
               options=("default",), k: int = TOPK_K) -> list[Case]:
    """The grid: dtype x N x V x variant x option (a variant's options one after the other, so
    that their ratios are measured close together). The option grid is for the salt_kernels
    variants; the baselines run the default option only (when it is in `options`)."""
    for option in options:
        if option not in OPTIONS:
            raise ValueError(f"unknown option {option!r}; choose from {', '.join(OPTIONS)}")
    cases = []
    for dtype, n, v, variant, option in itertools.product(dtypes, ns, vs, variants, options):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        if op == "loss" and option != "default" and not salt_variant(variant):
            continue
        cases.append(Case(variant, n, v, dtype, op, d_s, d_t, option if op == "loss" else "default",
                          k if variant == TOPK else None))
    return cases


def make_inputs(n: int, v: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Student and teacher logits with a realistic spread (std 3 around a per-row offset) and
    labels; generated in row blocks (on the GPU for CUDA inputs) straight into the target dtype,
    so that the process never holds much more than the inputs. The same seed gives the same
    inputs to every variant on a device, so their loss values can be compared."""
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    g = torch.Generator(device=gen_device).manual_seed(seed)
    student = torch.empty(n, v, dtype=dtype, device=device)
    teacher = torch.empty(n, v, dtype=dtype, device=device)
    block = max(1, (16 << 20) // max(1, v))
    for out, offset in ((student, 0.0), (teacher, 0.5)):
        for start in range(0, n, block):
            rows = min(block, n - start)
            x = torch.randn(rows, v, generator=g, device=gen_device) * 3.0 + offset
            x += torch.randn(rows, 1, generator=g, device=gen_device) * 2.0
            out[start : start + rows].copy_(x)
    labels = torch.randint(0, v, (n,), generator=g, device=gen_device).to(device)
    return student, teacher, labels


def make_linear_inputs(n: int, d_s: int, d_t: int, v: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Hidden states ~ N(0, 1) and output projections ~ N(0, 3 / sqrt(d)), so that the logits
    have a std of about 3, and labels: (h_s, w_s, h_t, w_t, labels)."""
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    g = torch.Generator(device=gen_device).manual_seed(seed)

    def randn(rows, cols, scale=1.0):
        return (torch.randn(rows, cols, generator=g, device=gen_device) * scale).to(device=device, dtype=dtype)

    h_s, w_s = randn(n, d_s), randn(v, d_s, 3.0 / d_s**0.5)
    h_t, w_t = randn(n, d_t), randn(v, d_t, 3.0 / d_t**0.5)
    labels = torch.randint(0, v, (n,), generator=g, device=gen_device).to(device)
    return h_s, w_s, h_t, w_t, labels


def topk_teacher(teacher: torch.Tensor, k: int, dtype: torch.dtype | None = None):
    """(indices [N, k] int64, log-probs [N, k]) of the teacher's k most likely tokens: torch.topk of
    log_softmax (temperature 1, in fp32), as an inference server returns them; in row blocks."""
    n, v = teacher.shape
    indices = torch.empty(n, k, dtype=torch.int64, device=teacher.device)
    logprobs = torch.empty(n, k, dtype=dtype or teacher.dtype, device=teacher.device)
    block = max(1, (16 << 20) // max(1, v))
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        values, idx = torch.topk(torch.log_softmax(teacher[rows].float(), dim=-1), k, dim=-1)
        indices[rows] = idx
        logprobs[rows] = values.to(logprobs.dtype)
    return indices, logprobs


def case_inputs(case: Case, device: torch.device, seed: int = 0) -> tuple[tuple, tuple]:
    """(the inputs of the case's function, the inputs that get a gradient). topk: (student,
    teacher_indices, teacher_logprobs, labels), the top k of the same teacher logits every other
    variant gets (the same seed), which are then freed."""
    if case.op == "linear":
        inputs = make_linear_inputs(case.n, case.d_s, case.d_t, case.v, case.torch_dtype, device, seed)
        return inputs, inputs[:2]
    inputs = make_inputs(case.n, case.v, case.torch_dtype, device, seed)
    if case.variant == TOPK:
        student, teacher, labels = inputs
        indices, logprobs = topk_teacher(teacher, case.k, case.torch_dtype)
        del teacher, inputs
        inputs = (student, indices, logprobs, labels)
    return inputs, inputs[:1]


def _with_plan(fn, module, plan: dict):
    """fn with the module attributes of `plan` set during each call (a backend's tuning knobs)."""

    def run(*args):
        saved = {k: getattr(module, k) for k in plan}
        for k, x in plan.items():
            setattr(module, k, x)
        try:
            return fn(*args)
        finally:
            for k, x in saved.items():
                setattr(module, k, x)

    return run


def with_variant_plan(fn, variant: str):
    """fn under the launch plan a triton-... or cuda-... variant names (fn itself otherwise)."""
    if triton_plan(variant):
        from ..backends.triton import launcher

        return _with_plan(fn, launcher, triton_plan(variant))
    if cuda_plan(variant):
        from ..backends import cuda

        return _with_plan(fn, cuda, cuda_plan(variant))
    return fn


def make_loss_fn(variant: str, kd_weight: float = KD_WEIGHT, temperature: float = TEMPERATURE,
                 loss_kwargs: dict | None = None, backend: str = "auto"):
    """fn(student, teacher, labels) -> scalar loss (mean over rows) for a variant; loss_kwargs: the
    option's salt_loss keywords (option_kwargs). topk: fn(student, teacher_indices,
    teacher_logprobs, labels) -> topk_salt_loss on `backend`."""
    from . import baselines
    from ..functional import salt_loss, topk_salt_loss

    kw = dict(loss_kwargs or {})
    if variant == TOPK:

        def topk_fn(student, indices, logprobs, labels):
            return topk_salt_loss(student, indices, logprobs, labels, kd_weight=kd_weight, temperature=temperature,
                                  backend=backend, **kw)

        return topk_fn
    if base_variant(variant) in SALT_BACKENDS:

        def fn(student, teacher, labels):
            return salt_loss(student, teacher, labels, kd_weight=kd_weight, temperature=temperature,
                             backend=base_variant(variant), **kw)

        return with_variant_plan(fn, variant)
    if kw:
        raise ValueError(f"{variant} computes the plain SALT loss only, not {', '.join(kw)}")
    if variant == "eager":
        return baselines.eager(kd_weight, temperature)
    if variant == "compile":
        return baselines.compiled(kd_weight, temperature)
    if variant == "liger":
        return baselines.liger(kd_weight, temperature)
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def make_linear_fn(variant: str, kd_weight: float = KD_WEIGHT, temperature: float = TEMPERATURE,
                   backend: str = "auto", chunk_size: int | None = None, device: torch.device | None = None):
    """fn(h_s, w_s, h_t, w_t, labels) -> scalar loss for a variant of the linear op."""
    import torch.nn.functional as F

    from . import baselines
    from ..functional import linear_salt_loss, salt_loss

    def logits(h_s, w_s, h_t, w_t):
        z = F.linear(h_s, w_s)
        with torch.no_grad():
            return z, F.linear(h_t, w_t)

    def plain(h_s, w_s, h_t, w_t, y):
        return baselines.torch_salt_loss(*logits(h_s, w_s, h_t, w_t), y, kd_weight=kd_weight, temperature=temperature)

    def logits_then_salt(h_s, w_s, h_t, w_t, y):
        return salt_loss(*logits(h_s, w_s, h_t, w_t), y, kd_weight=kd_weight, temperature=temperature, backend=backend)

    def fused(h_s, w_s, h_t, w_t, y):
        return linear_salt_loss(h_s, w_s, h_t, w_t, y, kd_weight=kd_weight, temperature=temperature,
                                backend=backend, chunk_size=chunk_size)

    if variant == "torch":
        return plain
    if variant == "compile":
        return torch.compile(plain, dynamic=False)
    if variant == "torch+salt":
        return logits_then_salt
    if variant == "linear":
        return fused
    if variant == "liger":
        return baselines.liger_linear(kd_weight, temperature, device or torch.device("cuda"))
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(LINEAR_VARIANTS)}")


def case_backend(case: Case, device: torch.device) -> str | None:
    """The salt_kernels backend a loss case runs on (topk: what "auto" picks); None for baselines."""
    if case.op != "loss":
        return None
    if case.variant == TOPK:
        ok, name = topk_backend(device, case.torch_dtype, loss_options(case.option, case.v))
        if not ok:
            raise RuntimeError(name)
        return name
    return base_variant(case.variant) if salt_variant(case.variant) else None


def case_fn(case: Case, kd_weight: float, temperature: float, device: torch.device, options: dict | None = None):
    """The function a case times, with the case's option; options: {"backend", "chunk_size"} of
    the linear op."""
    if case.op == "linear":
        return make_linear_fn(case.variant, kd_weight, temperature, device=device, **(options or {}))
    return make_loss_fn(case.variant, kd_weight, temperature, option_kwargs(case.option, case.v),
                        backend=case_backend(case, device) or "auto")
