"""`salt-kernels teacher-cache` and `salt-kernels train --teacher-cache` on tiny configs: the cache
holds the teacher's top-k of the trainer's own batches, in its order; an interrupted write resumes
to the same bytes; stage 1 from a cache with k = V gives the full-teacher run's losses (and
k = 8 does not); a cache that does not fit the run is refused naming --teacher-cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the training loop needs the train extra (transformers)")
pytest.importorskip("tokenizers", reason="the training loop needs the train extra (tokenizers)")

from salt_kernels.cli import main  # noqa: E402
from salt_kernels.train import build  # noqa: E402
from salt_kernels.train import teacher_cache as tc  # noqa: E402
from salt_kernels.train.config import ConfigError, TrainConfig  # noqa: E402
from salt_kernels.train.data import builtin_corpus, load_tokenizer, train_tokenizer  # noqa: E402
from salt_kernels.train.models import load_model_dir  # noqa: E402
from salt_kernels.train.runtime import Dist  # noqa: E402
from salt_kernels.train.step import SaltStep, TopkTeacher  # noqa: E402
from salt_kernels.train.trainer import train  # noqa: E402

SEQ_LEN = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "kjv_part.txt"
    path.write_text("\n\n".join(builtin_corpus()[:12]))
    return path


def tiny(tmp: Path, corpus: Path, role: str = "salt", **kw) -> TrainConfig:
    values = dict(role=role, model="tiny", data=[str(corpus)], vocab_size=300, seq_len=SEQ_LEN,
                  batch_size=4, steps=4, eval_interval=4, eval_sequences=4, log_interval=1,
                  ckpt_interval=0, warmup_steps=1, lr=1e-2, progress=False, threads=1,
                  out_dir=str(tmp / role))
    values.update(kw)
    return TrainConfig().replace(**values)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, corpus) -> str:
    tmp = tmp_path_factory.mktemp("teacher")
    assert train(tiny(tmp, corpus, role="teacher", steps=6)).status == "finished"
    return str(tmp / "teacher" / "final")


def cache_flags(teacher_path: str, out: Path, corpus: Path, **kw) -> list[str]:
    values = {"teacher": teacher_path, "out-dir": str(out), "data": str(corpus), "seq-len": SEQ_LEN, "k": 8,
              "shard-sequences": 24, "batch-size": 8, "threads": 1}
    values.update(kw)
    return ["teacher-cache", *[x for k, v in values.items() for x in (f"--{k}", str(v))], "--no-progress"]


@pytest.fixture(scope="module")
def cache_k8(tmp_path_factory, teacher_dir, corpus) -> Path:
    out = tmp_path_factory.mktemp("cache") / "k8"
    assert main(cache_flags(teacher_dir, out, corpus)) == 0
    return out


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.npy"))}


def test_cache_rows_are_the_teachers_topk_of_the_trainers_batches(cache_k8, teacher_dir, corpus, tmp_path):
    m = tc.Manifest.load(cache_k8)
    assert (m.k, m.dtype, m.seq_len, m.complete) == (8, "bf16", SEQ_LEN, list(range(m.n_shards)))
    assert m.n_shards >= 2 and m.teacher == str(Path(teacher_dir).resolve()) and m.teacher_vocab == 300
    # The run the trainer builds with this cache: its batches, their ids, the cache's rows.
    cfg = tiny(tmp_path, corpus, teacher_cache=str(cache_k8), steps=40)
    run = build.build_run(cfg, build.validate_inputs(cfg), torch.device("cpu"), Dist(), resuming=False)
    assert run.teacher is None and run.teacher_cache is not None and len(run.data.train) == m.sequences
    teacher = load_model_dir(teacher_dir).eval()
    seen = set()
    for step in (0, 1, 39):  # 40 steps x 4 sequences: past the first epoch too
        batch = run.batch(step)
        seen.update(batch.ids.tolist())
        assert torch.equal(run.data.train[batch.ids][:, :-1], batch.inputs)
        out = run.teacher_out(batch)
        assert isinstance(out, TopkTeacher)
        ids, lps, _ = tc.teacher_pass(teacher, run.data.train[batch.ids], 8, torch.bfloat16, 10)
        assert torch.equal(out.indices, ids) and torch.equal(out.logprobs, lps)
    assert len(seen) > 4  # several batches, not one repeated


def test_command_prints_the_size_first_and_resumes_to_the_same_bytes(cache_k8, teacher_dir, corpus, tmp_path,
                                                                      capsys):
    out = tmp_path / "resumed"
    cc = tc.CacheConfig(teacher=str(Path(teacher_dir).parent), out_dir=str(out), data=[str(corpus)],
                        seq_len=SEQ_LEN, k=8, shard_sequences=24, batch_size=8, threads=1, progress=False)
    m = tc.build_teacher_cache(cc, stop_after_shards=1)  # as a run killed after its first shard
    assert m.complete == [0]
    (out / "indices-00001.tmp.npy").write_bytes(b"half a shard")  # killed in the middle of the next
    err = capsys.readouterr().err
    assert "is a training run folder: using its model" in err  # the run folder stands for final/
    size = f"{tc.bytes_per_token(8)} bytes per token"
    assert size in err and err.index(size) < err.index("stopped with")
    with pytest.raises(ConfigError, match="--teacher-cache: .*incomplete"):
        build.open_teacher_cache(tiny(tmp_path, corpus, teacher_cache=str(out)))
    assert main(cache_flags(teacher_dir, out, corpus)) == 0
    err = capsys.readouterr().err
    assert "resuming: 1 of" in err and "complete" in err
    assert digest(out) == digest(cache_k8)
    assert not list(out.glob("*.tmp*"))


@pytest.mark.parametrize("flag, value, message", [
    ("k", 300, "--k must be in [8, 256]"), ("k", 4, "--k must be in"), ("batch-size", 0, "--batch-size"),
    ("seq-len", 0, "--seq-len"), ("val-fraction", 0.7, "--val-fraction"), ("teacher", "nowhere", "--teacher"),
])
def test_bad_flags_name_the_flag(flag, value, message, teacher_dir, corpus, tmp_path, capsys):
    assert main(cache_flags(teacher_dir, tmp_path / "c", corpus, **{flag: value})) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_stage1_from_a_cache_with_k_equal_v_is_the_full_teacher_run(teacher_dir, cache_k8, corpus, tmp_path,
                                                                     monkeypatch):
    """The same run (seed, init, batches) with the teacher model and with its cached top-k: with
    every token kept (k = V, fp16 log-probs) the top-k loss is the full KL, so the stage-1 losses
    agree to the rounding of the cached log-probs; with k = 8 they do not (the check can fail)."""
    monkeypatch.setattr(tc, "K_RANGE", (1, 300))  # the command allows 8..256; V is 300 here
    full_cache = tmp_path / "k300"
    tc.build_teacher_cache(tc.CacheConfig(teacher=teacher_dir, out_dir=str(full_cache), data=[str(corpus)],
                                          seq_len=SEQ_LEN, k=300, dtype="fp16", shard_sequences=64,
                                          threads=1, progress=False))

    def stage1(**kw):
        rows = {}
        result = train(tiny(tmp_path, corpus, n_kd=4, kd_weight=0.5, temperature=2.0,
                            out_dir=str(tmp_path / f"run-{len(list(tmp_path.iterdir()))}"), **kw),
                       on_step=lambda step, row: rows.__setitem__(step, row))
        assert result.status == "finished"
        return torch.tensor([[rows[s]["loss"], rows[s]["kd"]] for s in sorted(rows)])

    full = stage1(teacher=teacher_dir)
    from_cache = stage1(teacher_cache=str(full_cache))
    top8 = stage1(teacher_cache=str(cache_k8))
    assert full.shape == (4, 2) and (full[:, 1] > 0.01).all()
    torch.testing.assert_close(from_cache, full, rtol=2e-3, atol=2e-3)
    assert (top8[:, 1] - full[:, 1]).abs().max() > 0.01  # k = 8 of 300 is not the full teacher


def test_data_selection_from_the_cache_picks_what_the_teacher_picks(teacher_dir, cache_k8, corpus, tmp_path):
    """--select-data with --teacher-cache reads the scores the cache's teacher pass stored: stage 1
    draws from the same sequences as a run that scores them with the teacher model, and no teacher
    is loaded; a cache scored at another top-k is refused naming the flags."""
    def stage1_ids(name, **kw):
        cfg = tiny(tmp_path, corpus, n_kd=2, select_data=True, out_dir=str(tmp_path / name), **kw)
        run = build.build_run(cfg, build.validate_inputs(cfg), torch.device("cpu"), Dist(), resuming=False)
        return run, run.stage1_sampler.ids

    live, live_ids = stage1_ids("live", teacher=teacher_dir)
    cached, cached_ids = stage1_ids("cached", teacher_cache=str(cache_k8))
    assert cached.teacher is None and live.teacher is not None
    assert 0 < len(cached_ids) < len(cached.data.train) and torch.equal(cached_ids, live_ids)
    with pytest.raises(ConfigError, match="--select-top-k 10, this run asks for 3"):
        stage1_ids("other-k", teacher_cache=str(cache_k8), select_top_k=3)


def test_topk_step_on_the_logits_path_equals_the_full_teacher():
    """SaltStep's top-k path (logits: topk_salt_loss) against its full-teacher path, k = V."""
    torch.manual_seed(0)
    z, u = torch.randn(2, 5, 40, requires_grad=True), torch.randn(2, 5, 40)
    y = torch.randint(0, 40, (2, 5))
    step = SaltStep(kd_weight=0.5, temperature=2.0, path="logits", backend="reference")
    full, parts = step.loss(z, u, y, 0.5)
    top = torch.topk(torch.log_softmax(u, -1), 40)
    cached, cparts = step.loss(z, TopkTeacher(top.indices.int(), top.values), y, 0.5)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cparts.kd, parts.kd, rtol=1e-5, atol=1e-5)
    few = torch.topk(torch.log_softmax(u, -1), 4)
    assert abs(step.loss(z, TopkTeacher(few.indices.int(), few.values), y, 0.5)[0] - full) > 1e-3
    with pytest.raises(ValueError, match="kd_vocab"):
        step.replace(kd_vocab=30).loss(z, TopkTeacher(top.indices.int(), top.values), y, 0.5)


