"""Paired data in the Raindrop layout, held in memory as uint8 and cropped in the main process.

On a 2-core CPU a DataLoader's worker processes would steal the cores the model needs; keeping
the decoded pairs in RAM makes sampling a batch cost next to nothing. Decoding them is spread over
threads (OpenCV releases the GIL), which makes loading thousands of pairs quick on a many-core host.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..imageio import IMAGE_EXTENSIONS, read_image
from ..synth import CLEAN_DIR, MASK_DIR, RAIN_DIR
from ..visualize import to_uint8

#: The paper's rule for pairs without a mask: rain where the difference exceeds 30 of 255.
MASK_THRESHOLD = 30

_NUMBERED = re.compile(r"^(\d+)_(rain|clean|mask)$")


def _numbered(folder: Path, kind: str) -> dict[int, Path]:
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            m = _NUMBERED.match(path.stem)
            if m and m.group(2) == kind and path.suffix.lower() in IMAGE_EXTENSIONS:
                found[int(m.group(1))] = path
    return found


@dataclass(frozen=True)
class Pair:
    number: int
    rainy: Path
    clean: Path
    mask: Path | None


def find_pairs(root: Path) -> list[Pair]:
    """Pairs ``data/<i>_rain.*`` with ``gt/<i>_clean.*`` (and ``mask/<i>_mask.*`` if present)."""
    root = Path(root)
    rainy, clean = _numbered(root / RAIN_DIR, "rain"), _numbered(root / CLEAN_DIR, "clean")
    masks = _numbered(root / MASK_DIR, "mask")
    numbers = sorted(set(rainy) & set(clean))
    if not numbers:
        raise ValueError(f"{root}: no pairs found (expected {RAIN_DIR}/<i>_rain.png and {CLEAN_DIR}/<i>_clean.png)")
    return [Pair(n, rainy[n], clean[n], masks.get(n)) for n in numbers]


def mask_from_difference(rainy: np.ndarray, clean: np.ndarray, threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """The paper's mask: 255 where any channel differs by more than ``threshold``."""
    diff = np.abs(rainy.astype(np.int16) - clean.astype(np.int16)).max(axis=2)
    return (diff > threshold).astype(np.uint8) * 255


def _read_rgb(path: Path) -> np.ndarray:
    """Upright 8-bit RGB from any format derain reads (HEIC frames from a phone too)."""
    return np.ascontiguousarray(to_uint8(read_image(path, max_pixels=None).rgb))


def read_mask(path: Path) -> np.ndarray:
    """A drop mask as uint8 H×W (0/255 as ``derain synth`` writes it)."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"cannot read {path}")
    return mask


class PairedImages:
    """All pairs of a folder decoded into memory: rainy and clean RGB uint8, mask uint8 0/255."""

    def __init__(self, root: Path, limit: int | None = None) -> None:
        self.pairs = find_pairs(root)[:limit]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            decoded = list(pool.map(_decode_pair, self.pairs))
        self.rainy = [rainy for rainy, _, _ in decoded]
        self.clean = [clean for _, clean, _ in decoded]
        self.masks = [mask for _, _, mask in decoded]
        self.smallest_side = min(min(mask.shape) for mask in self.masks)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, rng: np.random.Generator, size: int, patch: int, identity: float = 0.0) -> dict[str, torch.Tensor]:
        """Random ``patch``² crops with horizontal flips: rainy, clean (N×3×P×P), mask (N×1×P×P) in [0, 1],
        and which of them are drop-free (``drop_free``, N booleans).

        A share ``identity`` of the crops are drop-free pairs: the clean crop as input and target,
        with an empty mask, to teach that a photo without drops must come out unchanged. A patch
        larger than the smallest pair is cut to its side, so that pairs of any sizes stack.
        """
        patch = min(patch, self.smallest_side)
        rainy, clean, masks, drop_free = [], [], [], []
        for _ in range(size):
            i = int(rng.integers(len(self)))
            sl = _random_crop(rng, self.masks[i].shape, patch)
            free = identity > 0 and rng.random() < identity
            drop_free.append(free)
            rainy.append(self.clean[i][sl] if free else self.rainy[i][sl])
            clean.append(self.clean[i][sl])
            masks.append(np.zeros_like(self.masks[i][sl]) if free else self.masks[i][sl])
        return {
            "rainy": _to_tensor(np.stack(rainy)),
            "clean": _to_tensor(np.stack(clean)),
            "mask": _to_tensor(np.stack(masks)[..., None]),
            "drop_free": torch.tensor(drop_free),
        }


class UnpairedImages:
    """Real rainy photos without ground truth (any file names, sub-folders included), decoded into
    memory as RGB uint8; the adversarial loss is all they take part in."""

    def __init__(self, root: Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{root}: no such folder of unpaired photos")
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise ValueError(f"{root}: no photos found for --unpaired")
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            self.images = list(pool.map(_read_rgb, paths))

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, rng: np.random.Generator, size: int, patch: int) -> torch.Tensor:
        """Random ``patch``² crops with horizontal flips (N×3×P×P in [0, 1]); photos smaller than
        a patch are enlarged to cover it."""
        crops = []
        for _ in range(size):
            image = self.images[int(rng.integers(len(self)))]
            short = min(image.shape[:2])
            if short < patch:
                image = cv2.resize(image, None, fx=patch / short, fy=patch / short, interpolation=cv2.INTER_CUBIC)
            crops.append(image[_random_crop(rng, image.shape[:2], patch)])
        return _to_tensor(np.stack(crops))


def _random_crop(rng: np.random.Generator, shape: tuple[int, ...], patch: int) -> tuple[slice, slice]:
    """A random square crop (side a multiple of 4, at most ``patch``), mirrored half the time."""
    h, w = shape[:2]
    p = min(patch, h, w) // 4 * 4
    y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
    if rng.random() < 0.5:  # mirrored: the columns from x + p − 1 down to x
        return slice(y, y + p), slice(x + p - 1, x - 1 if x else None, -1)
    return slice(y, y + p), slice(x, x + p)


def _decode_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rainy, clean = _read_rgb(pair.rainy), _read_rgb(pair.clean)
    if rainy.shape != clean.shape:
        raise ValueError(f"pair {pair.number}: rainy {rainy.shape} and clean {clean.shape} differ in size")
    mask = read_mask(pair.mask) if pair.mask is not None else mask_from_difference(rainy, clean)
    return rainy, clean, mask


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
