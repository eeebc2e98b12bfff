"""salt_kernels.integrations.hf with a tiny Llama pair built from configs (no downloads): the
hidden-state helper reproduces the model's logits, the fused loss of both models equals
salt_loss on their logits (value and student gradients), and SaltTrainer trains a few steps on
CPU with SALT's schedule."""

import math

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'salt-kernels[hf]' or '.[test]')"
)
pytest.importorskip("accelerate", reason="accelerate is not installed (Trainer needs it: pip install 'salt-kernels[hf]')")

from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments  # noqa: E402

import salt_kernels as sk  # noqa: E402
from salt_kernels.integrations.hf import SaltTrainer, causal_lm_hidden, salt_kd_weight, shift_labels  # noqa: E402
from salt_kernels.train.step import OUTPUT_SCALINGS  # noqa: E402

VOCAB = 96


def tiny_llama(hidden, layers, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).float()


def batch(gen, b=3, t=12):
    ids = torch.randint(0, VOCAB, (b, t), generator=gen)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, -3:] = 0  # right padding in the first sequence
    labels = ids.clone()
    labels[mask == 0] = -100
    return ids, mask, labels


def test_hidden_helper_reproduces_logits(gen):
    model = tiny_llama(32, 2, 0).eval()
    ids, mask, _ = batch(gen)
    h, w, b = causal_lm_hidden(model, input_ids=ids, attention_mask=mask)
    assert h.shape == (3, 12, 32) and w is model.lm_head.weight and b is None
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(h.detach() @ w.detach().T, logits, rtol=1e-5, atol=1e-5)


def test_fused_loss_of_two_models_matches_logits_loss(gen):
    """Value and every student parameter's gradient equal salt_loss on the models' logits."""
    student, teacher = tiny_llama(48, 2, 1), tiny_llama(32, 1, 2)
    ids, mask, labels = batch(gen)
    targets = shift_labels(labels)
    assert torch.equal(targets[:, :-1], labels[:, 1:]) and bool((targets[:, -1] == -100).all())
    kw = dict(kd_weight=0.6, temperature=2.0)

    h_s, w_s, b_s = causal_lm_hidden(student, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        h_t, w_t, b_t = causal_lm_hidden(teacher, input_ids=ids, attention_mask=mask)
    fused = sk.linear_salt_loss(h_s, w_s, h_t, w_t, targets, chunk_size=7, **kw)
    fused.backward()
    g_fused = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()

    z = student(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        u = teacher(input_ids=ids, attention_mask=mask).logits
    ref = sk.salt_loss(z, u, targets, **kw)
    ref.backward()
    assert abs(float(fused.detach()) - float(ref.detach())) <= 1e-5 * float(ref.detach())
    for n, p in student.named_parameters():
        err = float((g_fused[n] - p.grad).norm()) / max(float(p.grad.norm()), 1e-12)
        assert err <= 1e-4, f"{n}: relative gradient difference {err:.2e}"
    assert all(p.grad is None for p in teacher.parameters())


def test_hidden_helper_rejects_nonlinear_logits_and_labels(gen):
    model = tiny_llama(32, 1, 0)
    ids, _, labels = batch(gen)
    with pytest.raises(ValueError, match="without labels"):
        causal_lm_hidden(model, input_ids=ids, labels=labels)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping is 30.0"):
        causal_lm_hidden(model, input_ids=ids)
    model.config.final_logit_softcapping = None
    with pytest.raises(ValueError, match="get_output_embeddings"):
        causal_lm_hidden(model.model, input_ids=ids)


@pytest.mark.parametrize("attr", sorted(OUTPUT_SCALINGS))
def test_hidden_helper_refuses_every_output_scaling(gen, attr):
    """Each config attribute that scales or caps the logits (on the config or its text_config)
    is refused with one message; its neutral values are not."""
    model = tiny_llama(32, 1, 0)
    ids, _, _ = batch(gen)
    for neutral in OUTPUT_SCALINGS[attr]:
        setattr(model.config, attr, neutral)
        assert causal_lm_hidden(model, input_ids=ids).hidden.shape == (3, 12, 32)
    for owner in (model.config, LlamaConfig()):
        setattr(owner, attr, 2.0)
        model.config.text_config = owner if owner is not model.config else None
        where = "config" if owner is model.config else "config.text_config"
        with pytest.raises(ValueError, match=rf"LlamaForCausalLM's {where}.{attr} is 2.0: its logits are not "
                                             r"hidden @ lm_head.weight.T \+ bias"):
            causal_lm_hidden(model, input_ids=ids)
        setattr(model.config, attr, None)


def test_schedule():
    assert [salt_kd_weight(s, kd_weight=0.5, n_kd=4) for s in range(6)] == [0.5, 0.5, 0.5, 0.5, 0.0, 0.0]
    lin = [salt_kd_weight(s, kd_weight=0.5, n_kd=4, transition="linear") for s in range(6)]
    assert lin == [0.5, 0.375, 0.25, 0.125, 0.0, 0.0]
    assert salt_kd_weight(0, kd_weight=0.5, n_kd=0) == 0.0
    with pytest.raises(ValueError, match="transition must be one of step, linear, got 'cosine'"):
        salt_kd_weight(0, kd_weight=0.5, n_kd=4, transition="cosine")


class Rows(torch.utils.data.Dataset):
    def __init__(self, gen, n=24, t=16):
        # A learnable pattern: each sequence counts up from a random start (mod VOCAB).
        start = torch.randint(0, VOCAB, (n, 1), generator=gen)
        self.ids = (start + torch.arange(t)) % VOCAB

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.ids[i].clone()}


def make_trainer(tmp_path, gen, **kw):
    student, teacher = tiny_llama(48, 2, 3), tiny_llama(32, 1, 4)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=8, learning_rate=3e-3,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        gradient_accumulation_steps=kw.pop("gradient_accumulation_steps", 1),
    )
    return SaltTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Rows(gen), **kw), student, teacher


