#!/usr/bin/env bash
# The README's "Many machines" overhead figure: derain batch of 24 photos of 720×480 on this
# machine, local engine vs --engine ray (a local Ray started and stopped by each run, so its
# startup is included), run alternately ROUNDS times each; prints every wall time, the mean
# ratio and the machine's load. Extra arguments go to both engines (e.g. --weights, --steps).
# Usage: scripts/ray_overhead.sh [WORKDIR] [ROUNDS] [derain batch options …]   (needs derain[ray])
set -euo pipefail
work=${1:-ray_overhead}
rounds=${2:-2}
shift $(($# < 2 ? $# : 2))
mkdir -p "$work"
python - "$work/photos" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])
root.mkdir(exist_ok=True)
rng = np.random.default_rng(0)
y, x = np.mgrid[0:480, 0:720]
for i in range(24):  # smooth colour fields with noise: the model's cost does not depend on content
    base = np.stack([(x * (i + 1) // 7 + y // 3) % 256, (y * 2 + i * 10) % 256, (x // 2 + 40 * i) % 256], axis=2)
    noisy = base + rng.normal(0, 12, base.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(root / f"{i:02d}.jpg", quality=92)
EOF
echo "load before: $(uptime)"
run() {  # ENGINE ROUND: wall seconds of one batch into a fresh folder
    out="$work/out_$1_$2"
    rm -rf "$out"
    start=$(date +%s.%N)
    derain batch "$work/photos" -o "$out" --engine "$1" "${@:3}" >"$work/log_$1_$2.txt" 2>&1 \
        || { echo "derain batch --engine $1 failed, see $work/log_$1_$2.txt" >&2; exit 1; }
    echo "$(date +%s.%N) - $start" | bc
}
local_sum=0 ray_sum=0
for round in $(seq "$rounds"); do
    local_s=$(run local "$round" "$@")
    ray_s=$(run ray "$round" "$@")
    diff -r "$work/out_local_$round" "$work/out_ray_$round" >/dev/null \
        || { echo "round $round: the engines' outputs differ" >&2; exit 1; }
    printf 'round %d: local %.1f s, ray %.1f s, ratio %.2f\n' "$round" "$local_s" "$ray_s" \
        "$(echo "$ray_s / $local_s" | bc -l)"
    local_sum=$(echo "$local_sum + $local_s" | bc)
    ray_sum=$(echo "$ray_sum + $ray_s" | bc)
done
printf 'mean of %d rounds: local %.1f s, ray %.1f s, ratio %.2f (outputs identical)\n' "$rounds" \
    "$(echo "$local_sum / $rounds" | bc -l)" "$(echo "$ray_sum / $rounds" | bc -l)" \
    "$(echo "$ray_sum / $local_sum" | bc -l)"
echo "load after: $(uptime)"
