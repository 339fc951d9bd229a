#!/usr/bin/env bash
# The GPU path in one go, for a machine with CUDA GPUs (under 8 minutes on one H100-class GPU):
# the tests marked `gpu` (a bf16 ZeRO-2 probe over NCCL on one GPU, and on two when there are
# two; bench probe's MFU on the hub-sized model), then `lensray bench probe` on that model,
# its figures written to out/bench-probe-gpu.json. Where torch sees no GPU the tests skip and
# the benchmark is not run, so the script passes on a CPU machine too.
#
#   bash cluster/gpu-check.sh                 # from the repository's root; installs with make venv
#   TORCH=torch bash cluster/gpu-check.sh     # the default CUDA build of torch from the index
set -euo pipefail
cd "$(dirname "$0")/.."
make venv
PY=.venv/bin/python
$PY -m lensray zoo build
timeout 300 $PY -m pytest -m gpu -p no:cacheprovider -q tests/test_gpu.py
if $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  timeout 150 $PY -m lensray bench probe --device cuda --precision bf16 --model llama-1b --size 512 \
    --length 512 --json out/bench-probe-gpu.json
else
  echo "gpu-check: torch sees no CUDA GPU; the gpu tests skipped and the GPU benchmark was not run"
fi
