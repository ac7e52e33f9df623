#!/usr/bin/env bash
# The prepared GPU throughput run of issue 15 (item 6), one command for a lent GPU:
#   bash benchmarks/gpu_throughput.sh            # ~6 minutes on one H200 (an estimate: it has not run yet)
# Full-size SD1.4 UNet (full fine-tune) and FLUX.1-dev transformer (LoRA r 128: a full fine-tune of 11.9 B needs
# sharding, docs/scaling.md) with random weights, bf16, one GPU: rollout images/s, training samples/s and peak GPU
# memory, today's batched rollout (one pipeline call per group, rewards in memory) beside DanceGRPO's loop (one image
# per pipeline call, rewards read back from PNG files), each after a warm-up iteration.
# Writes benchmarks/results/gpu.md (GPU, driver, date, versions, then one section per model); with $OUT set (the
# device tool's output folder) a copy lands there too. Needs slas installed with a CUDA torch (the image, or
# `make .venv`) and >= 60 GB of GPU memory.
# A dry run of the same steps on the tiny models and the CPU (seconds; writes elsewhere):
#   SIZE=tiny DEVICE=cpu DTYPE=float32 RESULT=/tmp/gpu_dry.md bash benchmarks/gpu_throughput.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RESULT=${RESULT:-benchmarks/results/gpu.md}
SIZE=${SIZE:-full}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
export PYTHONUNBUFFERED=1 SLAS_MLFLOW=0

"$PY" - "$RESULT" "$DEVICE" <<'PY'
import datetime, subprocess, sys
from pathlib import Path

import diffusers, torch, transformers

from slas.bench import machine

if sys.argv[2].startswith("cuda") and not torch.cuda.is_available():
    sys.exit("gpu_throughput.sh: no CUDA device (DEVICE=cpu SIZE=tiny for a dry run on the CPU)")
where = machine()
if torch.cuda.is_available():
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    props = torch.cuda.get_device_properties(0)
    where = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), driver {driver}, CUDA {torch.version.cuda}"
Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
Path(sys.argv[1]).write_text(
    "# GPU throughput: `slas bench throughput` on full-size models with random weights\n\n"
    f"{where}; {'' if 'torch' in where else f'torch {torch.__version__}, '}diffusers {diffusers.__version__}, transformers "
    f"{transformers.__version__}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
    "Made by benchmarks/gpu_throughput.sh.\n\n"
    "Both loop structures run the same policy, sampler and reward (colour saturation); they differ only in how\n"
    "images go through the pipeline and the reward. Training rows: forward + backward over the trained steps.\n\n")
PY

common=(--size "$SIZE" --device "$DEVICE" --dtype "$DTYPE" --iterations 1 --out "$RESULT" --append)
px() { if [ "$SIZE" = full ]; then echo "--resolution=$1"; else echo "--resolution=32"; fi; }
# SD1.4 as DanceGRPO trains it: 512 px, 50 DDIM steps, CFG 5; 2 groups of 8, 4 trained steps per sample
"$PY" -m slas bench throughput --model sd --finetune full "$(px 512)" --steps 50 --groups 2 --group-size 8 \
  --batch-size 8 --timestep-fraction 0.1 "${common[@]}"
# FLUX.1-dev as configs/flux_dev_hps_clip.yaml samples it: 720 px, 16 steps; one group of 8, 3 trained steps
"$PY" -m slas bench throughput --model flux --finetune lora --lora-rank 128 "$(px 720)" --steps 16 --groups 1 \
  --group-size 8 --batch-size 2 --timestep-fraction 0.2 "${common[@]}"

if [ -n "${OUT:-}" ]; then cp "$RESULT" "$OUT/"; fi
echo "wrote $RESULT"
