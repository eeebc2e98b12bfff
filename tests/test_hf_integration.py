"""salt_kernels.integrations.hf with a tiny Llama pair built from configs (no downloads): the
hidden-state helper reproduces the model's logits (softcapped ones too, with a tiny Gemma 2),
the fused loss of both models equals salt_loss on their logits (value and student gradients),
and SaltTrainer trains a few steps on CPU with SALT's schedule, its distillation options, bf16
autocast and gradient-free evaluation."""

import logging
import math

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'salt-kernels[hf]' or '.[test]')"
)
pytest.importorskip("accelerate", reason="accelerate is not installed (Trainer needs it: pip install 'salt-kernels[hf]')")

from transformers import (  # noqa: E402
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    TrainingArguments,
    default_data_collator,
)

import salt_kernels as sk  # noqa: E402
from salt_kernels.integrations import hf  # noqa: E402
from salt_kernels.integrations.hf import (  # noqa: E402
    SaltTrainer,
    causal_lm_hidden,
    final_logit_softcap,
    salt_kd_weight,
    shift_labels,
)
from salt_kernels.train import step as step_module  # noqa: E402
from salt_kernels.train.step import FINAL_LOGIT_SOFTCAPS, OUTPUT_SCALINGS  # noqa: E402

VOCAB = 96


def tiny_llama(hidden, layers, seed, vocab=VOCAB):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).float()


def tiny_gemma2(cap, seed):
    """A Gemma 2 whose logits are cap * tanh(raw / cap); its raw logits (std about 1 with this
    initializer range) are large enough for the cap to matter."""
    torch.manual_seed(seed)
    cfg = Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=16,
        query_pre_attn_scalar=8, final_logit_softcapping=cap, initializer_range=0.2,
    )
    return Gemma2ForCausalLM(cfg).float()


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
    model.config.logit_scale = 30.0
    with pytest.raises(ValueError, match="logit_scale is 30.0"):
        causal_lm_hidden(model, input_ids=ids)
    model.config.logit_scale = None
    with pytest.raises(ValueError, match="get_output_embeddings"):
        causal_lm_hidden(model.model, input_ids=ids)


