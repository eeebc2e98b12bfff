"""The SALT training loop on tiny configs: loss, schedule, equivalences, distillation options
(flags, config keys, softcapped and padded-vocabulary models), resume, data selection, torchrun,
bad input, demo report. Each run takes seconds on a CPU."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the training loop needs the train extra (transformers)")
pytest.importorskip("tokenizers", reason="the training loop needs the train extra (tokenizers)")

from salt_kernels.train import checkpoint as ckpt  # noqa: E402
from salt_kernels.train import schedule  # noqa: E402
from salt_kernels.train.config import ConfigError, TrainConfig  # noqa: E402
from salt_kernels.train.data import ShardSampler, builtin_corpus  # noqa: E402
from salt_kernels.train.report import read_metrics  # noqa: E402
from salt_kernels.train.trainer import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOSS_KEYS = ("loss", "ce", "kd", "w", "lr", "tokens")
VAL_KEYS = ("val_loss", "val_ppl", "val_acc", "tokens")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """~120 KB of the built-in corpus as a user .txt file (exercises --data too)."""
    path = tmp_path_factory.mktemp("data") / "kjv_part.txt"
    path.write_text("\n\n".join(builtin_corpus()[:40]))
    return path


def tiny(tmp: Path, corpus: Path, role: str = "baseline", **kw) -> TrainConfig:
    values = dict(role=role, model="tiny", data=[str(corpus)], vocab_size=300, seq_len=32,
                  batch_size=8, steps=16, eval_interval=4, eval_sequences=16, log_interval=1,
                  ckpt_interval=0, warmup_steps=2, lr=1e-2, progress=False,
                  out_dir=str(tmp / role))
    values.update(kw)
    return TrainConfig().replace(**values)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, corpus) -> str:
    tmp = tmp_path_factory.mktemp("teacher")
    result = train(tiny(tmp, corpus, role="teacher", steps=20))
    assert result.status == "finished"
    return str(tmp / "teacher" / "final")


def gemma_dir(path: Path, tokenizer_dir: str, cap: float, vocab: int = 300) -> str:
    """A tiny Gemma 2 causal-LM directory whose logits are cap * tanh(raw / cap), with the
    tokenizer of `tokenizer_dir`."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from salt_kernels.train.data import load_tokenizer
    from salt_kernels.train.models import save_model_dir

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                       sliding_window=32, query_pre_attn_scalar=16, final_logit_softcapping=cap,
                       initializer_range=0.2, pad_token_id=0, bos_token_id=None, eos_token_id=0)
    save_model_dir(Gemma2ForCausalLM(cfg), load_tokenizer(tokenizer_dir), path)
    return str(path)


def rows(run_dir, split):
    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["split"] == split]


def strip_times(rs, keys):
    return [{k: r[k] for k in ("step",) + keys} for r in rs]


# --------------------------------------------------------------------------- schedules


