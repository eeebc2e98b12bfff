"""`salt-kernels bench`: loss microbenchmarks of every usable backend and the baselines."""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_OUT = os.path.join("benchmarks", "results", "bench_{device}.json")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time the SALT loss of every usable backend against PyTorch eager, torch.compile and Liger",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Loss microbenchmarks: every usable salt_kernels backend and the baselines (PyTorch eager,\n"
            "torch.compile of the same function, Liger-Kernel's CE + KL on CUDA when installed) for\n"
            "forward, backward and forward + backward (and, with --passes, the forward under no_grad\n"
            "with inputs that require grad). Each case runs in its own process (unless\n"
            "--in-process); per case it reports the median time, GB/s over the minimal bytes (read\n"
            "student and teacher logits once, write the gradient once), that as a fraction of the copy\n"
            "bandwidth measured in the same run, and the peak memory above the inputs. Cases whose\n"
            "estimated memory does not fit are skipped with the reason.\n\n"
            "Grid: the full grid is N in {1024, 4096, 16384} x V in {32000, 128256, 256000}, fp32 and\n"
            "bf16 (the default on a GPU). On a CPU the default is N=1024 x V in {32000, 128256}; --full\n"
            "runs the whole grid there too (eager at 16384 x 256000 fp32 needs ~180 GB). Every case costs a\n"
            "process, and for torch.compile a compilation: choose a subset with --n/--v/--dtype/--backends\n"
            "when time is short.\n\n"
            "Option grid: --options runs each salt_kernels variant once per distillation option of\n"
            "salt_loss (a backend that does not compute an option is recorded as skipped, with its\n"
            "reason); the tables then show each option's time and its ratio to the default option.\n"
            "Top-k teacher: --backends ...,topk adds topk_salt_loss with the top --topk-k tokens of the\n"
            "same teacher, compared with salt_loss on the full teacher.\n\n"
            "Render the JSON into benchmarks/RESULTS.md and PNG plots with --markdown/--plots here, or\n"
            "later with `python benchmarks/report.py RESULT.json`."
        ),
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="device to benchmark on; auto = cuda when a GPU is visible, else cpu (default: auto)")
    p.add_argument("--full", action="store_true",
                   help="run the full N x V grid on a CPU too (it is the default on a GPU)")
    p.add_argument("--n", metavar="N[,N...]",
                   help="token rows to run, comma-separated, e.g. 1024,4096 (default: the grid's)")
    p.add_argument("--v", metavar="V[,V...]",
                   help="vocabulary sizes to run, comma-separated, e.g. 32000,128256 (default: the grid's)")
    p.add_argument("--dtype", default="fp32,bf16", metavar="D[,D...]",
                   help="logit dtypes, comma-separated, from fp32,bf16 (default: fp32,bf16)")
    p.add_argument("--backends", metavar="B[,B...]",
                   help="variants to run, comma-separated, from cpu,triton,cuda,reference (salt_kernels "
                        "backends), eager,compile,liger (baselines), topk (topk_salt_loss with the top "
                        "--topk-k of the same teacher, backend auto), or a triton launch plan "
                        "triton-<fused|split|sync>[-b<block>-w<warps>]. Default: every usable one except "
                        "reference (the slow plain-PyTorch oracle) and topk")
    p.add_argument("--passes", default="fwd,bwd,fwdbwd", metavar="P[,P...]",
                   help="passes, comma-separated, from fwd (loss only under no_grad, inputs that need no "
                        "gradient), fwd_nograd (the forward under torch.no_grad() with inputs that require "
                        "grad: the losses then skip all gradient work), bwd (backward alone after an untimed "
                        "forward), fwdbwd (forward + backward) (default: fwd,bwd,fwdbwd)")
    p.add_argument("--options", default="default", metavar="O[,O...]",
                   help="distillation options to run each salt_kernels variant with, comma-separated, from "
                        "default (the plain SALT loss), softcap (softcap=30.0), label_smoothing "
                        "(label_smoothing=0.1), z_loss (z_loss=1e-4), kd_vocab (kd_vocab=V-128, the teacher "
                        "keeps its V columns), reverse_kl (divergence='reverse_kl'), jsd (divergence='jsd', "
                        "beta=0.5). A backend that does not compute an option is recorded as skipped with "
                        "its reason; the baselines run the default option only (default: default)")
    p.add_argument("--topk-k", type=int, default=64, metavar="K",
                   help="k of the topk variant: its teacher is the k most likely tokens (torch.topk of "
                        "log_softmax of the teacher logits) (default: 64)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed calls per pass at least; the median is reported (default: 3). On CPU "
                        "torch.utils.benchmark's blocked_autorange repeats fast cases until --min-time; on "
                        "GPU triton's do_bench repeats for at least 100 ms")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls before timing, which include torch.compile's and Triton's "
                        "compilation (default: 1 on CPU, 3 on GPU)")
    p.add_argument("--min-time", type=float, default=None,
                   help="keep repeating a pass until its timed calls add up to this many seconds "
                        "(default: 1.0 on CPU, 0.1 on GPU)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch and the kernels (torch.set_num_threads) in every case; on a "
                        "machine shared with other jobs, fewer threads than cores give steadier numbers "
                        "(default: torch's default, one per core)")
    p.add_argument("--kd-weight", type=float, default=0.5, help="KD weight w of the loss (default: 0.5)")
    p.add_argument("--temperature", type=float, default=2.0, help="temperature tau of the loss (default: 2.0)")
    p.add_argument("--memory-fraction", type=float, default=0.85,
                   help="skip a case whose estimated peak exceeds this fraction of the free memory "
                        "(default: 0.85)")
    p.add_argument("--case-timeout", type=float, default=3600,
                   help="seconds one case (all its passes) may run before it is stopped and reported "
                        "as failed (default: 3600)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="JSON result file, written after every case (default: "
                        "benchmarks/results/bench_<device>.json)")
    p.add_argument("--markdown", metavar="RESULTS.md",
                   help="also render the tables into this file between <!-- bench:start --> and "
                        "<!-- bench:end --> (e.g. benchmarks/RESULTS.md)")
    p.add_argument("--plots", metavar="DIR",
                   help="also write PNG plots (time and memory against V) into DIR; needs matplotlib "
                        "(pip install 'salt-kernels[bench]')")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cases, their memory estimates and what would be skipped, run nothing")
    p.add_argument("--in-process", action="store_true",
                   help="run every case in this process instead of one process per case: no interpreter, "
                        "CUDA or compiler start per case, but a case's peak memory may include what earlier "
                        "cases left in the allocators")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("salt-kernels bench: --device cuda, but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use --device cpu")
    return torch.device(name)


def run(args) -> int:
    from ..benchmarking import cases as C

    device = _device(args.device)
    try:
        default_n, default_v = C.default_grid(device, args.full)
        ns = C.parse_list(args.n, int) or list(default_n)
        vs = C.parse_list(args.v, int) or list(default_v)
        dtypes = C.parse_list(args.dtype)
        passes = C.parse_list(args.passes)
        for d in dtypes:
            if d not in C.DTYPES:
                raise ValueError(f"--dtype: unknown dtype {d!r}; choose from {', '.join(C.DTYPES)}")
        for p_ in passes:
            if p_ not in C.ALL_PASSES:
                raise ValueError(f"--passes: unknown pass {p_!r}; choose from {', '.join(C.ALL_PASSES)}")
        options = list(dict.fromkeys(C.parse_list(args.options) or []))
        if not options:
            raise ValueError(f"--options: give at least one of {', '.join(C.OPTIONS)}")
        for o in options:
            if o not in C.OPTIONS:
                raise ValueError(f"--options: unknown option {o!r}; choose from {', '.join(C.OPTIONS)}")
        if args.topk_k < 1:
            raise ValueError("--topk-k must be at least 1")
        if any(x < 1 for x in ns + vs):
            raise ValueError("--n and --v must be positive")
        if args.threads is not None and args.threads < 1:
            raise ValueError("--threads must be at least 1")
        if args.repeats < 1:
            raise ValueError("--repeats must be at least 1")
        if not 0 < args.memory_fraction <= 1:
            raise ValueError("--memory-fraction must be in (0, 1]")
        variants, left_out = C.choose_variants(C.parse_list(args.backends), device)
    except ValueError as exc:
        print(f"salt-kernels bench: {exc}", file=sys.stderr)
        return 2
    if "default" not in options:  # the baselines compute the plain SALT loss only (make_cases)
        baselines = [v for v in variants if not C.salt_variant(v)]
        variants = [v for v in variants if C.salt_variant(v)]
        left_out += [(v, "computes the plain SALT loss only, and --options has no default") for v in baselines]
    if not variants:
        print("salt-kernels bench: none of the requested backends is usable here:\n"
              + "\n".join(f"  {v}: {why}" for v, why in left_out), file=sys.stderr)
        return 2
    if args.plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("salt-kernels bench: --plots needs matplotlib: pip install 'salt-kernels[bench]'", file=sys.stderr)
            return 2
    import torch

    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device, variants, left_out, ns, vs, dtypes, passes, options)
    finally:  # the command may run inside a longer-lived process (tests, notebooks)
        torch.set_num_threads(threads_before)


