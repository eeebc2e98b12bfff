"""`salt-kernels demo` and the run plumbing around it, on tiny configs: several seeds with mean,
spread and bands; wall-clock figures only from the interleaved step-time measurement, the same in
report.md, summary.json and `profile --accounting`; runs that fail loudly (exit status 143 after
SIGTERM, checkpoints by wall-clock, errors that name the flag typed, the subcommand's own usage)
and leave no empty folders."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the demo needs the train extra (transformers)")
pytest.importorskip("tokenizers", reason="the demo needs the train extra (tokenizers)")

from salt_kernels.benchmarking import accounting  # noqa: E402
from salt_kernels.cli import main  # noqa: E402
from salt_kernels.train import checkpoint as ckpt  # noqa: E402
from salt_kernels.train.config import ConfigError, TrainConfig  # noqa: E402
from salt_kernels.train.data import builtin_corpus  # noqa: E402
from salt_kernels.train.report import eval_rows, read_metrics  # noqa: E402
from salt_kernels.train.trainer import RunResult, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "kjv_part.txt"
    path.write_text("\n\n".join(builtin_corpus()[:40]))
    return path


def demo_flags(corpus, **overrides) -> list[str]:
    """A tiny demo: seconds on a CPU, one thread (the machine may be shared)."""
    values = {"data": str(corpus), "teacher-model": "tiny", "student-model": "tiny",
              "teacher-steps": 8, "steps": 12, "n-kd": 4, "eval-interval": 4, "vocab-size": 300,
              "seq-len": 32, "batch-size": 8, "warmup-steps": 2, "threads": 1, "measure-steps": 2}
    values.update(overrides)
    flags = [x for k, v in values.items() for x in (f"--{k}", str(v))]
    return flags + ["--no-progress"]


def tiny_run(tmp: Path, corpus: Path, role: str = "baseline", **kw) -> TrainConfig:
    values = dict(role=role, model="tiny", data=[str(corpus)], vocab_size=300, seq_len=32,
                  batch_size=8, steps=8, eval_interval=4, eval_sequences=8, log_interval=2,
                  ckpt_interval=0, warmup_steps=2, lr=1e-2, progress=False, threads=1,
                  out_dir=str(tmp / role))
    values.update(kw)
    return TrainConfig().replace(**values)


@pytest.fixture(scope="module")
def seeds_demo(tmp_path_factory, corpus) -> Path:
    """A finished tiny demo with two seeds."""
    runs = tmp_path_factory.mktemp("runs")
    assert main(["demo", "--runs-dir", str(runs), "--name", "d", "--seeds", "2",
                 *demo_flags(corpus)]) == 0
    return runs / "d"


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, corpus) -> Path:
    """The folder of a finished tiny teacher run."""
    tmp = tmp_path_factory.mktemp("teacher")
    assert train(tiny_run(tmp, corpus, role="teacher", steps=4)).status == "finished"
    return tmp / "teacher"


def summary_of(root: Path) -> dict:
    return json.loads((root / "summary.json").read_text())


# --------------------------------------------------------------------------- seeds


def test_seeds_give_mean_spread_and_bands(seeds_demo, monkeypatch, tmp_path):
    root = seeds_demo
    s = summary_of(root)
    assert s["seeds"] == [0, 1]
    assert [(p["baseline"], p["salt"]) for p in s["per_seed"]] == \
        [("baseline", "salt"), ("baseline-seed1", "salt-seed1")]
    for p in s["per_seed"]:
        b = summary_of(root / p["baseline"])
        assert p["baseline_final_val_loss"] == b["final_val_loss"]
        assert p["salt_final_val_loss"] == summary_of(root / p["salt"])["final_val_loss"]
        # steps-to-match: against the final loss of the baseline with the same seed
        first = next((r["step"] for r in eval_rows(root / p["salt"])
                      if r["step"] > 0 and r["val_loss"] <= b["final_val_loss"]), None)
        assert p["steps_to_match"] == first
        # baseline and SALT of a seed start from one initialization; the seeds differ
        assert eval_rows(root / p["baseline"])[0] == eval_rows(root / p["salt"])[0]
    assert eval_rows(root / "baseline")[0]["val_loss"] != eval_rows(root / "baseline-seed1")[0]["val_loss"]
    for key in ("baseline_final_val_loss", "salt_final_val_loss", "val_loss_gain"):
        values = [p[key] for p in s["per_seed"]]
        st = s["across_seeds"][key]
        assert st["n"] == 2 and st["mean"] == pytest.approx(statistics.fmean(values))
        assert st["std"] == pytest.approx(statistics.stdev(values))
        assert (st["min"], st["max"]) == (min(values), max(values))
    report = (root / "report.md").read_text()
    assert "Over 2 seeds (0, 1;" in report
    for p in s["per_seed"]:
        assert f"| {p['seed']} | {p['baseline_final_val_loss']:.4f} | {p['salt_final_val_loss']:.4f} |" in report
    assert (root / "curves.png").read_bytes()[:4] == b"\x89PNG"

    # the curves: a min-max band per kind over the seeds
    import matplotlib.axes

    from salt_kernels.train.report import plot_curves

    bands = []
    real = matplotlib.axes.Axes.fill_between

    def spy(self, x, y1, y2, **kw):
        bands.append((list(x), list(y1), list(y2)))
        return real(self, x, y1, y2, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", spy)
    plot_curves(root, s, tmp_path / "c.png")
    assert len(bands) == 2
    steps, lo, hi = bands[0]  # the baseline's
    curves = [{r["step"]: r["val_loss"] for r in eval_rows(root / p["baseline"])} for p in s["per_seed"]]
    assert steps == [4, 8, 12]
    assert lo == [min(c[t] for c in curves) for t in steps] and hi == [max(c[t] for c in curves) for t in steps]


def test_report_says_how_much_the_baseline_still_gained_at_its_end(seeds_demo):
    from salt_kernels.train.report import tail_gain

    s = summary_of(seeds_demo)
    evals = eval_rows(seeds_demo / "baseline")  # steps 0, 4, 8, 12: the last 10% starts after step 8
    t = s["baseline_tail_gain"]
    assert (t["from_step"], t["to_step"]) == (8, 12)
    assert t["gain"] == pytest.approx(evals[2]["val_loss"] - evals[3]["val_loss"])
    assert t["relative"] == pytest.approx(t["gain"] / evals[3]["val_loss"])
    assert s["per_seed"][0]["baseline_tail_gain"] == t
    assert s["per_seed"][1]["baseline_tail_gain"]["from_step"] == 8
    assert f"its validation loss fell by {t['gain']:.4f}" in (seeds_demo / "report.md").read_text()
    rows = [{"step": k, "val_loss": 5.0 - k / 1000} for k in range(0, 1001, 25)]
    assert tail_gain(rows) == {"from_step": 900, "to_step": 1000, "gain": pytest.approx(0.1),
                               "relative": pytest.approx(0.025)}
    assert tail_gain(rows, fraction=0.3)["from_step"] == 700
    assert tail_gain(rows[:1]) is None


# --------------------------------------------------------------------------- wall-clock


def test_wall_clock_from_the_interleaved_measurement_agrees_everywhere(seeds_demo, capsys):
    root = seeds_demo
    s = summary_of(root)
    st = s["step_times"]
    assert st["method"] == "interleaved" and st["rounds"] == 2
    assert len(st["ce_step_times_s"]) == len(st["kd_step_times_s"]) == 2
    assert st["t_ce_s"] == statistics.median(st["ce_step_times_s"])
    assert st["t_kd_s"] == statistics.median(st["kd_step_times_s"])
    assert "load_avg_1m_start" in st and "load_avg_1m_end" in st
    # one function computes the accounting: recomputed from summary.json, it is what was stored
    acc = s["accounting"]
    assert acc == accounting.demo_accounting(s)
    n_kd, steps = s["salt"]["n_kd"], s["baseline"]["steps"]
    for p, seed in zip(acc["per_seed"], s["per_seed"]):
        k = seed["steps_to_match"]
        if k is None:
            assert p["saving"] is None
            continue
        t_salt = min(k, n_kd) * st["t_kd_s"] + max(0, k - n_kd) * st["t_ce_s"]
        assert p["saving"] == pytest.approx(1 - t_salt / (steps * st["t_ce_s"]))
    # whole-run times are recorded per run, never compared across runs
    assert "time_to_match_s" not in s and "time_to_match_fraction" not in s
    assert all("wall_time_s" in r for r in s["runs"].values())
    assert "demo" not in acc  # no projection from the runs' own times
    # report.md and `profile --accounting` show the same lines
    report = (root / "report.md").read_text()
    assert acc["text"] in report
    assert f"{acc['t_kd_s'] * 1000:.1f} ms against {acc['t_ce_s'] * 1000:.1f} ms" in report
    assert "load avg (1 min, start to end)" in report
    capsys.readouterr()
    assert main(["profile", "--accounting", str(root)]) == 0
    out = capsys.readouterr().out
    assert acc["text"] in out
    # flags of a new measurement are refused: the accounting uses the demo's own
    assert main(["profile", "--accounting", str(root), "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "--steps would set up a new measurement" in err and "salt-kernels demo" in err


def test_accounting_without_a_match_claims_no_saving():
    summary = {"baseline": {"steps": 600}, "salt": {"n_kd": 100}, "steps_to_match": None,
               "step_times": {"t_ce_s": 0.2, "t_kd_s": 0.25, "rounds": 20}}
    acc = accounting.demo_accounting(summary)
    assert acc["seeds_matched"] == 0 and acc["saving_mean"] is None
    assert "no projection" in acc["text"]
    assert acc["full_run_extra_fraction"] == pytest.approx(100 * 0.05 / 120)
    assert accounting.demo_accounting({**summary, "step_times": None}) is None


# --------------------------------------------------------------------------- stopping and saving


def test_sigterm_stops_the_demo_with_status_143_and_names_the_checkpoint(tmp_path, corpus):
    root = tmp_path / "d"
    log = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "salt_kernels", "demo", "--runs-dir", str(tmp_path), "--name", "d",
           *demo_flags(corpus, **{"teacher-steps": 100000})]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)
        try:
            metrics = root / "teacher" / "metrics.jsonl"
            deadline = time.monotonic() + 300
            # a train row: the loop (and its SIGTERM handler) is running
            while not (metrics.exists() and '"split": "train"' in metrics.read_text()):
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the teacher run did not start"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert rc == 143, text[-3000:]
    saved = root / "teacher" / ckpt.CHECKPOINT
    assert "stopped by SIGTERM" in text and f"its checkpoint is {saved}" in text
    assert "--resume" in text
    assert ckpt.load(saved)["step"] >= 10


def test_train_command_exit_status_after_a_signal(monkeypatch, tmp_path):
    import salt_kernels.train.trainer as trainer

    for name, status in (("SIGTERM", 143), ("SIGINT", 130)):
        monkeypatch.setattr(trainer, "train", lambda cfg, _n=name: RunResult("interrupted", 3, tmp_path, signal=_n))
        assert main(["train", "--out-dir", str(tmp_path / "x"), "--no-progress"]) == status


def test_checkpoints_by_wall_clock(tmp_path, corpus):
    """--ckpt-minutes: a checkpoint at the first log step once the time has passed, whatever
    --ckpt-interval says; a crash then loses only the steps since."""
    def crash(step, _row):
        if step == 5:
            raise RuntimeError("simulated crash")

    for minutes, saved_step in ((1e-9, 4), (0, None)):
        out = tmp_path / f"m{minutes}"
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(tiny_run(tmp_path, corpus, ckpt_minutes=minutes, out_dir=str(out)), on_step=crash)
        path = out / ckpt.CHECKPOINT
        assert (ckpt.load(path)["step"] if path.exists() else None) == saved_step
    out = tmp_path / f"m{1e-9}"
    result = train(tiny_run(tmp_path, corpus, ckpt_minutes=1e-9, out_dir=str(out), resume=True))
    assert result.status == "finished"
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"] == [2, 4, 6, 8]


# --------------------------------------------------------------------------- errors


def test_teacher_may_name_a_finished_run_folder(tmp_path, corpus, teacher_run, capsys):
    cfg = tiny_run(tmp_path, corpus, role="salt", teacher=str(teacher_run), n_kd=1, steps=2)
    assert train(cfg).status == "finished"
    final = teacher_run / "final"
    assert f"--teacher {teacher_run} is a training run folder: using its model, {final}" in capsys.readouterr().err
    saved = json.loads((tmp_path / "salt" / "config.json").read_text())
    assert saved["salt"]["teacher"] == str(final)

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text('{"step": 0, "split": "val"}\n')
    with pytest.raises(ConfigError, match="training run that has not finished .*--resume"):
        train(tiny_run(tmp_path, corpus, role="salt", teacher=str(unfinished), n_kd=1, steps=2,
                       out_dir=str(tmp_path / "s2")))
    with pytest.raises(ConfigError, match="is not a local Hugging Face model directory"):
        train(tiny_run(tmp_path, corpus, role="salt", teacher=str(tmp_path / "nothing"), n_kd=1,
                       steps=2, out_dir=str(tmp_path / "s3")))
    assert not (tmp_path / "s2").exists() and not (tmp_path / "s3").exists()


@pytest.mark.parametrize("flags, message", [
    (["--steps", "-3"], "--steps must be at least 1, got -3"),
    (["--teacher-steps", "0"], "--teacher-steps must be at least 1, got 0"),
    (["--n-kd", "0"], "--n-kd must be between 1 and the student's --steps (12), got 0"),
    (["--n-kd", "13"], "--n-kd must be between 1 and the student's --steps (12), got 13"),
    (["--seeds", "0"], "--seeds must be at least 1, got 0"),
    (["--kd-weight", "1.5"], "--kd-weight must be in (0, 1], got 1.5"),
    (["--ckpt-minutes", "-1"], "--ckpt-minutes must be >= 0, got -1"),
    (["--measure-steps", "-1"], "--measure-steps must be >= 0, got -1"),
    (["--student-model", "nonsense"], "--student-model 'nonsense' is neither a preset"),
])
def test_demo_errors_name_the_flag_typed(tmp_path, corpus, capsys, flags, message):
    runs = tmp_path / "runs"
    assert main(["demo", "--runs-dir", str(runs), *demo_flags(corpus), *flags]) == 2
    err = capsys.readouterr().err
    assert f"salt-kernels demo: error: {message}" in err and "Traceback" not in err
    assert not runs.exists()  # nothing was created


@pytest.mark.parametrize("flag", ["--student", "--teacher"])
def test_profile_errors_name_the_flag_typed(tmp_path, capsys, flag):
    out = tmp_path / "p.json"
    assert main(["profile", "--device", "cpu", flag, "nonsense", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{flag} 'nonsense' is neither a preset" in err and "--model" not in err
    assert not out.exists()


@pytest.mark.parametrize("command, typo, meant", [
    ("demo", "--stepz", "--steps"),
    ("train", "--n-kdd", "--n-kd"),
    ("profile", "--studnet", "--student"),
    ("bench", "--dtypes", "--dtype"),
])
def test_a_mistyped_flag_gets_the_subcommands_usage(capsys, command, typo, meant):
    with pytest.raises(SystemExit) as exc:
        main([command, typo, "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: salt-kernels {command} ")
    assert f"salt-kernels {command}: error: unrecognized arguments: {typo} 3" in err
    assert f"did you mean {meant}?" in err


@pytest.mark.parametrize("role", ["baseline", "teacher"])
def test_n_kd_needs_role_salt(tmp_path, capsys, role):
    out = tmp_path / "x"
    assert main(["train", "--role", role, "--n-kd", "5", "--out-dir", str(out), "--no-progress"]) == 2
    assert f"--n-kd 5 needs --role salt: a {role} run does not distill" in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_start_leaves_no_folder(tmp_path, corpus, teacher_run, monkeypatch, capsys):
    from salt_kernels.train.data import train_tokenizer

    # fails after the run saved its tokenizer: the folders made for it go again
    other = tmp_path / "other_tok"
    train_tokenizer(["completely different words " * 50], 300).save_pretrained(other)
    cfg = tiny_run(tmp_path, corpus, role="salt", teacher=str(teacher_run / "final"),
                   tokenizer=str(other), out_dir=str(tmp_path / "a" / "b" / "run"))
    with pytest.raises(ConfigError, match="differs from the teacher"):
        train(cfg)
    assert not (tmp_path / "a").exists()
    # a folder that was there before stays
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="differs from the teacher"):
        train(cfg.replace(out_dir=str(tmp_path / "mine")))
    assert (tmp_path / "mine").is_dir()

    # the demo: its runs folder goes too
    import salt_kernels.train.trainer as trainer

    def broken(cfg, *a, **k):
        (Path(cfg.run.out_dir) / "tokenizer").mkdir()
        raise ConfigError("simulated failure while building the run")

    monkeypatch.setattr(trainer, "build_run", broken)
    runs = tmp_path / "runs"
    assert main(["demo", "--runs-dir", str(runs), *demo_flags(corpus)]) == 2
    assert "simulated failure" in capsys.readouterr().err
    assert not runs.exists()


@pytest.mark.parametrize("command", ["demo", "train", "teacher-cache", "bench", "profile"])
def test_every_command_explains_every_flag(command, capsys):
    from salt_kernels.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._defaults["_commands"][command]
    for action in sub._actions:
        flag = max(action.option_strings, key=len, default=action.dest)
        assert action.help, f"{command} {flag} has no help"
        assert flag in text
