"""Run under torchrun (gloo, CPU): salt_loss and linear_salt_loss given DTensors, and an FSDP2-
sharded lm_head read outside its forward. Rank 0 writes, per case, the largest relative
difference from one process computing on whole tensors, and the error messages of placements
that are refused.

    torchrun --standalone --nproc_per_node 2 tests/distributed/dtensor_worker.py OUT.json
"""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

import salt_kernels as sk

VOCAB = 1001  # uneven over 2 and 3 ranks


class Tiny(nn.Module):
    """A body and an lm_head that the loss reads outside any forward (as linear_salt_loss users do)."""

    def __init__(self, d: int):
        super().__init__()
        self.body = nn.Linear(d, d, dtype=torch.float64)
        self.lm_head = nn.Linear(d, VOCAB, bias=False, dtype=torch.float64)

    def forward(self, x):
        return self.body(x)


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(0)
    results, errors = {}, {}
    z = torch.randn(3, 11, VOCAB, generator=g, dtype=torch.float64) * 3
    u = torch.randn(3, 11, VOCAB, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, VOCAB, (3, 11), generator=g)
    y[0, :2] = -100
    for name, kw in {"default": dict(kd_weight=0.5), "tau2_ls": dict(kd_weight=0.3, temperature=2.0,
                                                                      label_smoothing=0.1)}.items():
        zf = z.clone().requires_grad_(True)
        ref = sk.salt_loss(zf, u, y, backend="reference", **kw)
        (ref_grad,) = torch.autograd.grad(ref, zf)
        for teacher_kind in ("dtensor", "plain"):
            zd = distribute_tensor(z, mesh, [Shard(-1)]).requires_grad_(True)
            ud = distribute_tensor(u, mesh, [Shard(-1)]) if teacher_kind == "dtensor" else u
            loss = sk.salt_loss(zd, ud, distribute_tensor(y, mesh, [Replicate()]), **kw)
            loss.backward()
            results[f"logits/{name}/{teacher_kind}"] = dict(
                loss=rel(loss, ref), grad=rel(zd.grad.full_tensor(), ref_grad),
                plain=not isinstance(loss, torch.distributed.tensor.DTensor),
                grad_placements=str(tuple(zd.grad.placements)))
    # top-k teacher with Shard(-1) student logits: global ids
    lp, idx = torch.log_softmax(u, dim=-1).topk(8, dim=-1)
    zf = z.clone().requires_grad_(True)
    ref = sk.topk_salt_loss(zf, idx, lp, y, temperature=2.0, backend="reference")
    (ref_grad,) = torch.autograd.grad(ref, zf)
    zd = distribute_tensor(z, mesh, [Shard(-1)]).requires_grad_(True)
    loss = sk.topk_salt_loss(zd, idx, lp, y, temperature=2.0)
    loss.backward()
    results["topk/dtensor"] = dict(loss=rel(loss, ref), grad=rel(zd.grad.full_tensor(), ref_grad),
                                   plain=not isinstance(loss, torch.distributed.tensor.DTensor),
                                   grad_placements=str(tuple(zd.grad.placements)))
    # replicated logits: the ordinary loss
    zr = distribute_tensor(z, mesh, [Replicate()]).requires_grad_(True)
    loss = sk.salt_loss(zr, distribute_tensor(u, mesh, [Replicate()]), y)
    results["logits/replicate"] = dict(loss=rel(loss, sk.salt_loss(z, u, y, backend="reference")), grad=0.0,
                                       plain=True, grad_placements="")
    # tensor parallel linear form: hidden Replicate, weights Shard(0)
    d_s, d_t = 16, 12
    h_s = torch.randn(33, d_s, generator=g, dtype=torch.float64)
    h_t = torch.randn(33, d_t, generator=g, dtype=torch.float64)
    w_s = torch.randn(VOCAB, d_s, generator=g, dtype=torch.float64) * 0.5
    w_t = torch.randn(VOCAB, d_t, generator=g, dtype=torch.float64) * 0.5
    yl = y.reshape(-1)
    leaves = [h_s.clone().requires_grad_(True), w_s.clone().requires_grad_(True)]
    ref = sk.salt_loss(F.linear(leaves[0], leaves[1]), F.linear(h_t, w_t), yl, backend="reference", temperature=2.0)
    ref_grads = torch.autograd.grad(ref, leaves)
    for teacher_kind in ("dtensor", "plain"):
        hd = distribute_tensor(h_s, mesh, [Replicate()]).requires_grad_(True)
        wd = distribute_tensor(w_s, mesh, [Shard(0)]).requires_grad_(True)
        wt = distribute_tensor(w_t, mesh, [Shard(0)]) if teacher_kind == "dtensor" else w_t
        loss = sk.linear_salt_loss(hd, wd, h_t, wt, yl, temperature=2.0)
        loss.backward()
        results[f"linear_tp/{teacher_kind}"] = dict(
            loss=rel(loss, ref), grad=max(rel(hd.grad.full_tensor(), ref_grads[0]),
                                          rel(wd.grad.full_tensor(), ref_grads[1])),
            plain=not isinstance(loss, torch.distributed.tensor.DTensor), grad_placements=str(tuple(wd.grad.placements)))
    # FSDP2: lm_head sharded on its own and read outside its forward; every rank its own tokens
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(1)
    model, ref_model = Tiny(d_s), Tiny(d_s)
    ref_model.load_state_dict(model.state_dict())
    fully_shard(model.lm_head)
    fully_shard(model)
    x_all = torch.randn(world, 20, d_s, generator=g, dtype=torch.float64)
    y_all = torch.randint(0, VOCAB, (world, 20), generator=g)
    ht_all = torch.randn(world, 20, d_t, generator=g, dtype=torch.float64)
    hidden = model(x_all[rank])
    loss = sk.linear_salt_loss(hidden, model.lm_head.weight, ht_all[rank], w_t, y_all[rank], temperature=2.0)
    loss.backward()
    # one process: the mean over ranks of each rank's loss, as data parallelism averages gradients
    ref_loss = sum(sk.salt_loss(F.linear(ref_model(x_all[r]), ref_model.lm_head.weight),
                                F.linear(ht_all[r], w_t), y_all[r], temperature=2.0, backend="reference")
                   for r in range(world)) / world
    ref_loss.backward()
    losses = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(losses, loss.detach().reshape(1))
    results["fsdp2_lm_head"] = dict(
        loss=rel(torch.cat(losses).mean(), ref_loss),
        grad=max(rel(model.lm_head.weight.grad.full_tensor(), ref_model.lm_head.weight.grad),
                 rel(model.body.weight.grad.full_tensor(), ref_model.body.weight.grad)),
        plain=True, grad_placements=str(tuple(model.lm_head.weight.grad.placements)))
    # refused placements name the argument
    for case, fn in {
        "logits_shard0": lambda: sk.salt_loss(distribute_tensor(z, mesh, [Shard(0)]), None, y, kd_weight=0.0),
        "teacher_only": lambda: sk.salt_loss(z, distribute_tensor(u, mesh, [Shard(-1)]), y),
        "hidden_sharded": lambda: sk.linear_salt_loss(distribute_tensor(h_s, mesh, [Shard(0)]),
                                                      distribute_tensor(w_s, mesh, [Shard(0)]), h_t, w_t, yl),
    }.items():
        try:
            fn()
            errors[case] = None
        except (TypeError, ValueError) as exc:
            errors[case] = f"{type(exc).__name__}: {exc}"
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"world": world, "results": results, "errors": errors}, f, indent=1)
    dist.barrier()  # every rank done before any tears down (a gloo peer gone mid-exit aborts the others)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
