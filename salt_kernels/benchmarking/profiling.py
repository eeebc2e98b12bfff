"""`salt-kernels profile`: end-to-end training-step throughput of a CE-only step and a SALT
stage-1 step, with the loss in plain PyTorch or fused (salt_loss on the logits, or
linear_salt_loss on the hidden states).

One step, timed phase by phase (the device synchronized at each boundary):

    teacher forward   SALT only: the frozen teacher under no_grad (its logits; for the fused
                      linear loss its last hidden states, the projection being part of the loss)
    student forward   the student's logits (for the fused linear loss: its last hidden states)
    loss              CE (CE-only step) or (1-w) CE + w tau^2 KL (SALT step)
    backward          loss.backward()
    optimizer         gradient clipping (norm 1), AdamW step, zero_grad

with the trainer's step (salt_kernels/train/step.py): AdamW, bf16 autocast on CUDA, fp32 on CPU.

Model FLOPs per token (for MFU): the student's 6 P + 12 L d T (P: parameters of its matmuls
including the output projection, L layers, d hidden size, T sequence length; PaLM's convention)
and, in a SALT step, the teacher's forward 2 P_t + 4 L_t d_t T.
"""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from .machine import PeakMemory, load_average, peak_flops, synchronize

PHASES = ("teacher_forward", "student_forward", "loss", "backward", "optimizer")
PHASE_TITLES = {
    "teacher_forward": "teacher fwd",
    "student_forward": "student fwd",
    "loss": "loss",
    "backward": "backward",
    "optimizer": "optimizer",
}
LOSSES = ("torch", "fused", "linear")
LOSS_TITLES = {
    "torch": "plain PyTorch",
    "fused": "fused salt_loss",
    "linear": "fused linear_salt_loss",
}
# each loss variant as a loss path of the training step (salt_kernels.train.step.LOSS_PATHS)
STEP_PATHS = {"torch": "torch", "fused": "logits", "linear": "linear"}
KINDS = ("ce", "salt")
KIND_TITLES = {"ce": "CE-only", "salt": "SALT stage 1"}


@dataclass
class ProfileConfig:
    student: str = "student-s"
    teacher: str = "teacher-s"
    vocab_size: int = 32000
    batch_size: int = 8
    seq_len: int = 128
    device: str = "cpu"
    amp: str = "none"  # "none" | "bf16"
    steps: int = 5
    warmup: int = 2
    kd_weight: float = 0.5
    temperature: float = 2.0
    backend: str = "auto"
    losses: list[str] = field(default_factory=lambda: list(LOSSES))
    seed: int = 0
    peak_tflops: float | None = None  # overrides the device table

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def _models():
    try:
        from ..train import models
    except ImportError as exc:
        raise RuntimeError(
            f"salt-kernels profile needs salt_kernels.train.models and transformers ({exc}); "
            "install them with pip install -e '.[train]' (or pip install transformers)"
        ) from exc
    return models


