"""The benchmark harness (salt_kernels.benchmarking) and what runs on it: `salt-kernels bench`,
`salt-kernels profile` (with its wall-clock accounting), the fixed-size scripts and
benchmarks/report.py, on tiny sizes: each runs, writes its files in the one results format, and
what it writes is consistent with what it measured. No timing assertions."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from salt_kernels import cli
from salt_kernels.benchmarking import accounting, render, results, runner, timing
from salt_kernels.benchmarking.cases import Case
from salt_kernels.benchmarking.machine import PeakMemory, peak_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COPY_BPS = 10e9  # the copy bandwidth the runs below see (it takes seconds to measure)


def _script(name):
    """benchmarks/<name>.py as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, **kw)


@pytest.fixture
def fixed_copy_bandwidth(monkeypatch):
    monkeypatch.setattr(runner, "copy_bandwidth", lambda device: COPY_BPS)


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


def test_minimal_and_output_bytes():
    c = Case("cpu", 4, 10, "bf16")
    assert c.logits_bytes == 4 * 10 * 2
    assert c.min_bytes("fwd") == 2 * 80 + 4 * 8
    assert c.min_bytes("fwdbwd") == c.min_bytes("bwd") == 3 * 80 + 4 * 8
    assert (c.output_bytes("fwd"), c.output_bytes("fwdbwd")) == (0, 80)
    lin = Case("linear", 4, 10, "fp32", op="linear", d_s=3, d_t=2)
    assert lin.min_bytes("fwdbwd") is None  # bound by its matmuls: no GB/s
    assert lin.output_bytes("fwdbwd") == (4 * 3 + 10 * 3) * 4  # the gradients of hidden states and weight


def test_timer_is_blocked_autorange_and_counts_calls(monkeypatch):
    from torch.utils.benchmark import Timer

    used = []
    real = Timer.blocked_autorange
    monkeypatch.setattr(Timer, "blocked_autorange", lambda self, **kw: used.append(kw) or real(self, **kw))
    calls = []

    def fn(x, y):
        calls.append(1)
        return (x * y).sum()

    x, y = torch.ones(8), torch.ones(8)
    fwd = timing.measure_pass(fn, (x, y), (x,), "fwd", repeats=4, warmup=1, min_time=0)
    assert used and fwd["repeats"] >= 4 and len(calls) >= 1 + 4
    assert 0 < fwd["min_s"] <= fwd["median_s"] <= fwd["max_s"] and fwd["first_call_s"] > 0
    # bwd: an untimed forward before each timed backward, which blocked_autorange cannot do
    used.clear()
    calls.clear()
    bwd = timing.measure_pass(fn, (x, y), (x,), "bwd", repeats=3, warmup=2, min_time=0)
    assert not used and bwd["repeats"] == len(bwd["times_s"]) == 3 and len(calls) == 2 + 3
    assert x.grad is None  # autograd.grad: nothing accumulates in the inputs


def test_copy_bandwidth_is_measured():
    assert timing.copy_bandwidth(torch.device("cpu"), nbytes=8 << 20) > 0


def test_progress_bar_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm fails
    with runner.progress_bar(3, "bench") as bar:
        bar.set_postfix_str("case")
        bar.update(1)
        bar.write("a line")
    err = capsys.readouterr().err
    assert err.splitlines() == ["bench: 3 steps (no progress bar: pip install tqdm)", "a line"]
    with runner.progress_bar(3, "bench", enabled=False) as bar:
        bar.update(1)
    assert capsys.readouterr().err == ""


def _bench(tmp_path, *extra):
    out = tmp_path / "bench_cpu.json"
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nWritten by the lead.\n\n<!-- bench:start -->\nold numbers\n<!-- bench:end -->\n\nTail.\n")
    argv = ["bench", "--device", "cpu", "--n", "32", "--v", "256", "--repeats", "2", "--warmup", "1",
            "--min-time", "0", "--out", str(out), "--markdown", str(md), "--no-progress", *extra]
    rc = cli.main(argv)
    return rc, out, md