def test_softcapped_model_hidden_helper_and_fused_loss(gen):
    """Final-logit softcapping is not refused: the helper returns the raw projection of a Gemma 2,
    final_logit_softcap reads its cap, and the fused loss with softcap= equals salt_loss on the
    model's (capped) logits, value and student gradients."""
    student, teacher = tiny_gemma2(0.5, 1), tiny_gemma2(0.75, 2)
    assert (final_logit_softcap(student), final_logit_softcap(teacher)) == (0.5, 0.75)
    assert final_logit_softcap(tiny_llama(32, 1, 0)) is None
    ids, mask, labels = batch(gen)
    targets = shift_labels(labels)
    h_s, w_s, b_s = causal_lm_hidden(student, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        h_t, w_t, _ = causal_lm_hidden(teacher, input_ids=ids, attention_mask=mask)
        z = student(input_ids=ids, attention_mask=mask).logits
    raw = h_s.detach() @ w_s.detach().T
    assert float(raw.abs().max()) > 1.0  # the cap changes these logits
    torch.testing.assert_close(0.5 * torch.tanh(raw / 0.5), z, rtol=1e-5, atol=1e-5)

    kw = dict(kd_weight=0.6, temperature=2.0)
    fused = sk.linear_salt_loss(h_s, w_s, h_t, w_t, targets, softcap=0.5, teacher_softcap=0.75, **kw)
    fused.backward()
    g_fused = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    z = student(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        u = teacher(input_ids=ids, attention_mask=mask).logits
    ref = sk.salt_loss(z, u, targets, **kw)
    ref.backward()
    assert float(fused.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    for n, p in student.named_parameters():
        err = float((g_fused[n] - p.grad).norm()) / max(float(p.grad.norm()), 1e-12)
        assert err <= 1e-4, f"{n}: relative gradient difference {err:.2e}"
    uncapped = sk.linear_salt_loss(h_s.detach(), w_s.detach(), h_t, w_t, targets, **kw)
    assert abs(float(uncapped) - float(ref.detach())) > 1e-3  # without the caps: another loss


def test_final_logit_softcap_on_text_config_and_conflicts():
    model = tiny_llama(32, 1, 0)
    for attr in FINAL_LOGIT_SOFTCAPS:
        assert attr not in OUTPUT_SCALINGS
        text = LlamaConfig()
        setattr(text, attr, 20.0)
        model.config.text_config = text
        assert final_logit_softcap(model) == 20.0
        setattr(model.config, attr, 30.0)
        with pytest.raises(ValueError, match=rf"conflicting final-logit softcaps \(config.{attr} = 30.0, "
                                             rf"config.text_config.{attr} = 20.0\)"):
            final_logit_softcap(model)
        setattr(model.config, attr, None)
    model.config.text_config = None


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


ARG_NAMES = ("gradient_accumulation_steps", "bf16", "label_smoothing_factor", "max_steps", "num_train_epochs")


def make_trainer(tmp_path, gen, student=None, teacher=None, **kw):
    student = student if student is not None else tiny_llama(48, 2, 3)
    teacher = teacher if teacher is not None else tiny_llama(32, 1, 4)
    args = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=8, learning_rate=3e-3,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )
    args.update({k: kw.pop(k) for k in ARG_NAMES if k in kw})
    trainer = SaltTrainer(model=student, teacher_model=teacher, args=TrainingArguments(**args),
                          train_dataset=Rows(gen), **kw)
    return trainer, student, teacher


def one_batch(gen):
    item = Rows(gen)[0]
    return {k: v[None] for k, v in item.items()}


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
    inputs = one_batch(gen)
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
        make_trainer(tmp_path, gen, kd_weight=2.0, n_kd=2)
    with pytest.raises(ValueError, match="n_kd must be an int"):
        make_trainer(tmp_path, gen, n_kd=-1)
    for kw, match in ((dict(divergence="kl"), "divergence must be one of forward_kl, reverse_kl, jsd"),
                      (dict(divergence="jsd", beta=1.0), r"beta must be in the open interval \(0, 1\)"),
                      (dict(label_smoothing=1.5), "label_smoothing"),
                      (dict(z_loss=-1.0), "z_loss"),
                      (dict(softcap=0.0), "softcap"),
                      (dict(kd_vocab=VOCAB + 1), rf"kd_vocab {VOCAB + 1} is larger than the smaller vocabulary")):
        with pytest.raises(ValueError, match=match):
            make_trainer(tmp_path, gen, n_kd=2, **kw)


def test_salt_trainer_needs_the_stage_length(tmp_path, gen):
    """No silent n_kd: without n_kd or kd_fraction the error says what each one means."""
    with pytest.raises(ValueError, match=r"pass n_kd, the number of optimizer steps that distill from the "
                                         r"teacher \(n_kd=0: none\), or kd_fraction, that share of the "
                                         r"run's max_steps .*SALT paper"):
        make_trainer(tmp_path, gen)
    with pytest.raises(ValueError, match="pass n_kd or kd_fraction, not both"):
        make_trainer(tmp_path, gen, n_kd=2, kd_fraction=0.5)
    for bad in (0.0, 1.5, True, "half"):
        with pytest.raises(ValueError, match=r"kd_fraction must be a number in \(0, 1\]"):
            make_trainer(tmp_path, gen, kd_fraction=bad)
    assert make_trainer(tmp_path, gen, n_kd=0)[0].salt_step.n_kd == 0  # explicitly no distillation
    trainer = make_trainer(tmp_path, gen, kd_fraction=0.17)[0]  # max_steps=8: round(1.36)
    assert trainer.salt_step.n_kd == 1
    assert make_trainer(tmp_path, gen, kd_fraction=0.01)[0].salt_step.n_kd == 1  # at least one step


def test_salt_trainer_kd_fraction_of_an_epoch_based_run(tmp_path, gen):
    """Without max_steps the run's length is known when training starts: n_kd follows then."""
    trainer, _, _ = make_trainer(tmp_path, gen, kd_fraction=0.5, max_steps=-1, num_train_epochs=1)
    trainer.train()  # 24 rows / 4 per step = 6 steps
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.max_steps == 6 and trainer.salt_step.n_kd == 3
    assert [h["kd_weight"] for h in logs] == [0.5, 0.5, 0.5, 0.0, 0.0, 0.0]


def test_salt_trainer_distillation_options(tmp_path, gen):
    """Every option reaches the loss: compute_loss equals salt_loss on both models' logits with
    the same options (label smoothing from TrainingArguments by default), the logs carry z_loss
    and accuracy, and evaluation is the plain cross-entropy."""
    options = dict(divergence="jsd", beta=0.3, z_loss=1e-3)
    trainer, student, teacher = make_trainer(tmp_path, gen, kd_weight=0.4, temperature=1.5, n_kd=4,
                                             label_smoothing_factor=0.1, **options)
    step = trainer.salt_step
    assert (step.divergence, step.beta, step.z_loss, step.label_smoothing) == ("jsd", 0.3, 1e-3, 0.1)
    override = make_trainer(tmp_path, gen, n_kd=1, label_smoothing_factor=0.1, label_smoothing=0.0)[0]
    assert override.salt_step.label_smoothing == 0.0  # the argument wins over TrainingArguments

    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for h in logs:
        assert h["z_loss"] > 0 and 0.0 <= h["accuracy"] <= 1.0
        w = h["kd_weight"]
        assert h["loss"] == pytest.approx((1 - w) * h["ce"] + w * h["kd"] + h["z_loss"], rel=1e-3, abs=1e-4)
    assert logs[-1]["accuracy"] > logs[0]["accuracy"]  # the counting pattern is being learned

    trainer.state.global_step = 0  # stage 1 again, for one batch with the trained student
    inputs = one_batch(gen)
    student.train()
    loss = trainer.compute_loss(student, inputs)
    z = student(input_ids=inputs["input_ids"]).logits
    with torch.no_grad():
        u = teacher(input_ids=inputs["input_ids"]).logits
    targets = shift_labels(inputs["labels"])
    ref = sk.salt_loss(z, u, targets, kd_weight=0.4, temperature=1.5, label_smoothing=0.1, **options)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    student.eval()
    eval_loss = trainer.compute_loss(student, inputs)
    ce = torch.nn.functional.cross_entropy(z[0, :-1], inputs["labels"][0, 1:])
    assert float(eval_loss.detach()) == pytest.approx(float(ce.detach()), rel=1e-5)


def test_salt_trainer_reads_each_models_softcap(tmp_path, gen):
    """A softcapped student and teacher (Gemma 2): the trainer's fused loss applies each model's
    own cap, so it equals salt_loss on the models' logits; a softcap argument overrides it."""
    student, teacher = tiny_gemma2(0.5, 5), tiny_gemma2(0.75, 6)
    trainer = make_trainer(tmp_path, gen, student=student, teacher=teacher, n_kd=4, kd_weight=0.5)[0]
    assert (trainer.salt_step.softcap, trainer.salt_step.teacher_softcap) == (None, None)  # the models' own
    inputs = one_batch(gen)
    student.train()
    loss = trainer.compute_loss(student, inputs)
    z = student(input_ids=inputs["input_ids"]).logits
    with torch.no_grad():
        u = teacher(input_ids=inputs["input_ids"]).logits
    targets = shift_labels(inputs["labels"])
    ref = sk.salt_loss(z, u, targets, kd_weight=0.5)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    other = make_trainer(tmp_path, gen, student=student, teacher=teacher, n_kd=4, kd_weight=0.5, softcap=2.0)[0]
    raw = causal_lm_hidden(student, input_ids=inputs["input_ids"])
    capped = 2.0 * torch.tanh((raw.hidden @ raw.weight.T) / 2.0)
    ref2 = sk.salt_loss(capped, u, targets, kd_weight=0.5)
    assert float(other.compute_loss(student, inputs).detach()) == pytest.approx(float(ref2.detach()), rel=1e-5)


class CountingTokenizer:
    """Stands in for a tokenizer whose len() is the number of real tokens."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_salt_trainer_padded_teacher_vocabulary(tmp_path, gen, caplog):
    """A teacher whose output layer has more rows than the student's: kd_vocab defaults to the
    tokenizer's length, said once; without a tokenizer the error names kd_vocab."""
    padded = tiny_llama(32, 1, 4, vocab=VOCAB + 8)
    with pytest.raises(ValueError, match=rf"teacher and student vocabularies differ \(lm_head rows: teacher "
                                         rf"{VOCAB + 8}, student {VOCAB}\) and no tokenizer length is known: "
                                         r"pass kd_vocab"):
        make_trainer(tmp_path, gen, teacher=padded, n_kd=4)
    with caplog.at_level(logging.WARNING, logger=hf.__name__):
        trainer, student, _ = make_trainer(tmp_path, gen, teacher=padded, n_kd=4, kd_weight=0.5,
                                           processing_class=CountingTokenizer(VOCAB - 6),
                                           data_collator=default_data_collator)
    notes = [r.getMessage() for r in caplog.records if "vocabularies differ" in r.getMessage()]
    assert notes == [f"teacher and student vocabularies differ (lm_head rows: teacher {VOCAB + 8}, student "
                     f"{VOCAB}): distilling over the tokenizer's {VOCAB - 6} tokens (kd_vocab {VOCAB - 6})"]
    assert trainer.salt_step.kd_vocab == VOCAB - 6
    inputs = one_batch(gen)
    inputs["input_ids"] = inputs["input_ids"] % (VOCAB - 6)
    inputs["labels"] = inputs["input_ids"].clone()
    student.train()
    loss = trainer.compute_loss(student, inputs)
    z = student(input_ids=inputs["input_ids"]).logits
    with torch.no_grad():
        u = padded(input_ids=inputs["input_ids"]).logits
    ref = sk.salt_loss(z, u, shift_labels(inputs["labels"]), kd_weight=0.5, kd_vocab=VOCAB - 6)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    explicit = make_trainer(tmp_path, gen, teacher=padded, n_kd=4, kd_vocab=VOCAB)[0]
    assert explicit.salt_step.kd_vocab == VOCAB


def spy_on_backends(monkeypatch):
    """Record, for every call of a backend's rows(), the dtypes of the student and teacher logits
    and whether a gradient buffer was passed."""
    from salt_kernels.backends import cpu, reference

    calls = []
    for module in (cpu, reference):
        def rows(student, teacher, *args, _rows=module.rows, **kwargs):
            calls.append((student.dtype, None if teacher is None else teacher.dtype, kwargs.get("grad") is not None))
            return _rows(student, teacher, *args, **kwargs)
        monkeypatch.setattr(module, "rows", rows)
    return calls


def spy_on_step_loss(monkeypatch):
    """Record the grad mode and autocast state in which the step calls linear_salt_loss."""
    calls = []
    real = step_module.linear_salt_loss

    def linear_salt_loss(*args, **kwargs):
        calls.append({"grad": torch.is_grad_enabled(), "autocast": torch.is_autocast_enabled("cpu")
                      and torch.get_autocast_dtype("cpu")})
        return real(*args, **kwargs)
    monkeypatch.setattr(step_module, "linear_salt_loss", linear_salt_loss)
    return calls


@pytest.mark.parametrize("bf16", [False, True])
def test_salt_trainer_bf16_runs_the_head_and_loss_under_autocast(tmp_path, gen, monkeypatch, bf16):
    """With bf16=True the output projections and the loss run under the model's autocast: the
    logits that reach the kernels are bf16 matmuls, the student's and the teacher's."""
    trainer, _, _ = make_trainer(tmp_path, gen, n_kd=1, max_steps=2, bf16=bf16)
    backend_calls, step_calls = spy_on_backends(monkeypatch), spy_on_step_loss(monkeypatch)
    trainer.train()
    want = torch.bfloat16 if bf16 else torch.float32
    assert [c["autocast"] for c in step_calls] == [want if bf16 else False] * 2
    assert backend_calls and all(s == want for s, _, _ in backend_calls)
    assert [t for _, t, _ in backend_calls if t is not None] == [want] * sum(1 for c in backend_calls if c[1] is not None)
    assert any(t is not None for _, t, _ in backend_calls)  # step 1 distilled
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)


def test_salt_trainer_evaluation_does_no_gradient_work(tmp_path, gen, monkeypatch):
    """evaluate(): the loss is computed with grad mode off, no gradient buffer reaches the kernels,
    and the student's parameters get no .grad."""
    trainer, student, _ = make_trainer(tmp_path, gen, n_kd=4)
    backend_calls, step_calls = spy_on_backends(monkeypatch), spy_on_step_loss(monkeypatch)
    result = trainer.evaluate(Rows(gen, n=8))
    assert math.isfinite(result["eval_loss"])
    assert step_calls and not any(c["grad"] for c in step_calls)
    assert backend_calls and not any(grad for _, _, grad in backend_calls)
    assert all(t is None for _, t, _ in backend_calls)  # w = 0: the teacher is not read
    assert all(p.grad is None for p in student.parameters())
