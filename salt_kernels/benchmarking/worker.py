"""One benchmark case, by default in a process of its own, so that its peak memory is its own and
no allocator or compiler state carries over between variants:

    python -m salt_kernels.benchmarking.worker SPEC.json RESULT.json

SPEC: the case's fields (cases.Case, its option and top k included) and {"passes", "device", "repeats", "warmup", "min_time",
"kd_weight", "temperature", "threads" (None: torch's default), "options" (linear: "backend",
"chunk_size"), "seed"}. RESULT gets {"loss_value", "passes": {pass: the measurements of
timing.measure_pass}, "backend" (the salt_kernels backend that ran it, None for a baseline)}
or {"error", "traceback"}.
"""

from __future__ import annotations

import json
import sys
import traceback

CASE_FIELDS = ("variant", "n", "v", "dtype", "op", "d_s", "d_t", "option", "k")


def run_case(spec: dict) -> dict:
    import torch

    from .cases import Case, case_backend, case_fn, case_inputs
    from .timing import measure_passes

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    case = Case(**{k: spec[k] for k in CASE_FIELDS if k in spec})
    fn = case_fn(case, spec["kd_weight"], spec["temperature"], device, spec.get("options"))
    inputs, grad_inputs = case_inputs(case, device, spec.get("seed", 0))
    out = {"backend": case_backend(case, device)}
    # The loss value on these inputs (the same for every variant): the report checks that all
    # variants agree, so that a wrong variant does not pass for a fast one.
    with torch.no_grad():
        probe = (inputs[0].clone(),) + inputs[1:] if case.variant == "liger" else inputs  # Liger writes into its input
        out["loss_value"] = float(fn(*probe))
        del probe
    kw = {k: spec[k] for k in ("repeats", "warmup", "min_time") if spec.get(k) is not None}
    out["passes"] = measure_passes(fn, inputs, grad_inputs, spec["passes"], **kw)
    return out


def run_case_safely(spec: dict) -> dict:
    """run_case, or {"error", "traceback"} for a case that fails."""
    try:
        return run_case(spec)
    except Exception as exc:  # reported as a failed case, with the traceback's last lines
        tb = traceback.format_exc().strip().splitlines()
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": tb[-12:]}


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    result = run_case_safely(spec)
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
