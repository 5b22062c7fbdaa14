"""Per-vertex albedo of the synthetic head (RGB in [0, 1]).

Regions are painted on the template (``rest`` coordinates) so colours follow their
vertices through every deformation: skin with redder cheeks and lips, hair with a
streak pattern, eyebrows, sclera, iris and pupil, lash lines, nostrils and the inner
ear. Expressions add colour changes that geometry alone would not show: the mouth
interior and teeth when the jaw opens, forehead wrinkles, frown lines, smile folds,
closed eyelids and flushed or puffed cheeks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gphm.data.synthetic.anatomy import LAYOUT
from gphm.data.synthetic.fields import bump, ellipse_r2, smoothstep
from gphm.data.synthetic.params import ExpressionParams, IdentityParams
from gphm.data.synthetic.regions import (
    brow_centerline,
    ear_weight,
    eye_coords,
    eyelid_margins,
    front_weight,
    hair_weight,
    mouth_band,
)

if TYPE_CHECKING:
    from gphm.data.synthetic.head import HeadTemplate

__all__ = ["vertex_albedo"]

_SCLERA = np.array([0.9, 0.88, 0.84])
_PUPIL = np.array([0.03, 0.03, 0.03])
_LASH = np.array([0.08, 0.06, 0.05])
_MOUTH = np.array([0.28, 0.06, 0.07])
_TEETH = np.array([0.93, 0.9, 0.82])
_IRIS_RADIUS = 0.031
_PUPIL_RADIUS = 0.013


def _mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-vertex blend ``a·(1-w) + b·w`` (a, b [V, 3] or [3]; w [V])."""
    return a + (b - a) * w[:, None]


def _segment_distance(x, y, p0, p1):
    """Distance of points (x, y) to the 2D segment p0–p1."""
    p0, p1 = np.asarray(p0), np.asarray(p1)
    d = p1 - p0
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1]) / (d @ d), 0.0, 1.0)
    return np.hypot(x - p0[0] - t * d[0], y - p0[1] - t * d[1])


def _brow_weight(rest: np.ndarray, thickness: float) -> np.ndarray:
    """Eyebrow arcs: from the inner end (|x| = 0.07) to the outer end (|x| = 0.34)."""
    ax, y = np.abs(rest[:, 0]), rest[:, 1]
    s = np.clip((ax - 0.07) / 0.27, 0.0, 1.0)  # 0 inner, 1 outer end
    _, centre = brow_centerline(s)
    half = (0.011 + 0.014 * thickness) * (1.15 - 0.6 * s)
    inside = smoothstep(half + 0.006, half - 0.002, np.abs(y - centre))
    ends = smoothstep(0.055, 0.08, ax) * smoothstep(0.37, 0.33, ax)
    return inside * ends * front_weight(rest)


def _eye_colors(
    rest: np.ndarray, color: np.ndarray, iris: np.ndarray, skin: np.ndarray, blinks
) -> np.ndarray:
    ex, ey = LAYOUT.eye
    for side, blink in blinks:
        u, v = eye_coords(rest, side)
        top, bottom = eyelid_margins(np.clip(u, -1.0, 1.0))
        inside = (
            smoothstep(top + 0.05, top - 0.12, v)
            * smoothstep(bottom - 0.05, bottom + 0.12, v)
            * smoothstep(1.02, 0.9, np.abs(u))
            * front_weight(rest)
        )
        r = np.hypot(rest[:, 0] - side * ex, rest[:, 1] - ey)
        eye = _mix(
            _SCLERA[None] * (1.0 - 0.12 * np.abs(u))[:, None],
            iris,
            smoothstep(_IRIS_RADIUS + 0.004, _IRIS_RADIUS - 0.004, r),
        )
        eye = _mix(eye, _PUPIL, smoothstep(_PUPIL_RADIUS + 0.004, _PUPIL_RADIUS - 0.003, r))
        # A closing lid covers the eye with skin; its lashes end up at the lower lid.
        lid = skin * 0.9
        eye = _mix(eye, lid, np.full(len(rest), blink) * smoothstep(bottom + 0.1, bottom + 0.45, v))
        color = _mix(color, eye, inside)
        near = smoothstep(1.25, 0.95, np.abs(u)) * front_weight(rest)
        upper_lash = np.exp(-(((v - top - 0.08) / 0.16) ** 2)) * near * (1.0 - 0.7 * blink)
        closed_lash = np.exp(-(((v - bottom - 0.15) / 0.15) ** 2)) * near * blink
        color = _mix(color, _LASH, np.clip(0.9 * upper_lash + 0.9 * closed_lash, 0.0, 1.0))
        crease = np.exp(-(((v - top - 0.75) / 0.18) ** 2)) * near * (1.0 - blink)
        color = color * (1.0 - 0.12 * crease)[:, None]
    return color