def test_schedules():
    assert [schedule.kd_weight(s, kd_weight=0.6, n_kd=3) for s in range(5)] == [0.6, 0.6, 0.6, 0, 0]
    lin = [schedule.kd_weight(s, kd_weight=0.6, n_kd=4, transition="linear") for s in range(6)]
    assert lin == pytest.approx([0.6, 0.45, 0.3, 0.15, 0.0, 0.0])
    lrs = [schedule.learning_rate(s, lr=1.0, warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
           for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


# --------------------------------------------------------------------------- the loop


def test_loss_falls(tmp_path, corpus):
    result = train(tiny(tmp_path, corpus, steps=40, eval_interval=10))
    assert result.status == "finished"
    val = rows(tmp_path / "baseline", "val")
    assert [r["step"] for r in val] == [0, 10, 20, 30, 40]
    assert val[-1]["val_loss"] < val[0]["val_loss"] - 0.5, val
    tr = rows(tmp_path / "baseline", "train")
    assert statistics.mean(r["loss"] for r in tr[-5:]) < statistics.mean(r["loss"] for r in tr[:5]) - 0.5
    summary = json.loads((tmp_path / "baseline" / "summary.json").read_text())
    assert summary["final_val_loss"] == val[-1]["val_loss"]
    assert summary["tokens"] == 40 * 8 * 32
    assert (tmp_path / "baseline" / "final" / "config.json").exists()


@pytest.mark.parametrize("transition", ["step", "linear"])
def test_kd_weight_follows_schedule_and_is_zero_after_n_kd(tmp_path, corpus, teacher_dir, transition):
    cfg = tiny(tmp_path, corpus, role="salt", teacher=teacher_dir, n_kd=6, steps=12,
               kd_weight=0.7, transition=transition)
    train(cfg)
    tr = rows(tmp_path / "salt", "train")
    assert [r["step"] for r in tr] == list(range(1, 13))
    for r in tr:
        s = r["step"] - 1  # the update's 0-based index
        expected = schedule.kd_weight(s, kd_weight=0.7, n_kd=6, transition=transition)
        assert r["w"] == pytest.approx(expected)
        if s >= 6:
            assert r["w"] == 0 and r["kd"] == 0 and r["loss"] == pytest.approx(r["ce"])
        elif r["w"] > 0:
            assert r["kd"] > 0
            assert r["loss"] == pytest.approx((1 - r["w"]) * r["ce"] + r["w"] * r["kd"], rel=1e-5)
    summary = json.loads((tmp_path / "salt" / "summary.json").read_text())
    assert summary["n_kd"] == 6


def test_salt_with_kd_weight_zero_equals_baseline(tmp_path, corpus, teacher_dir):
    train(tiny(tmp_path, corpus, role="baseline", tokenizer=teacher_dir))
    train(tiny(tmp_path, corpus, role="salt", teacher=teacher_dir, kd_weight=0.0, n_kd=8))
    for split, keys in (("train", ("loss", "ce", "kd", "lr", "tokens")), ("val", VAL_KEYS)):
        base = strip_times(rows(tmp_path / "baseline", split), keys)
        salt = strip_times(rows(tmp_path / "salt", split), keys)
        assert base == salt  # bit for bit
    a = ckpt.load(tmp_path / "baseline" / "checkpoint.pt")["model"]
    b = ckpt.load(tmp_path / "salt" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_linear_and_logits_loss_paths_match(tmp_path, corpus, teacher_dir):
    runs = {}
    for path in ("linear", "logits"):
        cfg = tiny(tmp_path, corpus, role="salt", teacher=teacher_dir, n_kd=4, steps=8, loss=path,
                   out_dir=str(tmp_path / path), temperature=2.0)
        train(cfg)
        runs[path] = rows(tmp_path / path, "train")
    for a, b in zip(runs["linear"], runs["logits"]):
        assert a["w"] == b["w"]
        for key in ("loss", "ce", "kd"):
            assert a[key] == pytest.approx(b[key], rel=2e-4, abs=1e-5), (a, b)
    assert runs["linear"][0]["kd"] > 0


def test_step_loss_paths_agree_and_settings_are_checked(teacher_dir):
    """The one training step (train/step.py): the three loss paths compute one loss; the linear
    and logits paths the same parts; w = 0 never runs the teacher."""
    from salt_kernels.train.models import build_model, load_model_dir
    from salt_kernels.train.step import SaltStep, StudentLoss

    torch.manual_seed(0)
    student, teacher = build_model("tiny", 300), load_model_dir(teacher_dir).eval()
    x, y = torch.randint(0, 300, (2, 2, 9)).unbind(0)
    y[0, :2] = -100  # ignored targets
    losses, parts = {}, {}
    for path in ("linear", "logits", "torch"):
        step = SaltStep(kd_weight=0.4, temperature=2.0, n_kd=5, path=path)
        assert [step.weight(s) for s in (0, 4, 5)] == [0.4, 0.4, 0.0]
        losses[path], parts[path] = step(student, teacher, y, 0.4, input_ids=x)
    assert parts["torch"] is None
    for path in ("logits", "torch"):
        assert losses[path].item() == pytest.approx(losses["linear"].item(), rel=1e-5)
    for a, b in zip(parts["linear"], parts["logits"]):
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
    step = SaltStep(path="linear")
    ce, ce_parts = StudentLoss(student, step)(x, y, None, 0.0)  # the trainer's DDP unit, stage 2
    assert ce.item() == pytest.approx(ce_parts.ce.item()) and ce_parts.kd.item() == 0
    assert step(student, None, y, 0.0, input_ids=x)[0].item() == ce.item()  # no teacher needed

    for kw, match in ((dict(kd_weight=1.5), r"kd_weight must be finite and in \[0, 1\], got 1.5"),
                      (dict(temperature=0), r"temperature must be finite and in \(0, inf\)"),
                      (dict(n_kd=-1), "n_kd must be an int >= 0"),
                      (dict(transition="cosine"), "transition must be one of step, linear, got 'cosine'"),
                      (dict(path="fused"), "path must be one of linear, logits, torch"),
                      (dict(backend="gpu"), "backend must be one of auto, reference, cpu, triton, cuda"),
                      (dict(divergence="js"), "divergence must be one of forward_kl, reverse_kl, jsd"),
                      (dict(divergence="jsd", beta=0.0), r"beta must be in the open interval \(0, 1\)"),
                      (dict(label_smoothing=-0.1), "label_smoothing"),
                      (dict(z_loss=float("nan")), "z_loss"),
                      (dict(kd_vocab=0), "kd_vocab must be a positive int"),
                      (dict(path="torch", z_loss=1e-4), "the torch loss path computes the plain SALT loss "
                                                        "only; it cannot take z_loss")):
        with pytest.raises(ValueError, match=match):
            SaltStep(**kw)
    with pytest.raises(ConfigError, match=r"kd_weight must be finite and in \[0, 1\], got 1.5"):
        train(TrainConfig().replace(kd_weight=1.5))


def test_step_passes_the_distillation_options_to_the_loss(teacher_dir):
    """Every option reaches the loss, on both fused paths: the step's loss and parts equal
    salt_loss with the same options on the models' logits; replace() keeps the other settings."""
    from salt_kernels.functional import salt_loss
    from salt_kernels.train.models import build_model, load_model_dir
    from salt_kernels.train.step import SaltStep

    torch.manual_seed(0)
    student, teacher = build_model("tiny", 300), load_model_dir(teacher_dir).eval()
    x, y = torch.randint(0, 300, (2, 2, 9)).unbind(0)
    y[1, :3] = -100
    options = dict(divergence="jsd", beta=0.3, label_smoothing=0.1, z_loss=1e-3, kd_vocab=280,
                   softcap=4.0, teacher_softcap=3.0)
    with torch.no_grad():
        z, u = student(input_ids=x).logits, teacher(input_ids=x).logits
    ref, ref_parts = salt_loss(z, u, y, kd_weight=0.4, temperature=2.0, return_parts=True, **options)
    assert float(ref_parts.z_loss) > 0 and 0 <= float(ref_parts.accuracy) <= 1
    for path in ("linear", "logits"):
        step = SaltStep(kd_weight=0.4, temperature=2.0, n_kd=5, path=path, **options)
        loss, parts = step(student, teacher, y, 0.4, input_ids=x)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        for name in ("ce", "kd", "z_loss", "accuracy"):
            assert getattr(parts, name).item() == pytest.approx(getattr(ref_parts, name).item(), rel=1e-5, abs=1e-7)
    plain = step.replace(divergence="forward_kl", z_loss=0.0)
    assert (plain.kd_weight, plain.n_kd, plain.path, plain.label_smoothing, plain.divergence) == \
        (0.4, 5, "logits", 0.1, "forward_kl")
    assert step.describe_options() == ("softcap 4.0, teacher_softcap 3.0, kd_vocab 280, divergence jsd "
                                       "(beta 0.3), label_smoothing 0.1, z_loss 0.001")
    assert SaltStep().describe_options() == "" and "z_loss=0.001" in repr(step)


def test_step_applies_each_models_own_softcap(tmp_path, teacher_dir):
    """Softcapped models (Gemma 2): the linear path caps the raw projection with each model's
    own cap, the logits paths take the model's capped logits as they are, and all agree; an
    override differing from the model's cap is refused on the logits paths."""
    from salt_kernels.functional import salt_loss
    from salt_kernels.train.models import load_model_dir
    from salt_kernels.train.step import SaltStep, causal_lm_hidden

    student = load_model_dir(gemma_dir(tmp_path / "s", teacher_dir, 0.5))
    teacher = load_model_dir(gemma_dir(tmp_path / "t", teacher_dir, 0.75)).eval()
    x, y = torch.randint(0, 300, (2, 2, 9)).unbind(0)
    losses = {path: SaltStep(kd_weight=0.5, temperature=2.0, path=path)(student, teacher, y, 0.5, input_ids=x)[0]
              for path in ("linear", "logits", "torch")}
    for path in ("logits", "torch"):
        assert losses[path].item() == pytest.approx(losses["linear"].item(), rel=1e-5)
    raw = causal_lm_hidden(student, input_ids=x)
    with torch.no_grad():
        z = raw.hidden @ raw.weight.T
        u = teacher(input_ids=x).logits
    plain = salt_loss(z, u, y, kd_weight=0.5, temperature=2.0)
    assert abs(plain.item() - losses["linear"].item()) > 1e-3  # the cap matters here
    capped = salt_loss(z, u, y, kd_weight=0.5, temperature=2.0, softcap=0.5)
    assert capped.item() == pytest.approx(losses["linear"].item(), rel=1e-5)
    # an override: the linear path caps at 2.0 instead; a logits path cannot
    over = SaltStep(kd_weight=0.5, temperature=2.0, softcap=2.0)(student, teacher, y, 0.5, input_ids=x)[0]
    assert over.item() == pytest.approx(salt_loss(z, u, y, kd_weight=0.5, temperature=2.0, softcap=2.0).item(), rel=1e-5)
    for role, kw in (("student", dict(softcap=2.0)), ("teacher", dict(teacher_softcap=2.0))):
        with pytest.raises(ValueError, match=rf"the {role} caps its logits at .* itself .* 'logits' loss path "
                                             rf"cannot give them the {role} softcap 2.0"):
            SaltStep(path="logits", **kw)(student, teacher, y, 0.5, input_ids=x)
    same = SaltStep(kd_weight=0.5, temperature=2.0, path="logits", softcap=0.5)(student, teacher, y, 0.5, input_ids=x)
    assert same[0].item() == pytest.approx(losses["linear"].item(), rel=1e-5)  # its own cap: allowed


def test_losses_are_read_back_and_the_device_synced_at_log_steps_only(tmp_path, corpus, teacher_dir,
                                                                      monkeypatch):
    """A log interval of 5 gives the rows of a log interval of 1 at steps 5, 10, 12 and the same
    weights; the device is synchronized at the log, eval and stage-end steps, not at every step."""
    from salt_kernels.train import metrics

    common = dict(role="salt", teacher=teacher_dir, n_kd=3, steps=12, eval_interval=12)
    train(tiny(tmp_path, corpus, out_dir=str(tmp_path / "every"), **common))
    syncs, seen = [], []
    monkeypatch.setattr(metrics, "synchronize", lambda device: syncs.append(device))
    train(tiny(tmp_path, corpus, out_dir=str(tmp_path / "five"), log_interval=5, **common),
          on_step=lambda step, row: seen.append(row))
    every, five = rows(tmp_path / "every", "train"), rows(tmp_path / "five", "train")
    assert [r["step"] for r in five] == [5, 10, 12]
    assert strip_times(five, LOSS_KEYS) == strip_times([every[4], every[9], every[11]], LOSS_KEYS)
    assert all(r["step_time_s"] > 0 and r["tokens_per_s"] > 0 for r in five)
    assert [sorted(r) for r in seen if r["step"] not in (5, 10, 12)] == [["step", "w"]] * 9
    a = ckpt.load(tmp_path / "every" / "checkpoint.pt")
    b = ckpt.load(tmp_path / "five" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the stage-1 time covers exactly the n_kd steps, though n_kd is not a log step
    assert (b["counters"]["stage1_steps"], b["counters"]["stage2_steps"]) == (3, 9)
    # laps at steps 3 (end of stage 1), 5, 10, 12: a sync before and after each, one at the start
    assert len(syncs) == 1 + 2 * 4


# --------------------------------------------------------------------------- checkpoints


def _sigterm_at(step_to_stop):
    def on_step(step, _row):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal, handled by the loop
    return on_step


def test_sigterm_saves_and_resume_reproduces_uninterrupted_run(tmp_path, corpus, teacher_dir):
    common = dict(role="salt", teacher=teacher_dir, n_kd=6, steps=14, ckpt_interval=4)
    full = tiny(tmp_path, corpus, out_dir=str(tmp_path / "full"), **common)
    train(full)

    part = tiny(tmp_path, corpus, out_dir=str(tmp_path / "part"), **common)
    previous = signal.getsignal(signal.SIGTERM)
    result = train(part, on_step=_sigterm_at(5))
    assert signal.getsignal(signal.SIGTERM) == previous  # handler restored
    assert result.status == "interrupted" and result.step == 5
    assert ckpt.load(tmp_path / "part" / "checkpoint.pt")["step"] == 5
    assert not (tmp_path / "part" / "final").exists()

    # a crash (no checkpoint at the crash) after step 10: resume goes back to step 8
    def crash(step, _row):
        if step == 10:
            raise RuntimeError("simulated crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(part.replace(resume=True), on_step=crash)
    assert ckpt.load(tmp_path / "part" / "checkpoint.pt")["step"] == 8
    assert max(r["step"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl")) == 10

    result = train(part.replace(resume=True))
    assert result.status == "finished"
    for split, keys in (("train", LOSS_KEYS), ("val", VAL_KEYS)):
        assert strip_times(rows(tmp_path / "part", split), keys) == \
            strip_times(rows(tmp_path / "full", split), keys)
    a = ckpt.load(tmp_path / "full" / "checkpoint.pt")
    b = ckpt.load(tmp_path / "part" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_stop_request_waits_for_the_next_log_step(tmp_path, corpus):
    """Processes agree on a stop at the log steps only: SIGTERM after step 5 stops after step 8."""
    cfg = tiny(tmp_path, corpus, steps=12, log_interval=4)
    result = train(cfg, on_step=_sigterm_at(5))
    assert result.status == "interrupted" and result.step == 8
    state = ckpt.load(tmp_path / "baseline" / "checkpoint.pt")
    assert state["step"] == 8 and state["counters"]["stage2_steps"] == 8
    assert [r["step"] for r in rows(tmp_path / "baseline", "train")] == [4, 8]


def test_resume_refuses_changed_settings_and_existing_run(tmp_path, corpus):
    cfg = tiny(tmp_path, corpus, steps=6, ckpt_interval=2)
    train(cfg, on_step=_sigterm_at(3))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)
    with pytest.raises(ConfigError, match="lr: checkpoint 0.01, now 0.02"):
        train(cfg.replace(resume=True, lr=0.02))
    assert train(cfg.replace(resume=True)).status == "finished"


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.atomic_save({"step": 1}, path)

    def broken_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert ckpt.load(path) == {"step": 1}


# --------------------------------------------------------------------------- data


def test_shards_are_disjoint_and_order_is_a_function_of_seed_and_step():
    ids = torch.arange(50)
    samplers = [ShardSampler(ids, 4, seed=3, rank=r, world=2) for r in range(2)]
    assert set(samplers[0].ids.tolist()).isdisjoint(samplers[1].ids.tolist())
    assert sorted(samplers[0].ids.tolist() + samplers[1].ids.tolist()) == list(range(50))
    # one epoch of a shard visits each of its sequences once (25 sequences, batches of 4)
    seen = torch.cat([samplers[0].batch(s) for s in range(25)])  # 100 = 4 epochs
    for e in range(4):
        assert sorted(seen[25 * e:25 * (e + 1)].tolist()) == sorted(samplers[0].ids.tolist())
    fresh = ShardSampler(ids, 4, seed=3, rank=0, world=2)
    assert torch.equal(fresh.batch(17), samplers[0].batch(17))
    assert not torch.equal(ShardSampler(ids, 4, seed=4).batch(0), ShardSampler(ids, 4, seed=3).batch(0))


def test_data_selection_orders_sequences_by_teacher_score(tmp_path, corpus, teacher_dir):
    from salt_kernels.train.models import load_model_dir
    from salt_kernels.train.selection import score_sequences, select_top_fraction

    teacher = load_model_dir(teacher_dir).eval()
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 300, (12, 17), generator=g)
    seqs[3] = seqs[3, :1]  # a repetitive sequence: different score
    scores = score_sequences(teacher, seqs, top_k=10, batch_size=5)

    # oracle: one sequence at a time, in float64, with the statistics module's median
    with torch.no_grad():
        for i, seq in enumerate(seqs):
            logits = teacher(input_ids=seq[None, :-1]).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            kept = [-logp[t, y].item() for t, y in enumerate(seq[1:].tolist())
                    if y in logits[t].topk(10).indices.tolist()]
            expected = statistics.median(kept) if kept else -math.inf
            assert scores[i].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)

    ids = torch.arange(100, 112)
    chosen = select_top_fraction(scores, ids, 0.5)
    assert len(chosen) == 6
    order = sorted(range(12), key=lambda i: -scores[i].item())
    assert chosen.tolist() == [100 + i for i in order[:6]]

    # in a run: stage 1 reads only the selected sequences, stage 2 reads all of them
    cfg = tiny(tmp_path, corpus, role="salt", teacher=teacher_dir, n_kd=5, steps=8,
               select_data=True, select_fraction=0.25)
    train(cfg)
    saved = torch.load(tmp_path / "salt" / "selection.pt", weights_only=True)
    kept = select_top_fraction(saved["scores"], saved["ids"], 0.25)
    assert len(kept) == math.ceil(0.25 * len(saved["ids"]))
    threshold = saved["scores"][kept].min()
    assert (saved["scores"][~torch.isin(saved["ids"], kept)] <= threshold).all()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["missing-data", "empty-data", "unknown-preset", "n-kd-too-large",
                                  "not-writable", "teacher-missing", "kd-vocab-too-large",
                                  "tokenizer-mismatch", "output-scaling", "softcap-on-capped-logits",
                                  "bad-option"])
def test_bad_input_fails_before_training(tmp_path, corpus, teacher_dir, case):
    out = tmp_path / "out"
    kw = dict(out_dir=str(out))
    if case == "missing-data":
        kw["data"] = [str(tmp_path / "nope.txt")]
        match = "does not exist"
    elif case == "empty-data":
        (tmp_path / "empty.txt").write_text("  \n")
        kw["data"] = [str(tmp_path / "empty.txt")]
        match = "no text found"
    elif case == "unknown-preset":
        kw["model"] = "student-xxl"
        match = "neither a preset"
    elif case == "n-kd-too-large":
        kw.update(role="salt", teacher=teacher_dir, n_kd=20, steps=10)
        match = "beyond the total --steps 10"
    elif case == "not-writable":
        (tmp_path / "a_file").write_text("x")
        kw["out_dir"] = str(tmp_path / "a_file" / "run")
        out = tmp_path / "a_file"
        match = "cannot write to the output directory"
    elif case == "teacher-missing":
        kw.update(role="salt", teacher=str(tmp_path / "no_teacher"))
        match = "not a local Hugging Face model directory"
    elif case == "kd-vocab-too-large":  # student 320 rows, teacher 300: at most 300
        from salt_kernels.train.data import load_tokenizer
        from salt_kernels.train.models import build_model, save_model_dir

        student = tmp_path / "student320"
        save_model_dir(build_model("tiny", 320), load_tokenizer(teacher_dir), student)
        kw.update(role="salt", teacher=teacher_dir, model=str(student), kd_vocab=310)
        match = r"--kd-vocab 310 is larger than the smaller vocabulary \(lm_head rows: teacher 300, student 320\)"
    elif case == "softcap-on-capped-logits":  # the model caps at 0.5 itself: --loss logits cannot use 3
        kw.update(model=gemma_dir(tmp_path / "gemma", teacher_dir, 0.5), loss="logits", softcap=3.0)
        match = r"the student caps its logits at 0.5 itself .* 'logits' loss path cannot give them the " \
                r"student softcap 3.0; use the linear loss path"
    elif case == "bad-option":
        kw.update(role="salt", teacher=teacher_dir, divergence="jsd", beta=1.0)
        match = r"beta must be in the open interval \(0, 1\)"
    elif case == "tokenizer-mismatch":
        from salt_kernels.train.data import train_tokenizer

        other = tmp_path / "other_tok"
        train_tokenizer(["completely different words " * 50], 300).save_pretrained(other)
        kw.update(role="salt", teacher=teacher_dir, tokenizer=str(other))
        match = "differs from the teacher"
    elif case == "output-scaling":  # the fused linear loss would ignore the scale: refused
        from salt_kernels.train.data import load_tokenizer
        from salt_kernels.train.models import build_model, save_model_dir

        scaled = build_model("tiny", 300)
        scaled.config.logit_scale = 0.5
        save_model_dir(scaled, load_tokenizer(teacher_dir), tmp_path / "scaled")
        kw.update(model=str(tmp_path / "scaled"), loss="linear")
        match = r"LlamaForCausalLM's config.logit_scale is 0.5: its logits are not hidden @ lm_head"
    cfg = tiny(tmp_path, corpus, **kw)
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint.pt").exists()


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    from salt_kernels.cli import main

    code = main(["train", "--model", "nope", "--out-dir", str(tmp_path / "x"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "salt-kernels train: error: --model 'nope' is neither a preset" in err
    assert "Traceback" not in err


def test_config_file_and_flags(tmp_path):
    from salt_kernels.cli import build_parser
    from salt_kernels.train.config import config_from_args

    toml = tmp_path / "run.toml"
    toml.write_text('[run]\nrole = "salt"\nsteps = 300\n[salt]\nteacher = "t"\nkd_weight = 0.25\n'
                    'n_kd = 100\n[data]\nseq_len = 64\n')
    args = build_parser().parse_args(["train", "--config", str(toml), "--steps", "500"])
    cfg = config_from_args(args)
    assert (cfg.run.role, cfg.run.steps, cfg.salt.kd_weight, cfg.salt.n_kd, cfg.data.seq_len) == \
        ("salt", 500, 0.25, 100, 64)
    assert cfg.optim.lr == TrainConfig().optim.lr  # untouched fields keep their defaults

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("steps: 7\ntransition: linear\n")
    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(yaml_file)]))
    assert (cfg.run.steps, cfg.salt.transition) == (7, "linear")

    bad = tmp_path / "bad.toml"
    bad.write_text("[salt]\nkd_wieght = 0.3\n")
    with pytest.raises(ConfigError, match="unknown key \\[salt\\] 'kd_wieght'"):
        config_from_args(build_parser().parse_args(["train", "--config", str(bad)]))


OPTION_FLAGS = {"--divergence": "jsd", "--beta": "0.3", "--softcap": "30", "--teacher-softcap": "20",
                "--label-smoothing": "0.1", "--z-loss": "1e-4", "--kd-vocab": "250"}
OPTION_VALUES = dict(divergence="jsd", beta=0.3, softcap=30.0, teacher_softcap=20.0, label_smoothing=0.1,
                     z_loss=1e-4, kd_vocab=250)


def test_distillation_option_flags_and_config_keys(tmp_path, capsys):
    """Each option is a flag and a [salt] key (flags win), explained by --help, reaches the run's
    SaltStep, and is checked before training."""
    from salt_kernels.cli import build_parser
    from salt_kernels.train.config import check_config, config_from_args

    argv = ["train"] + [x for flag, value in OPTION_FLAGS.items() for x in (flag, value)]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert {k: getattr(cfg.salt, k) for k in OPTION_VALUES} == OPTION_VALUES
    step = cfg.salt_step()
    assert {k: getattr(step, k) for k in OPTION_VALUES} == OPTION_VALUES

    default = TrainConfig().salt_step()
    assert (default.softcap, default.teacher_softcap, default.kd_vocab, default.divergence, default.beta,
            default.label_smoothing, default.z_loss) == (None, None, None, "forward_kl", 0.5, 0.0, 0.0)

    toml = tmp_path / "run.toml"
    toml.write_text('[salt]\ndivergence = "reverse_kl"\nz_loss = 0.001\nsoftcap = 15\nkd_vocab = 100\n'
                    'label_smoothing = 0.05\n')
    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(toml), "--z-loss", "0.002"]))
    assert (cfg.salt.divergence, cfg.salt.z_loss, cfg.salt.softcap, cfg.salt.kd_vocab, cfg.salt.label_smoothing) == \
        ("reverse_kl", 0.002, 15.0, 100, 0.05)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("divergence: jsd\nbeta: 0.25\nteacher_softcap: 50\n")
    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(yaml_file)]))
    assert (cfg.salt.divergence, cfg.salt.beta, cfg.salt.teacher_softcap) == ("jsd", 0.25, 50.0)

    for values, match in ((dict(divergence="kl"), "divergence must be one of forward_kl, reverse_kl, jsd"),
                          (dict(kd_vocab=2.5), "kd_vocab must be of type"),
                          (dict(label_smoothing=1.5), "label_smoothing"),
                          (dict(softcap=-1.0), "softcap"),
                          (dict(z_loss=-1.0), "z_loss")):
        with pytest.raises(ConfigError, match=match):
            check_config(TrainConfig().replace(**values))

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--divergence {forward_kl,reverse_kl,jsd}", "KL(teacher || student)",
                   "--beta BETA --divergence jsd: the teacher's weight",
                   "--softcap SOFTCAP final-logit softcap", "(default: the model config's final_logit_softcapping",
                   "--teacher-softcap TEACHER_SOFTCAP", "(default: the teacher config's final_logit_softcapping",
                   "--label-smoothing LABEL_SMOOTHING label smoothing", "--z-loss Z_LOSS z-loss weight",
                   "--kd-vocab KD_VOCAB compare teacher and student over the first K",
                   "the tokenizer's length when the teacher's and the student's output layers differ"):
        assert phrase in help_text, phrase


