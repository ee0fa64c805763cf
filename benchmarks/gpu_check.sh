#!/usr/bin/env bash
# The GPU measurements of issue 13 in one script, as run on a lent GPU machine (docs/training.md):
# a short paper-preset `cordfuse train` and `cordfuse predict` on CUDA, then bench_gpu.py.
# Usage: OUT=results_folder bash benchmarks/gpu_check.sh
set -euo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-gpu_results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
work=$(mktemp -d)
python3 -m cordfuse synth "$work/bids" --subjects 6 --seed 3
python3 -m cordfuse prepare "$work/bids" "$work/prep" --preset paper --no-register --jobs 8
start=$(date +%s)
python3 -m cordfuse train "$work/prep" "$work/run" --preset paper --model mean-imputation \
    --epochs 2 --iterations 50 --device cuda 2>&1 | tee "$out/train.log"
python3 -m cordfuse predict "$work/run" -i "$work/bids/sub-001" -o "$work/pred" --device cuda \
    2>&1 | tee "$out/predict.log"
echo "train + predict: $(( $(date +%s) - start )) s" | tee -a "$out/train.log"
cp "$work/run/log.jsonl" "$out/train_log.jsonl"
python3 benchmarks/bench_gpu.py --iterations 40 --json "$out/bench_gpu.json" 2>&1 \
    | tee "$out/bench_gpu.log"
