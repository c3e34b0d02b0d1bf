#!/usr/bin/env bash
# The GPU checks, for a session lent a GPU machine: one call of the device tool, from the repo root,
#   run(command="bash bench/gpu_check.sh", timeout_s=560)
# installs curator (no dependencies: the machine's python3 has torch, torchvision, pyarrow, pillow,
# click, tqdm, pytest), runs the CUDA tests, then bench/gpu.py (ViT-B/32, --decode gpu and cpu).
# Logs and gpu.json land in $OUT. About 1 minute of tests, a few of benchmark.
set -uo pipefail
OUT=${OUT:-/tmp/curator-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi -L
  python3 -c "import sys, torch, torchvision, pyarrow, PIL; print(sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'pyarrow', pyarrow.__version__, 'pillow', PIL.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} 2>&1 | tee "$OUT/device.txt"
# the source tree is importable as it is (built-in stages need no install); the install only adds
# the `curator` command, so a failure is logged, not fatal
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install --quiet --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 \
  || echo "pip install failed (see install.log); going on from the source tree" | tee -a "$OUT/device.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/execution/test_cuda.py tests/execution/test_pipeline.py tests/decode/test_decoders.py 2>&1 | tee "$OUT/tests.log"
timeout 300 python3 bench/gpu.py --json "$OUT/gpu.json" 2>&1 | tee "$OUT/bench.log"
