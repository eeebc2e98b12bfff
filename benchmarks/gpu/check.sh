#!/usr/bin/env bash
# GPU check of salt_kernels for a CUDA machine that already has torch and triton (no network
# needed). Most valuable data first, each step under a timeout cut to what is left of
# CHECK_BUDGET_S (default 390 s, inside 7 minutes):
#   env         GPU, clocks, driver, CUDA runtime and compiler, torch, triton, Liger-Kernel
#   (build)     the C++/CUDA extensions, in the background while the Triton steps run
#   triton      roofline (torch.add(z, u, out=g): 2 reads + 1 write) and forward+backward of every
#               triton launch plan at 16384 x 128256 bf16 tau 2, with Liger-Kernel and eager
#   cuda        the cuda backend's automatic configuration and its block x cluster sweep
#   crosscheck  full-size calls of both backends, sampled rows (last ones too) against float64
#   extra       forward-only, tau 1.5, V = 32000 and 256000
#   ncu         DRAM bytes read/written and L2 hit rate per plan (when ncu is installed)
#   tests       the GPU tests (triton incl. the top-k kernel, cuda, the backend contract on the
#               GPU, fused linear)
#   linear      the fused-linear benchmark against plain PyTorch and Liger-Kernel
# then a table (summarize.py). Everything lands under OUT.
#
#   bash benchmarks/gpu/check.sh                      # outputs under benchmarks/gpu/out
#   OUT=/some/dir bash benchmarks/gpu/check.sh        # outputs under /some/dir
#   CHECK_ARCHIVE=/x/check.tgz bash ...               # also packs OUT into one file after each step
#   CHECK_DRY_RUN=1 bash benchmarks/gpu/check.sh      # prints the plan and its budget, runs nothing
#
# Outputs: env.txt, build.log, <step>.log, steps.tsv (step, status, seconds), kernels.json
# (kernel_check.py records), ncu.csv, tests.xml, bench_linear_gpu.json, summary.txt.
# Exit status 2 without a CUDA device, 1 when a step failed or the budget is too small for the
# plan, 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUDGET=${CHECK_BUDGET_S:-390}
RESERVE=10 # seconds kept for the summary
PY=${PYTHON:-python}
DRY=${CHECK_DRY_RUN:-0}
KC=(benchmarks/gpu/kernel_check.py)

# The plan: step name and its cap in seconds, in the order they run.
PLAN=(env:5 triton:95 cuda:40 crosscheck:35 extra:55 ncu:45 tests:60 linear:40)
total=0
for s in "${PLAN[@]}"; do total=$((total + ${s#*:})); done
if ((total + RESERVE > BUDGET)); then
    echo "check.sh: the plan's caps add up to ${total}s + ${RESERVE}s reserve > CHECK_BUDGET_S=${BUDGET}s" >&2
    exit 1
fi
cap() { local s; for s in "${PLAN[@]}"; do [[ ${s%%:*} == "$1" ]] && echo "${s#*:}"; done; }
if [[ $DRY == 1 ]]; then
    echo "check.sh plan (budget ${BUDGET}s, caps ${total}s + ${RESERVE}s reserve):"
    for s in "${PLAN[@]}"; do printf '  %-11s %4ss\n' "${s%%:*}" "${s#*:}"; done
    exit 0
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)" 2>/dev/null; then
    echo "check.sh: no CUDA device visible to torch here; this script is for a GPU machine (nothing run)" >&2
    exit 2
fi

OUT=${OUT:-benchmarks/gpu/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" # the source tree and the extensions built in it
export PYTHONUNBUFFERED=1
: >"$OUT/steps.tsv"
FAILED=0

archive() { [[ -n ${CHECK_ARCHIVE:-} ]] && tar czf "$CHECK_ARCHIVE" -C "$OUT" . 2>/dev/null; return 0; }

# run_step NAME CMD...: runs CMD under min(its cap, time left), output in $OUT/NAME.log.
run_step() {
    local name=$1 limit
    shift
    limit=$(cap "$name")
    local left=$((BUDGET - RESERVE - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 10)); then
        echo "== $name: skipped, out of time budget"
        printf '%s\tskipped (budget)\t0\n' "$name" >>"$OUT/steps.tsv"
        return 0
    fi
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS rc status=ok
    timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    if ((rc == 124 || rc == 137)); then
        status="timeout after ${limit}s"
    elif ((rc != 0)); then
        status="failed (rc $rc)"
    fi
    [[ $status == ok ]] || FAILED=1
    printf '%s\t%s\t%d\n' "$name" "$status" $((SECONDS - t0)) >>"$OUT/steps.tsv"
    echo "   $status in $((SECONDS - t0))s; last lines of $OUT/$name.log:"
    tail -n 4 "$OUT/$name.log" | sed 's/^/   | /'
    archive
}

env_info() {
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.limit,temperature.gpu --format=csv
    nvcc --version | tail -2
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda runtime', torch.version.cuda, 'triton', triton.__version__); p = torch.cuda.get_device_properties(0); print(p.name, p.multi_processor_count, 'SMs', round(p.total_memory / 2**30), 'GiB', 'L2', getattr(p, 'L2_cache_size', '?'))"
    "$PY" -c "import importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'))" 2>&1 | tail -1
    command -v ncu >/dev/null && echo "ncu $(ncu --version | tail -1)" || echo "ncu: not installed"
    git -C "$ROOT" rev-parse HEAD 2>/dev/null || true
}
t0=$SECONDS
env_info >"$OUT/env.txt" 2>&1
printf 'env\tok\t%d\n' $((SECONDS - t0)) >>"$OUT/steps.tsv"
cat "$OUT/env.txt"

# The extensions build on the CPU while the Triton steps use the GPU.
("$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; echo "build exit $?" >>"$OUT/build.log") &
BUILD_PID=$!

run_step triton "$PY" "${KC[@]}" --part roofline triton --json "$OUT/kernels.json"
wait "$BUILD_PID"
echo "== build: $(tail -n 1 "$OUT/build.log")"
run_step cuda "$PY" "${KC[@]}" --part cuda --json "$OUT/kernels.json"
run_step crosscheck "$PY" "${KC[@]}" --part crosscheck --json "$OUT/kernels.json"
run_step extra "$PY" "${KC[@]}" --part extra --json "$OUT/kernels.json"
if command -v ncu >/dev/null; then
    run_step ncu ncu --csv --log-file "$OUT/ncu.csv" --clock-control none -k regex:rows_kernel \
        --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,gpu__time_duration.sum \
        "$PY" "${KC[@]}" --part ncu
else
    printf 'ncu\tskipped (not installed)\t0\n' >>"$OUT/steps.tsv"
fi
# In parallel where pytest-xdist is installed (Triton compiles each specialization on the CPU),
# each test under a timeout where pytest-timeout is.
PYTEST_ARGS=()
"$PY" -c "import xdist" 2>/dev/null && PYTEST_ARGS+=(-n 8)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_ARGS+=(--timeout 50)
run_step tests "$PY" -m pytest -q -p no:cacheprovider -rs "${PYTEST_ARGS[@]}" --junitxml="$OUT/tests.xml" \
    tests/test_triton_backend.py tests/test_triton_topk.py tests/test_cuda_backend.py tests/test_linear_triton.py \
    tests/test_contract.py -k "not emulat and not reference and not cpu"
run_step linear "$PY" benchmarks/bench_linear_gpu.py --reps 3 --json "$OUT/bench_linear_gpu.json"

echo
"$PY" benchmarks/gpu/summarize.py "$OUT" | tee "$OUT/summary.txt"
archive
exit $FAILED