def test_bench_writes_json_and_markdown(tmp_path, capsys, fixed_copy_bandwidth):
    threads = torch.get_num_threads()
    rc, out, md = _bench(tmp_path, "--backends", "cpu,eager", "--dtype", "fp32", "--threads", "1", "--in-process")
    assert torch.get_num_threads() == threads  # --threads applies to the run only
    printed = capsys.readouterr().out
    assert rc == 0
    doc = results.load(str(out))
    assert doc["kind"] == "salt-kernels-bench" and doc["schema"] == results.SCHEMA
    assert doc["config"]["threads"] == 1 and doc["machine"]["torch_threads"] == 1 and "--threads 1" in doc["command"]
    assert doc["copy_bandwidth"]["bytes_per_s"] == COPY_BPS
    recs = doc["results"]
    assert len(recs) == 2 * 3  # 2 variants x 3 passes
    for r in recs:
        assert r["status"] == "ok", r
        case = Case(r["variant"], r["n"], r["v"], r["dtype"])
        assert r["bytes"] == case.min_bytes(r["pass"]) and r["output_bytes"] == case.output_bytes(r["pass"])
        assert r["median_s"] > 0 and r["repeats"] >= 2 and len(r["times_s"]) >= 1
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        if r["variant"] == "cpu" and r["pass"] == "bwd":  # the gradient was made in the forward
            assert r["gb_per_s"] is None and r["note"] == "gradient computed in the forward"
        else:
            assert r["gb_per_s"] == pytest.approx(r["bytes"] / r["median_s"] / 1e9)
            assert r["copy_fraction"] == pytest.approx(r["bytes"] / r["median_s"] / COPY_BPS)
        assert r["peak_bytes"] is not None and r["peak_bytes"] >= 0
        assert r["loss_value"] == pytest.approx(recs[0]["loss_value"], rel=1e-5)  # same inputs, same loss
    text = md.read_text()
    assert text.startswith("# Results\n\nWritten by the lead.\n") and text.rstrip().endswith("Tail.")
    assert "old numbers" not in text
    assert text.count("<!-- bench:start -->") == 1 and text.count("<!-- bench:end -->") == 1
    for heading in ("salt_kernels cpu (fused C++)", "PyTorch eager", "speed-up over PyTorch eager"):
        assert heading in text and heading in printed
    assert "†" in text  # the fused backend's backward-alone cells are marked
    assert doc["command"] in text and "--in-process" in doc["command"]


def test_fwd_nograd_pass_runs_under_no_grad_with_inputs_that_require_grad():
    seen = []

    def fn(x, y):
        seen.append((torch.is_grad_enabled(), x.requires_grad))
        return (x * y).sum()

    x, y = torch.ones(8), torch.ones(8)
    m = timing.measure_pass(fn, (x, y), (x,), "fwd_nograd", repeats=2, warmup=1, min_time=0)
    assert m["repeats"] >= 2 and m["median_s"] > 0
    assert seen and set(seen) == {(False, True)}  # grad mode off, the input still requires grad
    seen.clear()
    timing.measure_pass(fn, (x, y), (x,), "fwd", repeats=1, warmup=0, min_time=0)
    assert set(seen) == {(False, False)}


