"""Score a model (or finished predictions) on a Raindrop-layout folder with the paper's protocol."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import metrics
from .engine import Derainer
from .imageio import is_image_path, read_image
from .train.data import find_pairs, read_mask
from .visualize import to_uint8

_LEADING_NUMBER = re.compile(r"^(\d+)(?:_.*)?$")


@dataclass
class ImageScore:
    name: str
    psnr: float
    ssim: float
    input_psnr: float
    input_ssim: float
    attention_overlap: tuple[int, int] | None = field(default=None, repr=False)
    """(intersection, union) in pixels of the final attention map (≥ 0.5) and the drop mask,
    when the model ran and the pair has one (``mask/<i>_mask.*``)."""

    @property
    def attention_iou(self) -> float | None:
        return None if self.attention_overlap is None else metrics.pooled_iou([self.attention_overlap])

    def to_dict(self) -> dict:
        scores = {k: v for k, v in asdict(self).items() if k != "attention_overlap"}
        return scores | {"attention_iou": self.attention_iou}


@dataclass
class EvalReport:
    images: list[ImageScore] = field(default_factory=list)

    @property
    def attention_iou(self) -> float | None:
        """IoU over every masked image's pixels (drop-free images count their false alarms)."""
        overlaps = [s.attention_overlap for s in self.images if s.attention_overlap is not None]
        return metrics.pooled_iou(overlaps) if overlaps else None

    @property
    def scored(self) -> list[ImageScore]:
        """Images the means are taken over: a pair whose rainy image equals its clean one has no
        input PSNR (infinite) and nothing to derain, so it is listed but not averaged."""
        return [s for s in self.images if np.isfinite(s.input_psnr)]

    @property
    def drop_free(self) -> list[ImageScore]:
        """Pairs whose rainy image equals the clean one: the output should be the input."""
        return [s for s in self.images if not np.isfinite(s.input_psnr)]

    @property
    def drop_free_psnr(self) -> tuple[float, float] | None:
        """(mean, worst) PSNR of the output against the input over the drop-free pairs, if any."""
        values = [s.psnr for s in self.drop_free]
        return (float(np.mean(values)), float(np.min(values))) if values else None

    def _mean(self, key: str) -> float:
        values = [getattr(s, key) for s in self.scored]
        return float(np.mean(values)) if values else float("nan")

    @property
    def mean_psnr(self) -> float:
        return self._mean("psnr")

    @property
    def mean_ssim(self) -> float:
        return self._mean("ssim")

    @property
    def input_mean_psnr(self) -> float:
        return self._mean("input_psnr")

    @property
    def input_mean_ssim(self) -> float:
        return self._mean("input_ssim")

    def to_dict(self) -> dict:
        return {
            "mean_psnr": self.mean_psnr,
            "mean_ssim": self.mean_ssim,
            "input_mean_psnr": self.input_mean_psnr,
            "input_mean_ssim": self.input_mean_ssim,
            "attention_iou": self.attention_iou,
            "averaged_images": len(self.scored),
            "drop_free_psnr": self.drop_free_psnr and dict(zip(("mean", "min"), self.drop_free_psnr)),
            "images": [s.to_dict() for s in self.images],
        }


def report_json(report: object) -> str:
    """``report`` as strict JSON: a non-finite figure (the PSNR of identical images is +inf) becomes
    null, as JSON has no Infinity or NaN and strict parsers refuse them."""
    return json.dumps(_finite(report), indent=2, allow_nan=False)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _bgr8(path: Path) -> np.ndarray:
    return np.ascontiguousarray(to_uint8(read_image(path, max_pixels=None).rgb)[..., ::-1])


def _score(pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path) -> tuple[float, float]:
    """:func:`metrics.score`, naming the two files when their sizes differ."""
    try:
        return metrics.score(pred, gt)
    except ValueError as exc:
        raise ValueError(f"{pred_path} vs {gt_path}: {exc}") from None


def _mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A 0/255 drop mask, checked against its image's size before the model runs."""
    mask = read_mask(path)
    if mask.shape != shape[:2]:
        raise ValueError(f"{path}: mask is {mask.shape[1]}×{mask.shape[0]}, the image is {shape[1]}×{shape[0]}")
    return mask


def predictions_by_number(folder: Path) -> dict[int, Path]:
    """Derained images named ``<i>.*`` or ``<i>_anything.*``, keyed by their number."""
    found = {}
    for path in sorted(Path(folder).iterdir()):
        m = _LEADING_NUMBER.match(path.stem)
        if m and path.is_file() and is_image_path(path):
            found.setdefault(int(m.group(1)), path)
    return found


def evaluate(
    root: Path,
    derainer: Derainer | None = None,
    pred_dir: Path | None = None,
    on_image: Callable[[ImageScore], None] | None = None,
) -> EvalReport:
    """Score every pair under ``root``: the model's output, or ``pred_dir``'s images if given.

    When the model runs and a pair has a drop mask, its attention map is scored too (IoU).
    """
    if (derainer is None) == (pred_dir is None):
        raise ValueError("give either a model or a folder of predictions")
    pairs = find_pairs(root)
    predictions = predictions_by_number(pred_dir) if pred_dir is not None else {}
    if pred_dir is not None:
        missing = [p.number for p in pairs if p.number not in predictions]
        if missing:
            raise ValueError(f"{pred_dir}: no prediction for pair(s) {', '.join(map(str, missing[:5]))}")
    report = EvalReport()
    for pair in pairs:
        rainy, clean = _bgr8(pair.rainy), _bgr8(pair.clean)
        overlap, pred_path = None, predictions.get(pair.number, pair.rainy)  # the model's output has the input's size
        if pred_dir is not None:
            pred = _bgr8(pred_path)
        else:
            mask = None if pair.mask is None else _mask(pair.mask, rainy.shape)
            out = derainer.run(np.ascontiguousarray(rainy[..., ::-1]), with_attention=mask is not None)
            pred = np.ascontiguousarray(out.image[..., ::-1])
            if mask is not None:
                overlap = metrics.attention_overlap(out.attention[-1], mask)
        p, s = _score(pred, clean, pred_path, pair.clean)
        ip, is_ = _score(rainy, clean, pair.rainy, pair.clean)
        score = ImageScore(pair.rainy.name, p, s, ip, is_, overlap)
        report.images.append(score)
        if on_image:
            on_image(score)
    return report