def test_run_with_distillation_options_logs_z_loss_and_accuracy(tmp_path, corpus, teacher_dir, capsys):
    cfg = tiny(tmp_path, corpus, role="salt", teacher=teacher_dir, n_kd=3, steps=6, eval_interval=6,
               divergence="reverse_kl", label_smoothing=0.1, z_loss=1e-3)
    train(cfg)
    assert ("loss options: divergence reverse_kl, label_smoothing 0.1, z_loss 0.001"
            in capsys.readouterr().err)
    tr = rows(tmp_path / "salt", "train")
    assert len(tr) == 6
    for r in tr:
        assert r["z_loss"] > 0 and 0.0 <= r["accuracy"] <= 1.0
        assert r["loss"] == pytest.approx((1 - r["w"]) * r["ce"] + r["w"] * r["kd"] + r["z_loss"], rel=1e-5)
    assert all(r["kd"] > 0 for r in tr[:3]) and all(r["kd"] == 0 for r in tr[3:])


def test_padded_student_vocabulary_distills_over_the_tokenizer(tmp_path, corpus, teacher_dir, capsys):
    """A student whose output layer has 320 rows against the teacher's 300: the run distills over
    the tokenizer's tokens and says so once."""
    from salt_kernels.train.data import load_tokenizer
    from salt_kernels.train.models import build_model, save_model_dir

    n_tok = len(load_tokenizer(teacher_dir))
    student = tmp_path / "student320"
    torch.manual_seed(0)
    save_model_dir(build_model("tiny", 320), load_tokenizer(teacher_dir), student)
    result = train(tiny(tmp_path, corpus, role="salt", teacher=teacher_dir, model=str(student), n_kd=3, steps=4,
                        eval_interval=4))
    assert result.status == "finished"
    err = capsys.readouterr().err
    note = (f"teacher and student vocabularies differ (lm_head rows: teacher 300, student 320): distilling "
            f"over the tokenizer's {n_tok} tokens (--kd-vocab {n_tok})")
    assert err.count(note) == 1, err
    tr = rows(tmp_path / "salt", "train")
    assert all(r["kd"] > 0 for r in tr[:3]) and all(math.isfinite(r["loss"]) for r in tr)


