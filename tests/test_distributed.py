"""The vocab-parallel SALT loss under torchrun (gloo on CPU, 2 and 3 processes, uneven vocabulary
slices) against the loss of one process on the joined vocabulary: loss, parts, accuracy and
gradients, every option, the logits and the linear forms (tests/distributed/*_worker.py)."""

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
