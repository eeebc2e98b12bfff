"""Compiles the GPU kernels of salt_kernels for an NVIDIA target without a GPU and reports, per
compiled configuration, registers, spills, shared memory and what the hot loops cost in SASS.

Triton: Triton's ahead-of-time path (source -> TTIR -> TTGIR -> LLVM -> PTX -> cubin with the
ptxas that ships in the triton wheel) for salt_rows_kernel and salt_rows_options_kernel in the
launcher's plans. CUDA: csrc/cuda/salt_cuda_{f32,bf16,f16}.cu compiled with nvcc and setup.py's
NVCC_FLAGS (plus --resource-usage) into objects, every template instantiation of rows_kernel and
rows_kernel_options attributed by its mangled name. The interpreter tests run the kernels' math
on the CPU; this checks what the interpreter cannot: that the code compiles for the GPU,
vectorizes its loads, fits in registers, and how many instructions and exps an element costs.

    python benchmarks/gpu/compile_check.py                    # sm_90, every plan, both backends
    python benchmarks/gpu/compile_check.py --json out.json    # also one JSON record per configuration
    python benchmarks/gpu/compile_check.py --arch 80 90 --block 2048 4096 --warps 8
    python benchmarks/gpu/compile_check.py --quick            # two triton specializations (CPU tests)
    python benchmarks/gpu/compile_check.py --backend cuda     # only the nvcc build
    python benchmarks/gpu/compile_check.py --topk-only        # only the top-k teacher kernel
    python benchmarks/gpu/compile_check.py --slice-only       # only the vocab-parallel slice kernels

JSON records (--json FILE, a list), with exactly these keys:
  backend        "triton" or "cuda"
  plan           triton: fused, split-part / split-finish (the split plan's two launches: its
                 per-element cost is the sum of the two records), sync, fused-options (the options
                 kernel with z_loss on, so only the accuracy tracking joins the loop) and
                 fused-options-<option> variants, topk-fused (the top-k teacher kernel,
                 topk_kernels.py: k slots as a vector of K_POW2, named topk-fused-k<K_POW2>,
                 topk-fused-options with softcap, label smoothing and z-loss on), vp-* (the
                 vocab-parallel slice kernels, slice_kernels.py: vp-stats, the statistics kernel;
                 vp-given-forward-kl, the given-stats kernel's one launch of partial sums and
                 gradient; vp-parts-* / vp-grad-* its two launches for reverse_kl and jsd;
                 *-options with the options on). cuda: <kernel>/<warp|block>/<teacher dtype or
                 no-teacher>; the cluster size is a run-time argument (same SASS for 1..8).
  dtype          student (logits and gradient) dtype: bf16, fp16 or fp32
  tau            temperature. triton specializes integer tau (TAU_MODE 2..4; 1.5 runs TAU_MODE 0);
                 the CUDA kernels take tau at run time, so their SASS is the same for tau 2 and
                 1.5 and each instantiation is listed once per tau.
  block          triton: BLOCK_V (entries per program per loop iteration); cuda: threads per block
  warps          warps per program / per block
  registers      per thread, from the cubin (cuobjdump -res-usage) / ptxas -v for nvcc
  spill_bytes    spill stores + spill loads reported by ptxas (0: no spills)
  shared_bytes   triton: the shared memory the launch requests (metadata.shared); cuda: static
                 shared memory from ptxas (neither counts the 1 KiB sm_90 reserves per block)
  instructions_per_element, exps_per_element   see "Counting" below
  default        true for the configuration the launcher picks for 16384 rows x 128256 entries,
                 bf16 logits, bf16 teacher (triton: launcher.plan with 132 SMs, as an H200; cuda:
                 backends.cuda.launch_config), for arch 90 and tau 2 and 1.5 (both are the default
                 configuration with that temperature)

Counting (static SASS analysis, cuobjdump -sass from the triton wheel or the CUDA toolkit):
  * A loop is a backward branch: a BRA at address b whose target t is below b; its body is every
    instruction in [t, b]. Several backward branches to one target are one loop.
  * Hot loops are the innermost loops that issue a vector global load (LDG of 64 or 128 bits):
    the statistics loop and the gradient loop. Not hot: the zero-gradient loop of ignored rows
    (stores only), the scalar head/tail loops of the CUDA kernels (16-bit loads only, fewer than
    2 * VEC elements per row), the spin-wait of the sync plan (atomics only).
  * Elements per thread per loop iteration: triton BLOCK_V / (32 * num_warps); cuda
    (16 / sizeof(student)) * groups per iteration, the groups read from the kernel's source (the
    stride of its statistics loop: `g += 2 * S` in rows_kernel, `g += S` in rows_kernel_options).
    The vector-load bytes of each loop must then equal elements * (student + teacher bytes) times
    a whole number, which is the unroll factor ptxas applied (checked; a mismatch is printed).
  * instructions_per_element = sum over the hot loops of (instructions in the loop body /
    elements per thread per iteration); exps_per_element the same with MUFU.EX2 only. Per thread,
    so they compare directly with the ~issue slots an SM has per byte of HBM traffic.
  * Triton: every hot loop of the specialization (its constexprs select the code). CUDA
    rows_kernel_options: the first and the last hot loop (statistics and gradient); the loop
    between them is the JSD pass, selected at run time (divergence "jsd" only), and is printed
    but not counted.
  Caveats: the count is static, not a profile. Every instruction of the body counts once per
  iteration, including code behind forward branches that the common path skips: the rescale when
  the running maximum grows (rare after the first blocks), the -inf/NaN special cases, run-time
  switches (the CUDA tau == 1 shortcut, the options kernel's softcaps and divergences), and the
  predicated-off 16-bit load path the CUDA kernels keep for unaligned rows. So the figure is an
  upper bound of what the common path executes wherever a loop has internal branches; the table
  also prints a lower bound, the instructions outside every forward-branch range in the loop
  (which in turn leaves out code the common path does run when a branch guards it, e.g. the
  CUDA accumulation behind `mz != -inf`). Triton's hot loops are straight-line code (masks are
  predicates), so for them both bounds coincide. Predicated-off instructions still issue and
  count. Cross-warp reductions inside a loop (triton's per-block max: shuffles, shared memory,
  barriers) count as the loop's instructions, spread over its elements.

Exit status 0 when every configuration compiled, 1 otherwise, 2 when this triton has no NVIDIA
ahead-of-time path (or no cuobjdump to read SASS).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Arguments the launcher passes with 16-divisible values at the benchmark sizes (Triton
# specializes those, which is what lets it emit 16-byte loads).
DIVISIBLE = ("z_stride", "u_stride", "g_stride", "V", "SLICE_V", "local", "kd_cols")  # the last two: slice_kernels.py
INT_TYPES = {"z_stride": "i32", "u_stride": "i32", "y_stride": "i32", "g_stride": "i32", "scale_stride": "i32",
             "V": "i32", "SLICE_V": "i32", "ignore_index": "i32", "kd_vocab": "i32"}
# The top-k teacher kernel's (topk_kernels.py) integers; n_words (bitmap words per row, whole
# blocks) is a multiple of 16 whenever BLOCK_V >= 512.
TOPK_DIVISIBLE = ("n_words",)
INT_TYPES.update({"ids_stride": "i32", "lp_stride": "i32", "n_words": "i32", "K": "i32"})
# The vocab-parallel slice kernels' (slice_kernels.py) integers.
INT_TYPES.update({"start": "i32", "local": "i32", "kd_cols": "i32", "vocab": "i32"})
FLOAT_ARGS = ("kd_weight", "tau", "inv_tau", "softcap", "teacher_softcap", "beta", "smoothing", "z_loss",
              "log_beta", "log_1m_beta")
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "i32": 4, "i64": 8}
TRITON_PTR = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}

# The launcher's default configuration is the one for this call.
DEFAULT_ROWS, DEFAULT_VOCAB, H200_SMS = 16384, 128256, 132

KEYS = ("backend", "plan", "dtype", "tau", "block", "warps", "registers", "spill_bytes", "shared_bytes",
        "instructions_per_element", "exps_per_element", "default")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities (default 90)")
    p.add_argument("--block", type=int, nargs="+", default=None,
                   help="triton BLOCK_V values (default: the launcher's, 2048 at this vocabulary)")
    p.add_argument("--warps", type=int, nargs="+", default=None, help="triton num_warps values (default: the launcher's)")
    p.add_argument("--quick", action="store_true",
                   help="only the fused bf16 kernel and the one-launch split kernel (triton, tau 2)")
    p.add_argument("--backend", nargs="+", choices=("triton", "cuda"), default=None,
                   help="backends to compile (default: both; --quick: triton)")
    p.add_argument("--json", metavar="FILE", help="write one JSON record per compiled configuration")
    p.add_argument("--topk-only", action="store_true",
                   help="only the top-k teacher kernel (topk_rows_kernel); with --quick one specialization")
    p.add_argument("--slice-only", action="store_true",
                   help="only the vocab-parallel slice kernels (slice_kernels.py); with --quick two specializations")
    return p.parse_args(argv)


# ---- SASS analysis ------------------------------------------------------------------------------

_INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;")
_PRED = re.compile(r"^@!?U?P[T0-9]+\s+")
_LDG_BITS = re.compile(r"\.(64|128|256)\b")


def sass_functions(text: str) -> dict:
    """{function name: [(address, instruction text)]} from cuobjdump -sass output."""
    parts = re.split(r"\n\s*Function : (\S+)", text)
    return {name: [(int(a, 16), t) for a, t in _INS.findall(body)] for name, body in zip(parts[1::2], parts[2::2])}


def opcode(ins: str) -> str:
    return _PRED.sub("", ins).split()[0] if ins.strip() else ""


def _branch_target(ins: str):
    if not opcode(ins).startswith("BRA"):
        return None
    m = re.findall(r"0x([0-9a-f]+)", ins)
    return int(m[-1], 16) if m else None


def _load_bytes(op: str) -> int:
    if not op.startswith("LDG"):
        return 0
    m = _LDG_BITS.search(op)
    return int(m.group(1)) // 8 if m else 0  # scalar loads: 0 (only vector bytes are compared)


def loops(ins: list) -> list:
    """Loops of one function, as dicts: lo, hi (addresses), body [(addr, ins)], instructions,
    exps, vector_load_bytes, unconditional (instructions outside every forward-branch range),
    hot (issues a vector load and holds no other hot loop). In address order."""
    ends = {}
    for a, t in ins:
        tgt = _branch_target(t)
        if tgt is not None and tgt < a:
            ends[tgt] = max(ends.get(tgt, 0), a)
    out = []
    for lo, hi in sorted(ends.items()):
        body = [(a, t) for a, t in ins if lo <= a <= hi]
        ops = [opcode(t) for _, t in body]
        skipped = set()
        for a, t in body:
            tgt = _branch_target(t)
            if tgt is not None and a < tgt <= hi + 16:
                skipped.update(b for b, _ in body if a < b < tgt)
        out.append(dict(lo=lo, hi=hi, body=body, instructions=len(body),
                        exps=sum(o == "MUFU.EX2" for o in ops),
                        vector_load_bytes=sum(_load_bytes(o) for o in ops),
                        unconditional=len(body) - len(skipped)))
    for lp in out:
        lp["hot"] = lp["vector_load_bytes"] > 0
    for lp in out:  # keep the innermost: an outer loop around a hot loop is not itself hot
        if lp["hot"] and any(o is not lp and o["hot"] and lp["lo"] <= o["lo"] and o["hi"] <= lp["hi"] for o in out):
            lp["hot"] = False
    return out


def per_element(hot: list, elems: float, bytes_per_elem: int, what: str) -> tuple:
    """(instructions, exps, unconditional) per element summed over the hot loops; each loop's
    elements per iteration is elems times the unroll factor its vector loads show."""
    ins = exps = unc = 0.0
    for lp in hot:
        unroll = 1
        if bytes_per_elem:
            ratio = lp["vector_load_bytes"] / (elems * bytes_per_elem)
            if ratio >= 1 and abs(ratio - round(ratio)) < 1e-9:
                unroll = int(round(ratio))
            else:
                print(f"  note: {what}: loop {lp['lo']:#x}-{lp['hi']:#x} loads {lp['vector_load_bytes']} vector bytes "
                      f"per iteration, expected a multiple of {elems * bytes_per_elem:g}; taking no unroll")
        n = elems * unroll
        ins += lp["instructions"] / n
        exps += lp["exps"] / n
        unc += lp["unconditional"] / n
    return ins, exps, unc


def find_tool(name: str):
    try:
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(path):
            return path
    except Exception:
        pass
    return shutil.which(name)


def cuobjdump(path: str, *flags) -> str:
    tool = find_tool("cuobjdump")
    res = subprocess.run([tool, *flags, path], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cuobjdump {' '.join(flags)} failed: {res.stderr.strip()[:500]}")
    return res.stdout


# ---- triton -------------------------------------------------------------------------------------

def triton_defaults():
    """(plan dict of the launcher for the default call, split plan for few long rows, sync plan),
    from salt_kernels.backends.triton.launcher with a 132-SM CUDA device; None where the launcher
    cannot be imported (no torch)."""
    try:
        import torch

        from salt_kernels.backends.triton import launcher
    except Exception as exc:
        print(f"note: launcher not importable ({type(exc).__name__}: {exc}); defaults BLOCK_V 2048, 8 warps")
        return None
    saved = (launcher._sm_count, launcher.MODE)
    launcher._sm_count = lambda device: H200_SMS
    try:
        dev = torch.device("cuda")
        default = launcher.plan(DEFAULT_ROWS, DEFAULT_VOCAB, dev)
        launcher.MODE = "split"
        split = launcher.plan(DEFAULT_ROWS, DEFAULT_VOCAB, dev)
        launcher.MODE = "sync"
        sync = launcher.plan(DEFAULT_ROWS, DEFAULT_VOCAB, dev)
    finally:
        launcher._sm_count, launcher.MODE = saved
    return default, split, sync


def topk_cases(quick: bool):
    """(plan, kernel name, dtype, teacher log-prob dtype, tau, constexprs) of the top-k teacher
    kernel: k = 64 slots (K_POW2) at tau 2 with --quick; else also tau 1.5 and 1, k = 256, the
    student-side options, and fp32."""
    base = dict(SPLIT=1, K_POW2=64, TAU_MODE=2, SOFTCAP=False, SMOOTHING=False, Z_LOSS=False)
    out = [("topk-fused", "topk_rows_kernel", "bf16", "bf16", 2.0, base)]
    if quick:
        return out
    out += [("topk-fused", "topk_rows_kernel", "bf16", "bf16", 1.5, dict(base, TAU_MODE=0)),
            ("topk-fused", "topk_rows_kernel", "bf16", "bf16", 1.0, dict(base, TAU_MODE=1)),
            ("topk-fused-k256", "topk_rows_kernel", "bf16", "bf16", 2.0, dict(base, K_POW2=256)),
            ("topk-fused-options", "topk_rows_kernel", "bf16", "bf16", 2.0,
             dict(base, SOFTCAP=True, SMOOTHING=True, Z_LOSS=True)),
            ("topk-fused", "topk_rows_kernel", "fp32", "fp32", 2.0, base)]
    return out


def slice_cases(quick: bool):
    """(plan, kernel name, dtype, teacher dtype, tau, constexprs) of the vocab-parallel slice
    kernels (slice_kernels.py, launched by slice_launcher.py): with --quick the statistics kernel
    and the given-stats kernel's forward_kl launch (partial sums and gradient at once), bf16; else
    also both with every option on, the two launches of reverse_kl and of jsd, and fp32."""
    stats = dict(HAS_TEACHER=True, SOFTCAP=False, TEACHER_SOFTCAP=False, SMOOTHING=False)
    given = dict(HAS_TEACHER=True, DIVERGENCE=0, SOFTCAP=False, TEACHER_SOFTCAP=False, SMOOTHING=False,
                 Z_LOSS=False, PARTS=True, HAS_GRAD=True)
    out = [("vp-stats", "slice_stats_kernel", "bf16", "bf16", 2.0, stats),
           ("vp-given-forward-kl", "slice_given_stats_kernel", "bf16", "bf16", 2.0, given)]
    if quick:
        return out
    on = dict(SOFTCAP=True, TEACHER_SOFTCAP=True, SMOOTHING=True)
    out += [("vp-stats-options", "slice_stats_kernel", "bf16", "bf16", 2.0, dict(stats, **on)),
            ("vp-given-options", "slice_given_stats_kernel", "bf16", "bf16", 2.0, dict(given, **on, Z_LOSS=True))]
    for div, name in ((1, "reverse-kl"), (2, "jsd")):
        out += [(f"vp-parts-{name}", "slice_given_stats_kernel", "bf16", "bf16", 2.0,
                 dict(given, DIVERGENCE=div, HAS_GRAD=False)),
                (f"vp-grad-{name}", "slice_given_stats_kernel", "bf16", "bf16", 2.0,
                 dict(given, DIVERGENCE=div, PARTS=False))]
    out += [("vp-stats", "slice_stats_kernel", "fp32", "fp32", 2.0, stats),
            ("vp-given-forward-kl", "slice_given_stats_kernel", "fp32", "fp32", 2.0, given)]
    return out


def load_topk_kernels(triton_dir: str, name: str = "topk_kernels"):
    """topk_kernels.py (or, by name, another kernels module that imports kernels.py relatively) as
    a module of a package of its own, so that neither salt_kernels nor torch is imported."""
    import importlib
    import types

    pkg = types.ModuleType("salt_triton_aot")
    pkg.__path__ = [triton_dir]
    sys.modules.setdefault("salt_triton_aot", pkg)
    return importlib.import_module(f"salt_triton_aot.{name}")


def triton_cases(quick: bool, split: int, sync_split: int, topk_only: bool = False, slice_only: bool = False):
    """(plan, kernel name, dtype, teacher dtype, tau, constexprs) for the kernels the launcher runs."""
    if topk_only:
        return topk_cases(quick)
    if slice_only:
        return slice_cases(quick)
    tau_mode = {2.0: 2, 1.5: 0, 1.0: 1}
    out = []
    taus = (2.0,) if quick else (2.0, 1.5)
    plans = [("fused", dict(MODE=0, SPLIT=1)), ("sync", dict(MODE=3, SPLIT=sync_split))]
    if not quick:
        plans[1:1] = [("split-part", dict(MODE=1, SPLIT=split, HAS_GRAD=False)),
                      ("split-finish", dict(MODE=2, SPLIT=split))]
    for tau in taus:
        for name, const in plans:
            out.append((name, "salt_rows_kernel", "bf16", "bf16", tau, dict(const, TAU_MODE=tau_mode[tau])))
    if quick:
        return out
    off = dict(SOFTCAP=False, TEACHER_SOFTCAP=False, KD_VOCAB=False, DIVERGENCE=0, SMOOTHING=False, Z_LOSS=False,
               ACCURACY=True)
    options = [("fused-options", dict(Z_LOSS=True)), ("fused-options-smoothing", dict(SMOOTHING=True)),
               ("fused-options-softcap", dict(SOFTCAP=True, TEACHER_SOFTCAP=True)),
               ("fused-options-reverse-kl", dict(DIVERGENCE=1)), ("fused-options-jsd", dict(DIVERGENCE=2))]
    for tau in taus:
        for name, flags in options:
            if tau != 2.0 and name != "fused-options":
                continue
            out.append((name, "salt_rows_options_kernel", "bf16", "bf16", tau,
                        dict(off, **flags, MODE=0, SPLIT=1, TAU_MODE=tau_mode[tau])))
    for dt in ("fp16", "fp32"):
        out.append(("fused", "salt_rows_kernel", dt, dt, 2.0, dict(MODE=0, SPLIT=1, TAU_MODE=2)))
    return out + topk_cases(quick) + slice_cases(quick)


def ptxas_usage(ptx: str, arch: int):
    """(registers, spill store + load bytes) from the ptxas bundled with triton, run with the flags
    triton itself uses; (None, None) if it cannot tell."""
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M)
    sm = target.group(1) if target else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        for exe in ("ptxas-blackwell", "ptxas"):
            tool = find_tool(exe)
            if not tool:
                continue
            res = subprocess.run([tool, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={sm}", path,
                                  "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
            regs = re.search(r"Used (\d+) registers", res.stderr)
            st = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", res.stderr)
            if regs and st:
                return int(regs.group(1)), int(st.group(1)) + int(st.group(2))
    return None, None


def compile_triton(args, records) -> int:
    """Compiles the triton cases; appends records; returns the number of failures, or -1 when this
    triton has no NVIDIA ahead-of-time path."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        import importlib.util

        # The kernels file alone (it imports only triton): no torch needed for the compile.
        spec = importlib.util.spec_from_file_location(
            "salt_triton_kernels", os.path.join(ROOT, "salt_kernels", "backends", "triton", "kernels.py"))
        tk = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tk)
        tkk = load_topk_kernels(os.path.join(ROOT, "salt_kernels", "backends", "triton"))
        tsk = load_topk_kernels(os.path.join(ROOT, "salt_kernels", "backends", "triton"), "slice_kernels")
        GPUTarget("cuda", 90, 32)
    except Exception as exc:
        print(f"compile_check: this triton cannot compile ahead of time here ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return -1
    if not find_tool("cuobjdump"):
        print("compile_check: no cuobjdump (neither in the triton wheel nor on PATH) to read SASS", file=sys.stderr)
        return -1
    plans = triton_defaults()
    if plans:
        default, split_plan, sync_plan = plans
        d_block, d_warps = default["block_v"], default["num_warps"]
        default_plan = default["mode"]
        split, sync_split = split_plan["split"], sync_plan["split"]
    else:
        d_block, d_warps, default_plan, split, sync_split = 2048, 8, "fused", 16, 16
    blocks = args.block or [d_block]
    warps_list = args.warps or [d_warps]
    print(f"triton {triton.__version__}; launcher default at {DEFAULT_ROWS} x {DEFAULT_VOCAB} ({H200_SMS} SMs): "
          f"{default_plan}, BLOCK_V {d_block}, {d_warps} warps; split {split} slices, sync {sync_split}")
    failed = 0
    for arch, block, warps in itertools.product(args.arch, blocks, warps_list):
        for plan, kname, dt, ut, tau, const in triton_cases(args.quick, split, sync_split, args.topk_only,
                                                            args.slice_only):
            topk = kname.startswith("topk")
            fn = getattr(tkk if topk else tsk if kname.startswith("slice") else tk, kname)
            names = list(fn.arg_names)
            c = dict(HAS_TEACHER=True, HAS_GRAD=True)
            if "FIELDS" in names:  # the options kernel's workspace width (its default)
                c["FIELDS"] = tk.WS_FIELDS_OPTIONS
            c.update(const)
            c["BLOCK_V"] = block
            if "SPLIT" in c:
                c["SPLIT_POW2"] = max(2, 1 << (c["SPLIT"] - 1).bit_length())
            ptr_types = dict(z_ptr=f"*{TRITON_PTR[dt]}", u_ptr=f"*{TRITON_PTR[ut]}", y_ptr="*i64",
                             g_ptr=f"*{TRITON_PTR[dt]}", loss_ptr="*fp32", ce_ptr="*fp32", kd_ptr="*fp32",
                             lse_ptr="*fp32", accuracy_ptr="*fp32", scale_ptr="*fp32", ws_ptr="*fp32", cnt_ptr="*i32",
                             ids_ptr="*i64", lp_ptr=f"*{TRITON_PTR[ut]}", log_rest_ptr="*fp32", bits_ptr="*i32",
                             out_ptr="*fp32", first_ptr="*i64", d_ptr="*fp32", parts_ptr="*fp32")
            signature, constexprs, attrs = {}, {}, {}
            for i, name in enumerate(names):
                if name in c:
                    signature[name] = "constexpr"
                    constexprs[(i,)] = c[name]
                else:
                    signature[name] = ptr_types.get(name) or INT_TYPES.get(name) or ("fp32" if name in FLOAT_ARGS else None)
                    if signature[name] is None:
                        raise SystemExit(f"compile_check: no type for kernel argument {name!r}; update this script")
                    if name in ptr_types or name in DIVISIBLE or (topk and name in TOPK_DIVISIBLE):
                        attrs[(i,)] = [["tt.divisibility", 16]]
            label = f"{plan} {dt} tau={tau:g}"
            t0 = time.time()
            try:
                kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                                        target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))
            except TypeError as exc:  # a different ahead-of-time API (older or newer triton)
                print(f"compile_check: triton {triton.__version__}'s compile API differs: {exc}", file=sys.stderr)
                return -1
            except Exception as exc:
                failed += 1
                print(f"FAIL sm_{arch} block {block} warps {warps} {label}: {type(exc).__name__}: {str(exc)[:2000]}")
                continue
            ptx = kernel.asm.get("ptx", "")
            vec = len(re.findall(r"ld\.global[\w:.]*\.v[24]", ptx))
            _, spill = ptxas_usage(ptx, arch)
            with tempfile.TemporaryDirectory() as tmp:
                cubin = os.path.join(tmp, "k.cubin")
                with open(cubin, "wb") as f:
                    f.write(kernel.asm["cubin"])
                sass = sass_functions(cuobjdump(cubin, "-sass"))
                res = cuobjdump(cubin, "-res-usage")
            regs = int(re.search(r"REG:(\d+)", res).group(1))
            if spill is None:  # no ptxas: a stack frame is where spills would go
                spill = int(re.search(r"LOCAL:(\d+)", res).group(1))
            (fname, ins), = sass.items()
            hot = [lp for lp in loops(ins) if lp["hot"]]
            elems = block / (32 * warps)
            # The top-k kernel reads the teacher per slot, not per entry: only the student counts.
            ub = DTYPE_BYTES[dt] + (DTYPE_BYTES[ut] if c["HAS_TEACHER"] and not topk else 0)
            ipe, epe, unc = per_element(hot, elems, ub, label)
            is_default = (arch == 90 and plan == default_plan and dt == "bf16" and tau in (2.0, 1.5)
                          and block == d_block and warps == d_warps and kname == "salt_rows_kernel")
            records.append(dict(backend="triton", plan=plan, dtype=dt, tau=tau, block=block, warps=warps,
                                registers=regs, spill_bytes=spill, shared_bytes=int(kernel.metadata.shared),
                                instructions_per_element=round(ipe, 3), exps_per_element=round(epe, 3),
                                default=is_default, _lower=round(unc, 3), _loops=len(hot)))
            print(f"ok   sm_{arch} block {block:>5} warps {warps:>2} {label:<34} {time.time() - t0:4.1f}s  "
                  f"{regs} registers, {spill} bytes spilled; {vec} vector loads; {len(hot)} hot loops")
    return failed


