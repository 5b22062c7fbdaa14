"""Identity and expression deformations of the template (pure numpy functions).

``identity_vertices`` turns the template into one subject's neutral head:
feature gains (blendshape weights of :data:`~gphm.data.synthetic.anatomy.FEATURE_NAMES`),
a hair layer, then smooth local warps that move or resize features and global warps of
the skull. ``expression_vertices`` then adds smooth local expression displacements and
rotates the jaw. All region weights are evaluated on the template's ``rest`` vertices
(:mod:`~gphm.data.synthetic.regions`), so features stay on their vertices.

Every warp has the form ``p + a·w(rest)·d`` with small ``a`` and smooth ``w``, so its
Jacobian stays close to the identity and no triangle flips, even with every shape
parameter at ±1 and every expression at once (``tests/data/test_synthetic.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gphm.data.synthetic.anatomy import LAYOUT
from gphm.data.synthetic.fields import bump, ellipse_r2, smoothstep
from gphm.data.synthetic.params import ExpressionParams, IdentityParams, ShapeParams
from gphm.data.synthetic.regions import (
    eye_coords,
    eyelid_margins,
    front_weight,
    hair_weight,
    jaw_weight,
    mouth_band,
)

if TYPE_CHECKING:
    from gphm.data.synthetic.head import HeadTemplate

__all__ = ["feature_gains", "identity_vertices", "expression_vertices", "JAW_HINGE"]

#: Jaw joint axis: parallel to x through this point (canonical space).
JAW_HINGE = np.array([0.0, 0.02, -0.04])
#: Jaw rotation at ``jaw_open = 1`` (radians).
JAW_MAX_ANGLE = np.radians(10.0)
#: Jaw translation at ``jaw_open = 1``: the condyles glide forwards as the jaw opens,
#: so the chin drops rather than swinging back into the throat.
JAW_GLIDE = np.array([0.0, -0.02, 0.05])
#: iBUG indices of an upper and a lower eyelid landmark of each eye (measure eye height).
_LEFT_EYE_LIDS = (43, 47)
_RIGHT_EYE_LIDS = (38, 40)
#: Thickness of the hair layer at ``hair_volume = 0``.
HAIR_THICKNESS = 0.04


def feature_gains(shape: ShapeParams) -> dict[str, float]:
    """Blendshape weight of each template feature for identity ``shape`` (1 = mean)."""
    return {
        "nose": 1.0 + 0.35 * shape.nose_projection,
        "eye_sockets": 1.0,
        "eyeballs": 1.0,
        "brow_ridge": 1.0 + 0.6 * shape.brow_ridge,
        "cheekbones": 1.0 + 0.5 * shape.cheek_fullness,
        "cheeks": 1.0 + 0.9 * shape.cheek_fullness,
        "lips": 1.0 + 0.45 * shape.lip_thickness,
        "chin": 1.0 + 0.6 * shape.chin_projection,
        "ears": 1.0 + 0.15 * shape.ear_size,
    }


def identity_vertices(
    template: HeadTemplate, identity: IdentityParams
) -> np.ndarray:  # [V, 3] neutral head of the subject, canonical space
    """One subject's neutral head."""
    s = identity.shape
    rest = template.rest
    x, y, z = rest[:, 0], rest[:, 1], rest[:, 2]
    gains = feature_gains(s)
    p = template.base + sum(gains[n] * template.features[n] for n in template.features)
    hair = hair_weight(rest, identity.appearance.hairline)
    crown = 0.6 + 0.8 * smoothstep(0.1, 0.8, y)  # fuller on top than at the nape
    thickness = HAIR_THICKNESS * (1.0 + 0.6 * s.hair_volume) * crown * hair
    p = p + thickness[:, None] * template.base_normals

    L = LAYOUT
    ex, ey = L.eye
    d = np.zeros_like(p)
    front = front_weight(rest)
    # Eyes: move apart and grow about their centres.
    for side in (-1.0, 1.0):
        around = bump(ellipse_r2(x, y, side * ex, ey, 0.2, 0.17)) * front
        d[:, 0] += 0.03 * s.eye_spacing * side * around
        core = bump(ellipse_r2(x, y, side * ex, ey, 0.16, 0.12)) * front
        d[:, 0] += 0.3 * s.eye_size * core * (x - side * ex)
        d[:, 1] += 0.3 * s.eye_size * core * (y - ey)
    # Nose: the tip region slides down (longer nose), the nose widens about x = 0.
    along_nose = smoothstep(L.nose_bridge_y, L.nose_tip_y, y) * smoothstep(
        L.mouth_y + 0.02, L.nose_base_y, y
    )
    nose_core = np.exp(-((x / 0.11) ** 2)) * front
    d[:, 1] -= 0.035 * s.nose_length * along_nose * nose_core
    nose_area = bump(ellipse_r2(x, y, 0.0, -0.04, 0.14, 0.2)) * front
    d[:, 0] += 0.5 * s.nose_width * nose_area * x
    # Mouth: wider about x = 0.
    mouth_area = bump(ellipse_r2(x, y, 0.0, L.mouth_y, 0.26, 0.12)) * front
    d[:, 0] += 0.35 * s.mouth_width * mouth_area * x
    # Lower face: chin further down, jaw wider.
    lower = smoothstep(L.mouth_y - 0.04, L.chin[1] - 0.05, y) * smoothstep(-0.1, 0.3, z)
    d[:, 1] -= 0.05 * s.chin_length * lower
    jaw = smoothstep(-0.05, -0.4, y) * smoothstep(-0.3, 0.0, z)
    d[:, 0] += 0.12 * s.jaw_width * jaw * x
    # Ears: scale about their root on the side of the head.
    ey_, ez_ = L.ear
    for side in (-1.0, 1.0):
        root = np.array([side * 0.56, ey_, ez_])
        ear = bump(ellipse_r2(z, y, ez_, ey_, 0.16, 0.27)) * smoothstep(0.35, 0.5, side * x)
        d += (0.2 * s.ear_size * ear)[:, None] * (rest - root)
    p = p + d

    # Skull: global proportions (the face is carried along).
    q = p.copy()
    q[:, 0] *= 1.0 + 0.06 * s.head_width
    back = smoothstep(0.1, -0.3, p[:, 2])
    q[:, 2] += 0.07 * s.head_length * back * p[:, 2]
    top = smoothstep(0.0, 0.3, p[:, 1])
    q[:, 1] += 0.08 * s.head_height * top * (p[:, 1] - 0.05)
    return q


