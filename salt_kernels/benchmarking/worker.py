"""One benchmark case in a process of its own, so that its peak memory is its own and no
allocator or compiler state carries over between variants:

    python -m salt_kernels.benchmarking.worker SPEC.json RESULT.json

SPEC: {"variant", "n", "v", "dtype", "passes", "device", "repeats", "warmup", "min_time",
"kd_weight", "temperature", "threads" (None: torch's default)}. RESULT gets {"process_bytes_with_inputs", "passes": {pass: the
measurements of timing.measure_pass}} or {"error", "traceback"}.
"""

from __future__ import annotations

import json
import sys
import traceback


def run_case(spec: dict) -> dict:
    import torch

    from .cases import DTYPES, make_inputs, make_loss_fn
    from .machine import PeakMemory
    from .timing import measure_passes

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    fn = make_loss_fn(spec["variant"], spec["kd_weight"], spec["temperature"])
    student, teacher, labels = make_inputs(spec["n"], spec["v"], DTYPES[spec["dtype"]], device)
    mem = PeakMemory(device)
    out = {"process_bytes_with_inputs": mem.set_baseline(), "passes": {}}
    # The loss value on these inputs (the same for every variant): the report checks that all
    # variants agree, so that a wrong variant does not pass for a fast one.
    with torch.no_grad():
        probe = student.clone() if spec["variant"] == "liger" else student  # Liger writes into its input
        out["loss_value"] = float(fn(probe, teacher, labels))
        del probe
    kw = {k: spec[k] for k in ("repeats", "warmup", "min_time") if spec.get(k) is not None}
    out["passes"] = measure_passes(fn, student, teacher, labels, spec["passes"], **kw)
    return out


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        result = run_case(spec)
    except Exception as exc:  # reported as a failed case, with the traceback's last lines
        tb = traceback.format_exc().strip().splitlines()
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": tb[-12:]}
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
