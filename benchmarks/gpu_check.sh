#!/usr/bin/env bash
# One-command GPU check (issue #20), at most about 8 minutes on one GPU. From the repository root:
#
#     bash benchmarks/gpu_check.sh            # writes its logs and a summary into ${OUT:-gpu_check_out}/
#
# It prints, in this order:
#   1. ViT-B/16 MAE and SimMIM train-step throughput in bf16, eager and compiled, against transformers' models of
#      the same weights (losses checked equal first), with achieved TFLOP/s, MFU and peak memory
#      (benchmarks/bench_throughput.py);
#   2. a 1-GPU DDP run of `hf-mim pretrain` (torchrun, 1 process: DistributedDataParallel wraps the model) on
#      generated 224 px JPEGs, ViT-B MAE, bf16, with its images/s;
#   3. the input pipeline: one core's JPEG decode + RandomResizedCrop rate with draft mode off and on, and the
#      DataLoader's rate with one worker per core.
#
# The device image has torch and transformers but not datasets or evaluate (and their requirements). Carry their
# wheels: on a machine with pip access, in the repository root,
#
#     pip download -d .gpu_wheels --only-binary=:all: --platform manylinux2014_x86_64 \
#         --python-version "$(python -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')" \
#         datasets evaluate accelerate huggingface_hub safetensors scikit-learn
#     rm -f .gpu_wheels/torch-* .gpu_wheels/nvidia_* .gpu_wheels/triton-*     # the image's own torch stays
#
# add `/.gpu_wheels/` to .git/info/exclude, and carry `.gpu_wheels` to the GPU machine. This script installs
# whatever is missing from that folder, offline, before it starts.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"
started=$(date +%s)
stage() { echo; echo "=== $1 ($(( $(date +%s) - started )) s in) ==="; }

stage "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("datasets", "evaluate", "accelerate", "huggingface_hub", "safetensors", "sklearn")
               if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    if [ -d .gpu_wheels ]; then
        echo "installing from .gpu_wheels: $missing"
        "$PY" -m pip install -q --no-index --find-links .gpu_wheels --no-deps .gpu_wheels/*.whl 2>&1 | tail -3
    else
        echo "missing: $missing; carry .gpu_wheels (see the top of this script). Stages that need them will fail."
    fi
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2

stage "1. train-step throughput: ViT-B/16 MAE and SimMIM, bf16, eager and compiled, against transformers"
timeout 330 "$PY" benchmarks/bench_throughput.py --device cuda --sizes base --methods mae simmim \
    --variants bf16 bf16+compile --batch-size 128 --rounds 12 --warmup 3 --skip-loader 2>&1 | tee "$OUT/throughput.log"

stage "2. hf-mim pretrain as a 1-GPU DDP run (torchrun), ViT-B MAE, bf16, 224 px JPEGs"
"$PY" - <<'EOF'
import sys
sys.path.insert(0, "benchmarks")
from pathlib import Path
from bench_input_pipeline import write_jpegs
folder = Path("/tmp/gpu_check_jpegs")
folder.mkdir(exist_ok=True)
if not any(folder.iterdir()):
    write_jpegs(folder, 1024, texture=0.12)
print("JPEGs:", len(list(folder.iterdir())))
EOF
rm -rf /tmp/gpu_check_run
timeout 150 "$PY" -m torch.distributed.run --nproc_per_node 1 -m hf_mim pretrain --dataset /tmp/gpu_check_jpegs \
    --model-size base --image-size 224 --recipe paper --batch-size 128 --max-steps 60 --logging-steps 20 \
    --mixed-precision bf16 --num-workers 12 --output-dir /tmp/gpu_check_run 2>&1 | grep -v "it/s\]" \
    | tee "$OUT/pretrain_ddp.log" | tail -5
"$PY" - <<'EOF' | tee "$OUT/pretrain_ddp_summary.txt"
import json
s = json.load(open("/tmp/gpu_check_run/training_summary.json"))
keys = ("num_processes", "hardware", "steps", "wall_time_seconds", "images_per_second", "final_loss", "ranks_in_sync")
print({k: s.get(k) for k in keys})
EOF

stage "3. input pipeline: one core's decode + crop, draft off and on; the DataLoader with 16 workers"
timeout 90 "$PY" benchmarks/bench_input_pipeline.py --per-core --images 300 2>&1 | tee "$OUT/loader_per_core.log"
timeout 90 "$PY" benchmarks/bench_input_pipeline.py --images 1024 --batch-size 128 --num-workers 16 \
    --model-steps 0 2>&1 | tee "$OUT/loader_workers.log"

stage "done"
