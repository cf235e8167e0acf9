#!/usr/bin/env bash
# The GPU figures of the README's Performance section, in one go (a few minutes on an H100).
# Usage: scripts/gpu_bench.sh [OUTDIR]   (needs the [export] extra for the onnxruntime-gpu row)
set -euo pipefail
out=${1:-gpu_bench}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
bench() { name=$1; shift; derain bench --device cuda --json "$@" | tee "$out/$name.json" | python -c \
  "import json,sys; r=json.load(sys.stdin); print('$name', [(x['name'], round(x['seconds'],4), round(x['mp_per_second'],2)) for x in r['rows']], 'peak %.0f%%' % (100*r['peak_fraction']))"; }
bench 720x480 --size 720x480 --repeat 5
bench 1080p --size 1920x1080 --repeat 5
bench 1080p_steps4 --size 1920x1080 --repeat 5 --steps 4 --no-reference
bench 24mp --size 6000x4000 --repeat 2 --no-reference
