"""Compiles the Triton kernels of salt_kernels for an NVIDIA target without a GPU (Triton's
ahead-of-time path: source -> TTIR -> TTGIR -> LLVM -> PTX -> cubin with the ptxas that ships in
the triton wheel) and prints registers and spills per specialization. The interpreter tests run
the kernels' math on the CPU; this checks what the interpreter cannot: that the code compiles for
the GPU, vectorizes its loads and fits in registers.

    python benchmarks/gpu/compile_check.py                    # sm_90, the launcher's default block
    python benchmarks/gpu/compile_check.py --arch 80 90 --block 2048 4096 --warps 8
    python benchmarks/gpu/compile_check.py --quick            # two specializations (a CPU test runs this)

Exit status 0 when every specialization compiled, 1 otherwise, 2 when this triton has no
NVIDIA backend or a different ahead-of-time API.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import time

# Arguments the launcher passes with 16-divisible values at the benchmark sizes (Triton
# specializes those, which is what lets it emit 16-byte loads).
DIVISIBLE = ("z_stride", "u_stride", "g_stride", "V", "SLICE_V")
INT_TYPES = {"z_stride": "i32", "u_stride": "i32", "y_stride": "i32", "g_stride": "i32", "scale_stride": "i32",
             "V": "i32", "SLICE_V": "i32", "ignore_index": "i32"}
FLOAT_ARGS = ("kd_weight", "tau", "inv_tau")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities (default 90)")
    p.add_argument("--block", type=int, nargs="+", default=[2048], help="BLOCK_V values (default 2048)")
    p.add_argument("--warps", type=int, nargs="+", default=[8], help="num_warps values (default 8)")
    p.add_argument("--quick", action="store_true", help="only the fused bf16 kernel and the one-launch split kernel")
    return p.parse_args(argv)


def specializations(quick: bool):
    """(label, pointer dtypes, constexprs) for the kernels the launcher can launch."""
    out = []
    cases = [
        ("fused bf16 tau=2 grad", dict(z="bf16", u="bf16", g="bf16"), dict(MODE=0, TAU_MODE=2)),
        ("sync x8 bf16 tau=2 grad", dict(z="bf16", u="bf16", g="bf16"), dict(MODE=3, SPLIT=8, TAU_MODE=2)),
    ]
    if not quick:
        cases += [
            ("fused fp32 tau=1 grad", dict(z="fp32", u="fp32", g="fp32"), dict(MODE=0, TAU_MODE=1)),
            ("fused fp16/fp32 tau=0.5 grad", dict(z="fp16", u="fp32", g="fp16"), dict(MODE=0, TAU_MODE=0)),
            ("fused bf16 no teacher", dict(z="bf16", u="bf16", g="bf16"), dict(MODE=0, TAU_MODE=1, HAS_TEACHER=False)),
            ("fused bf16 forward only", dict(z="bf16", u="bf16", g="bf16"), dict(MODE=0, TAU_MODE=2, HAS_GRAD=False)),
            ("part x16 bf16", dict(z="bf16", u="bf16", g="bf16"), dict(MODE=1, SPLIT=16, TAU_MODE=2, HAS_GRAD=False)),
            ("finish x16 bf16 grad", dict(z="bf16", u="bf16", g="bf16"), dict(MODE=2, SPLIT=16, TAU_MODE=2)),
            ("sync x32 fp32 tau=3 int32 labels", dict(z="fp32", u="fp32", g="fp32", y="i32"), dict(MODE=3, SPLIT=32, TAU_MODE=3)),
        ]
    for label, ptrs, const in cases:
        c = dict(SPLIT=1, HAS_TEACHER=True, HAS_GRAD=True)
        c.update(const)
        c["SPLIT_POW2"] = max(2, 1 << (c["SPLIT"] - 1).bit_length())
        out.append((label, ptrs, c))
    return out


def ptxas_usage(ptx: str, arch: int) -> str:
    """'N registers, S bytes spilled' from the ptxas bundled with triton, or '' if it cannot tell."""
    import triton

    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    target = re.search(r"^\.target\s+(\S+)", ptx, re.M)
    sm = target.group(1) if target else f"sm_{arch}"
    path = "/tmp/salt_compile_check.ptx"
    with open(path, "w") as f:
        f.write(ptx)
    for exe in ("ptxas-blackwell", "ptxas"):
        tool = os.path.join(bindir, exe)
        if not os.path.exists(tool):
            continue
        res = subprocess.run([tool, f"-arch={sm}", "-v", path, "-o", os.devnull], capture_output=True, text=True)
        regs = re.search(r"Used (\d+) registers", res.stderr)
        spill = re.search(r"(\d+) bytes spill stores", res.stderr)
        if regs:
            return f"{regs.group(1)} registers, {spill.group(1) if spill else '?'} bytes spilled"
    return ""


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: TRITON_INTERPRET=1 is set; unset it to compile for a GPU", file=sys.stderr)
        return 2
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        import importlib.util

        # The kernels file alone (it imports only triton): no torch needed for this check.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        spec = importlib.util.spec_from_file_location(
            "salt_triton_kernels", os.path.join(root, "salt_kernels", "backends", "triton", "kernels.py"))
        tk = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tk)
    except Exception as exc:
        print(f"compile_check: this triton cannot compile ahead of time here ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return 2
    fn = tk.salt_rows_kernel
    names = list(fn.arg_names)
    failed = 0
    print(f"triton {triton.__version__}")
    for arch, block, warps in itertools.product(args.arch, args.block, args.warps):
        for label, ptrs, const in specializations(args.quick):
            const = dict(const, BLOCK_V=block)
            ptr_types = dict(z_ptr=f"*{ptrs['z']}", u_ptr=f"*{ptrs['u']}", y_ptr=f"*{ptrs.get('y', 'i64')}",
                             g_ptr=f"*{ptrs['g']}", loss_ptr="*fp32", ce_ptr="*fp32", kd_ptr="*fp32",
                             lse_ptr="*fp32", scale_ptr="*fp32", ws_ptr="*fp32", cnt_ptr="*i32")
            signature, constexprs, attrs = {}, {}, {}
            for i, name in enumerate(names):
                if name in const:
                    signature[name] = "constexpr"
                    constexprs[(i,)] = const[name]
                else:
                    signature[name] = ptr_types.get(name) or INT_TYPES.get(name) or ("fp32" if name in FLOAT_ARGS else None)
                    if signature[name] is None:
                        raise SystemExit(f"compile_check: no type for kernel argument {name!r}; update this script")
                    if name in ptr_types or name in DIVISIBLE:
                        attrs[(i,)] = [["tt.divisibility", 16]]
            t0 = time.time()
            try:
                kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                                        target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))
            except TypeError as exc:  # a different ahead-of-time API (older or newer triton)
                print(f"compile_check: triton {triton.__version__}'s compile API differs: {exc}", file=sys.stderr)
                return 2
            except Exception as exc:
                failed += 1
                print(f"FAIL sm_{arch} block {block} warps {warps} {label}: {type(exc).__name__}: {str(exc)[:2000]}")
                continue
            ptx = kernel.asm.get("ptx", "")
            vec = len(re.findall(r"ld\.global[\w:.]*\.v[24]", ptx))
            usage = ptxas_usage(ptx, arch)
            print(f"ok   sm_{arch} block {block:>5} warps {warps:>2} {label:<34} {time.time() - t0:4.1f}s  "
                  f"{usage or 'registers: ptxas not found'}; {vec} vector loads")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