def matmul_params(model) -> int:
    """Parameters of the model's nn.Linear layers (the output projection included, the embedding
    lookup not): the P of the 6 P FLOPs per token."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(model, seq_len: int, train: bool) -> float:
    cfg = model.config
    layers = cfg.num_hidden_layers
    d = cfg.hidden_size
    p = matmul_params(model)
    if train:
        return 6.0 * p + 12.0 * layers * d * seq_len
    return 2.0 * p + 4.0 * layers * d * seq_len


class StepRunner:
    """Builds the models once and runs timed steps for each (kind, loss) variant."""

    def __init__(self, cfg: ProfileConfig):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        models = _models()
        self.models = models
        torch.manual_seed(cfg.seed)
        teacher = models.make_model(cfg.teacher, cfg.vocab_size)
        teacher_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.teacher = teacher.to(self.device, dtype=teacher_dtype).eval().requires_grad_(False)
        torch.manual_seed(cfg.seed + 1)
        self.student_init = models.make_model(cfg.student, cfg.vocab_size)
        for name, model in (("student", self.student_init), ("teacher", self.teacher)):
            if model.config.vocab_size != cfg.vocab_size:
                raise ValueError(f"the {name} has vocab_size {model.config.vocab_size}, not {cfg.vocab_size}")
        g = torch.Generator().manual_seed(cfg.seed)
        ids = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.seq_len + 1), generator=g)
        self.x = ids[:, :-1].contiguous().to(self.device)
        self.y = ids[:, 1:].contiguous().to(self.device)
        self.student_params = sum(p.numel() for p in self.student_init.parameters())
        self.teacher_params = sum(p.numel() for p in self.teacher.parameters())
        self.flops_student = flops_per_token(self.student_init, cfg.seq_len, train=True)
        self.flops_teacher = flops_per_token(self.teacher, cfg.seq_len, train=False)

    def amp(self):
        if self.cfg.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def variant_usable(self, loss: str) -> tuple[bool, str]:
        if loss == "linear":
            from ..train.step import plain_projection

            try:
                plain_projection(self.student_init)
                plain_projection(self.teacher)
            except ValueError as exc:  # a model without a plain lm_head
                return False, str(exc)
        if loss in ("fused", "linear"):
            from ..backends import registry as dispatch

            try:
                dispatch.resolve(self.cfg.backend, self.device)
            except (ValueError, RuntimeError) as exc:
                return False, str(exc).splitlines()[0]
        return True, ""

    def make_step(self, kind: str, loss: str):
        """(student, optimizer, step) where step() -> {phase: seconds}: the training step of
        salt_kernels.train.step (the trainer's), its phases timed apart."""
        from torch.profiler import record_function

        from ..train.step import SaltStep

        cfg = self.cfg
        device = self.device
        student = copy.deepcopy(self.student_init).to(device).train()
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        teacher = self.teacher
        x, y = self.x, self.y
        w = cfg.kd_weight if kind == "salt" else 0.0
        salt = SaltStep(kd_weight=cfg.kd_weight, temperature=cfg.temperature, backend=cfg.backend,
                        path=STEP_PATHS[loss])

        def step() -> dict:
            times = {}
            synchronize(device)
            t0 = time.perf_counter()
            t_out = None
            if kind == "salt":
                with record_function("teacher_forward"), self.amp():
                    t_out = salt.teacher_forward(teacher, input_ids=x)
                    synchronize(device)
            t1 = time.perf_counter()
            with record_function("student_forward"), self.amp():
                out = salt.forward(student, input_ids=x)
                synchronize(device)
            t2 = time.perf_counter()
            with record_function("loss"), self.amp():
                value, _ = salt.loss(out, t_out, y, w)
                synchronize(device)
            t3 = time.perf_counter()
            with record_function("backward"):
                value.backward()
                synchronize(device)
            t4 = time.perf_counter()
            with record_function("optimizer"):
                torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                synchronize(device)
            t5 = time.perf_counter()
            if not torch.isfinite(value.detach()):
                raise FloatingPointError(f"{kind}/{loss}: the loss is {value.item()}")
            times.update(teacher_forward=t1 - t0, student_forward=t2 - t1, loss=t3 - t2,
                         backward=t4 - t3, optimizer=t5 - t4)
            return times

        return student, optimizer, step

    def state_bytes(self, student, optimizer) -> int:
        """Bytes of the student's weights and AdamW state (the gradients come and go each step)."""
        total = sum(p.numel() * p.element_size() for p in student.parameters())
        for st in optimizer.state.values():
            total += sum(t.numel() * t.element_size() for t in st.values() if torch.is_tensor(t))
        return total

    def estimated_state_bytes(self) -> int:
        """Weights + two AdamW moments of one student copy, before any is built."""
        return 3 * sum(p.numel() * p.element_size() for p in self.student_init.parameters())

    def summarize(self, kind: str, loss: str, rows: list[dict], peaks: list[int | None], state: int) -> dict:
        cfg = self.cfg
        phases = {p: statistics.median(r[p] for r in rows) for p in PHASES}
        totals = [sum(r.values()) for r in rows]
        step_s = statistics.median(totals)
        flops = self.flops_student + (self.flops_teacher if kind == "salt" else 0.0)
        peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else peak_flops(
            self.device, torch.bfloat16 if cfg.amp == "bf16" else torch.float32)
        tokens_per_s = cfg.tokens_per_step / step_s
        known = [x for x in peaks if x is not None]
        return {
            "kind": kind,
            "loss": loss,
            "status": "ok",
            "step_s": step_s,
            "step_times_s": totals,
            "phases_s": phases,
            "tokens_per_s": tokens_per_s,
            "state_bytes": state,
            "step_peak_bytes": max(known) if known else None,
            "model_flops_per_token": flops,
            "achieved_flops": flops * tokens_per_s,
            "peak_flops": peak,
            "mfu": flops * tokens_per_s / peak if peak else None,
            "trace": None,
        }

    def trace(self, step, kind, loss, trace_dir, trace_steps) -> str:
        import os

        from torch.profiler import ProfilerActivity, profile

        os.makedirs(trace_dir, exist_ok=True)
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            for _ in range(trace_steps):
                step()
        path = os.path.join(trace_dir, f"trace_{kind}_{loss}.json")
        prof.export_chrome_trace(path)
        return path


def _measured_step(step, mem: PeakMemory):
    """One step's phase times and its peak memory above what was held before it."""
    mem.set_baseline()
    mem.reset()
    times = step()
    return times, (mem.peak_above_baseline() if mem.supported else None)


def run_profile(cfg: ProfileConfig, *, trace_dir=None, trace_steps=2, progress=True, command="", log=print,
                interleave: bool | None = None) -> dict:
    """Measure every (step kind, loss) variant. Interleaved (the default when every variant's
    student and optimizer fit in memory at once): round r runs one step of each variant, the
    order rotating between rounds, so that a change in the machine's load hits all variants
    alike; otherwise one variant after the other."""
    from . import results
    from .machine import available_bytes
    from .runner import progress_bar

    device = torch.device(cfg.device)
    runner = StepRunner(cfg)
    doc = results.new_document("salt-kernels-profile", device, command, asdict(cfg),
                               student_parameters=runner.student_params, teacher_parameters=runner.teacher_params,
                               tokens_per_step=cfg.tokens_per_step)
    variants = []
    for loss in cfg.losses:
        ok, why = runner.variant_usable(loss)
        if not ok:
            doc["left_out"].append({"loss": loss, "reason": why})
            log(f"not run: loss {loss}: {why}")
            continue
        variants += [(kind, loss) for kind in KINDS]
    if interleave is None:
        interleave = len(variants) * runner.estimated_state_bytes() < 0.3 * available_bytes(device)
    doc["interleaved"] = interleave
    mem = PeakMemory(device)
    total = len(variants) * (cfg.warmup + cfg.steps + (trace_steps if trace_dir else 0))
    rows = {v: [] for v in variants}
    peaks = {v: [] for v in variants}
    states = {}
    with progress_bar(total, "profile", enabled=progress) as pbar:
        if interleave:
            built = {v: runner.make_step(*v) for v in variants}
            for r in range(cfg.warmup + cfg.steps):
                k = r % len(variants)
                for v in variants[k:] + variants[:k]:
                    pbar.set_postfix_str(f"{KIND_TITLES[v[0]]}, {LOSS_TITLES[v[1]]}")
                    times, peak = _measured_step(built[v][2], mem)
                    if r >= cfg.warmup:
                        rows[v].append(times)
                        peaks[v].append(peak)
                    pbar.update(1)
            for v in variants:
                states[v] = runner.state_bytes(built[v][0], built[v][1])
        for v in variants:
            if interleave:
                student, optimizer, step = built.pop(v)
            else:
                pbar.set_postfix_str(f"{KIND_TITLES[v[0]]}, {LOSS_TITLES[v[1]]}")
                student, optimizer, step = runner.make_step(*v)
                for r in range(cfg.warmup + cfg.steps):
                    times, peak = _measured_step(step, mem)
                    if r >= cfg.warmup:
                        rows[v].append(times)
                        peaks[v].append(peak)
                    pbar.update(1)
                states[v] = runner.state_bytes(student, optimizer)
            res = runner.summarize(*v, rows[v], peaks[v], states[v])
            if trace_dir:
                res["trace"] = runner.trace(step, *v, trace_dir, trace_steps)
                pbar.update(trace_steps)
            doc["results"].append(res)
            del student, optimizer, step
    doc["machine"]["load_average_end"] = load_average()
    add_overheads(doc)
    return doc


def add_overheads(doc: dict) -> None:
    """Distillation overhead of each SALT variant: its step time over the CE-only step with the
    same loss implementation, and over the plain-PyTorch CE-only step."""
    by = {(r["kind"], r["loss"]): r for r in doc["results"] if r["status"] == "ok"}
    base_torch = by.get(("ce", "torch"))
    for (kind, loss), r in by.items():
        if kind != "salt":
            continue
        ce = by.get(("ce", loss))
        r["overhead_vs_ce_same_loss"] = r["step_s"] / ce["step_s"] - 1 if ce else None
        r["overhead_vs_ce_torch"] = r["step_s"] / base_torch["step_s"] - 1 if base_torch else None
