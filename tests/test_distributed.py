"""The vocab-parallel SALT loss under torchrun (gloo on CPU, 2 and 3 processes, uneven vocabulary
slices) against the loss of one process on the joined vocabulary: loss, parts, accuracy and
gradients, every option, the logits, top-k and linear forms, DTensor inputs and an FSDP2 lm_head
(tests/distributed/*_worker.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")


def torchrun(worker: str, nproc: int, out, timeout: int = 240) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(HERE, "distributed", worker), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


@pytest.mark.parametrize("nproc", [2, 3])
def test_vocab_parallel_matches_one_process(tmp_path, nproc):
    doc = torchrun("vocab_parallel_worker.py", nproc, tmp_path / "out.json")
    assert doc["world"] == nproc
    results = doc["results"]
    assert len(results) >= 40, sorted(results)
    for case, err in results.items():
        grad_tol = 1e-2 if "bf16" in case else 1e-6  # bf16 gradients: one rounding of the output
        assert err["loss"] <= 1e-6, (case, err)
        assert err["parts"] <= 1e-6, (case, err)
        assert err["grad"] <= grad_tol, (case, err)
        assert err["accuracy"] == 0.0, (case, err)


def test_dtensor_inputs_and_fsdp2_lm_head(tmp_path):
    """salt_loss / linear_salt_loss given DTensors: Shard(-1) logits and Shard(0) weights with
    replicated hidden states take the vocab-parallel path, replicated ones the ordinary path; an
    FSDP2-sharded lm_head read outside its forward is gathered inside autograd and its gradient
    averaged over the ranks as FSDP2 does; refused placements name the argument."""
    doc = torchrun("dtensor_worker.py", 2, tmp_path / "out.json")
    results, errors = doc["results"], doc["errors"]
    assert set(results) >= {"logits/default/dtensor", "logits/default/plain", "logits/replicate",
                            "linear_tp/dtensor", "linear_tp/plain", "fsdp2_lm_head", "topk/dtensor"}, sorted(results)
    for case, err in results.items():
        assert err["loss"] <= 1e-9 and err["grad"] <= 1e-6 and err["plain"], (case, err)
    assert results["logits/default/dtensor"]["grad_placements"] == "(Shard(dim=2),)"
    assert results["linear_tp/dtensor"]["grad_placements"] == "(Shard(dim=0),)"
    assert errors["logits_shard0"].startswith("TypeError: student_logits is a DTensor"), errors
    assert errors["teacher_only"].startswith("TypeError: teacher_logits is a DTensor"), errors
    assert errors["hidden_sharded"].startswith("TypeError: student_hidden is a DTensor"), errors


def _train_cmd(corpus, out, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "salt_kernels", "train", "--model", "tiny", "--data", str(corpus), "--vocab-size", "300",
            "--seq-len", "32", "--batch-size", "8", "--eval-interval", "3", "--eval-sequences", "16",
            "--log-interval", "1", "--warmup-steps", "2", "--no-progress", "--out-dir", str(out), *extra]


def _losses(out) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("val_loss")) for r in rows]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6))) for _ in range(300)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(80)) for _ in range(200)))
    return path


def test_fsdp_training_matches_ddp_and_resumes_after_sigterm(tmp_path, corpus):
    """`train --fsdp` under torchrun (2 processes), SALT on the tiny preset (fused linear loss,
    lm_head in the root unit; the teacher sharded too): stopped by SIGTERM it saves a checkpoint and
    fails, --resume finishes it, and the whole loss curve is the DDP run's."""
    import signal
    import threading

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(out, *extra):
        res = subprocess.run(_train_cmd(corpus, out, *extra), capture_output=True, text=True, timeout=300, env=env,
                             cwd=ROOT)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res

    run(tmp_path / "teacher", "--role", "teacher", "--steps", "4")
    salt = ("--role", "salt", "--teacher", str(tmp_path / "teacher"), "--n-kd", "4")
    run(tmp_path / "ddp", *salt, "--steps", "8")
    ddp = _losses(tmp_path / "ddp")
    # the FSDP run, stopped by SIGTERM before its first step ends: a checkpoint and a failing exit
    # status. The signal goes out once the run has described itself (its handlers are in place by
    # then on every process, since they precede the process group's rendezvous), so the stop lands
    # at the first log step however fast the machine is.
    out = tmp_path / "fsdp"
    cmd = _train_cmd(corpus, out, *salt, "--steps", "8", "--fsdp", "--fsdp-teacher", "--ckpt-interval", "0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    watchdog = threading.Timer(240, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "sharded by FSDP2" in line:
                os.killpg(proc.pid, signal.SIGTERM)
                break
        log = "".join(seen) + proc.communicate(timeout=240)[0]
    finally:
        watchdog.cancel()
    assert "sharded by FSDP2" in log, log[-3000:]
    assert proc.returncode != 0 and (out / "checkpoint.pt").exists(), log[-3000:]
    assert "stopped by SIGTERM" in log, log[-3000:]
    stopped_at = len(_losses(out))
    assert stopped_at < len(ddp)
    # --resume finishes it; the whole curve is DDP's
    run(out, *salt, "--steps", "8", "--fsdp", "--fsdp-teacher", "--ckpt-interval", "0", "--resume")
    fsdp = _losses(out)
    assert len(fsdp) == len(ddp) > 8
    assert fsdp == pytest.approx(ddp, rel=1e-5), (ddp, fsdp)
