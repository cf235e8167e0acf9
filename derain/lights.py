"""Light sources in a night shot: the places the attention gate keeps as they are.

At night the network takes lamps, headlights, floodlights and lit windows (clipped patches with
a glow) for the bright bokeh of drops and paints the dark scene around them over them: on night
photos it erased street lamps and stadium floodlights and dimmed lit windows. A drop's bokeh
spreads a lamp's light over the whole disc and seldom clips, so in a night shot what is clipped in
every channel is kept, with a rim for its glow. By day, small clipped specks are mostly the
highlights of drops over a bright scene (keeping them cost 0.15 dB on rendered drops), so day
shots are left to the gate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Mean brightness (0–1) at and below which a shot is night (lamps kept in full), and above
#: which it is day (nothing kept); in between, lamps are kept in part. Night exposures leave most
#: of the frame dark: our night photos have 0.27–0.31, day ones 0.34 and up.
NIGHT_LEVELS = (0.30, 0.36)
#: Every channel at least this (of full scale): a clipped pixel.
CLIP_LEVEL = 0.96
#: Clipped specks narrower than this (px, odd) are the highlights on drops, not lamps.
MIN_LIGHT = 3
#: Pixels around a lamp kept with it: its glow, and a soft edge to the gated output.
LIGHT_RIM = 8


def light_sources(image: torch.Tensor) -> torch.Tensor:
    """Where ``image`` (…×3×H×W in [0, 1], any channel order) shows a light source: …×H×W
    float32 in [0, 1], 1 over each lamp and its rim in a night shot, falling to 0 over the next
    few pixels, and 0 everywhere in a day shot."""
    height, width = image.shape[-2:]
    images = image.reshape(-1, 3, height, width)
    night = (NIGHT_LEVELS[1] - images.mean((1, 2, 3), keepdim=True)) / (NIGHT_LEVELS[1] - NIGHT_LEVELS[0])
    night = night.clamp(0.0, 1.0)  # per image: 1 at night, 0 by day
    clipped = ((images.amin(1, keepdim=True) >= CLIP_LEVEL) & (night > 0)).float()
    if not clipped.any():  # daylight, or no lamp: nothing to search
        return torch.zeros(image.shape[:-3] + (height, width), device=image.device)
    lamps = _open(clipped, MIN_LIGHT)
    kept = _box_mean(_dilate(lamps, 2 * LIGHT_RIM + 1), 2 * (LIGHT_RIM // 2) + 1) * night
    return kept.reshape(*image.shape[:-3], height, width)


def _dilate(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Maximum over a ``size``² square (odd), as two 1-D passes: O(size) per pixel, not O(size²)."""
    mask = F.max_pool2d(mask, (size, 1), stride=1, padding=(size // 2, 0))
    return F.max_pool2d(mask, (1, size), stride=1, padding=(0, size // 2))


def _open(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Morphological opening: what remains of ``mask`` where a ``size``² square fits inside it."""
    return _dilate(-_dilate(-mask, size), size)


def _box_mean(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over a ``size``² square (odd), counting only pixels inside the image."""
    mask = F.avg_pool2d(mask, (size, 1), stride=1, padding=(size // 2, 0), count_include_pad=False)
    return F.avg_pool2d(mask, (1, size), stride=1, padding=(0, size // 2), count_include_pad=False)
