"""benchmarks/gpu/compile_check.py --quick --json on the CPU: triton's ahead-of-time path compiles
the default kernels for sm_90 and the script writes one record per configuration with the SASS
figures (registers, spills, instructions and exps per element)."""

import math

from aot import compile_check

KEYS = {"backend", "plan", "dtype", "tau", "block", "warps", "registers", "spill_bytes", "shared_bytes",
        "instructions_per_element", "exps_per_element", "default"}


def test_quick_json_records(tmp_path):
    records, stdout = compile_check(tmp_path, "--quick")
    assert isinstance(records, list) and records
    for r in records:
        assert set(r) == KEYS, sorted(r)
        assert r["backend"] in ("triton", "cuda")
        assert r["dtype"] in ("bf16", "fp16", "fp32")
        assert isinstance(r["plan"], str) and r["plan"]
        assert isinstance(r["default"], bool)
        for key in ("block", "warps", "registers", "spill_bytes", "shared_bytes"):
            assert isinstance(r[key], int) and not isinstance(r[key], bool), (key, r)
        for key in ("tau", "block", "warps", "registers", "instructions_per_element", "exps_per_element"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, (key, r)
        for key in ("spill_bytes", "shared_bytes"):
            assert r[key] >= 0, (key, r)
    assert any(r["backend"] == "triton" and r["default"] for r in records), records
    # The table is printed too.
    assert "ins/el" in stdout and "exp/el" in stdout, stdout
