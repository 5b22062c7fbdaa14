"""Render codes of a trained model at the canonical pose from chosen cameras.

Two batch layouts, both no-grad and moving results to the CPU chunk by chunk:

* :func:`render_views` — row ``b``'s codes from row ``b``'s camera (a camera per row);
* :func:`render_codes` — every code pair from every camera of a :class:`ViewRig`.

Works with both stages (:class:`HeadModel`); ``point_offsets`` (a fitted avatar's
per-Gaussian offsets) only with a Gaussian head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gphm.models.gaussian_head import GaussianHead
from gphm.rendering.protocols import HeadModel
from gphm.rendering.rigs import ViewRig

__all__ = ["ViewBatch", "render_codes", "render_views"]


@dataclass
class ViewBatch:
    rgb: Tensor  # [B, S, S, 3] in [0, 1], on the CPU, composited on white
    alpha: Tensor  # [B, S, S, 1] accumulated opacity (bilinear from the low-res render)


def _context(
    model: HeadModel, point_offsets: Tensor | None, device: torch.device
) -> dict[str, Any]:
    """``model.render_context()`` plus ``point_offsets`` on ``device`` (avatars keep theirs
    on the CPU); ``ValueError`` for offsets given to a mesh model."""
    kwargs = model.render_context()
    if point_offsets is not None:
        if not isinstance(model, GaussianHead):
            raise ValueError(f"point_offsets are per-Gaussian; got a {type(model).__name__}")
        kwargs["point_offsets"] = point_offsets.to(device)
    return kwargs


def _canonical_pose(n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Identity rotation [n, 3, 3], zero translation [n, 3], unit scale [n]."""
    eye = torch.eye(3, device=device).expand(n, 3, 3)
    return eye, torch.zeros(n, 3, device=device), torch.ones(n, device=device)


@torch.no_grad()
def render_views(
    model: HeadModel,
    z_id: Tensor,  # [B, Did]
    z_exp: Tensor,  # [B, Dexp]
    viewmats: Tensor,  # [B, 4, 4] world -> camera, one per row
    Ks_lr: Tensor,  # [B, 3, 3] low-resolution intrinsics, one per row
    lr_size: int,
    point_offsets: Tensor | None = None,  # [N, 3] (GaussianHead only)
    chunk: int = 8,
) -> ViewBatch:
    """Render row ``b``'s codes from row ``b``'s camera, the head at the canonical pose
    (unlike :func:`render_codes`, which renders every code pair from every camera)."""
    device = next(model.parameters()).device
    kwargs = _context(model, point_offsets, device)
    rgbs, alphas = [], []
    for s in range(0, z_id.shape[0], chunk):
        n = len(z_id[s : s + chunk])
        r = model.render(
            z_id[s : s + chunk].to(device), z_exp[s : s + chunk].to(device),
            *_canonical_pose(n, device),
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


@torch.no_grad()
def render_codes(
    model: HeadModel,
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
    kwargs = _context(model, point_offsets, device)
    out = []
    for s in range(0, B * C, chunk):
        i, c = ids[s : s + chunk], cams[s : s + chunk]
        n = len(i)
        r = model.render(
            z_id[i].to(device), z_exp[i].to(device), *_canonical_pose(n, device),
            rig.viewmats[c].to(device), rig.K_lr.to(device).expand(n, 3, 3), rig.lr_size,
            rig.lr_size, **kwargs,
        )  # fmt: skip
        out.append(r.rgb.clamp(0, 1).cpu())
    rgb = torch.cat(out)
    return rgb.reshape(B, C, *rgb.shape[1:])