def test_cache_that_does_not_fit_the_run_is_refused(cache_k8, teacher_dir, corpus, tmp_path):
    with pytest.raises(ConfigError, match="--teacher-cache: .*--seq-len"):
        train(tiny(tmp_path, corpus, teacher_cache=str(cache_k8), seq_len=16))
    other = tmp_path / "other-tokenizer"
    train_tokenizer(builtin_corpus()[:3], 280).save_pretrained(other)
    with pytest.raises(ConfigError, match="--teacher-cache: .*another tokenizer"):
        train(tiny(tmp_path, corpus, teacher_cache=str(cache_k8), tokenizer=str(other)))
    with pytest.raises(ConfigError, match="--teacher-cache: .*--data and --val-fraction"):
        train(tiny(tmp_path, corpus, teacher_cache=str(cache_k8), val_fraction=0.1))
    with pytest.raises(ConfigError, match="--teacher and --teacher-cache exclude each other"):
        train(tiny(tmp_path, corpus, teacher_cache=str(cache_k8), teacher=teacher_dir))
    with pytest.raises(ConfigError, match="--divergence jsd needs --teacher"):
        train(tiny(tmp_path, corpus, teacher_cache=str(cache_k8), divergence="jsd"))
    with pytest.raises(ConfigError, match="--teacher-cache: .*no manifest"):
        train(tiny(tmp_path, corpus, teacher_cache=str(tmp_path)))
    assert not (tmp_path / "salt").exists()  # a failed start leaves no run folder
    # as many sequences, one token different: the data hash tells
    cfg = tiny(tmp_path, corpus, teacher_cache=str(cache_k8))
    docs = build.validate_inputs(cfg)
    data = build.training_data(cfg, docs, load_tokenizer(str(cache_k8 / "tokenizer")))
    build.check_teacher_cache(build.open_teacher_cache(cfg), cfg, data)
    data.train[5, 3] += 1
    with pytest.raises(ConfigError, match="--teacher-cache: .*other training sequences"):
        build.check_teacher_cache(build.open_teacher_cache(cfg), cfg, data)
    assert load_tokenizer(str(cache_k8 / "tokenizer")).get_vocab() == load_tokenizer(teacher_dir).get_vocab()


