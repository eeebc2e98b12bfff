"""The losses as torch.library custom ops (docs/design.md, "Ops, torch.compile and autograd"):
opcheck for every op and every backend usable here, fullgraph torch.compile of a training step
with no graph break, torch.func.grad, no gradient work without grad, float64 gradcheck,
second-order gradients, tensor subclasses and labels checked inside the op."""

from __future__ import annotations

import os

import pytest
import torch

import salt_kernels as sk
from oracle import make_logits
from salt_kernels.backends import registry
from salt_kernels.backends.base import LossOptions

OPTS = LossOptions().as_args()  # the default options, as the ops take them
SOME_OPTS = LossOptions(softcap=8.0, kd_vocab=40, divergence="jsd", beta=0.3, label_smoothing=0.1, z_loss=1e-3).as_args()

OPS = torch.ops.salt_kernels
USABLE = [name for name in registry.BACKEND_NAMES if registry.backend_status(name, torch.device("cpu"))[0]]


def _ok(result: dict) -> bool:
    return all(v == "SUCCESS" for v in result.values())


def _salt_inputs(gen, n=12, v=50, dtype=torch.float32):
    z = make_logits((n, v), dtype, generator=gen).requires_grad_()
    u = make_logits((n, v), dtype, generator=gen)
    y = torch.randint(0, v, (n,), generator=gen)
    y[::5] = -100
    return z, u, y


def test_ops_are_registered():
    for name in ("salt_loss", "salt_loss_backward", "linear_salt_loss", "linear_salt_loss_backward"):
        assert hasattr(OPS, name), name


# Triton runs under the interpreter here (slow, about 10 s per case unloaded): one reduction,
# behind --runslow; test_options and test_contract cover its results through the op.
@pytest.mark.parametrize(
    "backend, reduction",
    [pytest.param(b, r, marks=[pytest.mark.slow] if b == "triton" else []) for b in USABLE
     for r in ("mean", "sum", "none") if b != "triton" or r == "none"],
)
def test_opcheck_salt_loss(backend, reduction, gen):
    z, u, y = _salt_inputs(gen)
    options = [OPTS] + ([SOME_OPTS] if registry.get(backend).supports_options(LossOptions(*SOME_OPTS))[0] else [])
    for opts in options:
        for teacher, w in ((u, 0.5), (None, 0.0)):
            for compute_grad in (True, False):
                args = (z, teacher, y, w, 2.0, -100, reduction, backend, *opts, compute_grad, True)
                assert _ok(torch.library.opcheck(OPS.salt_loss, args))
        grad_out = torch.rand(y.shape, generator=gen) if reduction == "none" else torch.tensor(0.7)
        args = (z.detach(), u, y, grad_out, 0.5, 2.0, -100, reduction, backend, *opts)
        assert _ok(torch.library.opcheck(OPS.salt_loss_backward, args))