def _run(args, device, variants, left_out, ns, vs, dtypes, passes, options) -> int:
    from ..benchmarking import cases as C
    from ..benchmarking import render
    from ..benchmarking.machine import available_bytes
    from ..benchmarking.runner import run_bench

    out = args.out.replace("{device}", device.type)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    min_time = args.min_time if args.min_time is not None else (0.1 if device.type == "cuda" else 1.0)

    cases = C.make_cases(variants, ns, vs, dtypes, options=options, k=args.topk_k)
    if args.dry_run:
        avail = available_bytes(device)
        rows = []
        for case in cases:
            need = case.estimated_bytes()
            ok, why = C.case_status(case, device)
            plan = ("run" if need <= args.memory_fraction * avail else "skip (memory)") if ok else f"skip: {why}"
            rows.append([case.variant + (f" k={case.k}" if case.k else ""), case.option, str(case.n), str(case.v),
                         case.dtype, render.fmt_bytes(need), plan])
        print(f"{len(rows)} cases on {device.type} ({render.fmt_bytes(avail)} free), passes {','.join(passes)}:")
        print(render.table(["backend", "option", "N", "V", "dtype", "est. peak", "plan"], rows,
                           ["l", "l", "r", "r", "l", "r", "l"]))
        for v, why in left_out:
            print(f"not run: {v}: {why}")
        return 0

    # The command that reproduces this run, from the effective settings.
    command = (
        f"salt-kernels bench --device {device.type} --n {','.join(map(str, ns))} "
        f"--v {','.join(map(str, vs))} --dtype {','.join(dtypes)} --backends {','.join(variants)} "
        f"--passes {','.join(passes)} --repeats {args.repeats} --warmup {warmup} --min-time {min_time:g}"
    )
    if options != ["default"]:
        command += f" --options {','.join(options)}"
    if C.TOPK in variants:
        command += f" --topk-k {args.topk_k}"
    if args.threads:
        command += f" --threads {args.threads}"
    if (args.kd_weight, args.temperature) != (0.5, 2.0):
        command += f" --kd-weight {args.kd_weight:g} --temperature {args.temperature:g}"
    if args.in_process:
        command += " --in-process"
    doc = run_bench(
        device=device,
        cases=cases,
        left_out=left_out,
        passes=passes,
        out_path=out,
        repeats=args.repeats,
        warmup=warmup,
        min_time=min_time,
        kd_weight=args.kd_weight,
        temperature=args.temperature,
        memory_fraction=args.memory_fraction,
        case_timeout=args.case_timeout,
        command=command,
        progress=not args.no_progress,
        threads=args.threads,
        isolate=not args.in_process,
    )
    print()
    print(render.text_report(doc))
    print(f"\nresults: {out}")
    if args.markdown or args.plots:
        done = render.render([out], args.markdown, args.plots)
        if args.markdown:
            print(f"tables: {args.markdown} (between {render.START_MARKER} and {render.END_MARKER})")
        for path in done["pngs"]:
            print(f"plot: {path}")
    failed = [r for r in doc["results"] if r["status"] == "failed"]
    return 1 if failed else 0