def vertex_albedo(
    template: HeadTemplate, identity: IdentityParams, expr: ExpressionParams
) -> np.ndarray:  # [V, 3] RGB in [0, 1]
    """Albedo of every template vertex for one subject and expression."""
    L = LAYOUT
    app = identity.appearance
    rest = template.rest
    x, y, z = rest[:, 0], rest[:, 1], rest[:, 2]
    ax = np.abs(x)
    front = front_weight(rest)
    skin = np.asarray(app.skin)
    color = np.tile(skin, (len(rest), 1))

    # Skin variation: redder cheeks, nose tip and ears, a slightly darker neck.
    flush = 0.6 * bump(ellipse_r2(ax, y, 0.25, -0.12, 0.14, 0.11)) * front
    flush = flush + 0.9 * (expr.smile_l * (x > 0) + expr.smile_r * (x < 0)) * flush
    flush = flush + 0.8 * expr.cheek_puff * bump(ellipse_r2(ax, y, 0.25, -0.24, 0.18, 0.15))
    flush = flush + 0.4 * bump(ellipse_r2(x, y, 0.0, L.nose_tip_y, 0.06, 0.06)) * front
    color = _mix(color, skin * np.array([1.05, 0.86, 0.86]), np.clip(flush, 0.0, 1.0))
    color = _mix(color, skin * 0.9, smoothstep(-0.55, -0.75, y))
    ear = ear_weight(rest)
    concha = bump(ellipse_r2(z, y, L.ear[1] - 0.01, L.ear[0] - 0.03, 0.05, 0.08)) * ear
    color = _mix(color, skin * np.array([0.8, 0.62, 0.6]), 0.8 * concha)

    # Nostrils: dark openings under the tip.
    nostril = bump(ellipse_r2(ax, y, 0.03, L.nose_base_y + 0.012, 0.022, 0.014)) * front
    color = _mix(color, skin * 0.3, np.clip(1.5 * nostril, 0.0, 1.0))

    # Lips (vermilion), darker and redder when puckered; a thin dark seam line.
    w = L.mouth_half_width
    upper = smoothstep(1.0, 0.55, ellipse_r2(x, y, 0.0, L.mouth_y + 0.022, w * 1.02, 0.036))
    lower = smoothstep(1.0, 0.55, ellipse_r2(x, y, 0.0, L.mouth_y - 0.026, w * 0.9, 0.042))
    lips = np.clip(upper + lower, 0.0, 1.0) * front
    lip_color = np.asarray(app.lips) * (1.0 - 0.15 * expr.pucker)
    color = _mix(color, lip_color, lips)
    t, inside = mouth_band(rest)
    seam_line = np.exp(-(((t - 0.5) / 0.15) ** 2)) * inside * (1.0 - expr.jaw_open)
    color = _mix(color, _MOUTH, 0.6 * seam_line * smoothstep(w * 0.85, w * 0.6, ax))
    if expr.jaw_open:
        # Across the stretched seam band: upper teeth, dark mouth, a hint of lower teeth.
        # Wide ramps: the band holds only a few rows of vertices, and sharp colour steps
        # across it would show the triangles.
        teeth = smoothstep(0.6, 0.15, t) + 0.45 * smoothstep(0.7, 1.0, t)
        interior = _mix(np.tile(_MOUTH, (len(rest), 1)), _TEETH, np.clip(teeth, 0.0, 1.0))
        color = _mix(color, interior, np.clip(3.0 * expr.jaw_open, 0.0, 1.0) * inside)

    # Expression lines.
    forehead = (
        smoothstep(L.brow_y + 0.05, L.brow_y + 0.1, y)
        * smoothstep(L.hairline_front - 0.02, L.hairline_front - 0.1, y)
        * smoothstep(0.32, 0.2, ax)
        * front
    )
    # Soft stripes a few vertex rows wide (thinner ones would break up on the mesh).
    wrinkles = (0.5 + 0.5 * np.cos(2 * np.pi * (y - L.brow_y) / 0.05 + 0.4 * x)) ** 2
    shade = 0.2 * expr.brow_raise * forehead * wrinkles
    glabella = np.exp(-(((ax - 0.03) / 0.008) ** 2)) * bump(
        ellipse_r2(ax, y, 0.03, L.brow_y - 0.02, 0.05, 0.07)
    )
    shade = shade + 0.35 * expr.frown * glabella * front
    for side, amount in ((1.0, expr.smile_l), (-1.0, expr.smile_r)):
        if amount:
            # Nasolabial fold: from the nose wing round the raised mouth corner.
            dist = _segment_distance(
                x, y, (side * 0.09, L.nose_tip_y - 0.03), (side * (w + 0.035), L.mouth_y - 0.02)
            )
            shade = shade + 0.12 * amount * np.exp(-((dist / 0.03) ** 2)) * front
    color = color * (1.0 - np.clip(shade, 0.0, 0.6))[:, None]

    # Eyebrows, hair, eyes (painted last: they cover the skin).
    brow_color = np.asarray(app.hair) * 0.75 + 0.05
    color = _mix(color, brow_color, 0.9 * _brow_weight(rest, app.brow_thickness))
    phi = np.arctan2(x, z)
    streaks = 0.88 + 0.12 * np.sin(55.0 * phi + 9.0 * y) * np.sin(23.0 * phi - 5.0 * y + 1.0)
    hair_color = np.asarray(app.hair)[None] * streaks[:, None]
    color = _mix(color, hair_color, hair_weight(rest, app.hairline))
    blinks = ((1, expr.blink_l), (-1, expr.blink_r))
    color = _eye_colors(rest, color, np.asarray(app.iris), skin, blinks)
    return np.clip(color, 0.0, 1.0)
