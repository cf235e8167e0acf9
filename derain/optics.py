"""The optics of a water drop stuck to a window in front of a camera.

Pure functions on arrays, used by :mod:`derain.synth`. Conventions: image coordinates in pixels
(x right, y down), camera looking along +z through a glass plane perpendicular to its axis, the
drops on the far side of the glass, their height field ``h`` (in pixels, the same unit as x and y)
bulging towards the scene. A camera ray crosses the flat glass–water interface (the thin glass
slab only shifts it), then leaves the water through the curved drop surface, refracting by Snell's
law or, beyond the critical angle, reflecting totally: that is the dark rim of real drops.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

N_WATER = 1.333
"""Refractive index of water (air = 1)."""


def focal_px(width: int, fov_deg: float) -> float:
    """Focal length in pixels of a pinhole camera ``width`` pixels wide with horizontal field ``fov_deg``."""
    return 0.5 * width / math.tan(math.radians(fov_deg) / 2)


def cap_height(edge_distance: np.ndarray, contact_radius: np.ndarray, contact_angle: np.ndarray) -> np.ndarray:
    """Height of a spherical cap at ``edge_distance`` from its contact line.

    A cap with contact radius ``a`` and contact angle θ is part of a sphere of radius a / sin θ;
    beyond ``a`` from the edge (a large, flattened drop or a merged puddle) the top stays flat.
    All arguments broadcast; lengths in pixels, angles in radians.
    """
    a = np.maximum(contact_radius, 1e-3)
    sphere = a / np.maximum(np.sin(contact_angle), 1e-3)
    rho = np.clip(a - edge_distance, 0.0, None)  # distance from the cap's axis
    return np.sqrt(np.maximum(sphere**2 - rho**2, 0.0)) - sphere * np.cos(contact_angle)


def camera_rays(height: int, width: int, focal: float) -> np.ndarray:
    """Unit direction of the ray through each pixel centre: H×W×3."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    rays = np.stack([xx - (width - 1) / 2, yy - (height - 1) / 2, np.full_like(xx, focal)], axis=-1)
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def refract(direction: np.ndarray, normal: np.ndarray, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """Snell's law for unit ``direction`` (…×3) leaving a medium through a surface whose unit
    ``normal`` points along the ray's side of travel; ``eta`` = n_from / n_to.

    Returns the refracted unit direction and a boolean mask of total internal reflection (where
    the direction is returned unchanged).
    """
    cos_i = np.sum(direction * normal, axis=-1, keepdims=True)
    sin2_t = eta**2 * np.clip(1.0 - cos_i**2, 0.0, None)
    tir = sin2_t[..., 0] > 1.0
    cos_t = np.sqrt(np.clip(1.0 - sin2_t, 0.0, None))
    out = eta * direction - (eta * cos_i - cos_t) * normal
    out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-9)
    return np.where(tir[..., None], direction, out), tir


def fresnel_transmittance(cos_i: np.ndarray, eta: float) -> np.ndarray:
    """Fraction of unpolarised light transmitted through an interface (n_from / n_to = ``eta``)
    at incidence cosine ``cos_i``; 0 under total internal reflection."""
    cos_i = np.clip(cos_i, 0.0, 1.0)
    sin2_t = eta**2 * (1.0 - cos_i**2)
    cos_t = np.sqrt(np.clip(1.0 - sin2_t, 0.0, None))
    rs = ((eta * cos_i - cos_t) / np.maximum(eta * cos_i + cos_t, 1e-9)) ** 2
    rp = ((eta * cos_t - cos_i) / np.maximum(eta * cos_t + cos_i, 1e-9)) ** 2
    return np.where(sin2_t >= 1.0, 0.0, 1.0 - 0.5 * (rs + rp))