def _blink(rest: np.ndarray, side: int, amount: float, eye_scale: float) -> np.ndarray:
    """Upper eyelid slides down over the eyeball, which is squeezed towards the lower lid.

    ``eye_scale`` is the subject's eye height relative to the template's: the lid
    travels the subject's gap, never past the lower lid. Returns [V, 3].
    """
    hh = LAYOUT.eye_half_size[1] * eye_scale
    u, v = eye_coords(rest, side)
    top, bottom = eyelid_margins(np.clip(u, -1.0, 1.0))
    gap = top - bottom
    # 0 at and below the lower lid, 1 at the upper lid, back to 0 ~2.4 radii above it.
    ramp = np.where(
        v <= top,
        np.clip((v - bottom) / np.maximum(gap, 1e-6), 0.0, 1.0),
        np.clip(1.0 - (v - top - 0.4) / 2.0, 0.0, 1.0),  # the lid's rim moves as a whole
    )
    # Fade towards the corners with zero slope, where the gap closes like sqrt(1 - u²).
    lateral = smoothstep(1.0, 0.7, np.abs(u))
    d = np.zeros_like(rest)
    d[:, 1] = -0.85 * amount * hh * gap * ramp * lateral * front_weight(rest)
    return d


def expression_vertices(
    template: HeadTemplate,
    verts: np.ndarray,  # [V, 3] the subject's neutral head (identity_vertices)
    expr: ExpressionParams,
) -> np.ndarray:  # [V, 3]
    """Apply an expression to a subject's neutral head."""
    L = LAYOUT
    rest = template.rest
    x, y = rest[:, 0], rest[:, 1]
    front = front_weight(rest)
    d = np.zeros_like(verts)
    mw = L.mouth_half_width
    ex, ey = L.eye

    for side, amount in ((1.0, expr.smile_l), (-1.0, expr.smile_r)):
        if amount:
            corner = bump(ellipse_r2(x, y, side * mw, L.mouth_y, 0.17, 0.15)) * front
            d += amount * corner[:, None] * np.array([side * 0.035, 0.055, -0.02])
            cheek = bump(ellipse_r2(x, y, side * 0.24, -0.12, 0.14, 0.12)) * front
            d += amount * cheek[:, None] * np.array([side * 0.006, 0.022, 0.018])
    if expr.brow_raise:
        lift = smoothstep(ey + 0.02, L.brow_y - 0.01, y) * smoothstep(0.62, 0.3, y) * front
        d[:, 1] += 0.045 * expr.brow_raise * lift
    if expr.frown:
        inner = np.zeros_like(x)
        for side in (-1.0, 1.0):
            inner += bump(ellipse_r2(x, y, side * 0.13, L.brow_y, 0.16, 0.1))
        inner *= front
        d[:, 1] -= 0.025 * expr.frown * inner
        d[:, 0] -= 0.02 * expr.frown * inner * np.sign(x)
        d[:, 2] += 0.008 * expr.frown * inner
        for side in (-1.0, 1.0):
            corner = bump(ellipse_r2(x, y, side * mw, L.mouth_y, 0.1, 0.1)) * front
            d[:, 1] -= 0.018 * expr.frown * corner
    for side, amount, (top, bottom) in (
        (1, expr.blink_l, _LEFT_EYE_LIDS),
        (-1, expr.blink_r, _RIGHT_EYE_LIDS),
    ):
        if amount:
            lids = template.landmark_indices[[top, bottom]]
            scale = np.linalg.norm(verts[lids[0]] - verts[lids[1]]) / np.linalg.norm(
                rest[lids[0]] - rest[lids[1]]
            )
            d += _blink(rest, side, amount, float(scale))
    if expr.pucker:
        # A plateau rather than a bump, so the corners move in as much as the lips.
        lips = smoothstep(1.0, 0.4, np.sqrt(ellipse_r2(x, y, 0.0, L.mouth_y, mw * 1.5, 0.11)))
        lips = lips * front
        d[:, 2] += 0.05 * expr.pucker * lips
        d[:, 0] -= 0.4 * expr.pucker * lips * x
        d[:, 1] += 0.2 * expr.pucker * lips * (y - L.mouth_y)  # rounder: lips part a bit
    if expr.cheek_puff:
        for side in (-1.0, 1.0):
            cheek = bump(ellipse_r2(x, y, side * 0.25, -0.24, 0.18, 0.15)) * front
            d += (0.06 * expr.cheek_puff * cheek)[:, None] * np.array([side * 0.75, 0.0, 0.66])
    p = verts + d

    if expr.jaw_open:
        # Recess the stretched seam band (the mouth interior), then rotate the jaw.
        t, inside = mouth_band(rest)
        depth = 0.05 * expr.jaw_open * inside * np.sin(np.pi * t)
        p = p - depth[:, None] * np.array([0.0, 0.0, 1.0])
        w = expr.jaw_open * jaw_weight(rest)
        c, s = np.cos(JAW_MAX_ANGLE * w), np.sin(JAW_MAX_ANGLE * w)
        rel = p - JAW_HINGE
        q = p + w[:, None] * JAW_GLIDE
        q[:, 1] += c * rel[:, 1] - s * rel[:, 2] - rel[:, 1]
        q[:, 2] += s * rel[:, 1] + c * rel[:, 2] - rel[:, 2]
        p = q
    return p