# ---- cuda ---------------------------------------------------------------------------------------

def nvcc_flags():
    """setup.py's NVCC_FLAGS, read without running setup.py."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NVCC_FLAGS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("NVCC_FLAGS not found in setup.py")


def find_nvcc():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.isfile("/usr/local/cuda/bin/nvcc") else None)


def kernel_templates(src: str) -> dict:
    """{kernel name: (template parameter names, groups per statistics-loop iteration)} of the
    __global__ templates in rows_kernel.cuh."""
    out = {}
    for m in re.finditer(r"template\s*<([^>]*)>\s*__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(", src):
        params = [p.split()[-1] for p in m.group(1).split(",")]
        body = src[m.end():]
        nxt = re.search(r"\ntemplate\s*<", body)
        body = body[:nxt.start()] if nxt else body
        loop = re.search(r"for \(int g = t; g < G; g \+= (?:(\d+) \* )?S\) \{", body)
        out[m.group(2)] = (params, int(loop.group(1) or 1) if loop else None)
    return out


def demangle_args(name: str):
    """('rows_kernel', [1, 1, True, 512, False]) from _ZN4salt4cuda11rows_kernelILi1E...EEEv..."""
    m = re.match(r"_ZN4salt4cuda(\d+)", name)
    if not m:
        return None, []
    n = int(m.group(1))
    rest = name[m.end():]
    kname, rest = rest[:n], rest[n:]
    if not rest.startswith("I"):
        return kname, []
    args = []
    for kind, val in re.findall(r"L([ib])(n?\d+)E", rest[1:rest.find("EE") + 1]):
        v = int(val.replace("n", "-"))
        args.append(bool(v) if kind == "b" else v)
    return kname, args


def cuda_default():
    """(mode, threads, cluster) of backends.cuda.launch_config for the default call, or a mirror
    of csrc/cuda/salt_cuda.cu's choose_config when the module is not built."""
    try:
        import torch

        from salt_kernels.backends import cuda

        return tuple(cuda.launch_config(DEFAULT_VOCAB, torch.bfloat16, torch.bfloat16))
    except Exception as exc:
        print(f"note: backends.cuda.launch_config unavailable ({type(exc).__name__}: {exc}); "
              "using this script's copy of choose_config")
    groups, row_bytes = DEFAULT_VOCAB // 8, DEFAULT_VOCAB * 4
    tpr = min(row_bytes // 256, groups // 8)
    if tpr <= 64:
        return ("warp", 256, 1)
    if tpr <= 256:
        return ("block", 256, 1)
    p = 1
    while p * 1.4142135623730951 < tpr / 512:
        p *= 2
    return ("block", 512, min(p, 8))


def compile_cuda(args, records) -> int:
    nvcc = find_nvcc()
    if nvcc is None:
        print("cuda: skipped: nvcc not found (CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda/bin)")
        return 0
    if not find_tool("cuobjdump"):
        print("cuda: skipped: no cuobjdump (triton wheel or PATH) to read SASS")
        return 0
    flags = nvcc_flags()
    arches = {int(a) for a in re.findall(r"code=sm_(\d+)", " ".join(flags))}
    if 90 not in args.arch or 90 not in arches:
        print(f"cuda: skipped: setup.py builds SASS for sm_{sorted(arches)}, not the asked --arch")
        return 0
    src = open(os.path.join(ROOT, "csrc", "cuda", "rows_kernel.cuh")).read()
    templates = kernel_templates(src)
    dtype_codes = {0: "fp32", 1: "bf16", 2: "fp16"}
    math_h = open(os.path.join(ROOT, "csrc", "salt_math.h")).read()
    for code, dt in (("kFloat32", "fp32"), ("kBFloat16", "bf16"), ("kFloat16", "fp16")):
        m = re.search(rf"\b{code}\s*=\s*(\d+)", math_h)
        if m:
            dtype_codes = {k: v for k, v in dtype_codes.items() if v != dt}
            dtype_codes[int(m.group(1))] = dt
    mode, threads, cluster = cuda_default()
    print(f"cuda: {nvcc}; launch_config({DEFAULT_VOCAB}, bf16, bf16) = {mode}, {threads} threads, cluster {cluster}")
    sources = [os.path.join(ROOT, "csrc", "cuda", f) for f in sorted(os.listdir(os.path.join(ROOT, "csrc", "cuda")))
               if re.match(r"salt_cuda_\w+\.cu$", f)]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        def build(path):
            obj = os.path.join(tmp, os.path.basename(path) + ".o")
            t0 = time.time()
            res = subprocess.run([nvcc, *flags, "--resource-usage", "-c", path, "-o", obj],
                                 capture_output=True, text=True)
            return path, obj, res, time.time() - t0

        with concurrent.futures.ThreadPoolExecutor(max(1, min(len(sources), os.cpu_count() or 1))) as pool:
            built = list(pool.map(build, sources))
        for path, obj, res, dt_s in built:
            name = os.path.basename(path)
            if res.returncode != 0:
                failed += 1
                print(f"FAIL cuda {name}: {(res.stdout + res.stderr)[-2000:]}")
                continue
            log = res.stdout + res.stderr
            usage = {}
            for m in re.finditer(r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                                 r"(\d+) bytes spill loads\n[^\n]*?Used (\d+) registers[^\n]*", log):
                smem = re.search(r"(\d+) bytes smem", m.group(0))
                usage[m.group(1)] = (int(m.group(5)), int(m.group(3)) + int(m.group(4)), int(smem.group(1)) if smem else 0)
            sass = sass_functions(cuobjdump(obj, "-sass"))
            print(f"cuda: {name} compiled in {dt_s:.1f}s, {len(sass)} kernels")
            for fname, ins in sass.items():
                kname, targs = demangle_args(fname)
                if kname == "topk_rows_kernel" and len(targs) == 3:
                    # The top-k teacher kernel (topk_kernel.cuh) loads one element per thread and
                    # iteration, so its loops have no vector loads to count elements by: its
                    # resources are printed, not recorded.
                    regs, spill, smem = usage.get(fname, (None, None, None))
                    dz, dl, teacher = dtype_codes[targs[0]], dtype_codes[targs[1]], targs[2]
                    print(f"  topk_rows_kernel student {dz}, {'log-probs ' + dl if teacher else 'no teacher'}: "
                          f"{regs} registers, {spill} bytes spilled, {smem} bytes shared")
                    continue
                if kname not in templates or len(targs) != len(templates[kname][0]):
                    print(f"  note: {fname}: not a known kernel template, skipped")
                    continue
                params, groups = templates[kname]
                p = dict(zip(params, targs))
                dz, du = dtype_codes[p["DZ"]], dtype_codes[p["DU"]]
                teacher = p.get("TEACHER", True)
                block = p["BLOCK"]
                shape = "warp" if p.get("WARP_ROWS") else "block"
                plan = f"{kname}/{shape}/{'teacher-' + du if teacher else 'no-teacher'}"
                aligned = p.get("ALIGNED", True)
                if not aligned:  # the element-wise instance for rows that 16-byte loads cannot take
                    plan += "/unaligned"
                regs, spill, smem = usage.get(fname, (None, None, None))
                if regs is None:
                    print(f"  note: {fname}: no ptxas resource line; registers from cuobjdump")
                    spill, smem = 0, 0
                vec_elems = 16 // DTYPE_BYTES[dz]
                elems = vec_elems * (groups or 1)
                hot = [lp for lp in loops(ins) if lp["hot"]]
                counted = hot if kname == "rows_kernel" or len(hot) <= 2 else [hot[0], hot[-1]]
                ub = DTYPE_BYTES[dz] + (DTYPE_BYTES[du] if teacher else 0)
                ipe, epe, unc = per_element(counted, elems, ub, plan)
                tau_param = next((k for k in params if k.startswith("TAU")), None)
                taus = [{1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}.get(p[tau_param], 1.5)] if tau_param else [2.0, 1.5]
                for tau in taus:
                    is_default = (kname == "rows_kernel" and dz == "bf16" and du == "bf16" and teacher and aligned
                                  and shape == mode and block == threads and tau in (2.0, 1.5))
                    records.append(dict(backend="cuda", plan=plan, dtype=dz, tau=tau, block=block, warps=block // 32,
                                        registers=regs, spill_bytes=spill, shared_bytes=smem,
                                        instructions_per_element=round(ipe, 3), exps_per_element=round(epe, 3),
                                        default=is_default, _lower=round(unc, 3), _loops=len(counted)))
    return failed


# ---- output -------------------------------------------------------------------------------------

def print_table(records):
    if not records:
        return
    print()
    head = (f"{'backend':<7} {'plan':<36} {'dtype':<5} {'tau':>4} {'block':>5} {'warps':>5} {'regs':>4} "
            f"{'spill':>5} {'smem':>6} {'ins/el':>7} {'(>=)':>7} {'exp/el':>6} loops default")
    print(head)
    print("-" * len(head))
    for r in records:
        print(f"{r['backend']:<7} {r['plan']:<36} {r['dtype']:<5} {r['tau']:>4g} {r['block']:>5} {r['warps']:>5} "
              f"{r['registers']:>4} {r['spill_bytes']:>5} {r['shared_bytes']:>6} {r['instructions_per_element']:>7.2f} "
              f"{r['_lower']:>7.2f} {r['exps_per_element']:>6.3f} {r['_loops']:>5} {'*' if r['default'] else ''}")
    print("ins/el, exp/el: static count of the hot loops' bodies per element (an upper bound where a loop has "
          "branches); (>=): instructions outside every forward branch (a lower bound). See --help.")


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: TRITON_INTERPRET=1 is set; unset it to compile for a GPU", file=sys.stderr)
        return 2
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    backends = args.backend or (["triton"] if args.quick else ["triton", "cuda"])
    if (args.topk_only or args.slice_only) and not args.backend:
        backends = ["triton"]  # the top-k teacher and the vocab-parallel slices have no CUDA kernel here
    records, failed = [], 0
    if "triton" in backends:
        f = compile_triton(args, records)
        if f < 0:
            return 2
        failed += f
    if "cuda" in backends:
        failed += compile_cuda(args, records)
    elif not args.backend:
        print("cuda: skipped in --quick (nvcc takes ~20 s per translation unit); --backend cuda compiles it")
    print_table(records)
    if args.json:
        out = [{k: r[k] for k in KEYS} for r in records]
        bad = [r for r in out for k in ("registers", "instructions_per_element", "exps_per_element")
               if not (isinstance(r[k], (int, float)) and math.isfinite(r[k]))]
        if bad:
            print(f"compile_check: {len(bad)} records without a figure", file=sys.stderr)
            failed += 1
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {len(out)} records to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
