"""Score video deraining on rendered clips: per-frame PSNR/SSIM (the paper's protocol) and flicker.

Flicker is the mean absolute difference (8-bit luma) between each output frame and the next
one warped back onto it, with the flow measured on the ground truth, so camera motion does not
count. The ground truth's own figure (interpolation, scene edges) is the floor to compare with.
One model pass per clip scores both the single-frame outputs and their temporal fusion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import metrics
from .engine import Derainer
from .frames import restore_frames
from .fusion import DEFAULT_RADIUS, FlowField, full_size, fuse, luma8, warp
from .imageio import read_image
from .synth import RAIN_DIR
from .train.data import find_pairs
from .video_synth import CLIP_FILE
from .visualize import to_uint8


def flicker(frames: Sequence[np.ndarray], flows: Sequence[np.ndarray]) -> float:
    """Mean |Y_t − Y_{t+1}(x + flow_t(x))| over consecutive frames, inside the frame; ``flows[t]`` maps t to t+1."""
    if len(frames) < 2:
        return 0.0
    total, count = 0.0, 0
    for t, flow in enumerate(flows):
        later, inside = warp(luma8(frames[t + 1]).astype(np.float32), flow)
        diff = np.abs(luma8(frames[t]).astype(np.float32) - later)[inside]
        total, count = total + float(diff.sum()), count + diff.size
    return total / max(count, 1)


def consecutive_flows(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Flow from each frame to the next."""
    flows = FlowField()
    for t, frame in enumerate(frames):
        flows.add(t, luma8(frame))
    h, w = frames[0].shape[:2]
    return [full_size(flows.flow(t, t + 1), h, w) for t in range(len(frames) - 1)]


@dataclass
class ClipScore:
    name: str
    frames: int
    psnr: float
    ssim: float
    flicker: float
    per_frame_psnr: float
    per_frame_ssim: float
    per_frame_flicker: float
    input_psnr: float
    input_flicker: float
    gt_flicker: float


@dataclass
class VideoReport:
    clips: list[ClipScore] = field(default_factory=list)

    @property
    def mean(self) -> ClipScore:
        """Every figure averaged over clips (each clip counts once); ``frames`` is the total."""
        keys = [k for k in ClipScore.__dataclass_fields__ if k not in ("name", "frames")]
        means = {k: float(np.mean([getattr(c, k) for c in self.clips])) if self.clips else float("nan") for k in keys}
        return ClipScore("mean", sum(c.frames for c in self.clips), **means)

    def to_dict(self) -> dict:
        return {"mean": asdict(self.mean), "clips": [asdict(c) for c in self.clips]}


def is_clip(folder: Path) -> bool:
    """A rendered clip has data/ and clip.json: a folder of unrelated photos (`derain synth`) is no clip."""
    return (folder / RAIN_DIR).is_dir() and (folder / CLIP_FILE).is_file()


def find_clips(root: Path) -> list[Path]:
    """``root`` itself when it is a clip, else its sub-folders that are, in natural order."""
    root = Path(root)
    if is_clip(root):
        return [root]
    clips = [p for p in root.iterdir() if is_clip(p)]
    if not clips:
        raise ValueError(
            f"{root}: holds no clips from `derain synth-video` (expected <clip>/{CLIP_FILE} and "
            f"<clip>/{RAIN_DIR}/<t>_rain.png)"
        )
    return sorted(clips, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _scores(outputs: Sequence[np.ndarray], clean: Sequence[np.ndarray]) -> tuple[float, float]:
    pairs = [
        metrics.score(np.ascontiguousarray(o[..., ::-1]), np.ascontiguousarray(c[..., ::-1]))
        for o, c in zip(outputs, clean)
    ]
    return float(np.mean([p for p, _ in pairs])), float(np.mean([s for _, s in pairs]))


def score_clip(clip: Path, derainer: Derainer, radius: int = DEFAULT_RADIUS) -> ClipScore:
    """One clip's scores, fused and single-frame, from one model pass over its frames."""
    pairs = find_pairs(clip)
    rainy = [to_uint8(read_image(p.rainy, max_pixels=None).rgb) for p in pairs]
    clean = [to_uint8(read_image(p.clean, max_pixels=None).rgb) for p in pairs]
    restored = list(restore_frames(derainer, rainy))
    single = [r.image for _, r in restored]
    fused = list(fuse(((f, r.image, r.attention[-1]) for f, r in restored), radius))
    flows = consecutive_flows(clean)
    (p, s), (pp, ps), (ip, _) = _scores(fused, clean), _scores(single, clean), _scores(rainy, clean)
    return ClipScore(
        clip.name,
        len(pairs),
        p,
        s,
        flicker(fused, flows),
        pp,
        ps,
        flicker(single, flows),
        ip,
        flicker(rainy, flows),
        flicker(clean, flows),
    )


def evaluate_clips(
    root: Path, derainer: Derainer, radius: int = DEFAULT_RADIUS, on_clip: Callable[[ClipScore], None] | None = None
) -> VideoReport:
    """Score every clip under ``root`` (see :func:`find_clips`)."""
    report = VideoReport()
    for clip in find_clips(root):
        score = score_clip(clip, derainer, radius)
        report.clips.append(score)
        if on_clip:
            on_clip(score)
    return report
