"""`salt-kernels bench`, benchmarks/report.py, benchmarks/bench_suite.py and `salt-kernels
profile` (with its wall-clock accounting) on tiny sizes: each runs, writes its files, and what
it writes is consistent with what it measured. No timing assertions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from salt_kernels import cli
from salt_kernels.benchmarking import accounting, render
from salt_kernels.benchmarking.cases import Case
from salt_kernels.benchmarking.machine import PeakMemory, peak_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _subparser(name):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[name]


@pytest.mark.parametrize("command", ["bench", "profile"])
def test_every_flag_has_help(command):
    parser = _subparser(command)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 8
    for action in flags:
        assert action.help and len(action.help) > 10, f"{command} {action.option_strings} has no help"


def test_peak_memory_sees_an_allocation():
    mem = PeakMemory(torch.device("cpu"))
    if not mem.supported:
        pytest.skip("this OS cannot reset the peak resident set (/proc/self/clear_refs): CPU peak memory is n/a")
    mem.set_baseline()
    mem.reset()
    x = torch.ones(16 << 20)  # 64 MiB, touched
    del x
    peak = mem.peak_above_baseline()
    assert 60 << 20 <= peak < 200 << 20


def test_minimal_bytes():
    c = Case("cpu", 4, 10, "bf16")
    assert c.logits_bytes == 4 * 10 * 2
    assert c.min_bytes("fwd") == 2 * 80 + 4 * 8
    assert c.min_bytes("fwdbwd") == c.min_bytes("bwd") == 3 * 80 + 4 * 8


def _bench(tmp_path, *extra):
    out = tmp_path / "bench_cpu.json"
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nWritten by the lead.\n\n<!-- bench:start -->\nold numbers\n<!-- bench:end -->\n\nTail.\n")
    argv = ["bench", "--device", "cpu", "--n", "32", "--v", "256,512",
            "--repeats", "2", "--warmup", "1", "--min-time", "0", "--out", str(out),
            "--markdown", str(md), "--plots", str(tmp_path / "plots"), "--no-progress", *extra]
    rc = cli.main(argv)
    return rc, out, md


def test_bench_writes_json_markdown_and_plots(tmp_path, capsys):
    threads = torch.get_num_threads()
    rc, out, md = _bench(tmp_path, "--backends", "cpu,eager", "--dtype", "fp32", "--threads", "1")
    assert torch.get_num_threads() == threads  # --threads applies to the run only
    printed = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "salt-kernels-bench"
    assert doc["config"]["threads"] == 1 and doc["machine"]["torch_threads"] == 1 and "--threads 1" in doc["command"]
    bw = doc["copy_bandwidth"]["bytes_per_s"]
    assert bw and bw > 0
    results = doc["results"]
    # 2 variants x 2 V x 3 passes
    assert len(results) == 12
    for r in results:
        assert r["status"] == "ok", r
        case = Case(r["variant"], r["n"], r["v"], r["dtype"])
        assert r["bytes"] == case.min_bytes(r["pass"])
        assert r["median_s"] > 0 and r["repeats"] >= 2 and len(r["times_s"]) == r["repeats"]
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        if r["variant"] == "cpu" and r["pass"] == "bwd":  # the gradient was made in the forward
            assert r["gb_per_s"] is None and r["note"] == "gradient computed in the forward"
        else:
            assert r["gb_per_s"] == pytest.approx(r["bytes"] / r["median_s"] / 1e9)
            assert r["copy_fraction"] == pytest.approx(r["bytes"] / r["median_s"] / bw)
        assert r["peak_bytes"] is not None and r["peak_bytes"] >= 0
        same_inputs = [x for x in results if x["v"] == r["v"]]
        assert r["loss_value"] == pytest.approx(same_inputs[0]["loss_value"], rel=1e-5)  # same inputs, same loss
    text = md.read_text()
    assert text.startswith("# Results\n\nWritten by the lead.\n")
    assert text.rstrip().endswith("Tail.")
    assert "old numbers" not in text
    assert text.count("<!-- bench:start -->") == 1 and text.count("<!-- bench:end -->") == 1
    for title in ("salt_kernels cpu (fused C++)", "PyTorch eager", "speed-up over PyTorch eager"):
        assert title in text and title in printed
    assert "†" in text  # the fused backend's backward-alone cells are marked
    assert doc["command"] in text
    pngs = sorted(os.listdir(tmp_path / "plots"))
    assert pngs == ["bench_cpu_memory_fp32.png", "bench_cpu_time_fp32.png"]
    for name in pngs:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({os.path.join('plots', name)})" in text

    # benchmarks/report.py re-renders the same section; rendering again changes nothing.
    script = os.path.join(REPO, "benchmarks", "report.py")
    proc = subprocess.run([sys.executable, script, str(out), "--markdown", str(md), "--no-plots"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    once = md.read_text()
    assert once.count("<!-- bench:start -->") == 1 and once.startswith("# Results\n") and "Tail." in once
    render.render([str(out)], str(md), None)
    assert md.read_text() == once


def test_bench_skips_cases_that_do_not_fit(tmp_path, capsys):
    rc, out, md = _bench(tmp_path, "--backends", "eager", "--memory-fraction", "0.000001", "--dtype", "fp32")
    assert rc == 0
    doc = json.loads(out.read_text())
    assert {r["status"] for r in doc["results"]} == {"skipped"}
    assert all("free on cpu" in r["reason"] for r in doc["results"])
    assert "skipped [1]" in md.read_text()
    assert "needs ~" in md.read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dtype", "fp16"], "unknown dtype 'fp16'"),
        (["--backends", "cpu,nope"], "unknown backend(s) nope"),
        (["--passes", "forward"], "unknown pass 'forward'"),
        (["--backends", "liger"], "Liger-Kernel runs on CUDA GPUs only"),
    ],
)
def test_bench_bad_flags_say_what_to_do(tmp_path, capsys, flags, message):
    rc = cli.main(["bench", "--device", "cpu", "--out", str(tmp_path / "x.json"), *flags])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_bench_dry_run_runs_nothing(tmp_path, capsys):
    rc = cli.main(["bench", "--device", "cpu", "--dry-run", "--out", str(tmp_path / "x.json")])
    out = capsys.readouterr().out
    assert rc == 0 and not (tmp_path / "x.json").exists()
    # the CPU default grid, every usable variant, the oracle left out with its reason
    assert "1024 |  32000" in out and "128256" in out and "16384" not in out
    assert "reference: the plain-PyTorch oracle" in out


def test_bench_suite_smoke():
    env = dict(os.environ, SALT_BENCH_GRID="tiny", SALT_BENCH_DEVICE="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", os.path.join(REPO, "benchmarks", "bench_suite.py"), "-q",
         "-p", "no:cacheprovider", "-k", "1000", "-rs"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    # cpu, reference and eager x fwd/bwd/fwdbwd x fp32/bf16 ran; the rest say why not
    assert re.search(r"\b18 passed", proc.stdout), proc.stdout[-2000:]
    assert "Liger-Kernel runs on CUDA GPUs only" in proc.stdout
    assert "SALT_BENCH_GRID=default" in proc.stdout  # why torch.compile is left out of the tiny grid


# ---------------------------------------------------------------- profile and accounting


def test_projection_formula():
    p = accounting.project(steps_baseline=600, steps_to_match=420, n_kd=150, t_ce=0.1, t_kd=0.125)
    assert p["t_baseline_s"] == pytest.approx(60.0)
    assert p["t_salt_s"] == pytest.approx(150 * 0.125 + 270 * 0.1)
    assert p["saving"] == pytest.approx(1 - 45.75 / 60.0)
    early = accounting.project(600, 100, 150, 0.1, 0.125)  # matched inside stage 1
    assert (early["kd_steps"], early["ce_steps"]) == (100, 0)
    assert early["t_salt_s"] == pytest.approx(12.5)
    never = accounting.project(600, None, 150, 0.1, 0.125)
    assert never["saving"] is None
    assert "no projection" in "\n".join(accounting.explain(never, "x"))


def _demo_summary(root, steps_to_match=420):
    root.mkdir(parents=True, exist_ok=True)
    summary = {
        "teacher": {"final_val_loss": 4.1, "steps": 100},
        "baseline": {"final_val_loss": 3.9, "steps": 600, "wall_time_s": 60.0, "tokens_per_s": 1000.0,
                     "step_time_s": 0.1},
        "salt": {"final_val_loss": 3.85, "steps": 600, "n_kd": 150, "wall_time_s": 64.0,
                 "tokens_per_s": 950.0, "step_time_s": 0.106, "stage1_step_time_s": 0.125,
                 "stage2_step_time_s": 0.1},
        "steps_to_match": steps_to_match,
        "steps_to_match_fraction": steps_to_match / 600,
        "time_to_match_s": 45.0,
        "time_to_match_fraction": 0.75,
    }
    (root / "summary.json").write_text(json.dumps(summary))
    return summary


def test_profile_writes_json_trace_and_accounting(tmp_path, capsys):
    run = tmp_path / "runs" / "demo"
    _demo_summary(run)
    out = tmp_path / "profile.json"
    trace = tmp_path / "trace"
    rc = cli.main(["profile", "--device", "cpu", "--student", "tiny", "--teacher", "tiny", "--vocab-size", "300",
                   "--batch-size", "2", "--seq-len", "8", "--steps", "2", "--warmup", "1", "--trace", str(trace),
                   "--trace-steps", "1", "--accounting", str(run), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["kind"] == "salt-kernels-profile" and doc["tokens_per_step"] == 16
    assert doc["interleaved"] is True  # tiny students all fit at once
    got = {(r["kind"], r["loss"]) for r in doc["results"]}
    assert got == {(k, l) for k in ("ce", "salt") for l in ("torch", "fused", "linear")}
    by = {(r["kind"], r["loss"]): r for r in doc["results"]}
    for (kind, loss), r in by.items():
        assert r["tokens_per_s"] == pytest.approx(16 / r["step_s"])
        assert set(r["phases_s"]) == {"teacher_forward", "student_forward", "loss", "backward", "optimizer"}
        assert all(t >= 0 for t in r["phases_s"].values())
        assert r["mfu"] is None  # no known peak for a CPU
        assert r["step_peak_bytes"] is None or r["step_peak_bytes"] >= 0
        params = doc["student_parameters"] * 4
        # fp32 weights + AdamW's two moments (+ its scalar step counters)
        assert 3 * params <= r["state_bytes"] < 3 * params + 1024
        # the SALT step's model FLOPs add the teacher's forward
        if kind == "salt":
            assert r["model_flops_per_token"] > by[("ce", loss)]["model_flops_per_token"]
            assert r["overhead_vs_ce_same_loss"] == pytest.approx(r["step_s"] / by[("ce", loss)]["step_s"] - 1)
        with open(r["trace"]) as f:
            events = json.load(f)["traceEvents"]
        names = {e.get("name") for e in events}
        assert {"student_forward", "loss", "backward", "optimizer"} <= names
        if kind == "salt":
            assert "teacher_forward" in names
    assert len(os.listdir(trace)) == 6
    assert "MFU" in printed and "n/a" in printed
    assert "Step time by phase" in printed
    # accounting: the formula with the measured step times of the linear loss (the default path)
    acc = doc["accounting"]
    assert acc["loss"] == "linear"
    t_ce, t_kd = by[("ce", "linear")]["step_s"], by[("salt", "linear")]["step_s"]
    assert acc["measured"]["t_salt_s"] == pytest.approx(150 * t_kd + 270 * t_ce)
    assert acc["measured"]["t_baseline_s"] == pytest.approx(600 * t_ce)
    assert acc["demo"]["saving"] == pytest.approx(1 - (150 * 0.125 + 270 * 0.1) / 60.0)
    assert "T_SALT     = min(k, n_KD) * t_kd + max(0, k - n_KD) * t_ce" in printed
    assert "less wall-clock" in printed or "more wall-clock" in printed
    # the profile renders into RESULTS.md next to the bench tables
    md = tmp_path / "RESULTS.md"
    render.render([str(out)], str(md), None)
    text = md.read_text()
    assert "End-to-end training step" in text and "Training step throughput" in text


def test_profile_mfu_with_a_given_peak(tmp_path, capsys):
    out = tmp_path / "p.json"
    rc = cli.main(["profile", "--device", "cpu", "--student", "tiny", "--teacher", "tiny", "--vocab-size", "300",
                   "--batch-size", "1", "--seq-len", "8", "--steps", "1", "--warmup", "0", "--losses", "fused",
                   "--peak-tflops", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    for r in json.loads(out.read_text())["results"]:
        assert r["mfu"] == pytest.approx(r["model_flops_per_token"] * r["tokens_per_s"] / 1e12)


def test_profile_accounting_needs_a_demo(tmp_path, capsys):
    rc = cli.main(["profile", "--device", "cpu", "--accounting", str(tmp_path / "nothing"),
                   "--out", str(tmp_path / "p.json")])
    assert rc == 2
    assert "salt-kernels demo" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_peak_flops_table():
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None


def test_report_flags_variants_whose_loss_disagrees():
    def rec(variant, value):
        return {"variant": variant, "n": 8, "v": 16, "dtype": "fp32", "pass": "fwd", "status": "ok",
                "loss_value": value}

    agree = {"results": [rec("cpu", 10.0), rec("eager", 10.000001)]}
    assert render.value_disagreements(agree) == []
    wrong = {"results": [rec("cpu", 10.0), rec("eager", 10.0), rec("liger", 7.5)]}
    (line,) = render.value_disagreements(wrong)
    assert "liger computes a different loss" in line and "N=8 V=16 fp32" in line
