#!/usr/bin/env bash
# The GPU figures of the behaviour-sequence work (issue #5), in one go on a machine with CUDA:
#   1. the `gpu`-marked tests (Triton kernels against their PyTorch twin, SDIM on CUDA);
#   2. `recsys bench sequence --device cuda` (SDIM / DIN-long / DARE speed over history lengths);
#   3. `recsys bench accuracy --suite sequence trainer=gpu` (the accuracy table over seeds).
# Usage: RECSYS_DATA_DIR=... scripts/gpu_sequence.sh OUT_DIR [SEEDS...]; each step's output is under OUT_DIR.
# Step 3 resumes: rerun the script with the same OUT_DIR and finished runs are kept.
set -uo pipefail
out=${1:?usage: scripts/gpu_sequence.sh OUT_DIR [SEEDS...]}
shift
seeds=${*:-2021 2022 2023}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -m pytest -m gpu tests/kernels -q -p no:cacheprovider 2>&1 | tee "$out/pytest-gpu.log"
recsys bench sequence --device cuda --lengths 64 256 512 1024 4096 --repeats 20 --warmup 3 \
    --out "$out/bench-sequence-gpu" 2>&1 | tee "$out/bench-sequence-gpu.log"
recsys bench accuracy --suite sequence --seeds $seeds --jobs "${JOBS:-6}" --out "$out/accuracy" trainer=gpu \
    2>&1 | tee "$out/accuracy.log"