def test_demo_topk_run_and_its_report(corpus, tmp_path, capsys):
    """`salt-kernels demo --topk`: the cache, a salt-topk run like the SALT run, and a report that
    compares the three, its top-k wall-clock including the cache's recorded build time."""
    import json

    from salt_kernels.train.report import eval_rows

    flags = ["demo", "--runs-dir", str(tmp_path), "--data", str(corpus), "--teacher-model", "tiny",
             "--student-model", "tiny", "--teacher-steps", "6", "--steps", "8", "--n-kd", "4",
             "--eval-interval", "4", "--vocab-size", "300", "--seq-len", str(SEQ_LEN), "--batch-size", "4",
             "--warmup-steps", "1", "--threads", "1", "--measure-steps", "0", "--no-progress"]
    assert main(flags + ["--topk", "--topk-k", "4"]) == 2
    assert "--topk-k must be in" in capsys.readouterr().err
    # with data selection: the cache's pass scores the sequences for the salt-topk run
    assert main(flags + ["--topk", "--topk-k", "8", "--select-data"]) == 0
    err = capsys.readouterr().err
    assert "scored by the teacher cache's pass" in err
    root = tmp_path / "demo"
    summary = json.loads((root / "summary.json").read_text())
    t = summary["topk"]
    m = tc.Manifest.load(root / "teacher-cache")
    assert (t["k"], m.k, t["cache_build_time_s"]) == (8, 8, m.build_time_s) and m.build_time_s > 0
    run = json.loads((root / "salt-topk" / "summary.json").read_text())
    assert t["final_val_loss"] == run["final_val_loss"] and t["total_time_s"] == run["wall_time_s"] + m.build_time_s
    config = json.loads((root / "salt-topk" / "config.json").read_text())
    assert config["salt"]["teacher"] is None and config["salt"]["teacher_cache"] == str(root / "teacher-cache")
    assert config["salt"]["select_data"] and m.select_top_k == config["salt"]["select_top_k"]
    assert config["run"]["seed"] == json.loads((root / "salt" / "config.json").read_text())["run"]["seed"]
    target = summary["baseline"]["final_val_loss"]
    first = next((r for r in eval_rows(root / "salt-topk") if r["step"] > 0 and r["val_loss"] <= target), None)
    assert t["steps_to_match"] == (first["step"] if first else None)
    if first:
        assert t["time_to_match_s"] == first["train_time_s"] + m.build_time_s
    report = (root / "report.md").read_text()
    assert "## SALT from a top-k teacher cache (`--topk`)" in report
    assert f"| SALT, top-8 cache | {t['final_val_loss']:.4f} |" in report
    assert "salt-topk (top-8 cache)" in err  # the closing line