def test_bench_fwd_nograd_pass(tmp_path, capsys, fixed_copy_bandwidth):
    rc, out, md = _bench(tmp_path, "--backends", "cpu,eager", "--dtype", "fp32", "--passes", "fwd,fwd_nograd,fwdbwd",
                         "--in-process")
    assert rc == 0
    doc = results.load(str(out))
    assert doc["config"]["passes"] == ["fwd", "fwd_nograd", "fwdbwd"] and "--passes fwd,fwd_nograd,fwdbwd" in doc["command"]
    got = {(r["variant"], r["pass"]): r for r in doc["results"]}
    assert set(got) == {(v, p) for v in ("cpu", "eager") for p in ("fwd", "fwd_nograd", "fwdbwd")}
    for (variant, pass_), r in got.items():
        assert r["status"] == "ok" and r["option"] == "default" and r["median_s"] > 0
        assert r["backend"] == ("cpu" if variant == "cpu" else None)
        if pass_ == "fwd_nograd":  # the forward's traffic, no gradient returned
            assert r["bytes"] == got[(variant, "fwd")]["bytes"] and r["output_bytes"] == 0
            assert r["gb_per_s"] == pytest.approx(r["bytes"] / r["median_s"] / 1e9)
            assert r["loss_value"] == got[(variant, "fwd")]["loss_value"]
    text = md.read_text()
    assert "forward under torch.no_grad() with inputs that require grad" in text
    assert "Loss microbenchmarks, forward under no_grad" in text


def test_bench_option_grid(tmp_path, capsys, fixed_copy_bandwidth):
    """--options default,jsd: each salt_kernels variant once per option, a backend that does not
    compute JSD recorded as skipped with its own reason, the baseline on the default option only."""
    from salt_kernels.backends.base import LossOptions
    from salt_kernels.backends.registry import backend_status

    rc, out, md = _bench(tmp_path, "--backends", "cpu,reference,eager", "--dtype", "fp32", "--passes", "fwd,fwdbwd",
                         "--options", "default,jsd", "--in-process")
    assert rc == 0
    doc = results.load(str(out))
    assert doc["config"]["loss_options"] == ["default", "jsd"] and "--options default,jsd" in doc["command"]
    got = {(r["variant"], r["option"], r["pass"]): r for r in doc["results"]}
    assert set(got) == ({(v, o, p) for v in ("cpu", "reference") for o in ("default", "jsd") for p in ("fwd", "fwdbwd")}
                        | {("eager", "default", p) for p in ("fwd", "fwdbwd")})
    assert doc["left_out"] == []  # eager ran, with the default option
    cpu_jsd_ok, cpu_jsd_why = backend_status("cpu", torch.device("cpu"), options=LossOptions(divergence="jsd"))
    for (variant, option, pass_), r in got.items():
        if variant == "cpu" and option == "jsd" and not cpu_jsd_ok:
            assert r["status"] == "skipped" and r["reason"] == cpu_jsd_why
            continue
        assert r["status"] == "ok", r
        assert r["backend"] == (None if variant == "eager" else variant)
        same = got[("reference", option, pass_)]["loss_value"]
        assert r["loss_value"] == pytest.approx(same, rel=1e-5)  # the same option, the same loss
    assert got[("reference", "jsd", "fwd")]["loss_value"] != pytest.approx(got[("reference", "default", "fwd")]["loss_value"])
    text = md.read_text()
    assert "forward + backward (one training step of the loss): distillation options" in text
    assert "jsd beta=0.5" in text  # the option's column
    assert "(1.00×)" in text  # the default option against itself
    assert "divergence='jsd', beta=0.5" in text and "baselines compute the plain SALT loss" in text
    if not cpu_jsd_ok:
        assert cpu_jsd_why in text and "skipped [" in text
    assert render.value_disagreements(doc) == [] and "disagree" not in text  # same option, same loss


