"""Landmark conventions and the image regions they span.

Conventions: landmarks in pixels are ``uv`` ``[..., L, 2]`` with pixel centres at
``i + 0.5`` (:func:`gphm.geometry.cameras.project_points`); region masks are
``[..., H, W]`` floats in {0, 1}. Pure functions of tensors; nothing is learned here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["IBUG68_REGIONS", "EXPRESSIVE_REGIONS", "region_box_mask"]

#: iBUG-68 landmark index ranges of the face regions (end exclusive).
IBUG68_REGIONS: dict[str, range] = {
    "jaw": range(0, 17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "mouth": range(48, 68),
}

#: The iBUG-68 regions whose shape an expression changes beyond the jaw line: each eye,
#: each brow and the mouth, one box each (two eyes in one box would cover the nose bridge).
EXPRESSIVE_REGIONS: dict[str, range] = {
    "brow_r": range(17, 22),
    "brow_l": range(22, 27),
    "eye_r": range(36, 42),
    "eye_l": range(42, 48),
    "mouth": range(48, 68),
}


def region_box_mask(
    uv: Tensor,  # [..., L, 2] landmark pixels
    regions: Mapping[str, Sequence[int] | range],
    height: int,
    width: int,
    pad: float,
) -> Tensor:  # [..., H, W] float, 1 inside the union of the regions' boxes
    """The union of the regions' landmark bounding boxes, each grown on every side by
    ``pad`` × the size (largest side) of the bounding box of *all* the landmarks, so the
    margin scales with the face and not with the region (a closed eye's box is flat).

    A pixel is inside a box when its centre is. Non-finite landmarks are ignored (a
    region without a finite landmark has no box).
    """
    if uv.shape[-1] != 2:
        raise ValueError(f"uv must be [..., L, 2], got {tuple(uv.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    lead = uv.shape[:-2]
    L = uv.shape[-2]
    flat = uv.reshape(-1, L, 2).detach()
    ok = torch.isfinite(flat).all(-1)  # [B, L]
    big = torch.finfo(flat.dtype).max

    def box(index: Tensor) -> tuple[Tensor, Tensor]:  # [B, 2] lo, hi (inf where empty)
        pts, valid = flat[:, index], ok[:, index, None]
        lo = torch.where(valid, pts, torch.full_like(pts, big)).amin(-2)
        hi = torch.where(valid, pts, torch.full_like(pts, -big)).amax(-2)
        return lo, hi

    lo_all, hi_all = box(torch.arange(L, device=uv.device))
    margin = (pad * (hi_all - lo_all).amax(-1, keepdim=True)).clamp_min(0)  # [B, 1]
    v, u = torch.meshgrid(torch.arange(height, device=uv.device, dtype=uv.dtype) + 0.5,
                          torch.arange(width, device=uv.device, dtype=uv.dtype) + 0.5,
                          indexing="ij")  # fmt: skip
    mask = torch.zeros(flat.shape[0], height, width, dtype=torch.bool, device=uv.device)
    for name, index in regions.items():
        idx = torch.as_tensor(list(index), dtype=torch.long, device=uv.device)
        if idx.numel() == 0 or int(idx.max()) >= L or int(idx.min()) < 0:
            raise ValueError(f"region {name!r}: indices must lie in [0, {L}), got {list(index)}")
        lo, hi = box(idx)
        lo, hi = lo - margin, hi + margin
        inside = ((u >= lo[:, None, None, 0]) & (u <= hi[:, None, None, 0])
                  & (v >= lo[:, None, None, 1]) & (v <= hi[:, None, None, 1]))  # fmt: skip
        mask |= inside
    return mask.to(uv.dtype).reshape(*lead, height, width)
