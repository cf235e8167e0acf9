#!/usr/bin/env bash
# `derain batch --engine ray` on a lent GPU against the local batch on the same photos (issue 16's
# per-GPU figure through Ray itself). Ray for the device's Python 3.12 is carried as wheels; pandas
# and pyarrow are already there (pandas 3.0.6 and pyarrow 25.0.1 served on 2026-11-28), so one call
# does it. `pack` also writes pyarrow and pandas as a second part, for a device image without them
# (each part is carried by its own call onto the warm machine, where it stays while it is warm):
#   here, once:  scripts/gpu_ray.sh pack                  # .rayw/a (Ray without its Java jars,
#                                                          # small deps), .rayw/b (pyarrow, pandas)
#                and a few photos in .rayw/photos (the device's copy of gpu_data may not be there)
#   there (run tool), carry [".rayw/a", ".rayw/photos"], as on 2026-11-28 (README, "Many machines"):
#     scripts/gpu_ray.sh unpack .rayw/a && for n in 240 960; do
#       COUNT=$n ROUNDS=1 WORK=/tmp/rb$n scripts/gpu_ray.sh bench "$OUT/r$n" .rayw/photos; done
#   only where pyarrow or pandas is missing there, first: carry [".rayw/b"]: scripts/gpu_ray.sh unpack .rayw/b
# `bench` crops COUNT (default 240) 720x480 JPEGs from the photos in DIR, cleans them with the local
# engine and with `--engine ray` (a local Ray on the device: one GPU, one actor), alternately,
# checks that the outputs are byte-identical, and writes the timings to OUT/ray_gpu.txt; ROUNDS
# (default 2) times both engines that many times. Two calls of different COUNTs give the rate once
# started: (COUNT₂ − COUNT₁) / (t₂ − t₁).
# DEVICE=cpu COUNT=8 DERAIN="derain" scripts/gpu_ray.sh bench OUT DIR smoke-tests it on a CPU.
set -euo pipefail
site=/tmp/site-ray
py_wheels=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64)

pack() {  # here: the two parts, each well under what a call carries beside the repository
  local tmp
  tmp=$(mktemp -d)
  mkdir -p .rayw/a .rayw/b
  python3 -m pip download -q "${py_wheels[@]}" -d "$tmp" ray==2.58.0 pyarrow==25.0.1 pandas==2.3.3 \
    msgpack protobuf jsonschema attrs referencing rpds-py jsonschema-specifications filelock pyyaml fsspec \
    python-dateutil pytz tzdata six
  unzip -q "$tmp"/ray-*.whl -x 'ray/jars/*' -d "$tmp/ray"  # Java workers: not used by Ray Data
  unzip -q "$tmp"/pyarrow-*.whl -d "$tmp/pyarrow"
  tar cf - -C "$tmp/ray" . | xz -T0 -6 > .rayw/a/ray.tar.xz
  tar cf - -C "$tmp/pyarrow" . | xz -T0 -6 > .rayw/b/pyarrow.tar.xz
  mv "$tmp"/pandas-*.whl .rayw/b/
  rm "$tmp"/ray-*.whl "$tmp"/pyarrow-*.whl
  mv "$tmp"/*.whl .rayw/a/
  rm -rf "$tmp"
  du -sh .rayw/a .rayw/b
}

unpack() {  # there: PART's tarballs and wheels into $site
  local part=$1
  mkdir -p "$site"
  for t in "$part"/*.tar.xz; do tar xJf "$t" -C "$site"; done
  if compgen -G "$part/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$part"/*.whl
  fi
  echo "unpacked $part into $site"
}

bench() {  # there: OUT DIR
  local out=$1 photos=$2 work=${WORK:-/tmp/raybench} count=${COUNT:-240} device=${DEVICE:-cuda} rounds=${ROUNDS:-2}
  read -r -a derain <<< "${DERAIN:-python3 -m derain}"
  export PYTHONPATH=$site:/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  mkdir -p "$out"
  rm -rf "$work" && mkdir -p "$work/in"
  python3 - "$photos" "$work/in" "$count" << 'EOF'
import sys
from pathlib import Path

import cv2
import numpy as np

photos = sorted(p for p in Path(sys.argv[1]).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
rng = np.random.default_rng(0)
for i in range(int(sys.argv[3])):
    image = cv2.imread(str(photos[i % len(photos)]))
    scale = max(720 / image.shape[1], 480 / image.shape[0])
    image = cv2.resize(image, (max(720, round(image.shape[1] * scale)), max(480, round(image.shape[0] * scale))))
    y, x = rng.integers(0, image.shape[0] - 479), rng.integers(0, image.shape[1] - 719)
    cv2.imwrite(f"{sys.argv[2]}/{i:04d}.jpg", image[y : y + 480, x : x + 720], [cv2.IMWRITE_JPEG_QUALITY, 92])
EOF
  python3 -c "import ray, ray.data, torch; print('ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" |
    tee "$out/ray_gpu.txt"
  for round in $(seq "$rounds"); do
    for engine in local ray; do
      rm -rf "$work/$engine"
      local extra=() start end
      if [ "$engine" = ray ]; then extra=(--engine ray); fi
      start=$(date +%s.%N)
      "${derain[@]}" batch "$work/in" -o "$work/$engine" --device "$device" "${extra[@]}" > "$work/$engine.log" 2>&1 ||
        { tail -5 "$work/$engine.log" | tee -a "$out/ray_gpu.txt"; }
      end=$(date +%s.%N)
      awk -v s="$start" -v e="$end" -v n="$count" -v what="round $round $engine" 'BEGIN {
        printf "%s: %d photos of 720x480 in %.1f s, %.1f photos/s (start-up included)\n", what, n, e - s, n / (e - s) }' |
        tee -a "$out/ray_gpu.txt"
    done
    if diff -rq "$work/local" "$work/ray" > /dev/null; then
      echo "round $round: outputs byte-identical" | tee -a "$out/ray_gpu.txt"
    else
      echo "round $round: outputs DIFFER" | tee -a "$out/ray_gpu.txt"
    fi
  done
}

"$@"
