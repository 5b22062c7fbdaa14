"""The 68 iBUG landmarks of the synthetic head, as fixed template vertices.

Anatomical target points are laid out on the mean head from the same
:class:`~gphm.data.synthetic.anatomy.HeadLayout` that shapes and paints it; each target
is snapped once to the nearest front-facing template vertex. Being vertices, the
landmarks follow every identity and expression deformation exactly.

iBUG order (docs/architecture.md §4): jaw 0–16 (from the subject's right, i.e. the image left of a
frontal view, round the chin), brows 17–26, nose bridge 27–30 and base 31–35, eyes
36–47 (subject's right eye first, each from the outer corner clockwise in the image),
outer lips 48–59 and inner lips 60–67. Canonical +x is the subject's left, so the
subject's right side has x < 0.
"""

from __future__ import annotations

import numpy as np

from gphm.data.synthetic.anatomy import LAYOUT, HeadLayout
from gphm.data.synthetic.regions import (
    SEAM_HALF_WIDTH,
    brow_centerline,
    ear_weight,
    eyelid_margins,
)

__all__ = ["NUM_LANDMARKS", "landmark_targets_xy", "select_landmark_vertices"]

NUM_LANDMARKS = 68


def _eye(side: int, us: list[float], upper: list[bool], L: HeadLayout) -> list[tuple]:
    ex, ey = L.eye
    hw, hh = L.eye_half_size
    pts = []
    for u, up in zip(us, upper):
        top, bottom = eyelid_margins(np.array([u]))
        v = float(top[0] if up else bottom[0])
        pts.append((side * (ex + u * hw), ey + v * hh))
    return pts


def landmark_targets_xy(layout: HeadLayout = LAYOUT) -> np.ndarray:  # [68, 2]
    """(x, y) of the 68 landmarks on the mean head's front, in iBUG order."""
    L = layout
    pts: list[tuple[float, float]] = []
    # Jaw 0-16: half ellipse from the right temple-level cheek round the chin.
    for k in range(17):
        a = np.pi + np.pi * k / 16
        pts.append((0.52 * np.cos(a), 0.06 + 0.66 * np.sin(a)))
    # Brows: right brow outer -> inner (17-21), left brow inner -> outer (22-26).
    s = np.array([0.95, 0.72, 0.5, 0.28, 0.06])
    ax, by = brow_centerline(s, L)
    pts += [(-a, b) for a, b in zip(ax, by)]
    pts += [(a, b) for a, b in zip(ax[::-1], by[::-1])]
    # Nose bridge 27-30 down to the tip, base 31-35 from right to left.
    ey = L.eye[1]
    for y in np.linspace(ey + 0.01, L.nose_tip_y + 0.005, 4):
        pts.append((0.0, float(y)))
    base = L.nose_base_y
    pts += [(-0.055, base + 0.02), (-0.028, base + 0.007), (0.0, base), (0.028, base + 0.007),
            (0.055, base + 0.02)]  # fmt: skip
    # Eyes: right eye 36-41 (outer corner, upper outer, upper inner, inner corner, lower
    # inner, lower outer), left eye 42-47 (inner corner, upper inner, upper outer, outer
    # corner, lower outer, lower inner). u > 0 is towards the temple.
    pts += _eye(-1, [0.97, 0.35, -0.35, -0.97, -0.35, 0.35], [1, 1, 1, 1, 0, 0], L)
    pts += _eye(1, [-0.97, -0.35, 0.35, 0.97, 0.35, -0.35], [1, 1, 1, 1, 0, 0], L)
    # Outer lips 48-59: right corner, upper lip to the left corner, lower lip back.
    mw, my = L.mouth_half_width, L.mouth_y
    pts += [(-0.97 * mw, my), (-0.085, my + 0.042), (-0.035, my + 0.055), (0.0, my + 0.05),
            (0.035, my + 0.055), (0.085, my + 0.042), (0.97 * mw, my),
            (0.085, my - 0.058), (0.035, my - 0.066), (0.0, my - 0.068),
            (-0.035, my - 0.066), (-0.085, my - 0.058)]  # fmt: skip
    # Inner lips 60-67 on the edges of the seam band (they part when the jaw opens).
    h = SEAM_HALF_WIDTH
    pts += [(-0.85 * mw, my), (-0.045, my + h), (0.0, my + h), (0.045, my + h),
            (0.85 * mw, my), (0.045, my - h), (0.0, my - h), (-0.045, my - h)]  # fmt: skip
    out = np.asarray(pts, dtype=np.float64)
    assert out.shape == (NUM_LANDMARKS, 2)
    return out


def select_landmark_vertices(
    rest: np.ndarray,  # [V, 3] template vertices
    rest_normals: np.ndarray,  # [V, 3]
    layout: HeadLayout = LAYOUT,
) -> np.ndarray:  # [68] int64 vertex indices
    """Nearest front-facing template vertex (in x, y) to each landmark target."""
    candidates = np.flatnonzero(
        (rest[:, 2] > 0.0) & (rest_normals[:, 2] > 0.1) & (ear_weight(rest, layout) < 0.05)
    )
    targets = landmark_targets_xy(layout)
    d2 = ((rest[candidates, None, :2] - targets[None]) ** 2).sum(-1)  # [C, 68]
    return candidates[np.argmin(d2, axis=0)].astype(np.int64)
