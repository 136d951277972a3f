#!/bin/bash
# Issue 28: does the small recipe's base lr (set on the 6-block mini encoder) suit the 12-block ViT-Ti?
# MAE on the built-in digits, 600 steps at each base lr, then k-NN, linear probe and fine-tuning with 20 labels per
# class on the held-out digits; seed 0 adds the same ViT at random initialisation. One core: about 35 min a seed.
#
#   bash benchmarks/model_size_lr.sh 0 && bash benchmarks/model_size_lr.sh 1
set -euo pipefail
seed=${1:-0}
work=${WORK:-outputs/model_size_lr}
export HF_HUB_OFFLINE=1
mkdir -p "$work"
models=()
for lr in 1e-2 1.5e-3; do
  out="$work/seed$seed-lr$lr"
  [ -f "$out/model.safetensors" ] || hf-mim pretrain --model-size tiny --image-size 32 --patch-size 4 \
    --max-steps 600 --base-lr "$lr" --seed "$seed" --output-dir "$out" > "$out.log" 2>&1
  models+=("$out")
done
extra=()
[ "$seed" = 0 ] && extra=(--random-init)
hf-mim evaluate --model "${models[@]}" "${extra[@]}" --protocol knn linear finetune --labels-per-class 20 \
  --seed "$seed" --no-save-to-model --output-dir "$work/eval-seed$seed"