def test_bench_topk_variant(tmp_path, capsys, fixed_copy_bandwidth):
    """--backends cpu,topk: topk_salt_loss on the top k of the same teacher, against salt_loss
    with the full teacher."""
    from salt_kernels import topk_salt_loss
    from salt_kernels.benchmarking import cases as C

    rc, out, md = _bench(tmp_path, "--backends", "cpu,topk", "--dtype", "fp32", "--passes", "fwd,fwdbwd",
                         "--topk-k", "8", "--in-process")
    assert rc == 0
    doc = results.load(str(out))
    assert doc["config"]["topk_k"] == 8 and "--topk-k 8" in doc["command"]
    got = {(r["variant"], r["pass"]): r for r in doc["results"]}
    assert set(got) == {(v, p) for v in ("cpu", "topk") for p in ("fwd", "fwdbwd")}
    top = got[("topk", "fwdbwd")]
    assert top["status"] == "ok" and top["k"] == 8 and got[("cpu", "fwd")]["k"] is None
    ok, backend = C.topk_backend(torch.device("cpu"))
    assert ok and top["backend"] == backend
    # its teacher: torch.topk of log_softmax of the teacher logits every variant gets
    student, teacher, labels = C.make_inputs(32, 256, torch.float32, torch.device("cpu"))
    values, indices = torch.topk(torch.log_softmax(teacher, dim=-1), 8, dim=-1)
    want = topk_salt_loss(student, indices, values, labels, kd_weight=C.KD_WEIGHT, temperature=C.TEMPERATURE)
    assert top["loss_value"] == pytest.approx(float(want), rel=1e-6)
    case = C.Case("topk", 32, 256, "fp32", k=8)
    assert top["bytes"] == case.min_bytes("fwdbwd") == 2 * 32 * 256 * 4 + 32 * 8 * (8 + 4) + 32 * 8
    text = md.read_text()
    assert "top-k teacher (k = 8) against the full teacher" in text and "salt_loss cpu, full teacher" in text
    assert f"({backend})" in text
    assert render.value_disagreements(doc) == []  # topk computes another loss by design: not compared


def test_bench_worker_runs_a_case_in_its_own_process():
    spec = {"variant": "cpu", "n": 8, "v": 64, "dtype": "fp32", "op": "loss", "d_s": None, "d_t": None,
            "passes": ["fwdbwd"], "device": "cpu", "repeats": 1, "warmup": 0, "min_time": 0, "kd_weight": 0.5,
            "temperature": 2.0, "threads": 1, "options": None}
    res = runner.run_worker(spec, timeout=300)
    assert "error" not in res, res
    assert res["passes"]["fwdbwd"]["median_s"] > 0 and res["loss_value"] > 0
    bad = runner.run_in_process({**spec, "variant": "nope"})  # a failing case is reported, not raised
    assert "unknown variant 'nope'" in bad["error"] and bad["traceback"]


def test_bench_skips_cases_that_do_not_fit(tmp_path, capsys, fixed_copy_bandwidth):
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
        (["--backends", "triton-fused"], "Triton runs on CUDA GPUs"),
        (["--options", "default,bogus"], "unknown option 'bogus'"),
        (["--topk-k", "0"], "--topk-k must be at least 1"),
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


def test_bench_dry_run_of_an_option_grid(tmp_path, capsys):
    rc = cli.main(["bench", "--device", "cpu", "--dry-run", "--n", "8", "--v", "100", "--backends", "reference,topk,eager",
                   "--options", "jsd,kd_vocab", "--out", str(tmp_path / "x.json")])
    out = capsys.readouterr().out
    assert rc == 0 and not (tmp_path / "x.json").exists()
    assert "eager: computes the plain SALT loss only, and --options has no default" in out
    assert "| reference | jsd" in out and "| topk k=64 | jsd" in out
    assert "kd_vocab = V - 128 needs V > 128" in out  # V=100
    assert "topk_salt_loss takes no kd_vocab or divergence" in out


