"""Which way is up in an export: gphm's +y, or the -y of 3DGS captures (``up=``).

gphm's canonical head space is +x the head's left, **+y up**, +z out of the face, which
is what a y-up engine or web viewer shows upright with its default camera (the PlayCanvas
engine's gsplat component, ``tests/export/test_web_viewer.py``). 3DGS captures, trained
in COLMAP/OpenCV camera conventions, are usually **y down**, so viewers built around them
turn every scene half a turn about x before showing it (``rotation.x = π``) and would show
a +y-up head upside down. ``up="-y"`` writes that convention: the head turned half a turn
about the x axis, ``(x, y, z) -> (x, -y, -z)``, a proper rotation (no mirror), so +y is
the head's down and the face looks along -z (towards an OpenCV camera in front of it, which
looks along +z).

The turn is linear in every stored quantity: centres are multiplied by ``R = diag(1, -1,
-1)`` and quaternions are left-multiplied by the turn's quaternion ``(0, 1, 0, 0)``, i.e.
``(w, x, y, z) -> (-x, w, -z, y)``, an orthogonal map; colours, scales and opacities are
unchanged. So a blendshape basis turned component by component still blends to the turned
PLYs (the renormalisation of quaternions commutes with it).
"""

from __future__ import annotations

from torch import Tensor

from gphm.geometry.rotations import quat_multiply

__all__ = ["UP_CHOICES", "DEFAULT_UP", "check_up", "turn_means", "turn_quats", "up_description"]

UP_CHOICES = ("+y", "-y")
DEFAULT_UP = "+y"
_HALF_TURN_X = (0.0, 1.0, 0.0, 0.0)  # wxyz: half a turn about the x axis


def check_up(up: str) -> str:
    """``up`` if it is one of :data:`UP_CHOICES`, else ``ValueError`` naming it."""
    if up not in UP_CHOICES:
        raise ValueError(f"up: expected one of {list(UP_CHOICES)}, got {up!r}")
    return up


def turn_means(means: Tensor, up: str) -> Tensor:
    """Centres (or centre deltas) [..., 3] in the ``up`` convention (a new tensor)."""
    if check_up(up) == "+y":
        return means.clone()
    return means * means.new_tensor([1.0, -1.0, -1.0])


def turn_quats(quats: Tensor, up: str) -> Tensor:
    """wxyz quaternions (or their deltas) [..., 4] in the ``up`` convention (a new
    tensor): the Gaussian's rotation ``R_q`` becomes ``diag(1, -1, -1) @ R_q``."""
    if check_up(up) == "+y":
        return quats.clone()
    return quat_multiply(quats.new_tensor(_HALF_TURN_X).expand_as(quats), quats)


def up_description(up: str) -> str:
    """The space of an ``up`` export in words (for ``blendshapes.json``)."""
    if check_up(up) == "+y":
        return (
            "canonical head space at the canonical pose: +x the head's left, +y up, +z out "
            "of the face, head centred at the origin within about ±0.9; the PLYs share it"
        )
    return (
        "canonical head space turned half a turn about x (up=-y, the y-down convention of "
        "3DGS captures): +x the head's left, +y DOWN, +z INTO the face, head centred at the "
        "origin within about ±0.9; the PLYs share it"
    )