@pytest.mark.parametrize("transition,ga", [("step", 1), ("linear", 2)])
def test_salt_trainer_trains_tiny_llama_pair(tmp_path, gen, transition, ga):
    trainer, student, teacher = make_trainer(
        tmp_path, gen, kd_weight=0.5, temperature=2.0, n_kd=4, transition=transition,
        gradient_accumulation_steps=ga, chunk_size=16,
    )
    teacher_before = {n: p.clone() for n, p in teacher.named_parameters()}
    student_before = {n: p.detach().clone() for n, p in student.named_parameters()}
    teacher_calls = []
    teacher.model.register_forward_hook(lambda *a: teacher_calls.append(1))

    trainer.train()

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 8
    want_w = [salt_kd_weight(s, kd_weight=0.5, n_kd=4, transition=transition) for s in range(8)]
    assert [h["kd_weight"] for h in logs] == pytest.approx(want_w)
    # The teacher runs once per micro-batch while w > 0, and never after.
    assert len(teacher_calls) == ga * sum(1 for w in want_w if w > 0)
    assert all(math.isfinite(h["loss"]) and h["ce"] > 0 for h in logs)
    assert all(h["kd"] == 0 for h, w in zip(logs, want_w) if w == 0)
    # Stage 1 loss mixes CE and KD; stage 2 loss is CE alone.
    for h, w in zip(logs, want_w):
        assert h["loss"] == pytest.approx((1 - w) * h["ce"] + w * h["kd"], rel=1e-3, abs=1e-4)
    assert logs[-1]["ce"] < logs[0]["ce"]
    assert all(torch.equal(p, teacher_before[n]) for n, p in teacher.named_parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(p.detach(), student_before[n]) for n, p in student.named_parameters())
    # evaluate(): the CE of the trained student, as plain cross-entropy on its logits says.
    ev = Rows(gen, n=4)
    eval_loss = trainer.evaluate(ev)["eval_loss"]
    with torch.no_grad():
        z = student(input_ids=ev.ids).logits
    ce = torch.nn.functional.cross_entropy(z[:, :-1].reshape(-1, VOCAB), ev.ids[:, 1:].reshape(-1))
    assert eval_loss == pytest.approx(float(ce), rel=1e-4)


def test_salt_trainer_loss_matches_logits_loss(tmp_path, gen):
    """compute_loss on one batch equals salt_loss on both models' logits with shifted labels."""
    trainer, student, teacher = make_trainer(tmp_path, gen, kd_weight=0.3, temperature=1.5, n_kd=10)
    item = Rows(gen)[0]
    inputs = {k: v[None] for k, v in item.items()}
    student.train()
    loss = trainer.compute_loss(student, inputs)
    z = student(input_ids=inputs["input_ids"]).logits
    with torch.no_grad():
        u = teacher(input_ids=inputs["input_ids"]).logits
    ref = sk.salt_loss(z, u, shift_labels(inputs["labels"]), kd_weight=0.3, temperature=1.5)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    student.eval()
    eval_loss = trainer.compute_loss(student, inputs)  # evaluation: CE only
    ce = torch.nn.functional.cross_entropy(z[0, :-1], inputs["labels"][0, 1:])
    assert float(eval_loss.detach()) == pytest.approx(float(ce.detach()), rel=1e-5)


def test_salt_trainer_bad_arguments(tmp_path, gen):
    with pytest.raises(ValueError, match="transition must be one of step, linear"):
        make_trainer(tmp_path, gen, n_kd=2, transition="cos")
    with pytest.raises(ValueError, match=r"kd_weight must be finite and in \[0, 1\], got 2.0"):
        make_trainer(tmp_path, gen, kd_weight=2.0)
    with pytest.raises(ValueError, match="n_kd must be an int"):
        make_trainer(tmp_path, gen, n_kd=-1)
