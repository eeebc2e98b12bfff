"""docs/design.md, "Errors": every bad input raises ValueError/TypeError naming the argument,
what was expected and what came, before any work is done."""

import math

import pytest
import torch

import salt_kernels as sk


def good(**overrides):
    args = dict(
        student_logits=torch.randn(4, 10),
        teacher_logits=torch.randn(4, 10),
        labels=torch.randint(0, 10, (4,)),
    )
    args.update(overrides)
    return args


def call(backend="auto", **overrides):
    kwargs = {k: overrides.pop(k) for k in list(overrides) if k not in ("student_logits", "teacher_logits", "labels")}
    a = good(**overrides)
    return sk.salt_loss(a["student_logits"], a["teacher_logits"], a["labels"], backend=backend, **kwargs)


CASES = [
    # (overrides, exception, words the message must contain)
    (dict(teacher_logits=torch.randn(4, 11)), ValueError, ["teacher_logits", "11", "10", "kd_vocab="]),
    (dict(teacher_logits=torch.randn(3, 10)), ValueError, ["teacher_logits", "(4, 10)", "(3, 10)"]),
    (dict(labels=torch.randint(0, 10, (5,))), ValueError, ["labels", "(4,)", "(5,)"]),
    (dict(labels=torch.randint(0, 10, (4, 1))), ValueError, ["labels", "(4, 1)"]),
    (dict(student_logits=torch.randint(0, 5, (4, 10), dtype=torch.int32)), TypeError, ["student_logits", "int32"]),
    (dict(student_logits=torch.randint(0, 3, (4, 10))), TypeError, ["student_logits", "int64"]),
    (dict(teacher_logits=torch.randint(0, 5, (4, 10), dtype=torch.int32)), TypeError, ["teacher_logits", "int32"]),
    (dict(labels=torch.randint(0, 10, (4,)).float()), TypeError, ["labels", "float32"]),
    (dict(labels=torch.randint(0, 10, (4,)).to(torch.int16)), TypeError, ["labels", "int16"]),
    (dict(student_logits=[[1.0]]), TypeError, ["student_logits", "list"]),
    (dict(labels=[1, 2, 3, 4]), TypeError, ["labels", "list"]),
    (dict(student_logits=torch.tensor(1.0)), ValueError, ["student_logits", "0-d"]),
    (dict(kd_weight=1.5), ValueError, ["kd_weight", "1.5"]),
    (dict(kd_weight=-0.1), ValueError, ["kd_weight", "-0.1"]),
    (dict(kd_weight=float("nan")), ValueError, ["kd_weight", "nan"]),
    (dict(kd_weight="0.5"), TypeError, ["kd_weight", "str"]),
    (dict(temperature=0.0), ValueError, ["temperature", "0.0"]),
    (dict(temperature=-1.0), ValueError, ["temperature", "-1.0"]),
    (dict(temperature=math.inf), ValueError, ["temperature", "inf"]),
    (dict(temperature=None), TypeError, ["temperature", "NoneType"]),
    (dict(reduction="avg"), ValueError, ["reduction", "avg"]),
    (dict(backend="fastest"), ValueError, ["backend", "fastest"]),
    (dict(teacher_logits=None), ValueError, ["teacher_logits", "kd_weight"]),
    (dict(labels=torch.tensor([0, 1, 10, 2])), ValueError, ["labels", "10", "[0, 10)"]),
    (dict(labels=torch.tensor([0, -1, 3, 2])), ValueError, ["labels", "-1"]),
    (dict(ignore_index=1.5), TypeError, ["ignore_index", "float"]),
]


@pytest.mark.parametrize("overrides,exc,words", CASES)
def test_bad_input_raises_clear_error(overrides, exc, words):
    """With backend "auto"; tests/test_contract.py checks that each explicit backend raises them too."""
    overrides = dict(overrides)
    backend = overrides.pop("backend", "auto")
    with pytest.raises(exc) as info:
        call(backend=backend, **overrides)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_meta_device_mismatch_is_named():
    # Mixed devices: the only second device on a CPU-only machine is "meta".
    with pytest.raises(ValueError, match="teacher_logits.*device"):
        call(teacher_logits=torch.randn(4, 10, device="meta"))
    with pytest.raises(ValueError, match="labels.*device"):
        call(labels=torch.zeros(4, dtype=torch.long, device="meta"))


def test_custom_ignore_index_is_allowed_outside_range():
    y = torch.tensor([0, 3, 7, 3])
    loss = sk.salt_loss(torch.randn(4, 5), None, torch.where(y == 7, -1, y), kd_weight=0.0, ignore_index=-1)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="labels"):
        sk.salt_loss(torch.randn(4, 5), None, y, kd_weight=0.0, ignore_index=-1)


def test_nothing_is_computed_on_bad_input(monkeypatch):
    from salt_kernels.backends import cpu as cpu_backend, reference

    calls = []
    monkeypatch.setattr(cpu_backend, "rows", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(reference, "rows", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError):
        call(labels=torch.tensor([0, 1, 99, 2]))
    assert calls == []
