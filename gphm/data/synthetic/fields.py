"""Small smooth scalar fields used to sculpt and paint the synthetic head.

All functions are pure, vectorised over numpy arrays and C¹ (or better), so that
displacements built from them keep the mesh smooth and free of creases.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "smoothstep",
    "ellipse_r2",
    "bump",
    "smooth_max",
    "smooth_min",
    "ray_ellipsoid",
]


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step: 0 at ``edge0``, 1 at ``edge1`` (either order), C¹ in between."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def ellipse_r2(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    """Squared normalised distance ``((x-cx)/rx)² + ((y-cy)/ry)²`` (1 on the ellipse)."""
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2


def bump(r2: np.ndarray) -> np.ndarray:
    """Compact C² bump of the squared radius: ``(1 - r²)³`` inside the unit disc, else 0."""
    return np.clip(1.0 - r2, 0.0, None) ** 3


def smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth maximum; equals ``max(a, b)`` where ``|a - b| >= k``."""
    h = np.clip(0.5 + 0.5 * (a - b) / k, 0.0, 1.0)
    return b + (a - b) * h + k * h * (1.0 - h)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum; equals ``min(a, b)`` where ``|a - b| >= k``."""
    return -smooth_max(-a, -b, k)


def ray_ellipsoid(
    dirs: np.ndarray,  # [V, 3] unit ray directions from the origin
    center: tuple[float, float, float],
    radii: tuple[float, float, float],
) -> np.ndarray:  # [V] distance to the surface
    """Distance from the origin along ``dirs`` to an ellipsoid that contains the origin."""
    c = np.asarray(center, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    d = dirs / r
    o = -c / r
    a = np.einsum("ij,ij->i", d, d)
    b = 2.0 * d @ o
    cc = o @ o - 1.0
    if cc >= 0:
        raise ValueError(f"ellipsoid {center}, {radii} does not contain the origin")
    return (-b + np.sqrt(b * b - 4.0 * a * cc)) / (2.0 * a)
