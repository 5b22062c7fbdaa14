"""Rendering codes of a trained model from chosen cameras: single views, turntables,
identity × expression grids and identity morphs.

The head sits at the canonical pose (identity rotation, no translation, unit scale) and
the cameras orbit it like the ones of :func:`gphm.fitting.views.orbit_rig` (the ±1
canonical cube fills ~70 % of the image).

Orbit angles (degrees), in the canonical head frame (+y up, the face looks along +z):

* ``yaw``: the camera's azimuth about +y. ``yaw=0`` is frontal (the camera on +z);
  positive yaw moves the camera towards +x, the head's *left* side (the side a viewer
  facing the head sees on the right of the image). ``yaw=+90`` shows the left profile.
* ``pitch``: the camera's elevation. Positive pitch moves the camera up (+y), looking
  down at the top of the head; ``|pitch| < 90``.

These are the azimuth and elevation of :func:`gphm.geometry.cameras.orbit_cameras`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gphm.fitting.views import orbit_rig
from gphm.geometry.cameras import orbit_cameras, rescale_K
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel

__all__ = ["ViewBatch", "orbit_view", "orbit_yaws", "check_size", "lr_intrinsics",
           "render_views"]  # fmt: skip

Model = GuidanceModel | GaussianHead

DEFAULT_DISTANCE = 3.0
"""Orbit radius (canonical units) of the default cameras, as ``scripts/render.py``."""


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


def orbit_view(
    yaw: float, pitch: float, size: int, factor: int, distance: float = DEFAULT_DISTANCE
) -> tuple[Tensor, Tensor]:  # viewmat [4, 4] world -> camera, K [3, 3] at `size` pixels
    """The orbit camera at ``(yaw, pitch)`` degrees (module docstring) looking at the
    canonical origin from ``distance``, with the framing of :func:`orbit_rig`; ``K`` is
    in pixels of the ``size`` output (the one a user would pass back explicitly)."""
    for name, v in (("yaw", yaw), ("pitch", pitch), ("distance", distance)):
        if not math.isfinite(float(v)):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if not abs(float(pitch)) < 90.0:
        raise ValueError(f"pitch must lie strictly between -90 and 90 degrees, got {pitch!r}")
    if not float(distance) > 0:
        raise ValueError(f"distance must be > 0, got {distance!r}")
    rig = orbit_rig(1, size, factor, float(distance))
    viewmat = orbit_cameras(
        1, float(distance), float(pitch), (float(yaw), float(yaw)), endpoint=True
    )
    return viewmat[0], rescale_K(rig.K_lr, factor)


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


@dataclass
class ViewBatch:
    rgb: Tensor  # [B, S, S, 3] in [0, 1], on the CPU, composited on white
    alpha: Tensor  # [B, S, S, 1] accumulated opacity (bilinear from the low-res render)


@torch.no_grad()
def render_views(
    model: Model,
    z_id: Tensor,  # [B, Did]
    z_exp: Tensor,  # [B, Dexp]
    viewmats: Tensor,  # [B, 4, 4] world -> camera, one per row
    Ks_lr: Tensor,  # [B, 3, 3] low-resolution intrinsics, one per row
    lr_size: int,
    point_offsets: Tensor | None = None,  # [N, 3] (GaussianHead only)
    chunk: int = 8,
) -> ViewBatch:
    """Render row ``b``'s codes from row ``b``'s camera, the head at the canonical pose
    (unlike :func:`gphm.fitting.views.render_codes`, which renders every code pair from
    every camera). Results are moved to the CPU chunk by chunk."""
    device = next(model.parameters()).device
    kwargs = model.render_context()
    if point_offsets is not None:
        if not isinstance(model, GaussianHead):
            raise ValueError(f"point_offsets are per-Gaussian; got a {type(model).__name__}")
        kwargs["point_offsets"] = point_offsets.to(device)
    rgbs, alphas = [], []
    for s in range(0, z_id.shape[0], chunk):
        n = len(z_id[s : s + chunk])
        eye = torch.eye(3, device=device).expand(n, 3, 3)
        r = model.render(
            z_id[s : s + chunk].to(device), z_exp[s : s + chunk].to(device), eye,
            torch.zeros(n, 3, device=device), torch.ones(n, device=device),
            viewmats[s : s + chunk].to(device), Ks_lr[s : s + chunk].to(device),
            lr_size, lr_size, **kwargs,
        )  # fmt: skip
        rgb = r.rgb.clamp(0, 1).float()
        alpha = torch.nn.functional.interpolate(
            r.mask.float().permute(0, 3, 1, 2), size=rgb.shape[1:3], mode="bilinear",
            align_corners=False,
        ).permute(0, 2, 3, 1)  # fmt: skip
        rgbs.append(rgb.cpu())
        alphas.append(alpha.clamp(0, 1).cpu())
    return ViewBatch(torch.cat(rgbs), torch.cat(alphas))
