#!/usr/bin/env bash
# The GPU half of the JAX-vs-PyTorch comparison in one command: train step,
# 512x512 and 1080p inference and the matrix-unit ceiling (matmul), on the
# first GPU, in each precision: each framework's default for float32
# (TF32 on Ampere and later), full float32, bfloat16 mixed precision.
#
#   bash benchmarks/gpu_comparison.sh OUT_DIR [REPEATS]
#
# Writes OUT_DIR/gpu_{default,highest,bf16}.json (compare_torch.py's JSON),
# and for 512x512 inference (which fills its 32-pixel bucket) the same
# program with the per-layer mask forced on (gpu_default_mask_always.json,
# the per-layer mask network_forward applied there before) and with no
# bucket at all (gpu_default_nobucket.json): the mask's cost.
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
    --repeats="$repeats" --configs=infer_512 --jax_mask=always \
    --json_out="$out/gpu_default_mask_always.json"
python benchmarks/compare_torch.py --device=gpu --precision=default \
    --repeats="$repeats" --configs=infer_512 --jax_bucket=0 \
    --json_out="$out/gpu_default_nobucket.json"
