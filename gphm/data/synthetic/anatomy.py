"""Anatomy of the mean synthetic head: where things are, and the shapes that make them.

Everything lives in canonical head space (docs/architecture.md §4): +y up, +z out of the face,
+x the head's left (the viewer's right), head inside about ±0.9.

The head is built in two layers:

1. :func:`base_surface` — a smooth star-shaped blob (cranium ∪ lower face ∪ neck, smooth
   unions of ellipsoids and a capped cylinder) sampled along the directions of a
   geodesic sphere, so the mesh is closed and genus 0 by construction.
2. :func:`feature_displacements` — named local displacement fields (nose, eye sockets,
   eyeballs, brows, cheeks, lips, chin, ears, hair volume). The front features are
   height fields along +z over the face's (x, y), faded out where the base surface
   stops facing forward; the ears are height fields along ±x on the sides. Each field is
   scaled by an identity gain (see :mod:`~gphm.data.synthetic.params`), i.e. they act as
   the blendshapes of a small morphable model.

Feature *positions* are fixed here; identity parameters that move or resize features
(eye spacing, nose length, ...) are spatial warps applied afterwards
(:mod:`~gphm.data.synthetic.deform`), so that every feature stays on the same vertices
and the landmarks, being vertices, stay anatomically meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gphm.data.synthetic.fields import (
    bump,
    ellipse_r2,
    ray_ellipsoid,
    smooth_max,
    smooth_min,
    smoothstep,
)

__all__ = ["LAYOUT", "HeadLayout", "FEATURE_NAMES", "base_surface", "feature_displacements"]


@dataclass(frozen=True)
class HeadLayout:
    """Positions and sizes of the mean head's parts (canonical units).

    Paired features are given for the head's left side (+x) and mirrored.
    """

    cranium_center: tuple[float, float, float] = (0.0, 0.17, -0.07)
    cranium_radii: tuple[float, float, float] = (0.58, 0.69, 0.75)
    face_center: tuple[float, float, float] = (0.0, -0.18, 0.11)
    face_radii: tuple[float, float, float] = (0.45, 0.45, 0.56)
    neck_z: float = -0.12  # neck axis (vertical) at x = 0, z = neck_z
    neck_radius: float = 0.3
    neck_bottom: float = -0.86
    neck_top: float = 0.05
    neck_rounding: float = 0.2  # smooth-min width of the neck's bottom edge
    blend: float = 0.09  # smooth-union width of the three primitives
    lower_face_forward: float = 0.08  # shear of the chin forwards (see _lower_face_forward)

    eye: tuple[float, float] = (0.205, 0.1)  # eye centre (x, y)
    eye_half_size: tuple[float, float] = (0.082, 0.036)  # visible aperture half-axes
    brow_y: float = 0.215  # eyebrow centre line at the eye's x
    nose_bridge_y: float = 0.12
    nose_tip_y: float = -0.1
    nose_base_y: float = -0.155  # subnasale
    mouth_y: float = -0.3  # lip seam at the centre
    mouth_half_width: float = 0.14
    chin: tuple[float, float] = (0.0, -0.5)
    cheek: tuple[float, float] = (0.27, -0.1)
    ear: tuple[float, float] = (0.03, -0.1)  # ear centre (y, z) on the side
    ear_half_size: tuple[float, float] = (0.19, 0.1)  # (height, width)
    hairline_front: float = 0.5  # mean hairline height at the forehead's centre


LAYOUT = HeadLayout()

#: Names of the feature displacement fields, in the order of :func:`feature_displacements`.
FEATURE_NAMES = (
    "nose",
    "eye_sockets",
    "eyeballs",
    "brow_ridge",
    "cheekbones",
    "cheeks",
    "lips",
    "chin",
    "ears",
)


def base_surface(
    dirs: np.ndarray,  # [V, 3] unit directions (vertices of a sphere)
    layout: HeadLayout = LAYOUT,
) -> np.ndarray:  # [V, 3]
    """Points of the smooth head blob along ``dirs`` (star-shaped about the origin)."""
    r_cranium = ray_ellipsoid(dirs, layout.cranium_center, layout.cranium_radii)
    r_face = ray_ellipsoid(dirs, layout.face_center, layout.face_radii)
    # Neck: vertical cylinder around (x=0, z=neck_z), capped below at neck_bottom and
    # above at neck_top (inside the head, so the top cap is hidden by the union).
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    a = dx * dx + dz * dz
    b = -2.0 * dz * layout.neck_z
    c = layout.neck_z**2 - layout.neck_radius**2
    big = 10.0
    with np.errstate(divide="ignore", invalid="ignore"):
        r_side = np.where(a > 1e-9, (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a), big)
        r_bottom = np.where(dy < -1e-9, layout.neck_bottom / dy, big)
        r_top = np.where(dy > 1e-9, layout.neck_top / np.maximum(dy, 1e-9), big)
    r_neck = smooth_min(smooth_min(r_side, r_bottom, layout.neck_rounding), r_top, 0.02)
    r = smooth_max(smooth_max(r_cranium, r_face, layout.blend), r_neck, layout.blend)
    return _lower_face_forward(dirs * r[:, None], layout)


def _lower_face_forward(p: np.ndarray, layout: HeadLayout) -> np.ndarray:
    """Shear the front of the lower face forwards (more below the mouth), so the
    mouth and chin stand under the nose instead of receding like an ellipsoid's."""
    y, z = p[:, 1], p[:, 2]
    amount = layout.lower_face_forward * smoothstep(-0.1, -0.5, y) * smoothstep(0.0, 0.35, z)
    out = p.copy()
    out[:, 2] += amount
    return out


