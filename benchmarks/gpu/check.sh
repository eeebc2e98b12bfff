#!/usr/bin/env bash
# GPU check of salt_kernels, for a CUDA machine that already has torch and triton (no network
# needed): install the package, run the GPU tests, run every benchmarks/bench_*_gpu.py (fixed
# sizes over the harness of `salt-kernels bench`: its inputs, triton's do_bench, its memory probe
# and its JSON format), and print a short table last. Fits in 8 minutes: every step runs under a timeout cut to what is
# left of CHECK_BUDGET_S (default 450 s); the most important steps run first.
#
#   bash benchmarks/gpu/check.sh                 # outputs under benchmarks/gpu/out
#   OUT=/some/dir bash benchmarks/gpu/check.sh   # outputs under /some/dir
#
# Outputs: env.txt, <step>.log for each step, steps.tsv (step, status, seconds), tests.xml,
# bench_*.json (`salt-kernels bench` results; `python benchmarks/report.py FILE` renders one into
# RESULTS.md), summary.txt (the table printed last). Exit status 2 without a CUDA device,
# 1 when a step failed, 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUDGET=${CHECK_BUDGET_S:-450}
RESERVE=15  # seconds kept for the summary
PY=${PYTHON:-python}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)" 2>/dev/null; then
    echo "check.sh: no CUDA device visible to torch here; this script is for a GPU machine (nothing run)" >&2
    exit 2
fi

OUT=${OUT:-benchmarks/gpu/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the source tree, even if the install fails
export PYTHONUNBUFFERED=1
: >"$OUT/steps.tsv"
FAILED=0

# run_step NAME CAP_SECONDS CMD...: runs CMD under min(CAP, time left), output in $OUT/NAME.log.
run_step() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - RESERVE - SECONDS))
    local limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        echo "== $name: skipped, out of time budget"
        printf '%s\tskipped (budget)\t0\n' "$name" >>"$OUT/steps.tsv"
        return 0
    fi
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local status="ok"
    if ((rc == 124 || rc == 137)); then
        status="timeout after ${limit}s"
    elif ((rc == 2)) && [[ $name == bench_* ]]; then
        status="skipped (rc 2)"
    elif ((rc != 0)); then
        status="failed (rc $rc)"
    fi
    [[ $status == ok || $status == skipped* ]] || FAILED=1
    printf '%s\t%s\t%d\n' "$name" "$status" $((SECONDS - t0)) >>"$OUT/steps.tsv"
    echo "   $status in $((SECONDS - t0))s; last lines of $OUT/$name.log:"
    tail -n 3 "$OUT/$name.log" | sed 's/^/   | /'
}

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 || true
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print(torch.cuda.get_device_name())"
    "$PY" -c "import liger_kernel, importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'))" 2>&1 | tail -1
    git -C "$ROOT" rev-parse HEAD 2>/dev/null || true
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

run_step install 120 "$PY" -m pip install --no-build-isolation --no-deps -e .

TESTS=(tests/test_triton_backend.py)
[[ -f tests/test_cuda_backend.py ]] && TESTS+=(tests/test_cuda_backend.py)
run_step tests 120 "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$OUT/tests.xml" "${TESTS[@]}"

# The loss benchmark at its default sizes; torch.compile only at V=128256 bf16 (each shape and
# pass is a compilation of tens of seconds).
run_step bench_loss_gpu 170 "$PY" benchmarks/bench_loss_gpu.py --compile-vocab 128256 --compile-dtype bf16 \
    --json "$OUT/bench_loss_gpu.json"

for bench in benchmarks/bench_*_gpu.py; do
    name=$(basename "$bench" .py)
    [[ $name == bench_loss_gpu ]] && continue
    run_step "$name" 90 "$PY" "$bench" --json "$OUT/$name.json"
done

# Tuning data for the triton backend at the target point: launch plans (the one-launch "sync"
# plan included; it runs last because a GPU that cannot hold a row's programs at once would
# stall it until the timeout) and block sizes / warps.
run_step bench_loss_gpu_plans 90 "$PY" benchmarks/bench_loss_gpu.py --vocab 128256 --dtype bf16 --passes fwd+bwd \
    --variants triton triton-fused triton-split triton-sync --sweep --json "$OUT/bench_loss_gpu_plans.json"

echo
"$PY" benchmarks/gpu/summarize.py "$OUT" | tee "$OUT/summary.txt"
exit $FAILED
