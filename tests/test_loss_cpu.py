"""What only the C++ CPU backend (csrc/cpu, salt_kernels.backends.cpu) has: rows split across
threads, the instruction set picked at run time, and agreement with the plain-PyTorch baseline of
the benchmarks. The backend contract itself (docs/design.md, "The loss", "Numerical
acceptance") is tested for every backend in tests/test_contract.py."""

import pytest
import torch

import salt_kernels as sk
from oracle import assert_grad_close, assert_rows_match, make_logits, same_bits_over_threads
from salt_kernels.backends import cpu as cpu_backend

pytestmark = pytest.mark.skipif(not cpu_backend.is_available()[0], reason=f"backend cpu is not built: {cpu_backend.is_available()[1]}")


def test_isa_is_reported():
    assert cpu_backend.isa() in ("avx512", "avx2", "generic")


def test_rows_split_across_threads_give_the_same_bits(gen):
    """Each row is one thread's work: any thread count gives the same bits, and they match the
    oracle (more rows than threads, rows of several 512-entry chunks)."""
    n, vocab = 37, 3000
    z = make_logits((n, vocab), torch.bfloat16, generator=gen)
    u = make_logits((n, vocab), torch.float32, generator=gen)
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[::5] = -100
    scale = torch.rand(n, generator=gen) + 0.5

    def run():
        grad = torch.empty(n, vocab, dtype=z.dtype)
        out = cpu_backend.rows(z, u, y, kd_weight=0.4, temperature=2.0, ignore_index=-100, grad=grad,
                               grad_scale=scale)
        return out, grad

    first = same_bits_over_threads(run, fields=("loss", "ce", "kd", "lse"))
    assert_rows_match(*first, z, u, y, kd_weight=0.4, temperature=2.0, grad_scale=scale)


def test_cpu_kernel_matches_plain_pytorch_baseline(gen):
    from salt_kernels.benchmarking.baselines import eager

    z = make_logits((32, 5000), generator=gen).requires_grad_()
    u = make_logits((32, 5000), generator=gen)
    y = torch.randint(0, 5000, (32,), generator=gen)
    y[3] = -100
    zb = z.detach().clone().requires_grad_()
    ours = sk.salt_loss(z, u, y, kd_weight=0.5, temperature=2.0, backend="cpu")
    theirs = eager(0.5, 2.0)(zb, u, y)
    ours.backward()
    theirs.backward()
    err = abs(float(ours.detach()) - float(theirs.detach()))
    assert err <= 1e-5 * abs(float(theirs.detach())) + 1e-6, f"loss error {err:.3e}"
    assert_grad_close(z.grad, zb.grad.double(), torch.float32)


def test_topk_rows_split_across_threads_give_the_same_bits(gen):
    """The top-k kernel splits rows over threads like the full-teacher one: any thread count gives
    the same bits (bf16 student, fp16 log-probs, int32 indices with empty slots, tau 2)."""
    n, vocab, k = 37, 3000, 32
    z = make_logits((n, vocab), torch.bfloat16, generator=gen)
    lp, idx = torch.topk(torch.log_softmax(make_logits((n, vocab), generator=gen), -1), k, dim=-1)
    idx, lp = idx.to(torch.int32), lp.to(torch.float16)
    idx[:, -3:] = -1
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[::5] = -100
    scale = torch.rand(n, generator=gen) + 0.5

    def run():
        grad = torch.empty(n, vocab, dtype=z.dtype)
        out = cpu_backend.topk_rows(z, idx, lp, y, kd_weight=0.4, temperature=2.0, ignore_index=-100, grad=grad,
                                    grad_scale=scale)
        return out, grad

    _, grad = same_bits_over_threads(run)
    assert not grad[::5].any()  # ignored rows: gradient 0


def test_topk_salt_loss_auto_picks_cpu():
    from salt_kernels.backends import registry

    assert registry.resolve_name("auto", torch.device("cpu"), torch.bfloat16, kind="topk_rows") == "cpu"