def _front_weight(normals: np.ndarray) -> np.ndarray:
    """1 where the base surface faces forward (+z), fading to 0 towards the sides."""
    return smoothstep(0.15, 0.55, normals[:, 2])


def _mirror_x(x: np.ndarray) -> np.ndarray:
    """|x|: paired features are defined for the left side and mirrored."""
    return np.abs(x)


def _along_z(h: np.ndarray) -> np.ndarray:
    out = np.zeros(h.shape + (3,))
    out[:, 2] = h
    return out


def _nose(p: np.ndarray, L: HeadLayout) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    span = L.nose_bridge_y - L.nose_tip_y
    t = (L.nose_bridge_y - y) / span  # 0 at the bridge, 1 at the tip
    ridge = np.where(
        t <= 1.0,
        0.2 + 0.8 * np.clip(t, 0.0, 1.0) ** 1.3,
        np.exp(-(((y - L.nose_tip_y) / (L.nose_tip_y - L.nose_base_y) * 1.25) ** 2)),
    )
    ridge = ridge * smoothstep(-0.45, 0.05, t)  # fade into the glabella above the bridge
    half_width = 0.034 + 0.03 * np.clip(t, 0.0, 1.2)
    h = 0.1 * ridge * np.exp(-((x / half_width) ** 2))
    # Rounded tip and the two alae (nostril wings) either side of it.
    h += 0.055 * bump(ellipse_r2(x, y, 0.0, L.nose_tip_y + 0.012, 0.075, 0.075))
    ala_y = L.nose_tip_y - 0.025
    h += 0.06 * bump(ellipse_r2(_mirror_x(x), y, 0.05, ala_y, 0.04, 0.04))
    return h


def _eye_sockets(p: np.ndarray, L: HeadLayout) -> np.ndarray:
    x, y = _mirror_x(p[:, 0]), p[:, 1]
    ex, ey = L.eye
    return -0.075 * bump(ellipse_r2(x, y, ex, ey + 0.005, 0.14, 0.095))


def _eyeballs(p: np.ndarray, L: HeadLayout) -> np.ndarray:
    """A spherical bulge inside each socket: the visible part of the eyeball."""
    x, y = _mirror_x(p[:, 0]), p[:, 1]
    ex, ey = L.eye
    r2 = ellipse_r2(x, y, ex, ey, 0.105, 0.075)
    return 0.062 * np.clip(1.0 - r2, 0.0, None) ** 0.75


def _brow_ridge(p: np.ndarray, L: HeadLayout) -> np.ndarray:
    x, y = _mirror_x(p[:, 0]), p[:, 1]
    ex, _ = L.eye
    h = 0.035 * bump(ellipse_r2(x, y, ex, L.brow_y + 0.01, 0.17, 0.07))
    return h + 0.02 * bump(ellipse_r2(x, y, 0.0, L.brow_y - 0.01, 0.09, 0.07))


