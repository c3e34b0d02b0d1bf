#!/usr/bin/env bash
# The GPU check (issue 13), for a session lent a GPU machine: one call of the device tool, from the
# repo root,
#   run(command="bash bench/gpu_check.sh", timeout_s=560)
# About 5 minutes on one H100/H200 with 16 cores, and never past ~545 s: device.txt (GPU, versions),
# an install of curator without dependencies (the machine's python3 has torch, torchvision, pyarrow,
# pillow, click, tqdm, pytest), the CUDA tests (time-boxed to 90 s), then bench/gpu.py: every part
# in a process of its own with its own time limit, the whole bench within what is left of 530 s.
# Left in $OUT: gpu.json and gpu.md (rewritten after every part), device.txt, install.log, tests.log,
# bench.log.
#
# Without a GPU (harness check, tiny dataset, no tests, no install; ~2-3 minutes on 2 cores):
#   bash bench/gpu_check.sh --device cpu        (or CURATOR_GPU_CHECK_QUICK=1 bash bench/gpu_check.sh)
# Other arguments go to bench/gpu.py (e.g. --parts ceiling,ray). PYTHON picks the interpreter
# (default python3, or .venv/bin/python when python3 has no torch). CURATOR_GPU_CHECK_TESTS=0 skips
# the tests, =1 runs them in quick mode too.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/curator-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
LIMIT=${CURATOR_GPU_CHECK_LIMIT:-530}   # seconds the whole script may take (the tool's limit is 560)

QUICK=${CURATOR_GPU_CHECK_QUICK:-0}
DEVICE=cuda
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --device=*) DEVICE=${1#--device=}; shift ;;
    --quick) QUICK=1; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[ "$DEVICE" = cpu ] && QUICK=1
TESTS=${CURATOR_GPU_CHECK_TESTS:-$([ "$QUICK" = 1 ] && echo 0 || echo 1)}

PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && ! python3 -c "import torch" >/dev/null 2>&1 && [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
fi

{
  echo "started $(date -u +%FT%TZ) in $PWD, quick=$QUICK device=$DEVICE python=$PY"
  nvidia-smi -L 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, torchvision, pyarrow, PIL; print(sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'pyarrow', pyarrow.__version__, 'pillow', PIL.__version__, 'cuda', torch.cuda.is_available())"
  "$PY" -c "import ray; print('ray', ray.__version__)" 2>/dev/null || echo "ray: not installed (the --executor ray part will be skipped)"
  echo "cores $(nproc)"
  df -h /dev/shm /tmp . 2>&1 | sed 's/^/disk: /'
  free -g 2>&1 | sed -n 2p | sed 's/^/memory: /'
} 2>&1 | tee "$OUT/device.txt"

# the source tree is importable as it is (built-in stages need no install); the install only adds
# the `curator` command and the entry points the tests may look for, so a failure is logged, not fatal
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$QUICK" != 1 ]; then
  timeout -k 5 60 "$PY" -m pip install --quiet --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 \
    || echo "pip install failed (see install.log); going on from the source tree" | tee -a "$OUT/device.txt"
fi

if [ "$TESTS" = 1 ]; then
  echo "== tests (time limit 90s)"
  timeout -k 5 90 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/execution/test_cuda.py \
    tests/execution/test_pipeline.py tests/decode/test_decoders.py >"$OUT/tests.log" 2>&1
  rc=$?
  tail -n 15 "$OUT/tests.log"
  [ $rc = 124 ] && echo "tests: stopped at their 90 s limit (see tests.log)"
  echo "== tests: exit status $rc after ${SECONDS}s"
else
  echo "== tests: skipped (quick mode; CURATOR_GPU_CHECK_TESTS=1 runs them)"
fi

BUDGET=$((LIMIT - SECONDS))
BENCH_ARGS=(--device "$DEVICE" --json "$OUT/gpu.json" --markdown "$OUT/gpu.md" --budget "$BUDGET")
[ "$QUICK" = 1 ] && BENCH_ARGS+=(--quick)
echo "== bench/gpu.py ${BENCH_ARGS[*]} ${ARGS[*]:-}"
timeout -k 5 $((BUDGET + 10)) "$PY" bench/gpu.py "${BENCH_ARGS[@]}" "${ARGS[@]}" 2>&1 | tee "$OUT/bench.log"
echo "== done in ${SECONDS}s; results in $OUT/gpu.json and $OUT/gpu.md"
