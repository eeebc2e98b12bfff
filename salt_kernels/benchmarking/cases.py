"""The benchmark grid: variants (our backends and the baselines), shapes, dtypes and passes, the
bytes each case must move at the least, and how much memory a case needs (to skip what does not
fit, saying so)."""

from __future__ import annotations

import itertools
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
# minutes a call): the default there is a subset that takes a few minutes on 2 cores.
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

VARIANT_TITLES = {
    "cpu": "salt_kernels cpu (fused C++)",
    "triton": "salt_kernels triton",
    "cuda": "salt_kernels cuda",
    "reference": "salt_kernels reference (oracle)",
    "eager": "PyTorch eager",
    "compile": "torch.compile",
    "liger": "Liger-Kernel CE + KL",
}

# Memory a variant holds above its inputs, in fp32 [N x V] tensors (4 * N * V bytes), plus its
# gradient in the input dtype for the passes that make one. Upper estimates from the code paths:
# eager keeps log_softmax outputs for CE and both KL sides, z / tau, the KL rows and their
# masked copy (about 6, measured; 8 leaves room for the bf16 upcasts); torch.compile keeps about
# one; Liger's CE writes its gradient into the input, its KL side is plain PyTorch log_softmax.
FP32_TEMPORARIES = {
    "cpu": 0.0,
    "triton": 0.0,
    "cuda": 0.0,
    "reference": 0.5,  # chunked: a few fp32 copies of one chunk, not of the whole tensor
    "eager": 8.0,
    "compile": 2.0,
    "liger": 5.0,
}


@dataclass(frozen=True)
class Case:
    variant: str
    n: int
    v: int
    dtype: str  # "fp32" | "bf16"

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

    def min_bytes(self, pass_: str) -> int:
        """The least traffic the pass needs: read student and teacher logits once (and labels),
        and for passes that make the gradient, write it once (docs/design.md, "Cost model")."""
        labels = self.n * 8
        if pass_ == "fwd":
            return 2 * self.logits_bytes + labels
        return 3 * self.logits_bytes + labels

    def input_bytes(self) -> int:
        return 2 * self.logits_bytes + self.n * 8

    def estimated_bytes(self) -> int:
        """Memory the case's process needs at its peak: inputs, the gradient, the variant's
        temporaries, and about 1 GiB for the runtime (and the compiler for torch.compile)."""
        temps = FP32_TEMPORARIES[self.variant] * 4 * self.n * self.v
        runtime = (2 << 30) if self.variant == "compile" else (1 << 30)
        return int(self.input_bytes() + self.logits_bytes + temps + runtime)


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


def variant_status(variant: str, device: torch.device) -> tuple[bool, str]:
    """Whether a variant runs on this device, and why not."""
    from . import baselines
    from ..backends import registry as dispatch

    if variant == "triton" and device.type == "cpu":
        return False, ("Triton runs on CUDA GPUs; on CPU only under its interpreter "
                       "(TRITON_INTERPRET=1), whose times mean nothing")
    if variant in SALT_BACKENDS:
        ok, why = dispatch.backend_status(variant, device)
        return ok, why
    if variant == "eager":
        return True, ""
    if variant == "compile":
        return True, ""
    if variant == "liger":
        if device.type != "cuda":
            return False, "Liger-Kernel runs on CUDA GPUs only"
        return baselines.liger_available()
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def choose_variants(requested: list[str] | None, device: torch.device) -> tuple[list[str], list[tuple[str, str]]]:
    """(variants to run, [(variant, reason it is left out)])."""
    if requested is not None:
        unknown = [v for v in requested if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
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


def make_cases(variants, ns, vs, dtypes) -> list[Case]:
    cases = []
    for dtype, n, v, variant in itertools.product(dtypes, ns, vs, variants):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        cases.append(Case(variant, n, v, dtype))
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


def make_loss_fn(variant: str, kd_weight: float = KD_WEIGHT, temperature: float = TEMPERATURE):
    """fn(student, teacher, labels) -> scalar loss (mean over rows) for a variant."""
    from . import baselines
    from ..functional import salt_loss

    if variant in SALT_BACKENDS:

        def fn(student, teacher, labels):
            return salt_loss(
                student, teacher, labels, kd_weight=kd_weight, temperature=temperature, backend=variant
            )

        return fn
    if variant == "eager":
        return baselines.eager(kd_weight, temperature)
    if variant == "compile":
        return baselines.compiled(kd_weight, temperature)
    if variant == "liger":
        return baselines.liger(kd_weight, temperature)
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
