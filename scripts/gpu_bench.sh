#!/usr/bin/env bash
# The GPU figures of the README's Performance section, in one go (on an H100 with an idle host,
# `video` takes about 4 minutes and `network` about 2).
# Usage: scripts/gpu_bench.sh [OUTDIR [PART...]]   PARTs: network, video (default: both, in that order),
#        compiled (issue 17: NHWC and torch.compile against the eager NCHW path; allow about 10
#        minutes: compiling and max-autotune's search dominate), engine (`--compile` in the engine,
#        about 3.5 minutes), profile (where one photo's time goes, about a minute)
# Needs `derain` on PATH and PyAV (the [video] extra). The lent GPU machine has neither and
# cannot download: carry PyAV as an xz tarball of its wheel's contents (25 MB; the wheel is 36),
# unpack it onto PYTHONPATH, and put a `derain` script that runs `python3 -m derain "$@"` on PATH.
set -euo pipefail
out=${1:-gpu_bench}
parts=("${@:2}")
[ ${#parts[@]} -gt 0 ] || parts=(network video)
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
bench() { name=$1; shift; derain bench --device cuda --json "$@" | tee "$out/$name.json" | python -c \
  "import json,sys; r=json.load(sys.stdin); print('$name', [(x['name'], round(x['seconds'],4), round(x['mp_per_second'],2)) for x in r['rows']], 'peak %.0f%%' % (100*r['peak_fraction']))"; }
network() {  # derain bench: the model alone, photos of 0.35, 2 and 24 MP
  bench 720x480 --size 720x480 --repeat 5
  bench 1080p --size 1920x1080 --repeat 5
  bench 1080p_steps4 --size 1920x1080 --repeat 5 --steps 4 --no-reference
  bench 24mp --size 6000x4000 --repeat 2 --no-reference
}

video() {  # issue 15: derain video on 720p and 1080p clips, and the engine on batches of frames
  # A 5 s, 30 fps clip panning over the shipped example at 720p and 1080p, through `derain video`
  # fused, per-frame and per-frame with --compile (the network sees 853x480 frames at the default
  # working size; the compiled runs compile in both, so "after start-up" leaves it out). Frames/s
  # from the wall time, decode and encode included, once with the start-up (a whole run) and once
  # without (the whole run less a run of its first 0.2 s: 6 frames); and the engine alone on
  # batches of full-size frames (MP/s, as `derain video --working-size full` batches them)
  python - "$out" <<'PY'
import sys, time
from pathlib import Path
import av, cv2, numpy as np
from derain import Derainer
out = Path(sys.argv[1])
photo = cv2.imread("examples/rainy.jpg")[..., ::-1]
derainer = Derainer(device="cuda", working_size=None)
for name, (w, h) in {"720p": (1280, 720), "1080p": (1920, 1080)}.items():
    big = cv2.resize(photo, (w + 300, h + 200), interpolation=cv2.INTER_CUBIC)
    frames = [np.ascontiguousarray(big[k * 200 // 150 : k * 200 // 150 + h, 2 * k : 2 * k + w]) for k in range(150)]
    with av.open(str(out / f"clip_{name}.mp4"), "w") as f:
        s = f.add_stream("libx264", rate=30); s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for fr in frames:
            f.mux(s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")))
        f.mux(s.encode())
    n = derainer.batch_size(h, w)
    derainer.run_batch(frames[:n], all_maps=False)
    t = time.perf_counter()
    for i in range(0, 120, n):
        derainer.run_batch(frames[i : i + n], all_maps=False)  # the final map alone, as video takes it
    s = time.perf_counter() - t
    print(f"engine {name}: batch {n}, {120 / s:.1f} frames/s, {120 * w * h / s / 1e6:.1f} MP/s", flush=True)
PY
  for name in 720p 1080p; do
    for mode in fused per-frame per-frame-compiled; do
      local flags=(--device cuda) t=()
      [ $mode = fused ] || flags+=(--per-frame)
      [ $mode != per-frame-compiled ] || flags+=(--compile)
      for end in 0.2 5; do
        local start=$(date +%s.%N)
        derain video "$out/clip_$name.mp4" -o "$out/out_${name}_$mode.mp4" --end "$end" "${flags[@]}" > /dev/null
        t+=("$(python -c "print($(date +%s.%N) - $start)")")
      done
      python -c "a, b = ${t[0]}, ${t[1]}; print('derain video $name $mode: %.1f frames/s whole run (150 frames, %.1f s), %.1f frames/s after start-up (6 frames: %.1f s)' % (150 / b, b, 144 / (b - a), a))"
    done
  done | tee "$out/video.txt"
}

compiled() {  # issue 17: scripts/gpu_compile.py at 720x480 (8 frames a batch) and 1080p (2)
  local run=(env PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" python scripts/gpu_compile.py)
  local quick="eager NCHW (today),eager NHWC,compile NHWC,compile NHWC + CUDA graphs"
  {
    "${run[@]}" --size 720x480 --batch 8 --only "$quick" --json "$out/compile_720x480.json"
    "${run[@]}" --size 1920x1080 --batch 2 --only "$quick" --json "$out/compile_1080p.json"
    timeout 300 "${run[@]}" --size 720x480 --batch 8 --only "eager NCHW (today),compile NHWC max-autotune" \
      --json "$out/autotune_720x480.json" || echo "max-autotune: not done in 300 s"
  } 2>&1 | tee "$out/compile.txt"
}

engine() {  # issue 17: the engine with and without --compile (NHWC on CUDA either way), about 3 minutes:
  # `derain bench` (one photo at a time, as the README's rows) at 720x480 and 1080p, then frames in
  # batches as `derain video --working-size full` runs them (copies to and from the GPU included),
  # then the shipped example through the default engine (dense pass, its regions in a dynamic graph)
  python - "$out" <<'PY'
import json, sys, time
from dataclasses import asdict
from pathlib import Path
import cv2, numpy as np
from derain import Derainer
from derain.benchmark import benchmark
out, results = Path(sys.argv[1]), {}
def keep(label, **row):
    results[label] = row
    (out / "engine.json").write_text(json.dumps(results, indent=1))
    print(label, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
for w, h in ((720, 480), (1920, 1080)):
    for compiled in (False, True):
        start = time.perf_counter()
        report = benchmark(device="cuda", size=(w, h), repeat=5, reference=False, compile=compiled)
        keep(f"bench {w}x{h} compile={compiled}", **asdict(report.rows[0]), call_seconds=time.perf_counter() - start)
photo = cv2.imread("examples/rainy.jpg")[..., ::-1]
for w, h in ((720, 480), (1920, 1080)):
    big = cv2.resize(photo, (w + 64, h + 64), interpolation=cv2.INTER_CUBIC)
    frames = [np.ascontiguousarray(big[k : k + h, k : k + w]) for k in range(64)]
    outputs = {}
    for compiled in (False, True):
        derainer = Derainer(device="cuda", working_size=None, dense_pass=False, compile=compiled)
        n = derainer.batch_size(h, w)
        start = time.perf_counter()
        derainer.run_batch(frames[:n])
        first = time.perf_counter() - start
        for all_maps in (True, False):  # all 8 maps back to the host, or the final one (video's way)
            start = time.perf_counter()
            batches = [derainer.run_batch(frames[i : i + n], all_maps) for i in range(0, 64 - 64 % n, n)]
            seconds = time.perf_counter() - start
            outputs[compiled] = [r.image for b in batches for r in b]
            count = len(outputs[compiled])
            diff = int(max(np.abs(a.astype(int) - b).max() for a, b in zip(outputs[True], outputs[False]))) if compiled else 0
            keep(f"frames {w}x{h} compile={compiled} all_maps={all_maps}", batch=n, frames_per_second=count / seconds,
                 mp_per_second=count * w * h / seconds / 1e6, first_batch_seconds=first, max_diff_vs_eager=diff)
for compiled in (False, True):
    derainer = Derainer(device="cuda", compile=compiled)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        cleaned = derainer.clean(photo)
        times.append(time.perf_counter() - start)
    cv2.imwrite(str(out / f"example_compile_{compiled}.png"), cleaned[..., ::-1])
    keep(f"example compile={compiled}", seconds=times)
PY
}

profile() {  # issue 17's open question: where does one 720x480 photo's time go, eager and --compile
  # (0.023 s eager NCHW, 0.056 s compiled: the network alone runs 8 such frames in 0.049 s)? The top
  # rows of torch.profiler's table for three calls of each, after a warm-up (about a minute)
  python - "$out" <<'PY' | tee "$out/profile.txt"
import sys
from pathlib import Path
from torch.profiler import ProfilerActivity, profile
from derain import Derainer
from derain.benchmark import synthetic_photo
photo, out = synthetic_photo(720, 480), Path(sys.argv[1])
for compiled in (False, True):
    derainer = Derainer(device="cuda", working_size=None, dense_pass=False, compile=compiled)
    derainer.clean(photo)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            derainer.clean(photo)
    print(f"--- compile={compiled}: three calls", flush=True)
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15), flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    prof.export_chrome_trace(str(out / f"trace_compile_{compiled}.json"))
PY
}

for part in "${parts[@]}"; do "$part"; done
