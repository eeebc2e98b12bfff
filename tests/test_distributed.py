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
