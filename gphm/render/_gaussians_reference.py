"""TEST-ONLY dense reference for the Gaussian rasterizer (the oracle of the tests).

It follows gsplat's per-pixel CUDA loop literally: per camera, Gaussians in depth order,
each evaluated on every pixel of the image, with the same skip, clamp, stop and tile
truncation rules as :mod:`gphm.render._gaussians_torch` (for either of its
:data:`SEMANTICS`). It materialises [pixels] per Gaussian, loops over Gaussians in
Python and is differentiated by autograd, so use it
only on tiny scenes. The projection is shared with the fast path (it is pure autograd
code, checked separately against closed forms and by gradcheck).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gphm.render._gaussians_torch import (
    ALPHA_THRESHOLD,
    DEFAULT_SEMANTICS,
    EPS2D,
    SEMANTICS,
    T_THRESHOLD,
    TILE_SIZE,
    blur_compensation,
    conics_and_radii,
    gsplat_tile_bounds,
    project_gaussians,
)


def rasterize_naive(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    features: Tensor,  # [N, D] or [C, N, D]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [C, D]
    eps2d: float = EPS2D,
    antialiased: bool = False,
    semantics: str = DEFAULT_SEMANTICS,
) -> tuple[Tensor, Tensor]:  # render [C, H, W, D], alpha [C, H, W, 1]
    """Same contract as ``rasterize_torch``; slow and dense, for tests only."""
    rule = SEMANTICS[semantics]
    C, N, D = viewmats.shape[0], means.shape[0], features.shape[-1]
    assert means.shape == (N, 3) and quats.shape == (N, 4) and scales.shape == (N, 3)
    assert opacities.shape == (N,) and features.shape[-2:] == (N, D)
    assert viewmats.shape == (C, 4, 4) and Ks.shape == (C, 3, 3)
    if features.dim() == 2:
        features = features[None].expand(C, N, D)
    if backgrounds is None:
        backgrounds = features.new_zeros(C, D)
    proj = project_gaussians(means, quats, scales, viewmats, Ks, width, height, eps2d)
    opacities = opacities[None].expand(C, N)
    if antialiased:
        opacities = opacities * blur_compensation(proj.cov2d, eps2d)
    conics, radii = conics_and_radii(proj, opacities.detach(), width, height, rule)
    lo, hi = gsplat_tile_bounds(proj.means2d, radii, width, height)
    jj, ii = torch.meshgrid(
        torch.arange(height, device=means.device),
        torch.arange(width, device=means.device),
        indexing="ij",
    )
    pix = torch.stack([ii, jj], -1).reshape(-1, 2).to(means)  # [HW, 2] (column, row)
    pix_tile = torch.div(pix.long(), TILE_SIZE, rounding_mode="floor")
    pix = pix + 0.5
    renders, alphas = [], []
    for c in range(C):
        T = means.new_ones(height * width)
        out = means.new_zeros(height * width, D)
        done = torch.zeros(height * width, dtype=torch.bool, device=means.device)
        for n in torch.sort(proj.depths[c], stable=True).indices.tolist():
            if (radii[c, n] == 0).any():
                continue
            in_tiles = ((pix_tile >= lo[c, n]) & (pix_tile < hi[c, n])).all(-1)
            d = pix - proj.means2d[c, n]
            a, b, cc = conics[c, n]
            sigma = 0.5 * (a * d[:, 0] ** 2 + cc * d[:, 1] ** 2) + b * d[:, 0] * d[:, 1]
            alpha = torch.clamp(opacities[c, n] * torch.exp(-sigma), max=rule.max_alpha)
            take = in_tiles & ~done & (alpha >= ALPHA_THRESHOLD)
            next_T = T * (1 - alpha)
            stop = take & (next_T <= T_THRESHOLD)
            done = done | stop
            take = take & ~stop
            out = out + torch.where(take, alpha * T, 0.0)[:, None] * features[c, n]
            T = torch.where(take, next_T, T)
        renders.append((out + T[:, None] * backgrounds[c]).reshape(height, width, D))
        alphas.append((1 - T).reshape(height, width, 1))
    return torch.stack(renders), torch.stack(alphas)
