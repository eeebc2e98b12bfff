"""Vocab-parallel fused-linear SALT loss against gathering the logits, per rank: forward+backward
time and peak memory above the inputs, the vocabulary split over the processes of torchrun.

  vocab-parallel  salt_kernels.distributed.vocab_parallel_linear_salt_loss: each rank its rows of
                  both output weights, chunks of tokens, a few fp32 numbers per row all-reduced
  gather-logits   each rank its slice of both logits (h @ W_r^T), all-gathered along the
                  vocabulary (autograd-aware), then salt_loss on the whole [N x V] logits

Every rank holds the same hidden states (tensor parallelism). Calls are timed one by one with a
barrier before each (a self-calibrating timer could give the ranks different call counts, and
collectives must match); peak memory is the resident-set high-water mark above the inputs (the
harness's PeakMemory). Both variants' losses are checked against each other.

    torchrun --standalone --nproc_per_node 2 benchmarks/bench_vocab_parallel.py --json out.json
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_vocab_parallel.py --tokens 1024   # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096, help="N, tokens (default 4096)")
    p.add_argument("--hidden", type=int, default=512, help="d, student hidden size (default 512)")
    p.add_argument("--teacher-hidden", type=int, default=256, help="teacher hidden size (default 256)")
    p.add_argument("--vocab", type=int, default=128256, help="vocabulary (default 128256)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per variant (default 3)")
    p.add_argument("--variants", default="vocab-parallel,gather-logits", help="comma list (default both)")
    p.add_argument("--json", help="write the results here (rank 0)")
    args = p.parse_args(argv)

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import salt_kernels as sk
    from salt_kernels.benchmarking.machine import PeakMemory
    from salt_kernels.distributed import vocab_parallel_linear_salt_loss

    if "RANK" not in os.environ:
        print("bench_vocab_parallel: run it under torchrun (see --help)", file=sys.stderr)
        return 2
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if args.vocab % world:
        print(f"bench_vocab_parallel: --vocab must be divisible by the {world} processes", file=sys.stderr)
        return 2
    sizes = [args.vocab // world] * world
    lo = sum(sizes[:rank])
    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(args.tokens, args.hidden, generator=g)
    h_t = torch.randn(args.tokens, args.teacher_hidden, generator=g)
    y = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    g.manual_seed(1 + rank)
    w_s = (torch.randn(sizes[rank], args.hidden, generator=g) * args.hidden ** -0.5 * 3).requires_grad_(True)
    w_t = torch.randn(sizes[rank], args.teacher_hidden, generator=g) * args.teacher_hidden ** -0.5 * 3
    kw = dict(kd_weight=0.5, temperature=2.0)

    def vocab_parallel():
        return vocab_parallel_linear_salt_loss(h_s, w_s, h_t, w_t, y, **kw)

    class GatherVocab(torch.autograd.Function):
        """All-gather along the vocabulary; every rank computes the same loss on the whole
        logits, so the gradient of its slice is the slice of its own gradient."""

        @staticmethod
        def forward(ctx, x):
            parts = [torch.empty_like(x) for _ in range(world)]
            dist.all_gather(parts, x.contiguous())
            return torch.cat(parts, dim=-1)

        @staticmethod
        def backward(ctx, grad):
            return grad[..., lo:lo + sizes[rank]]

    def gather_logits():
        z = GatherVocab.apply(F.linear(h_s, w_s))
        with torch.no_grad():
            u = GatherVocab.apply(F.linear(h_t, w_t))
        return sk.salt_loss(z, u, y, **kw)

    fns = {"vocab-parallel": vocab_parallel, "gather-logits": gather_logits}
    h_s.requires_grad_(True)
    results = []
    mem = PeakMemory(torch.device("cpu"))
    for name in args.variants.split(","):
        fn = fns[name]
        dist.barrier()
        loss = fn()
        loss.backward()  # warm-up
        w_s.grad = h_s.grad = None
        mem.set_baseline()
        mem.reset()
        times = []
        for _ in range(args.reps):
            dist.barrier()
            t0 = time.perf_counter()
            loss = fn()
            loss.backward()
            times.append(time.perf_counter() - t0)
            w_s.grad = h_s.grad = None
        peak = mem.peak_above_baseline() if mem.supported else None
        results.append(dict(variant=name, rank=rank, median_s=statistics.median(times), min_s=min(times),
                            peak_bytes=peak, loss=loss.item()))
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    status = 0
    if rank == 0:
        rows = [r for per_rank in gathered for r in per_rank]
        losses = {r["variant"]: r["loss"] for r in rows}
        doc = dict(n=args.tokens, d=args.hidden, dt=args.teacher_hidden, vocab=args.vocab, world=world, reps=args.reps,
                   load_average=os.getloadavg(), torch=torch.__version__, results=rows,
                   command="torchrun --standalone --nproc_per_node %d benchmarks/bench_vocab_parallel.py %s"
                           % (world, " ".join(sys.argv[1:] if argv is None else argv)))
        print(f"N={args.tokens} d={args.hidden} d_t={args.teacher_hidden} V={args.vocab} over {world} processes, fp32, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"{'variant':<16} {'rank':>4} {'fwd+bwd s':>10} {'peak MiB':>9} {'loss':>10}")
        for r in rows:
            peak = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] is not None else "-"
            print(f"{r['variant']:<16} {r['rank']:>4} {r['median_s']:>10.3f} {peak:>9} {r['loss']:>10.5f}")
        if len(losses) == 2 and abs(losses["vocab-parallel"] - losses["gather-logits"]) > 1e-4 * abs(losses["gather-logits"]):
            print(f"the variants disagree: {losses}", file=sys.stderr)
            status = 1
        elif args.json:
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=1)
    dist.barrier()  # every rank done before any tears down
    dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
