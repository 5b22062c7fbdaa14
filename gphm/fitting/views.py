"""Rendering codes of a trained model from chosen cameras (turntables, grids, morphs).

Works with both stages (:class:`GuidanceModel` and :class:`GaussianHead`); the head is
placed at the canonical pose (identity rotation, no translation, unit scale), so the
cameras look at the canonical head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gphm.geometry.cameras import intrinsics, orbit_cameras
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel

__all__ = ["ViewRig", "orbit_rig", "render_codes", "lerp_codes"]


@dataclass
class ViewRig:
    viewmats: Tensor  # [C, 4, 4] world -> camera
    K_lr: Tensor  # [3, 3] intrinsics of the low-resolution render
    lr_size: int


def orbit_rig(
    num: int,
    hr_size: int,
    factor: int,
    distance: float = 3.0,
    elevation: float = 10.0,
    azimuth_range: tuple[float, float] = (0.0, 360.0),
    endpoint: bool = False,
) -> ViewRig:
    """``num`` cameras on a circle; the ±1 canonical cube fills ~70 % of the image."""
    if hr_size % factor:
        raise ValueError(f"size {hr_size} must be a multiple of the upsampling factor {factor}")
    lr = hr_size // factor
    f = 0.35 * lr * distance
    viewmats = orbit_cameras(num, distance, elevation, azimuth_range, endpoint=endpoint)
    return ViewRig(viewmats, intrinsics(f, f, lr / 2, lr / 2), lr)


@torch.no_grad()
def render_codes(
    model: GuidanceModel | GaussianHead,
    z_id: Tensor,  # [B, Did]
    z_exp: Tensor,  # [B, Dexp]
    rig: ViewRig,
    chunk: int = 8,
    point_offsets: Tensor | None = None,  # [N, 3] (GaussianHead only)
) -> Tensor:  # [B, C, H, W, 3] high-resolution RGB in [0, 1]
    """Render every (code pair, camera) combination at the canonical pose."""
    device = next(model.parameters()).device
    B, C = z_id.shape[0], rig.viewmats.shape[0]
    ids = torch.arange(B).repeat_interleave(C)
    cams = torch.arange(C).repeat(B)
    kwargs = model.render_context()
    if point_offsets is not None:
        if not isinstance(model, GaussianHead):
            raise ValueError(f"point_offsets are per-Gaussian; got a {type(model).__name__}")
        kwargs["point_offsets"] = point_offsets.to(device)  # avatars keep theirs on the CPU
    out = []
    for s in range(0, B * C, chunk):
        i, c = ids[s : s + chunk], cams[s : s + chunk]
        n = len(i)
        eye = torch.eye(3, device=device).expand(n, 3, 3)
        r = model.render(
            z_id[i].to(device), z_exp[i].to(device), eye, torch.zeros(n, 3, device=device),
            torch.ones(n, device=device), rig.viewmats[c].to(device),
            rig.K_lr.to(device).expand(n, 3, 3), rig.lr_size, rig.lr_size, **kwargs,
        )  # fmt: skip
        out.append(r.rgb.clamp(0, 1).cpu())
    rgb = torch.cat(out)
    return rgb.reshape(B, C, *rgb.shape[1:])


def lerp_codes(a: Tensor, b: Tensor, steps: int) -> Tensor:  # [D], [D] -> [steps, D]
    """Linear interpolation from ``a`` to ``b`` inclusive (codes live in a Gaussian-
    regularised latent space, where straight lines stay in-distribution)."""
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device)[:, None]
    return (1 - t) * a + t * b
