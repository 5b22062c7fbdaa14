"""Orbit cameras around the canonical head: rigs of many cameras and single views.

The head sits at the canonical pose (identity rotation, no translation, unit scale) and
every camera here looks at the canonical origin with one framing: the focal length is
``0.35 · lr · distance`` pixels of the low-resolution render, so the ±1 canonical cube
fills ~70 % of the image at any ``distance``.

Orbit angles (degrees), in the canonical head frame (+y up, the face looks along +z):

* ``yaw`` (azimuth): the camera's angle about +y. ``yaw=0`` is frontal (the camera on
  +z); positive yaw moves the camera towards +x, the head's *left* side (the side a
  viewer facing the head sees on the right of the image). ``yaw=+90`` shows the left
  profile.
* ``pitch`` (elevation): positive pitch moves the camera up (+y), looking down at the
  top of the head; ``|pitch| < 90``.

These are the azimuth and elevation of :func:`gphm.geometry.cameras.orbit_cameras`.
Intrinsics come in two sizes: ``K`` in pixels of the output image (``size``, what a user
passes back) and ``K_lr`` of the low-resolution render the upsampler starts from
(``size / factor``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gphm.geometry.cameras import intrinsics, orbit_cameras, rescale_K

__all__ = ["DEFAULT_DISTANCE", "DEFAULT_ELEVATION", "ViewRig", "check_orbit", "check_size",
           "lr_intrinsics", "orbit_rig", "orbit_view", "orbit_views", "orbit_yaws"]  # fmt: skip

DEFAULT_DISTANCE = 3.0
"""Orbit radius (canonical units) of the default cameras."""

DEFAULT_ELEVATION = 10.0
"""Elevation (degrees) of :func:`orbit_rig`'s cameras unless told otherwise."""


@dataclass
class ViewRig:
    """Cameras sharing one low-resolution intrinsics matrix."""

    viewmats: Tensor  # [C, 4, 4] world -> camera (OpenCV)
    K_lr: Tensor  # [3, 3] intrinsics of the low-resolution render
    lr_size: int


def check_size(size: int, factor: int) -> int:
    """The low-resolution size of an output ``size``; ``ValueError`` unless ``size`` is a
    positive multiple of the model's upsampling ``factor``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < factor:
        raise ValueError(f"size must be an integer >= {factor}, got {size!r}")
    if size % factor:
        lo, hi = size // factor * factor, (size // factor + 1) * factor
        raise ValueError(
            f"size {size} must be a multiple of the model's upsampling factor {factor} "
            f"(e.g. {lo or hi} or {hi})"
        )
    return size // factor


def check_orbit(yaw: float, pitch: float, distance: float) -> None:
    """``ValueError`` unless yaw, pitch and distance are finite, ``|pitch| < 90`` and
    ``distance > 0`` (the camera's up vector and position must be defined)."""
    for name, v in (("yaw", yaw), ("pitch", pitch), ("distance", distance)):
        if not math.isfinite(float(v)):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if not abs(float(pitch)) < 90.0:
        raise ValueError(f"pitch must lie strictly between -90 and 90 degrees, got {pitch!r}")
    if not float(distance) > 0:
        raise ValueError(f"distance must be > 0, got {distance!r}")


def orbit_rig(
    num: int,
    hr_size: int,
    factor: int,
    distance: float = DEFAULT_DISTANCE,
    elevation: float = DEFAULT_ELEVATION,
    azimuth_range: tuple[float, float] = (0.0, 360.0),
    endpoint: bool = False,
) -> ViewRig:
    """``num`` cameras on a circle at ``elevation`` (degrees), azimuths spread over
    ``azimuth_range`` (its end included when ``endpoint``); the ±1 canonical cube fills
    ~70 % of the ``hr_size`` image."""
    if hr_size % factor:
        raise ValueError(f"size {hr_size} must be a multiple of the upsampling factor {factor}")
    lr = hr_size // factor
    f = 0.35 * lr * distance
    viewmats = orbit_cameras(num, distance, elevation, azimuth_range, endpoint=endpoint)
    return ViewRig(viewmats, intrinsics(f, f, lr / 2, lr / 2), lr)


def orbit_view(
    yaw: float, pitch: float, size: int, factor: int, distance: float = DEFAULT_DISTANCE
) -> tuple[Tensor, Tensor]:  # viewmat [4, 4] world -> camera, K [3, 3] at `size` pixels
    """The orbit camera at ``(yaw, pitch)`` degrees (module docstring) looking at the
    canonical origin from ``distance``, with the framing of :func:`orbit_rig`; ``K`` is
    in pixels of the ``size`` output (the one a user would pass back explicitly)."""
    check_orbit(yaw, pitch, distance)
    rig = orbit_rig(1, size, factor, float(distance))
    viewmat = orbit_cameras(
        1, float(distance), float(pitch), (float(yaw), float(yaw)), endpoint=True
    )
    return viewmat[0], rescale_K(rig.K_lr, factor)


def orbit_views(
    yaws: list[float], pitch: float, size: int, factor: int, distance: float = DEFAULT_DISTANCE
) -> tuple[Tensor, Tensor]:  # viewmats [B, 4, 4], Ks_lr [B, 3, 3]
    """One :func:`orbit_view` per yaw at a shared ``pitch``, with low-resolution
    intrinsics (``lr_intrinsics`` of the output ``K``: exactly the cameras
    ``Head.render(yaw=, pitch=)`` renders from)."""
    views = [orbit_view(y, pitch, size, factor, distance) for y in yaws]
    return (torch.stack([v for v, _ in views]),
            torch.stack([lr_intrinsics(K, factor) for _, K in views]))  # fmt: skip


def orbit_yaws(num: int, sway: float | None = None) -> list[float]:
    """``num`` yaws (degrees) of a video: a full turn from the front without repeating it
    (``sway=None``: a turntable that loops), or ``-sway..+sway`` with both ends."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if sway is not None:
        return torch.linspace(-sway, sway, num).tolist()
    return torch.linspace(0.0, 360.0, num + 1)[:num].tolist()


def lr_intrinsics(K: Tensor, factor: int) -> Tensor:  # [..., 3, 3] -> [..., 3, 3]
    """Intrinsics at the output size -> intrinsics of the low-resolution render."""
    return rescale_K(K, 1.0 / factor)
