"""Run under torchrun (gloo, CPU): every rank holds an uneven contiguous slice of the vocabulary
and computes the vocab-parallel SALT loss; rank 0 writes, per case, the largest difference of
loss, parts and gradients from salt_loss / linear_salt_loss on the joined vocabulary in one
process (float64 inputs: the differences are rounding only).

    torchrun --standalone --nproc_per_node 3 tests/distributed/vocab_parallel_worker.py OUT.json
"""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

import salt_kernels as sk
from salt_kernels.distributed import (vocab_parallel_linear_salt_loss, vocab_parallel_salt_loss,
                                      vocab_parallel_topk_salt_loss)

SPLITS = {1: [1000], 2: [430, 570], 3: [300, 450, 250]}
CASES = {
    "default": dict(kd_weight=0.5, temperature=1.0),
    "tau2": dict(kd_weight=0.7, temperature=2.0),
    "ce_only": dict(kd_weight=0.0, temperature=1.0),
    "softcap": dict(kd_weight=0.5, temperature=2.0, softcap=8.0, teacher_softcap=6.0),
    "kd_vocab": dict(kd_weight=0.5, temperature=1.5, kd_vocab=820),
    "label_smoothing": dict(kd_weight=0.5, temperature=1.0, label_smoothing=0.1),
    "z_loss": dict(kd_weight=0.5, temperature=1.0, z_loss=1e-3),
    "reverse_kl": dict(kd_weight=0.5, temperature=2.0, divergence="reverse_kl"),
    "jsd": dict(kd_weight=0.5, temperature=1.0, divergence="jsd", beta=0.3),
}


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def rel(a, b) -> float:
    return max_diff(a, b) / max(1.0, float(b.double().abs().max()))


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = SPLITS[world]
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    vocab = sum(sizes)
    g = torch.Generator().manual_seed(0)
    n = 2 * 23
    z = torch.randn(2, 23, vocab, generator=g, dtype=torch.float64) * 3
    u = torch.randn(2, 23, vocab, generator=g, dtype=torch.float64) * 3 + 0.5
    z[0, 3, :300] -= 50.0  # a row without mass in the first slice
    y = torch.randint(0, vocab, (2, 23), generator=g)
    y[1, :4] = -100  # ignored rows
    y[0, 5] = vocab - 1  # the last id (last rank)
    y[0, 6] = 0
    results = {}
    for name, kw in CASES.items():
        for reduction in ("mean", "sum", "none"):
            teacher = None if kw["kd_weight"] == 0 else u
            zf = z.clone().requires_grad_(True)
            ref, ref_parts = sk.salt_loss(zf, teacher, y, reduction=reduction, return_parts=True,
                                          backend="reference", **kw)
            w = torch.randn(ref.shape, generator=g, dtype=torch.float64) if reduction == "none" else 1.0
            (ref_grad,) = torch.autograd.grad((ref * w).sum(), zf)
            zs = z[..., lo:hi].clone().requires_grad_(True)
            got, parts = vocab_parallel_salt_loss(zs, None if teacher is None else u[..., lo:hi], y,
                                                  reduction=reduction, return_parts=True, **kw)
            (grad,) = torch.autograd.grad((got * w).sum(), zs)
            results[f"logits/{name}/{reduction}"] = dict(
                loss=rel(got, ref), grad=rel(grad, ref_grad[..., lo:hi]),
                parts=max(rel(getattr(parts, f), getattr(ref_parts, f)) for f in ("ce", "kd", "z_loss")),
                accuracy=max_diff(parts.accuracy, ref_parts.accuracy))
    # an offline top-k teacher: global ids, both tails, empty slots, k up to the whole vocabulary
    for k, tail, tau, extra in ((1, "bucket", 1.0, {}), (16, "bucket", 2.0, dict(label_smoothing=0.1)),
                                (16, "renormalize", 1.0, dict(softcap=8.0, z_loss=1e-3)), (vocab, "bucket", 1.0, {})):
        logp = torch.log_softmax(u, dim=-1)
        lp, idx = logp.topk(k, dim=-1)
        if k > 1:
            idx[0, 0, -1] = -1  # an empty slot
            idx[1, 7, :] = -1  # a row without teacher entries
        for reduction in ("mean", "none"):
            kw = dict(kd_weight=0.5, temperature=tau, tail=tail, reduction=reduction, return_parts=True, **extra)
            zf = z.clone().requires_grad_(True)
            ref, ref_parts = sk.topk_salt_loss(zf, idx, lp, y, backend="reference", **kw)
            w = torch.randn(ref.shape, generator=g, dtype=torch.float64) if reduction == "none" else 1.0
            (ref_grad,) = torch.autograd.grad((ref * w).sum(), zf)
            zs = z[..., lo:hi].clone().requires_grad_(True)
            got, parts = vocab_parallel_topk_salt_loss(zs, idx, lp, y, **kw)
            (grad,) = torch.autograd.grad((got * w).sum(), zs)
            results[f"topk/k{k}/{tail}/tau{tau:g}/{reduction}"] = dict(
                loss=rel(got, ref), grad=rel(grad, ref_grad[..., lo:hi]),
                parts=max(rel(getattr(parts, f), getattr(ref_parts, f)) for f in ("ce", "kd", "z_loss")),
                accuracy=max_diff(parts.accuracy, ref_parts.accuracy))
    # bf16 slices: the same loss as one process on the joined bf16 logits (fp32 arithmetic)
    zb, ub = z.to(torch.bfloat16), u.to(torch.bfloat16)
    zf = zb.clone().requires_grad_(True)
    ref = sk.salt_loss(zf, ub, y, kd_weight=0.5, temperature=2.0, backend="reference")
    (ref_grad,) = torch.autograd.grad(ref, zf)
    zs = zb[..., lo:hi].clone().requires_grad_(True)
    got = vocab_parallel_salt_loss(zs, ub[..., lo:hi], y, kd_weight=0.5, temperature=2.0)
    (grad,) = torch.autograd.grad(got, zs)
    results["logits/bf16/mean"] = dict(loss=rel(got, ref), grad=rel(grad, ref_grad[..., lo:hi]), parts=0.0,
                                       accuracy=0.0)
    # the linear form: full hidden states on every rank, rows of both weights (and biases)
    d_s, d_t = 24, 16
    h_s = torch.randn(n, d_s, generator=g, dtype=torch.float64)
    h_t = torch.randn(n, d_t, generator=g, dtype=torch.float64)
    w_s = torch.randn(vocab, d_s, generator=g, dtype=torch.float64) * 0.6
    w_t = torch.randn(vocab, d_t, generator=g, dtype=torch.float64) * 0.7
    b_s = torch.randn(vocab, generator=g, dtype=torch.float64) * 0.1
    yl = y.reshape(-1)
    for name in ("default", "tau2", "jsd", "label_smoothing"):
        kw = CASES[name]
        for reduction in ("mean", "sum", "none"):
            leaves = [t.clone().requires_grad_(True) for t in (h_s, w_s, b_s)]
            ref = sk.salt_loss(F.linear(leaves[0], leaves[1], leaves[2]), F.linear(h_t, w_t), yl,
                               reduction=reduction, backend="reference", **kw)
            w = torch.randn(ref.shape, generator=g, dtype=torch.float64) if reduction == "none" else 1.0
            ref_grads = torch.autograd.grad((ref * w).sum(), leaves)
            mine = [h_s.clone().requires_grad_(True), w_s[lo:hi].clone().requires_grad_(True),
                    b_s[lo:hi].clone().requires_grad_(True)]
            got = vocab_parallel_linear_salt_loss(mine[0], mine[1], h_t, w_t[lo:hi], yl, student_bias_shard=mine[2],
                                                  reduction=reduction, chunk_size=10, **kw)
            grads = torch.autograd.grad((got * w).sum(), mine)
            results[f"linear/{name}/{reduction}"] = dict(
                loss=rel(got, ref), grad=max(rel(grads[0], ref_grads[0]), rel(grads[1], ref_grads[1][lo:hi]),
                                             rel(grads[2], ref_grads[2][lo:hi])), parts=0.0, accuracy=0.0)
    # every rank must hold the same loss
    probe = torch.tensor([float(vocab_parallel_salt_loss(z[..., lo:hi], u[..., lo:hi], y))], dtype=torch.float64)
    gathered = [torch.zeros_like(probe) for _ in range(world)]
    dist.all_gather(gathered, probe)
    results["same_on_every_rank"] = dict(loss=max_diff(torch.cat(gathered), probe.expand(world)), grad=0.0,
                                         parts=0.0, accuracy=0.0)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"world": world, "results": results}, f, indent=1)
    dist.barrier()  # every rank done before any tears down (a gloo peer gone mid-exit aborts the others)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
