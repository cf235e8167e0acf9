#!/usr/bin/env bash
# A lent GPU's whole session in one device call of about 9 minutes, with a variant in a second:
# renders on 10 of its cores while scripts/gpu_bench.sh has the GPU and the other 6, then one
# training run (scripts/gpu_train.sh fit). The renders stay in runs/gpu (ignored, kept on the
# machine while it is warm), so a second call with STAGE=fit trains a variant on them.
#
# Here, once: scripts/gpu_train.sh pack ../shared/data gpu_data, and PyAV's wheel contents as
# .whl/av.tar.xz (the device has no network). There (run tool, carry ["gpu_data", ".whl"]):
#   scripts/gpu_session.sh "$OUT"                                    # timeout_s 600
#   STAGE=fit NAME=paired UNPAIRED=0 FIT_STEPS=500 scripts/gpu_session.sh "$OUT"   # carry nothing:
#   what the first call brought and rendered stays there while the machine is warm
# Score what comes back here with the ship rule (weights/README.md) before anything ships.
set -u
out=$1
export PYTHONUNBUFFERED=1 WORK=$PWD/runs/gpu
mkdir -p /tmp/site /tmp/bin "$out"
[ -d /tmp/site/av ] || tar xJf .whl/av.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/bin:$PATH
printf '#!/bin/sh\nexec python3 -m derain "$@"\n' > /tmp/bin/derain && chmod +x /tmp/bin/derain
python3 -c "import av, torch; print('av', av.__version__, 'torch', torch.__version__)"
if [ "${STAGE:-all}" = all ]; then
  (CORES=${CORES:-10} RENDERS=${RENDERS:-1600} scripts/gpu_train.sh render gpu_data > "$out/render.log" 2>&1) &
  timeout 230 scripts/gpu_bench.sh "$out/bench" > "$out/bench.log" 2>&1
  echo "bench rc $? at $SECONDS s"
  wait
  echo "$(ls "$WORK/train/data" | wc -l) renders at $SECONDS s"
fi
scripts/gpu_train.sh fit gpu_data "$out" "${FIT_SECONDS:-255}" "${FIT_STEPS:-700}" 2>&1 |
  grep -E "step (1|[0-9]*00)/|val|✓|rror"
echo "done at $SECONDS s"
ls -la "$out"