@pytest.mark.parametrize("backend", [b for b in USABLE if b != "triton"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck_linear_salt_loss(backend, reduction, gen):
    h = torch.randn(10, 8, generator=gen, requires_grad=True)
    w = torch.randn(40, 8, generator=gen, requires_grad=True)
    b = torch.randn(40, generator=gen, requires_grad=True)
    ht, wt = torch.randn(10, 6, generator=gen), torch.randn(40, 6, generator=gen)
    y = torch.randint(0, 40, (10,), generator=gen)
    y[::3] = -100
    f32 = torch.float32
    opts = SOME_OPTS if registry.get(backend).supports_options(LossOptions(*SOME_OPTS))[0] else OPTS
    for flags in ((True, True, True, True), (False, True, False, False)):
        args = (h, w, b, ht, wt, None, y, 0.5, 2.0, -100, reduction, backend, 4, f32, f32, *opts, *flags)
        assert _ok(torch.library.opcheck(OPS.linear_salt_loss, args))
    args = (h, w, None, None, None, None, y, 0.0, 1.0, -100, reduction, backend, 4, f32, None, *OPTS, True, True, False,
            False)
    assert _ok(torch.library.opcheck(OPS.linear_salt_loss, args))
    grad_out = torch.rand(10, generator=gen) if reduction == "none" else torch.tensor(1.3)
    args = (h.detach(), w.detach(), b.detach(), ht, wt, None, y, grad_out, 0.5, 2.0, -100, reduction, backend, 4, f32, f32,
            *opts, True, True, True)
    assert _ok(torch.library.opcheck(OPS.linear_salt_loss_backward, args))


class TinyLM(torch.nn.Module):
    """Embedding -> MLP -> lm_head: enough to produce hidden states and logits."""

    def __init__(self, vocab=64, d=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.GELU())
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def hidden(self, ids):
        return self.mlp(self.emb(ids))

    def forward(self, ids):
        return self.lm_head(self.hidden(ids))


def _loss_fns(teacher: TinyLM):
    def logits_loss(model, ids, labels):
        with torch.no_grad():
            u = teacher(ids)
        return sk.salt_loss(model(ids), u, labels, kd_weight=0.5, temperature=2.0)

    def linear_loss(model, ids, labels):
        with torch.no_grad():
            ht = teacher.hidden(ids)
        return sk.linear_salt_loss(model.hidden(ids), model.lm_head.weight, ht, teacher.lm_head.weight, labels,
                                   kd_weight=0.5, temperature=2.0, chunk_size=8)

    return {"salt_loss": logits_loss, "linear_salt_loss": linear_loss}


@pytest.mark.parametrize("loss_name", ["salt_loss", "linear_salt_loss"])
def test_compiled_training_step_matches_eager(loss_name, gen):
    """fullgraph compile of model -> loss has no graph break; the compiled step's loss, gradients
    and optimizer update match eager."""
    torch._dynamo.reset()
    teacher = TinyLM(seed=1)
    loss_fn = _loss_fns(teacher)[loss_name]
    ids = torch.randint(0, 64, (2, 12), generator=gen)
    labels = torch.randint(0, 64, (2, 12), generator=gen)
    labels[:, :2] = -100

    explain = torch._dynamo.explain(loss_fn)(TinyLM(seed=2), ids, labels)
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1

    results = []
    for compiled in (False, True):
        model = TinyLM(seed=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        fn = torch.compile(loss_fn, fullgraph=True) if compiled else loss_fn
        losses = []
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            loss = fn(model, ids, labels)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        results.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
    (l_eager, p_eager), (l_comp, p_comp) = results
    torch.testing.assert_close(l_comp, l_eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(p_comp, p_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_torch_func_grad(gen):
    z, u, y = _salt_inputs(gen)
    for reduction in ("mean", "sum"):
        expected = torch.autograd.grad(sk.salt_loss(z, u, y, temperature=2.0, reduction=reduction), z)[0]
        got = torch.func.grad(lambda x: sk.salt_loss(x, u, y, temperature=2.0, reduction=reduction))(z.detach())
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    expected = torch.autograd.grad(sk.salt_loss(z, u, y, reduction="none").sum(), z)[0]
    got = torch.func.grad(lambda x: sk.salt_loss(x, u, y, reduction="none").sum())(z.detach())
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


class _Recorder:
    def __init__(self, inner):
        self.inner, self.grads = inner, []

    def rows(self, *args, grad=None, **kw):
        self.grads.append(grad)
        return self.inner.rows(*args, grad=grad, **kw)


@pytest.mark.parametrize("backend", [b for b in USABLE if b != "triton"])
def test_no_gradient_work_without_grad(backend, gen, monkeypatch):
    """Under no_grad (inputs requiring grad) or with inputs that don't require grad, no kernel
    call gets a gradient buffer; with grad, the forward's buffer becomes .grad without a copy."""
    rec = _Recorder(registry.get(backend))
    monkeypatch.setattr(registry, "get", lambda name: rec)
    z, u, y = _salt_inputs(gen)
    with torch.no_grad():
        sk.salt_loss(z, u, y, backend=backend)
    sk.salt_loss(z.detach(), u, y, backend=backend)
    h = torch.randn(12, 8, generator=gen, requires_grad=True)
    w = torch.randn(50, 8, generator=gen, requires_grad=True)
    with torch.no_grad():
        sk.linear_salt_loss(h, w, None, None, y, kd_weight=0.0, backend=backend)
    assert rec.grads and all(g is None for g in rec.grads)

    rec.grads.clear()
    sk.salt_loss(z, u, y, backend=backend).backward()
    (buffer,) = rec.grads
    assert z.grad.data_ptr() == buffer.data_ptr()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float64_gradcheck(reduction, gen):
    z = torch.randn(5, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    u = torch.randn(5, 9, dtype=torch.float64, generator=gen)
    y = torch.tensor([1, -100, 8, 0, 3])
    loss = sk.salt_loss(z, u, y, temperature=1.5, reduction=reduction)
    assert loss.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: sk.salt_loss(x, u, y, temperature=1.5, reduction=reduction), (z,))
    h = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=gen, requires_grad=True)
    ht, wt = torch.randn(5, 3, dtype=torch.float64, generator=gen), torch.randn(9, 3, dtype=torch.float64, generator=gen)

    def linear(h, w, b):
        return sk.linear_salt_loss(h, w, ht, wt, y, student_bias=b, temperature=1.5, reduction=reduction, chunk_size=2)

    assert linear(h, w, b).dtype == torch.float64
    assert torch.autograd.gradcheck(linear, (h, w, b))


def test_float64_explicit_compiled_backend_is_refused(gen):
    z = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        sk.salt_loss(z, None, torch.zeros(3, dtype=torch.long), kd_weight=0.0, backend="cpu")


def test_second_order_gradient_raises(gen):
    z, u, y = _salt_inputs(gen)
    (g,) = torch.autograd.grad(sk.salt_loss(z, u, y), z, create_graph=True)
    with pytest.raises(RuntimeError, match="salt_kernels.salt_loss: second-order"):
        g.sum().backward()
    h = torch.randn(12, 8, generator=gen, requires_grad=True)
    w = torch.randn(50, 8, generator=gen, requires_grad=True)
    gh, gw = torch.autograd.grad(sk.linear_salt_loss(h, w, None, None, y, kd_weight=0.0), (h, w), create_graph=True)
    with pytest.raises(RuntimeError, match="salt_kernels.linear_salt_loss: second-order"):
        (gh.sum() + gw.sum()).backward()


def test_label_out_of_range_inside_the_op(gen):
    """Even without the functional layer's checks (validate=False, or the op called directly),
    a bad label is a ValueError naming its position, not a read out of bounds."""
    z, u, y = _salt_inputs(gen)
    y = y.reshape(3, 4).clone()
    y[2, 1] = 50
    with pytest.raises(ValueError, match=r"got 50 at position \(2, 1\)"):
        sk.salt_loss(z.reshape(3, 4, 50), u.reshape(3, 4, 50), y, validate=False)
    with pytest.raises(ValueError, match="got 50"):
        OPS.salt_loss(z.detach(), u, y.reshape(-1), 0.5, 1.0, -100, "mean", "cpu", *OPTS, False, False)


def test_meta_tensors_never_reach_a_kernel():
    """Meta tensors take the fake kernel (shapes only); the launcher guard refuses storage-less
    tensors should one ever reach it."""
    z = torch.empty(4, 10, device="meta")
    y = torch.zeros(4, dtype=torch.long, device="meta")
    loss, *_ = OPS.salt_loss(z, None, y, 0.0, 1.0, -100, "none", "cpu", *OPTS, False, False)
    assert loss.device.type == "meta" and loss.shape == (4,)
    from salt_kernels.ops.common import check_addressable

    with pytest.raises(TypeError, match="plain tensors with storage"):
        check_addressable(z)


def _gloo_group():
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        dist.init_process_group("gloo", rank=0, world_size=1)
    return dist


def test_dtensors_take_their_path_or_a_clear_type_error(gen):
    """In one process: vocabulary-sharded logits give the plain loss, a DTensor weight with plain
    hidden states (FSDP2) is gathered, a batch-sharded DTensor is refused by name, and the op
    itself never sees a DTensor (tests/test_distributed.py covers several processes)."""
    dist = _gloo_group()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    try:
        mesh = init_device_mesh("cpu", (1,))
        z, u, y = _salt_inputs(gen)
        dz = distribute_tensor(z.detach(), mesh, [Shard(1)])
        torch.testing.assert_close(sk.salt_loss(dz, u, y), sk.salt_loss(z.detach(), u, y), rtol=1e-6, atol=1e-6)
        with pytest.raises(TypeError, match="student_logits is a DTensor.*Shard\\(-1\\)"):
            sk.salt_loss(distribute_tensor(z.detach(), mesh, [Shard(0)]), u, y)
        w = torch.randn(50, 8)
        h = torch.randn(12, 8)
        dw = distribute_tensor(w, mesh, [Shard(0)])
        torch.testing.assert_close(sk.linear_salt_loss(h, dw, None, None, y, kd_weight=0.0),
                                   sk.linear_salt_loss(h, w, None, None, y, kd_weight=0.0))
        # The op itself, handed a DTensor, is refused by DTensor's dispatch, never reaching a kernel.
        with pytest.raises(Exception):
            OPS.salt_loss(dz, None, y, 0.0, 1.0, -100, "mean", "cpu", *OPTS, False, False)
    finally:
        dist.destroy_process_group()


def test_backward_holds_one_gradient_buffer():
    """A training step holds one logits-sized buffer (the gradient written in the forward): the
    parts' outputs get no materialized zero gradients in backward, and nothing is copied."""
    import gc

    from salt_kernels.benchmarking.machine import PeakMemory

    mem = PeakMemory(torch.device("cpu"))
    if not mem.supported:
        pytest.skip("this OS cannot report the peak resident set")
    n, v = 512, 16000
    z = torch.randn(n, v, requires_grad=True)
    u = torch.randn(n, v)
    y = torch.randint(0, v, (n,))
    h = torch.randn(n, 64, requires_grad=True)
    w = torch.randn(v, 64, requires_grad=True)
    steps = {
        "salt_loss": lambda: torch.autograd.grad(sk.salt_loss(z, u, y, temperature=2.0), z),
        "linear_salt_loss": lambda: torch.autograd.grad(
            sk.linear_salt_loss(h, w, None, None, y, kd_weight=0.0, chunk_size=n), (h, w)),
    }
    logits = n * v * 4
    for name, step in steps.items():
        step()  # warm-up: one-time allocations
        gc.collect()  # the peak of one step, from a clean heap
        mem.set_baseline()
        mem.reset()
        step()
        # salt_loss: the gradient (1x); linear: z and g chunk buffers (2x) plus the weight grad
        limit = {"salt_loss": 1.4, "linear_salt_loss": 3.5}[name]
        assert mem.peak_above_baseline() < limit * logits, (name, mem.peak_above_baseline() / logits)