def test_softcapped_student_linear_and_logits_paths_match(tmp_path, corpus, teacher_dir, capsys):
    """A Gemma 2 student directory (logits capped at 0.5): --softcap defaults to its own cap, so
    the fused linear path trains exactly as the logits path does."""
    student = gemma_dir(tmp_path / "gemma", teacher_dir, 0.5)
    runs = {}
    for path in ("linear", "logits"):
        train(tiny(tmp_path, corpus, role="salt", teacher=teacher_dir, model=student, n_kd=2, steps=4,
                   eval_interval=4, loss=path, out_dir=str(tmp_path / path)))
        runs[path] = rows(tmp_path / path, "train")
        err = capsys.readouterr().err
        assert f"loss path {path}, distillation for 2 steps" in err
        assert "loss options: softcap 0.5 (model config)" in err
    for a, b in zip(runs["linear"], runs["logits"]):
        for key in ("loss", "ce", "kd", "accuracy"):
            assert a[key] == pytest.approx(b[key], rel=2e-4, abs=1e-5), (a, b)


# --------------------------------------------------------------------------- processes


def test_two_process_torchrun(tmp_path, corpus):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "salt_kernels", "train", "--role", "baseline", "--model", "tiny",
           "--data", str(corpus), "--vocab-size", "300", "--seq-len", "32", "--batch-size", "8",
           "--steps", "6", "--eval-interval", "3", "--eval-sequences", "16", "--log-interval", "1",
           "--warmup-steps", "2", "--no-progress", "--out-dir", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["tokens"] == 6 * 8 * 32  # the global batch, split over the two processes
    tr = rows(out, "train")
    assert [r["step"] for r in tr] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) for r in tr)
    assert "2 x cpu" in proc.stderr