def test_fixed_run_of_the_linear_op(tmp_path, capsys, fixed_copy_bandwidth):
    """What bench_linear_cpu.py runs, in this process: the linear case builder, the comparison
    table and its RESULTS.md section."""
    md = tmp_path / "RESULTS.md"
    md.write_text("Intro.\n\n<!-- cpu-linear:start -->\nold\n<!-- cpu-linear:end -->\n\nTail.\n")
    out = tmp_path / "linear.json"
    rc = runner.run_fixed(op="linear", device="cpu", variants=["torch", "torch+salt", "linear"], n=16, v=64, d_s=8,
                          d_t=4, dtype="fp32", passes=["fwdbwd"], repeats=1, base="torch", command="cmd",
                          section="cpu-linear", json_path=str(out), md_path=str(md), isolate=False)
    assert rc == 0  # the three agree on the loss
    doc = results.load(str(out))
    assert doc["section"] == "cpu-linear" and doc["config"]["d_s"] == 8
    for r in doc["results"]:
        assert r["status"] == "ok" and r["op"] == "linear" and r["output_bytes"] == (16 + 64) * 8 * 4
        assert r["gb_per_s"] is None and r["loss_value"] == pytest.approx(doc["results"][0]["loss_value"], rel=1e-5)
    text = md.read_text()
    assert text.startswith("Intro.") and text.rstrip().endswith("Tail.") and "old" not in text
    assert "linear_salt_loss (no logits held)" in text and "vs torch" in text
    assert render.fixed_report(doc, "torch") in capsys.readouterr().out


def test_report_renders_every_committed_result(tmp_path):
    """benchmarks/results/*.json (grid, profiles, fixed-size runs) render into one RESULTS.md, the
    fixed-size runs' measured figures between their own markers; rendering again changes nothing."""
    md = tmp_path / "RESULTS.md"
    shutil.copy(os.path.join(REPO, "benchmarks", "RESULTS.md"), md)
    report = _script("report")
    assert report.main(["--markdown", str(md), "--no-plots"]) == 0
    once = md.read_text()
    for marker in ("bench", "cpu-loss", "cpu-linear"):
        assert once.count(f"<!-- {marker}:start -->") == 1 and once.count(f"<!-- {marker}:end -->") == 1
    loss = results.load(os.path.join(REPO, "benchmarks", "results", "loss_cpu.json"))
    section = once[once.index("<!-- cpu-loss:start -->"):once.index("<!-- cpu-loss:end -->")]
    for r in loss["results"]:
        assert f"{r['median_s']:.3f}" in section
    assert "End-to-end training step" in once and "Loss microbenchmarks" in once
    assert report.main(["--markdown", str(md), "--no-plots"]) == 0
    assert md.read_text() == once


@pytest.mark.slow
def test_report_plots(tmp_path):
    report = _script("report")
    md, plots = tmp_path / "RESULTS.md", tmp_path / "plots"
    bench = os.path.join(REPO, "benchmarks", "results", "bench_cpu.json")
    assert report.main([bench, "--markdown", str(md), "--plots", str(plots)]) == 0
    pngs = sorted(os.listdir(plots))
    assert pngs == sorted(f"bench_cpu_{m}_{d}.png" for d in ("bf16", "fp32") for m in ("memory", "time"))
    for name in pngs:
        assert (plots / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({os.path.join('plots', name)})" in md.read_text()


def test_results_of_an_older_schema_are_refused(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"kind": "salt-kernels-bench", "schema": 1, "results": []}))
    with pytest.raises(ValueError, match="schema 1"):
        results.load(str(path))


@pytest.mark.slow
def test_fixed_size_scripts(tmp_path):
    """python benchmarks/bench_loss_cpu.py and bench_linear_cpu.py, each variant in its own process."""
    out = tmp_path / "loss.json"
    res = _run([sys.executable, "benchmarks/bench_loss_cpu.py", "--n", "64", "--v", "500", "--repeats", "2",
                "--variants", "cpu,eager", "--no-write", "--json", str(out)])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "fwd+bwd vs cpu" in res.stdout and "PyTorch eager" in res.stdout
    doc = results.load(str(out))
    assert {(r["variant"], r["pass"]) for r in doc["results"]} == {(v, p) for v in ("cpu", "eager")
                                                                    for p in ("fwd", "fwdbwd")}
    res = _run([sys.executable, "benchmarks/bench_linear_cpu.py", "--n", "32", "--ds", "16", "--dt", "8",
                "--vocab", "128", "--reps", "1", "--no-write"])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "linear_salt_loss (no logits held)" in res.stdout


