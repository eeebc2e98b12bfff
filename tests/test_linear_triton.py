"""linear_salt_loss on the triton backend against float64 evaluation: on a CUDA device the real
kernels (and the bf16 weight-gradient accumulation of the GPU path); without one, the kernels
under the Triton interpreter on CPU tensors, at small shapes."""

import pytest
import torch

import salt_kernels as sk  # noqa: E402
from salt_kernels.backends import registry as dispatch  # noqa: E402
from triton_setup import DEVICE, INTERPRETER_WARNINGS  # noqa: E402

from test_linear import make_side, oracle, rel_err  # noqa: E402

pytestmark = INTERPRETER_WARNINGS


def test_triton_usable_here():
    ok, why = dispatch.backend_status("triton", DEVICE)
    assert ok, f"triton backend not usable on {DEVICE}: {why}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_on_triton_matches_float64(dtype, reduction, gen):
    n, ds, dt, vocab = 13, 16, 8, 300
    hs, ws, bs = make_side(n, ds, vocab, dtype, gen)
    ht, wt, bt = make_side(n, dt, vocab, dtype, gen)
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[4] = -100
    grad_out = torch.rand(n, generator=gen) + 0.5 if reduction == "none" else None
    l64, _, _, gh64, gw64, gb64 = oracle(hs, ws, bs, ht, wt, bt, y, w=0.5, tau=2.0, reduction=reduction, grad_out=grad_out)
    leaves = [t.to(DEVICE).requires_grad_() for t in (hs, ws, bs)]
    loss = sk.linear_salt_loss(
        leaves[0], leaves[1], ht.to(DEVICE), wt.to(DEVICE), y.to(DEVICE), student_bias=leaves[2],
        teacher_bias=bt.to(DEVICE), kd_weight=0.5, temperature=2.0, reduction=reduction, backend="triton", chunk_size=5,
    )
    loss.backward(None if grad_out is None else grad_out.to(DEVICE))
    tol_loss, tol_grad = (1e-5, 1e-5) if dtype == torch.float32 else (1e-3, 1e-2)
    err = float(((loss.detach().cpu().double() - l64).abs() / (l64.abs() + 1e-6)).max())
    assert err <= tol_loss, f"loss relative error {err:.2e}"
    for name, leaf, want in zip(("hidden", "weight", "bias"), leaves, (gh64, gw64, gb64)):
        assert leaf.grad.dtype == dtype
        e = rel_err(leaf.grad.cpu(), want)
        assert e <= tol_grad, f"grad {name}: relative error {e:.2e}"
