"""Region weights on the mean head, shared by the deformations and the colours.

Every function takes ``rest`` [V, 3], the mean neutral head's vertices (the template),
and returns per-vertex weights or local coordinates. Because weights are computed on
the template and not on the deformed head, a region always covers the same vertices:
identity and expression change where a region *is*, never which vertices belong to it.
"""

from __future__ import annotations

import numpy as np

from gphm.data.synthetic.anatomy import LAYOUT, HeadLayout
from gphm.data.synthetic.fields import bump, ellipse_r2, smoothstep

__all__ = [
    "SEAM_HALF_WIDTH",
    "eye_coords",
    "eyelid_margins",
    "jaw_weight",
    "mouth_band",
    "hair_weight",
    "ear_weight",
    "front_weight",
    "brow_centerline",
]

#: Half-height of the band around the lip seam over which the jaw weight goes 0 → 1.
#: When the jaw opens, this band stretches into the visible mouth interior.
SEAM_HALF_WIDTH = 0.028


def front_weight(rest: np.ndarray) -> np.ndarray:  # [V]
    """1 on the front half of the head (z > 0.2), 0 behind z = -0.1."""
    return smoothstep(-0.1, 0.2, rest[:, 2])


def eye_coords(
    rest: np.ndarray, side: int, layout: HeadLayout = LAYOUT
) -> tuple[np.ndarray, np.ndarray]:  # u [V], v [V]
    """Eye-local coordinates of eye ``side`` (+1 left, -1 right), normalised by the
    aperture half-axes: the visible eye is roughly ``u² + v² < 1``. ``u`` grows towards
    the head's outside (temporal side), ``v`` upwards."""
    ex, ey = layout.eye
    hw, hh = layout.eye_half_size
    u = (side * rest[:, 0] - ex) / hw
    v = (rest[:, 1] - ey) / hh
    return u, v


def eyelid_margins(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # top [V], bottom [V]
    """Upper and lower eyelid margins ``v(u)`` of the almond-shaped aperture.

    The upper lid arches higher and peaks slightly towards the nose (u < 0), the lower
    lid is flatter; both meet at the corners ``u = ±1``.
    """
    s = np.sqrt(np.clip(1.0 - u * u, 0.0, None))
    top = s * (1.0 - 0.15 * u)
    bottom = -0.8 * s * (1.0 + 0.1 * u)
    return top, bottom


def _seam_y(x: np.ndarray, layout: HeadLayout) -> np.ndarray:
    """Height of the boundary between upper face and jaw: the lip seam in the middle,
    rising beyond the mouth corners towards the jaw joints in front of the ears."""
    beyond = np.clip(np.abs(x) - layout.mouth_half_width, 0.0, None)
    return layout.mouth_y + 0.9 * beyond


def jaw_weight(rest: np.ndarray, layout: HeadLayout = LAYOUT) -> np.ndarray:  # [V]
    """How much each vertex follows the jaw's rotation (1 = the chin, 0 = the skull).

    The boundary is sharp at the lips (so the lips part cleanly) and soft on the cheeks;
    the neck below the jaw and everything behind the jaw joints stay with the skull.
    """
    x, y, z = rest[:, 0], rest[:, 1], rest[:, 2]
    beyond = np.clip(np.abs(x) - layout.mouth_half_width, 0.0, None)
    width = SEAM_HALF_WIDTH + 0.6 * beyond
    y0 = _seam_y(x, layout)
    below = smoothstep(y0 + width, y0 - width, y)
    in_front = smoothstep(-0.12, 0.12, z)
    neck = smoothstep(-0.5, -0.68, y) * smoothstep(0.52, 0.15, z)
    return below * in_front * (1.0 - neck)


def mouth_band(rest: np.ndarray, layout: HeadLayout = LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """Mouth interior coordinates: ``t`` [V] in [0, 1] across the seam band (0 = upper
    lip side, 1 = lower lip side) and ``inside`` [V], 1 within the band between the
    mouth corners, 0 elsewhere."""
    x, y = rest[:, 0], rest[:, 1]
    t = np.clip((layout.mouth_y + SEAM_HALF_WIDTH - y) / (2 * SEAM_HALF_WIDTH), 0.0, 1.0)
    across = np.clip(1.0 - ((y - layout.mouth_y) / (1.2 * SEAM_HALF_WIDTH)) ** 2, 0.0, None)
    along = smoothstep(layout.mouth_half_width * 0.95, layout.mouth_half_width * 0.7, np.abs(x))
    return t, across * along * (rest[:, 2] > 0.2)


def hair_weight(
    rest: np.ndarray, hairline: float, layout: HeadLayout = LAYOUT
) -> np.ndarray:  # [V]
    """1 on the scalp, 0 on the face, ears and neck.

    The hairline height goes around the head with the azimuth φ (0 at the face): high
    on the forehead (``layout.hairline_front`` + 0.08·hairline), above the ears on the
    sides and down to the nape behind.
    """
    x, y, z = rest[:, 0], rest[:, 1], rest[:, 2]
    phi = np.arctan2(np.abs(x), z)  # 0 front, π/2 sides, π back
    front = layout.hairline_front + 0.08 * hairline
    c = 0.5 * (1.0 + np.cos(phi))  # 1 front, 0 back
    line = front * c**0.6 + (-0.28) * (1.0 - c**0.6)
    # Keep the temples and the area around and in front of the ears free.
    line = line + 0.16 * bump(ellipse_r2(np.abs(phi), y, 1.45, 0.06, 0.5, 0.3))
    return smoothstep(line - 0.015, line + 0.025, y) * (1.0 - ear_weight(rest, layout))


def ear_weight(rest: np.ndarray, layout: HeadLayout = LAYOUT) -> np.ndarray:  # [V]
    """1 on the ears (outer sides of the head around the ear centres), 0 elsewhere."""
    y, z = rest[:, 1], rest[:, 2]
    ey, ez = layout.ear
    hh, hw = layout.ear_half_size
    side = smoothstep(0.48, 0.56, np.abs(rest[:, 0]))
    return side * smoothstep(1.15, 0.95, np.sqrt(ellipse_r2(z, y, ez, ey, hw, hh)))


def brow_centerline(s: np.ndarray, layout: HeadLayout = LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """Eyebrow centre line, ``s`` in [0, 1] from the inner to the outer end: returns
    ``(|x|, y)``. The brow arches up a little past its middle and drops at the tail."""
    ax = 0.07 + 0.27 * s
    y = layout.brow_y - 0.005 + 0.035 * np.sin(np.pi * np.clip(1.2 * s, 0.0, 1.0)) - 0.03 * s
    return ax, y