@pytest.mark.slow
def test_bench_suite_smoke(tmp_path):
    """The pytest-benchmark suite on the tiny grid, timed by the shared timer; its records in
    SALT_BENCH_OUT."""
    out = tmp_path / "suite.json"
    env = dict(os.environ, SALT_BENCH_GRID="tiny", SALT_BENCH_DEVICE="cpu", SALT_BENCH_OUT=str(out))
    res = _run([sys.executable, "-m", "pytest", "benchmarks/bench_suite.py", "-q", "-p", "no:cacheprovider",
                "-k", "1000 and fp32", "-rs", "--benchmark-enable"], env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    # cpu, reference and eager x fwd/bwd/fwdbwd ran; the rest say why not
    assert re.search(r"\b9 passed", res.stdout), res.stdout[-2000:]
    assert "Liger-Kernel runs on CUDA GPUs only" in res.stdout
    assert "SALT_BENCH_GRID=default" in res.stdout  # why torch.compile is left out of the tiny grid
    assert "test_salt_loss[fp32-64-1000-cpu-fwdbwd]" in res.stdout  # pytest-benchmark's table has the times
    doc = results.load(str(out))
    assert len(doc["results"]) == 9 and all(r["median_s"] > 0 for r in doc["results"])


@pytest.mark.slow
def test_gpu_loss_script_dry_run_and_summary(tmp_path):
    """bench_loss_gpu.py's code paths on tiny CPU shapes (Triton interpreter), then the summary
    table of benchmarks/gpu/check.sh from its JSON."""
    out = tmp_path / "bench_loss_gpu.json"
    res = _run([sys.executable, "benchmarks/bench_loss_gpu.py", "--dry-run", "--dtype", "bf16", "--variants",
                "triton", "triton-sync", "eager", "compile", "--json", str(out)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = results.load(str(out))
    got = {(r["variant"], r["pass"]): r for r in doc["results"]}
    assert set(got) == {(v, p) for v in ("triton", "triton-sync", "eager") for p in ("fwd", "fwdbwd")}
    for r in got.values():
        assert r["status"] == "ok" and r["bytes"] == Case(r["variant"], 4, 1000, "bf16").min_bytes(r["pass"])
    assert [x["variant"] for x in doc["left_out"]] == ["compile"]
    res = _run([sys.executable, "benchmarks/gpu/summarize.py", str(tmp_path)])
    assert res.returncode == 0 and "triton-sync" in res.stdout and "fastest triton plan" in res.stdout, res.stdout


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


def _profile(tmp_path, *flags):
    run = tmp_path / "runs" / "demo"
    _demo_summary(run)
    out = tmp_path / "profile.json"
    rc = cli.main(["profile", "--device", "cpu", "--student", "tiny", "--teacher", "tiny", "--vocab-size", "300",
                   "--batch-size", "2", "--seq-len", "8", "--accounting", str(run), "--out", str(out),
                   "--no-progress", *flags])
    assert rc == 0
    doc = results.load(str(out))
    assert doc["kind"] == "salt-kernels-profile" and doc["tokens_per_step"] == 16
    return doc, {(r["kind"], r["loss"]): r for r in doc["results"]}


def test_profile_writes_json_accounting_and_renders(tmp_path, capsys):
    doc, by = _profile(tmp_path, "--losses", "fused", "--steps", "1", "--warmup", "0", "--peak-tflops", "1")
    printed = capsys.readouterr().out
    assert set(by) == {("ce", "fused"), ("salt", "fused")}
    for (kind, loss), r in by.items():
        assert r["tokens_per_s"] == pytest.approx(16 / r["step_s"])
        assert set(r["phases_s"]) == {"teacher_forward", "student_forward", "loss", "backward", "optimizer"}
        assert all(t >= 0 for t in r["phases_s"].values())
        assert r["mfu"] == pytest.approx(r["model_flops_per_token"] * r["tokens_per_s"] / 1e12)
        assert r["step_peak_bytes"] is None or r["step_peak_bytes"] >= 0
        params = doc["student_parameters"] * 4
        # fp32 weights + AdamW's two moments (+ its scalar step counters)
        assert 3 * params <= r["state_bytes"] < 3 * params + 1024
    salt, ce = by[("salt", "fused")], by[("ce", "fused")]
    assert salt["model_flops_per_token"] > ce["model_flops_per_token"]  # + the teacher's forward
    assert salt["overhead_vs_ce_same_loss"] == pytest.approx(salt["step_s"] / ce["step_s"] - 1)
    assert "Step time by phase" in printed
    acc = doc["accounting"]
    assert acc["loss"] == "fused"
    assert acc["measured"]["t_salt_s"] == pytest.approx(150 * salt["step_s"] + 270 * ce["step_s"])
    assert "demo" not in acc  # whole-run times of separate runs are never compared
    assert "T_SALT     = min(k, n_KD) * t_kd + max(0, k - n_KD) * t_ce" in printed
    # the profile renders into RESULTS.md next to the bench tables
    md = tmp_path / "RESULTS.md"
    render.render([str(tmp_path / "profile.json")], str(md), None)
    text = md.read_text()
    assert "End-to-end training step" in text and "Training step throughput" in text


@pytest.mark.slow
def test_profile_every_loss_with_traces(tmp_path, capsys):
    trace = tmp_path / "trace"
    doc, by = _profile(tmp_path, "--steps", "2", "--warmup", "1", "--trace", str(trace), "--trace-steps", "1")
    printed = capsys.readouterr().out
    assert doc["interleaved"] is True  # tiny students all fit at once
    assert set(by) == {(k, l) for k in ("ce", "salt") for l in ("torch", "fused", "linear")}
    for (kind, loss), r in by.items():
        assert r["mfu"] is None  # no known peak for a CPU
        with open(r["trace"]) as f:
            names = {e.get("name") for e in json.load(f)["traceEvents"]}
        assert {"student_forward", "loss", "backward", "optimizer"} <= names
        if kind == "salt":
            assert "teacher_forward" in names
    assert len(os.listdir(trace)) == 6
    assert "MFU" in printed and "n/a" in printed
    # accounting: the formula with the measured step times of the linear loss (the default path)
    acc = doc["accounting"]
    assert acc["loss"] == "linear"
    t_ce, t_kd = by[("ce", "linear")]["step_s"], by[("salt", "linear")]["step_s"]
    assert acc["measured"]["t_salt_s"] == pytest.approx(150 * t_kd + 270 * t_ce)
    assert acc["measured"]["t_baseline_s"] == pytest.approx(600 * t_ce)
    assert "less wall-clock" in printed or "more wall-clock" in printed


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


def test_launch_plan_variants_name_their_backend_and_knobs():
    """triton-<mode>-b<block>-w<warps> and cuda-b<threads>-c<cluster> select a backend's launch
    plan for the benchmarks; a malformed name is not a variant."""
    from salt_kernels.backends import cuda as cuda_backend
    from salt_kernels.benchmarking import cases as C

    assert C.base_variant("triton-sync-b4096-w8") == "triton" and C.base_variant("cuda-b512-c4") == "cuda"
    assert C.cuda_plan("cuda-b512-c4") == {"_BLOCK": 512, "_CLUSTER": 4}
    assert C.triton_plan("triton-fused") == {"MODE": "fused", "BLOCK_V": None, "NUM_WARPS": None}
    assert all(C.known_variant(v) for v in C.CUDA_SWEEP + C.TRITON_SWEEP)
    assert not C.known_variant("cuda-b128-c4") and not C.known_variant("cuda-b512-c3")
    seen = []
    fn = C.with_variant_plan(lambda: seen.append((cuda_backend._BLOCK, cuda_backend._CLUSTER)), "cuda-b256-c2")
    before = (cuda_backend._BLOCK, cuda_backend._CLUSTER)
    fn()
    assert seen == [(256, 2)] and (cuda_backend._BLOCK, cuda_backend._CLUSTER) == before
