#!/usr/bin/env bash
# A lent GPU's whole session in one device call of about 9.5 minutes, with a variant in a second:
# renders on 10 of its cores while scripts/gpu_bench.sh has the GPU and the other 6, then one
# training run (scripts/gpu_train.sh fit), scored on the ship rule's three sets. The renders stay
# in runs/gpu (ignored, kept on the machine while it is warm), so a second call with STAGE=fit
# trains a variant on them.
#
# Here, once: scripts/gpu_train.sh pack ../shared/data gpu_data, and PyAV's wheel contents as
# .whl/av.tar.xz, since the device has no network (`pip download --no-deps --only-binary=:all:
# --platform manylinux_2_28_x86_64 av`: an abi3 wheel; unzip it, tar av/ and av.libs/ with xz).
# With the repository they come to 62 of the 64 MiB a call carries. There (run tool, carry
# ["gpu_data", ".whl"]):
#   scripts/gpu_session.sh "$OUT"                                    # timeout_s 600
#   STAGE=fit NAME=paired UNPAIRED=0 scripts/gpu_session.sh "$OUT"   # carry nothing:
#   what the first call brought and rendered stays there while the machine is warm
# Score what comes back here with the ship rule (weights/README.md) before anything ships.
set -u
export PYTHONUNBUFFERED=1 WORK=$PWD/runs/gpu
name=${NAME:-run} out=$1 stage=$WORK/report-$name  # OUT gets only what comes back (below)
rm -rf "$stage"
mkdir -p /tmp/site /tmp/bin "$out" "$stage"
[ -d /tmp/site/av ] || tar xJf .whl/av.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/bin:$PATH
printf '#!/bin/sh\nexec python3 -m derain "$@"\n' > /tmp/bin/derain && chmod +x /tmp/bin/derain
python3 -c "import av, torch; print('av', av.__version__, 'torch', torch.__version__)"
if [ "${STAGE:-all}" = all ]; then
  (CORES=${CORES:-10} RENDERS=${RENDERS:-1600} scripts/gpu_train.sh render gpu_data &&
    scripts/gpu_train.sh rule_sets gpu_data) > "$stage/render.log" 2>&1 &
  timeout 230 scripts/gpu_bench.sh "$stage/bench" > "$stage/bench.log" 2>&1
  echo "bench rc $? at $SECONDS s"
  wait
  echo "$(ls "$WORK/train/data" | wc -l) renders at $SECONDS s"
fi
scripts/gpu_train.sh fit gpu_data "$stage" "${FIT_SECONDS:-240}" "${FIT_STEPS:-600}" 2>&1 |
  grep -E "^step (1|[0-9]*00)/|^  val|✓|rror"
cat "$stage/$name.scores.txt"
# $OUT brings back at most 8 files of 16 MiB: the run's weights (its means with derain-v13 are
# remade here with average_weights), its score table, and the logs and JSON reports in one tarball
cp "$stage/$name.safetensors" "$stage/$name.scores.txt" "$out/"
tar czf "$out/$name.logs.tgz" -C "$stage" --exclude='*.safetensors' --exclude='*.mp4' .
echo "done at $SECONDS s"
ls -la "$out"
