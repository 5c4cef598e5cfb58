#!/usr/bin/env bash
# The GPU half of the JAX-vs-PyTorch comparison in one command: train step,
# 512x512 and 1080p inference and the matrix-unit ceiling (matmul), on the
# first GPU, in each precision: each framework's default for float32
# (TF32 on Ampere and later), full float32, bfloat16 mixed precision.
#
#   bash benchmarks/gpu_comparison.sh OUT_DIR [REPEATS]
#
# Writes OUT_DIR/gpu_{default,highest,bf16}.json (compare_torch.py's JSON),
# and gpu_default_nobucket.json: 512x512 inference without the shape bucket
# (no padding, no per-layer mask), to tell whether they are what makes JAX
# slower than PyTorch there.
# Needs jax with CUDA and a CUDA build of PyTorch on the machine.
set -euo pipefail
out="${1:?usage: bash benchmarks/gpu_comparison.sh OUT_DIR [REPEATS]}"
repeats="${2:-7}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
for precision in default highest bf16; do
  python benchmarks/compare_torch.py --device=gpu --precision="$precision" \
      --repeats="$repeats" --configs=train_step,infer_512,infer_1080p,matmul \
      --json_out="$out/gpu_$precision.json"
done
python benchmarks/compare_torch.py --device=gpu --precision=default \
    --repeats="$repeats" --configs=infer_512 --jax_bucket=0 \
    --json_out="$out/gpu_default_nobucket.json"