def _cheekbones(p: np.ndarray, L: HeadLayout) -> np.ndarray:
    x, y = _mirror_x(p[:, 0]), p[:, 1]
    cx, cy = L.cheek
    return 0.03 * bump(ellipse_r2(x, y, cx, cy + 0.05, 0.15, 0.1))


def _cheeks(p: np.ndarray, L: HeadLayout) -> np.ndarray:
    x, y = _mirror_x(p[:, 0]), p[:, 1]
    cx, cy = L.cheek
    return 0.03 * bump(ellipse_r2(x, y, cx - 0.02, cy - 0.1, 0.15, 0.14))


def _lips(p: np.ndarray, L: HeadLayout) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    w = L.mouth_half_width
    ax = _mirror_x(x)
    # Cupid's bow: the upper lip's centre dips slightly, its peaks sit at x ≈ ±0.03.
    bow = 0.008 * np.exp(-(((ax - 0.035) / 0.03) ** 2)) - 0.004 * np.exp(-((ax / 0.02) ** 2))
    upper = bump(ellipse_r2(x, y - bow, 0.0, L.mouth_y + 0.028, w * 1.05, 0.036))
    lower = bump(ellipse_r2(x, y, 0.0, L.mouth_y - 0.034, w * 0.92, 0.04))
    seam = np.exp(-(((y - L.mouth_y) / 0.008) ** 2)) * smoothstep(w * 0.92, w * 0.6, ax)
    philtrum = np.exp(-((x / 0.018) ** 2)) * bump(
        ellipse_r2(x, y, 0.0, L.mouth_y + 0.09, 1.0, 0.05)
    )
    return 0.034 * upper + 0.038 * lower - 0.012 * seam - 0.006 * philtrum


def _chin(p: np.ndarray, L: HeadLayout) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    cx, cy = L.chin
    h = 0.05 * bump(ellipse_r2(x, y, cx, cy, 0.16, 0.12))
    return h - 0.015 * bump(ellipse_r2(x, y, 0.0, L.mouth_y - 0.1, 0.1, 0.035))


def _ears(p: np.ndarray, normals: np.ndarray, L: HeadLayout) -> np.ndarray:
    """Ear flaps on the sides: height fields along ±x over (z, y), leaning backwards."""
    y, z = p[:, 1], p[:, 2]
    ey, ez = L.ear
    hh, hw = L.ear_half_size
    side = smoothstep(0.45, 0.75, np.abs(normals[:, 0]))
    r2 = ellipse_r2(z, y, ez, ey, hw, hh)
    plate = smoothstep(1.0, 0.75, np.sqrt(r2))
    lean = smoothstep(ez + hw, ez - hw, z)  # 0 at the front edge, 1 at the back edge
    concha = bump(ellipse_r2(z, y, ez - 0.01, ey - 0.03, hw * 0.5, hh * 0.42))
    h = side * (plate * (0.05 + 0.09 * lean) - 0.045 * concha)
    out = np.zeros_like(p)
    out[:, 0] = np.sign(p[:, 0]) * h
    return out


def feature_displacements(
    base: np.ndarray,  # [V, 3] points of base_surface
    normals: np.ndarray,  # [V, 3] unit normals of the base surface
    layout: HeadLayout = LAYOUT,
) -> dict[str, np.ndarray]:  # name -> [V, 3], keys in FEATURE_NAMES order
    """Displacement fields of the mean head's features (to be scaled and summed)."""
    front = _front_weight(normals)
    fields = {
        "nose": _nose,
        "eye_sockets": _eye_sockets,
        "eyeballs": _eyeballs,
        "brow_ridge": _brow_ridge,
        "cheekbones": _cheekbones,
        "cheeks": _cheeks,
        "lips": _lips,
        "chin": _chin,
    }
    out = {name: _along_z(front * fn(base, layout)) for name, fn in fields.items()}
    out["ears"] = _ears(base, normals, layout)
    return {name: out[name] for name in FEATURE_NAMES}
