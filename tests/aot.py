"""benchmarks/gpu/compile_check.py run the way the tests run it: Triton's ahead-of-time path for
sm_90 on a machine without a GPU (TRITON_INTERPRET cleared for the child), its JSON records read
back; a skip with the reason when triton has no NVIDIA ahead-of-time path here (exit status 2)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu", "compile_check.py")


def compile_check(tmp_path, *flags: str) -> tuple[list, str]:
    """(records, stdout) of `compile_check.py FLAGS --json FILE`; fails the test with the output
    when the script fails."""
    out = tmp_path / "records.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, SCRIPT, *flags, "--json", str(out)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env=env)
    if res.returncode == 2:
        pytest.skip(f"triton has no NVIDIA ahead-of-time path here: {res.stderr.strip()[-300:]}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text()), res.stdout