def trace_drops(height_field: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Trace every pixel's camera ray through the water of ``height_field`` (H×W, pixels).

    Returns ``(map_x, map_y, transmittance, normal)``: the image position of the scene direction
    each pixel sees (for :func:`cv2.remap`; far off-frame where the ray grazes), the Fresnel
    transmittance of the water–air surface (0 under total internal reflection) and the surface's
    unit normal (H×W×3, for highlights). Where the height field is zero the ray passes straight.
    """
    h, w = height_field.shape
    gy, gx = np.gradient(height_field.astype(np.float32))
    normal = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    rays = camera_rays(h, w, focal)
    in_water, _ = refract(rays, np.array([0.0, 0.0, 1.0], np.float32), 1.0 / N_WATER)
    out, _ = refract(in_water, normal, N_WATER)
    transmittance = fresnel_transmittance(np.sum(in_water * normal, axis=-1), N_WATER)
    z = np.maximum(out[..., 2], 0.05)  # a grazing ray sees far off the frame
    map_x = ((w - 1) / 2 + focal * out[..., 0] / z).astype(np.float32)
    map_y = ((h - 1) / 2 + focal * out[..., 1] / z).astype(np.float32)
    return map_x, map_y, transmittance.astype(np.float32), normal.astype(np.float32)


def light_beyond_frame(map_x: np.ndarray, map_y: np.ndarray, light: float, fade: float) -> np.ndarray:
    """Factor on the frame's mirror image where a traced ray looks beyond the frame (whose size is
    the maps'): 1 inside it, reaching ``light`` ``fade`` pixels beyond its edge."""
    h, w = map_x.shape
    beyond = np.maximum.reduce([-map_x, map_x - (w - 1), -map_y, map_y - (h - 1)])
    return (1.0 - np.clip(beyond / fade, 0.0, 1.0) * (1.0 - light)).astype(np.float32)


def minification(map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """How many scene pixels one image pixel spans through the drop (√|det J| of the mapping)."""
    xy, xx = np.gradient(map_x)
    yy, yx = np.gradient(map_y)
    return np.sqrt(np.abs(xx * yy - xy * yx))


RIM_WIDTH = 0.15
"""Width of a bokeh rim, as a fraction of the disc's radius (at least 1.5 px)."""


def disc_kernel(diameter: float, rim: float = 0.0) -> np.ndarray:
    """A normalised disc: the defocus point-spread function (bokeh) of a circular aperture,
    anti-aliased at its edge. ``diameter`` is the circle of confusion in pixels; ``rim`` is the
    share of the light in a thin ring at the edge, the "soap-bubble" bokeh of lenses with
    spherical aberration that turns lit drops at night into bright-rimmed discs."""
    radius = max(diameter / 2, 0.5)
    size = int(math.ceil(radius)) * 2 + 1
    yy, xx = np.mgrid[:size, :size] - size // 2
    distance = np.hypot(yy, xx)
    disc = np.clip(radius + 0.5 - distance, 0.0, 1.0).astype(np.float32)
    kernel = disc / disc.sum()
    if rim > 0:
        inner = radius - max(1.5, RIM_WIDTH * radius)
        ring = disc - np.clip(inner + 0.5 - distance, 0.0, 1.0).astype(np.float32)
        kernel = (1.0 - rim) * kernel + rim * ring / ring.sum()
    return kernel


def defocus(image: np.ndarray, diameter: float, rim: float = 0.0) -> np.ndarray:
    """Blur with a disc of the given circle-of-confusion diameter (identity below ~1 px); see
    :func:`disc_kernel` for ``rim``."""
    if diameter < 1.0:
        return image
    return cv2.filter2D(image, -1, disc_kernel(diameter, rim), borderType=cv2.BORDER_REFLECT_101)


def circle_of_confusion(aperture_mm: float, focal_mm: float, glass_mm: float, sensor_mm: float, width: int) -> float:
    """Diameter in pixels of the blur disc of a point on the glass when the camera focuses far away.

    With focus at infinity, a point at distance d images to a disc of diameter A·f/(d − f) on the
    sensor (A the aperture diameter, f the focal length). A phone (f 4 mm, f/1.8) with glass 3 cm
    away gives 0.34 mm: tens of pixels of a 720-px-wide frame.
    """
    coc_mm = aperture_mm * focal_mm / max(glass_mm - focal_mm, 1e-3)
    return coc_mm / sensor_mm * width


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    return np.where(image <= 0.04045, image / 12.92, ((image + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(image, 0.0, 1.0)
    return np.where(image <= 0.0031308, image * 12.92, 1.055 * image ** (1 / 2.4) - 0.055)
