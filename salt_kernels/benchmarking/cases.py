"""The case builder of every benchmark (`salt-kernels bench`, the fixed-size scripts in
benchmarks/, the pytest-benchmark suite): variants (our backends and the baselines), shapes,
dtypes and passes, the inputs and the function a case times, the bytes it must move at the least,
and how much memory it needs (to skip what does not fit, saying so).

Two ops: "loss" times salt_loss and its baselines on [N x V] student and teacher logits;
"linear" times linear_salt_loss and its baselines on hidden states [N x d] and output
projections [V x d] (the logits are made inside the loss, or not at all)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch

# The full benchmark grid.
FULL_N = (1024, 4096, 16384)
FULL_V = (32000, 128256, 256000)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PASSES = ("fwd", "bwd", "fwdbwd")
PASS_TITLES = {
    "fwd": "forward (loss only, no gradient)",
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

VARIANT_TITLES = {
    "cpu": "salt_kernels cpu (fused C++)",
    "triton": "salt_kernels triton",
    "cuda": "salt_kernels cuda",
    "reference": "salt_kernels reference (oracle)",
    "eager": "PyTorch eager",
    "compile": "torch.compile",
    "liger": "Liger-Kernel CE + KL",
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
             "reference": 0.5},  # chunked: a few fp32 copies of one chunk, not of the whole tensor
    "linear": {"torch": 10.0, "torch+salt": 3.0, "compile": 4.0, "linear": 0.25, "liger": 1.0},
}


def triton_plan(variant: str) -> dict | None:
    """{"MODE", "BLOCK_V", "NUM_WARPS"} of a triton-<mode>[-b<block>-w<warps>] variant, else None."""
    m = TRITON_PLAN.match(variant)
    if not m:
        return None
    return {"MODE": m.group(1), "BLOCK_V": int(m.group(2)) if m.group(2) else None,
            "NUM_WARPS": int(m.group(3)) if m.group(3) else None}


def base_variant(variant: str) -> str:
    return "triton" if triton_plan(variant) else variant


def fused_backward(variant: str) -> bool:
    """Whether the variant computes the gradient in the forward (its backward alone moves no
    logits-sized data)."""
    return base_variant(variant) in SALT_BACKENDS


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

    def min_bytes(self, pass_: str) -> int | None:
        """The least traffic the pass needs: read student and teacher logits once (and labels),
        and for passes that make the gradient, write it once (docs/design.md, "Cost model").
        None for the linear op, which is bound by its matmuls."""
        if self.op == "linear":
            return None
        labels = self.n * 8
        if pass_ == "fwd":
            return 2 * self.logits_bytes + labels
        return 3 * self.logits_bytes + labels

    def output_bytes(self, pass_: str) -> int:
        """The gradients a pass returns (student logits; hidden states and weight for linear)."""
        if pass_ == "fwd":
            return 0
        if self.op == "linear":
            return (self.n + self.v) * self.d_s * self.element_size
        return self.logits_bytes

    def input_bytes(self) -> int:
        if self.op == "linear":
            return (self.n + self.v) * (self.d_s + self.d_t) * self.element_size + self.n * 8
        return 2 * self.logits_bytes + self.n * 8

    def estimated_bytes(self) -> int:
        """Memory the case's process needs at its peak: inputs, the gradient, the variant's
        temporaries, and about 1 GiB for the runtime (and the compiler for torch.compile)."""
        temps = FP32_TEMPORARIES[self.op].get(base_variant(self.variant), 0.0) * 4 * self.n * self.v
        runtime = (2 << 30) if self.variant == "compile" else (1 << 30)
        return int(self.input_bytes() + self.output_bytes("fwdbwd") + temps + runtime)

    def label(self) -> str:
        dims = f" d_s={self.d_s} d_t={self.d_t}" if self.op == "linear" else ""
        return f"{self.variant} N={self.n} V={self.v}{dims} {self.dtype}"


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
    return variant in VARIANTS or triton_plan(variant) is not None


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
    if base_variant(variant) == "triton" and device.type == "cpu":
        return False, ("Triton runs on CUDA GPUs; on CPU only under its interpreter "
                       "(TRITON_INTERPRET=1), whose times mean nothing")
    return dispatch.backend_status(base_variant(variant), device)


def choose_variants(requested: list[str] | None, device: torch.device) -> tuple[list[str], list[tuple[str, str]]]:
    """(variants to run, [(variant, reason it is left out)])."""
    if requested is not None:
        unknown = [v for v in requested if not known_variant(v)]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)} "
                             "(or a triton launch plan, triton-<fused|split|sync>[-b<block>-w<warps>])")
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
    return run, left_out


def make_cases(variants, ns, vs, dtypes, op: str = "loss", d_s: int | None = None, d_t: int | None = None) -> list[Case]:
    cases = []
    for dtype, n, v, variant in itertools.product(dtypes, ns, vs, variants):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        cases.append(Case(variant, n, v, dtype, op, d_s, d_t))
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


def case_inputs(case: Case, device: torch.device, seed: int = 0) -> tuple[tuple, tuple]:
    """(the inputs of the case's function, the inputs that get a gradient)."""
    if case.op == "linear":
        inputs = make_linear_inputs(case.n, case.d_s, case.d_t, case.v, case.torch_dtype, device, seed)
        return inputs, inputs[:2]
    inputs = make_inputs(case.n, case.v, case.torch_dtype, device, seed)
    return inputs, inputs[:1]


def _with_triton_plan(fn, plan: dict):
    from ..backends.triton import launcher

    def run(*args):
        saved = {k: getattr(launcher, k) for k in plan}
        for k, x in plan.items():
            setattr(launcher, k, x)
        try:
            return fn(*args)
        finally:
            for k, x in saved.items():
                setattr(launcher, k, x)

    return run


def make_loss_fn(variant: str, kd_weight: float = KD_WEIGHT, temperature: float = TEMPERATURE):
    """fn(student, teacher, labels) -> scalar loss (mean over rows) for a variant."""
    from . import baselines
    from ..functional import salt_loss

    if base_variant(variant) in SALT_BACKENDS:

        def fn(student, teacher, labels):
            return salt_loss(student, teacher, labels, kd_weight=kd_weight, temperature=temperature,
                             backend=base_variant(variant))

        plan = triton_plan(variant)
        return _with_triton_plan(fn, plan) if plan else fn
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


def case_fn(case: Case, kd_weight: float, temperature: float, device: torch.device, options: dict | None = None):
    """The function a case times; options: {"backend", "chunk_size"} of the linear op."""
    if case.op == "linear":
        return make_linear_fn(case.variant, kd_weight, temperature, device=device, **(options or {}))
    return make_loss_fn(case.variant, kd_weight, temperature)