# --------------------------------------------------------------------------- demo


def test_demo_writes_report(tmp_path, corpus):
    from salt_kernels.cli import main

    code = main(["demo", "--runs-dir", str(tmp_path), "--name", "d", "--data", str(corpus),
                 "--teacher-model", "tiny", "--student-model", "tiny", "--teacher-steps", "12",
                 "--steps", "12", "--n-kd", "4", "--eval-interval", "4", "--vocab-size", "300",
                 "--seq-len", "32", "--batch-size", "8", "--warmup-steps", "2", "--no-progress"])
    assert code == 0
    root = tmp_path / "d"
    summary = json.loads((root / "summary.json").read_text())
    for run in ("baseline", "salt"):
        for key in ("final_val_loss", "steps", "wall_time_s", "tokens_per_s", "step_time_s"):
            assert isinstance(summary[run][key], (int, float)), (run, key)
    assert summary["salt"]["n_kd"] == 4
    assert summary["steps_to_match"] is None or 0 < summary["steps_to_match"] <= 12
    salt_val = rows(root / "salt", "val")
    first = next((r["step"] for r in salt_val if r["step"] > 0
                  and r["val_loss"] <= summary["baseline"]["final_val_loss"]), None)
    assert summary["steps_to_match"] == first
    report = (root / "report.md").read_text()
    assert f"{summary['baseline']['final_val_loss']:.4f}" in report
    assert (root / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # baseline and SALT start from the same initialization
    assert rows(root / "baseline", "val")[0] == rows(root / "salt", "val")[0]
    # a second demo into the same folder is refused unless --resume/--overwrite
    assert main(["demo", "--runs-dir", str(tmp_path), "--name", "d", "--data", str(corpus),
                 "--no-progress"]) == 2


def test_bf16_teacher_gives_nearly_the_same_distillation_loss(tmp_path, corpus, teacher_dir):
    kd = {}
    for dtype in ("float32", "bfloat16"):
        train(tiny(tmp_path, corpus, role="salt", teacher=teacher_dir, n_kd=3, steps=3,
                   teacher_dtype=dtype, out_dir=str(tmp_path / dtype)))
        kd[dtype] = [r["kd"] for r in rows(tmp_path / dtype, "train")]
    assert kd["bfloat16"] != kd["float32"]  # the teacher really ran in bf16
    assert kd["bfloat16"] == pytest.approx(kd["float32"], rel=0.05)


def test_progress_bar_shows_loss_w_tokens_per_s_and_eta(tmp_path, corpus, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    train(tiny(tmp_path, corpus, steps=6, progress=True))
    out = term.getvalue()
    assert "6/6" in out and "loss=" in out and "w=0.00" in out and "tok_s=" in out
    assert "<00:00" in out or "<0" in out  # tqdm's [elapsed<remaining] ETA field
    assert "step 6/6 | val loss" in out  # readable log lines go above the bar


def test_read_documents_txt_jsonl_and_folders(tmp_path):
    from salt_kernels.train.data import read_documents, split_documents

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("first document\nwith two lines\n")
    (folder / "b.jsonl").write_text('{"text": "second"}\n\n"third"\n')
    (folder / "ignored.csv").write_text("x,y\n")
    assert read_documents([str(folder)]) == ["first document\nwith two lines\n", "second", "third"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        read_documents([str(tmp_path / "bad.jsonl")])
    # the split is fixed (no seed) and puts every 20th piece in validation
    docs = ["line %d\n" % i * 1 for i in range(4000)]
    train_a, val_a = split_documents(["".join(docs)], 0.05)
    train_b, val_b = split_documents(["".join(docs)], 0.05)
    assert (train_a, val_a) == (train_b, val_b)
    assert 0.03 < len(val_a) / (len(val_a) + len(train_a)) < 0.07
