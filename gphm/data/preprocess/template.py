"""The canonical 68-point landmark template and the landmark subsets preprocessing uses.

The template is the mean neutral head of the synthetic generator
(:mod:`gphm.data.synthetic`) at its 68 iBUG landmark vertices: canonical head space
(docs/architecture.md §4: head centred at the origin, +y up, +z out of the face, +x the subject's
left), the space models are trained in. Using the same template for real images keeps
their framing and canonical transform consistent with the synthetic data.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "RIGID_LANDMARKS",
    "canonical_landmarks",
    "framing_points",
]

#: Landmarks that move little with expressions (upper jaw contour at the ears, nose,
#: eye corners): used for head-pose alignment. Eyelids, brows, mouth and chin are left out.
RIGID_LANDMARKS: tuple[int, ...] = (0, 1, 15, 16, *range(27, 36), 36, 39, 42, 45)


@functools.lru_cache(maxsize=1)
def canonical_landmarks() -> np.ndarray:  # [68, 3] read-only, canonical head space
    """The 68 iBUG landmarks of the mean synthetic head (built once, ~1 s)."""
    from gphm.data.synthetic.head import build_template

    template = build_template()
    out = np.array(template.rest[template.landmark_indices], dtype=np.float64)
    out.setflags(write=False)
    return out


def framing_points(landmarks: np.ndarray) -> np.ndarray:  # [..., 3, D]
    """Right-eye centre, left-eye centre and mouth-corner midpoint of ``landmarks``.

    ``landmarks`` [..., 68, D] in iBUG order (D = 2 or 3). Eye centres are the means of
    the six eye points (36–41, 42–47); the mouth point is the midpoint of the corners
    48 and 54 (as in the FFHQ alignment). These three points define the image framing.
    """
    if landmarks.shape[-2] != 68:
        raise ValueError(f"landmarks must have shape [..., 68, D], got {landmarks.shape}")
    right_eye = landmarks[..., 36:42, :].mean(-2)
    left_eye = landmarks[..., 42:48, :].mean(-2)
    mouth = 0.5 * (landmarks[..., 48, :] + landmarks[..., 54, :])
    return np.stack([right_eye, left_eye, mouth], axis=-2)
