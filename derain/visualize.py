"""Pictures of what the model sees: attention maps as 8-bit images and heat-map overlays."""

from __future__ import annotations

import cv2
import numpy as np

#: How strongly a fully attended pixel is tinted by the heat map.
OVERLAY_STRENGTH = 0.7


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit view of a uint8 or uint16 image (16-bit values are rounded, not truncated)."""
    if image.dtype == np.uint8:
        return image
    return np.rint(image.astype(np.float32) / 257.0).astype(np.uint8)


def attention_to_gray(attention: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as an 8-bit grayscale image (255 = raindrop)."""
    return np.rint(np.clip(attention, 0.0, 1.0) * 255.0).astype(np.uint8)


def attention_overlay(rgb: np.ndarray, attention: np.ndarray, strength: float = OVERLAY_STRENGTH) -> np.ndarray:
    """Heat map of ``attention`` blended over the photo, only where the model looked.

    Unattended areas keep the photo as is, so drops stand out instead of a blue wash.
    """
    photo = to_uint8(rgb).astype(np.float32)
    heat = cv2.applyColorMap(attention_to_gray(attention), cv2.COLORMAP_JET)[..., ::-1].astype(np.float32)
    alpha = (strength * np.clip(attention, 0.0, 1.0))[..., None]
    return np.rint(photo * (1.0 - alpha) + heat * alpha).astype(np.uint8)
