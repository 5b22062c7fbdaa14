"""The torch rasterizer against gsplat's own pure-torch reference, on CPU.

``gsplat.rendering._rasterization`` is gsplat's autograd implementation of
``rasterization(rasterize_mode="classic" | "antialiased", packed=False)``: projection
(``gsplat.cuda._torch_impl._fully_fused_projection``), tile intersection, and
``_rasterize_to_pixels`` (which picks the (Gaussian, pixel) pairs with the CUDA kernel
``rasterize_to_indices_in_range`` and composites them with nerfacc). Everything
differentiable is pure torch; the CUDA-only pieces are replaced here by small torch
equivalents, so what is compared is gsplat's math, not ours:

* ``isect_tiles`` / ``isect_offset_encode`` -> gsplat's own torch versions
  ``_isect_tiles`` / ``_isect_offset_encode`` (same tile ranges and (image, tile, depth)
  sort keys as the CUDA ones);
* ``rasterize_to_indices_in_range`` -> :func:`_indices_in_range`, the CUDA kernel's loop
  (``RasterizeToIndices3DGS.cu``) written with tensors: per tile, its depth-sorted
  intersections; per pixel, ``α = min(0.999, o·exp(-σ))``, skipped when ``σ < 0`` or
  ``α < 1/255``, and the Gaussian whose ``T·(1-α)`` reaches ``1e-4`` stops the pixel,
  excluded, as are all behind it;
* ``nerfacc.render_weight_from_alpha`` / ``accumulate_along_rays`` -> exclusive products
  and segment sums of the same definition (:func:`_fake_nerfacc`).

What the reference does differently from gsplat's CUDA path, and why it does not matter:
its projection sizes the tile boxes as ``ceil(3.33·sqrt(Σii))`` per axis, not by the
opacity (CUDA ≥ 1.5, and our ``"gsplat15"``), and does not cull ``o < 1/255``; both
boxes contain every pixel with ``α >= 1/255`` and every other pixel is skipped, so the
renders agree. It tests ``z > near`` where CUDA (and we) test ``z >= near`` and clamps
``det`` at 1e-10 where we cull ``det <= 0``; the scenes avoid both edges. Its
``_rasterize_to_pixels`` restarts stopped pixels every ``batch_per_iter·256``
intersections of a tile; these scenes have far fewer, so it runs once and stops as the
CUDA kernel does. ``"legacy"`` is not gsplat's rule, and the last test shows it differs.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

gsplat = pytest.importorskip("gsplat", reason="gsplat is not installed (pip install gphm[dev])")
from gsplat import rendering  # noqa: E402
from gsplat.cuda import _torch_impl, _wrapper  # noqa: E402

from gphm.render import rasterize_gaussians  # noqa: E402
from gphm.render._gaussians_gsplat import MIN_VERSION, _version_tuple  # noqa: E402

if _version_tuple(gsplat.__version__) < MIN_VERSION:
    pytest.skip(f"gsplat {gsplat.__version__} predates 1.5's rules", allow_module_level=True)

F64 = torch.float64
ALPHA_THRESHOLD = 1.0 / 255.0


@torch.no_grad()
def _indices_in_range(
    range_start, range_end, transmittances, means2d, conics, opacities,
    image_width, image_height, tile_size, isect_offsets, flatten_ids,
):  # fmt: skip
    """torch version of ``gsplat.cuda._wrapper.rasterize_to_indices_in_range``:
    ``(gaussian_ids, pixel_ids, image_ids)`` [M] grouped by (image, pixel), front to back."""
    N = means2d.shape[-2]
    tile_h, tile_w = isect_offsets.shape[-2:]
    offsets = isect_offsets.reshape(-1).long()
    ends = torch.cat([offsets[1:], offsets.new_tensor([len(flatten_ids)])])
    means2d, conics = means2d.reshape(-1, 2), conics.reshape(-1, 3)
    opacities, trans = opacities.reshape(-1), transmittances.reshape(-1, image_height, image_width)
    block = tile_size * tile_size
    out_g, out_key = [], []
    for flat_tile in range(len(offsets)):
        image, tile = divmod(flat_tile, tile_h * tile_w)
        ty, tx = divmod(tile, tile_w)
        start, end = int(offsets[flat_tile]), int(ends[flat_tile])
        lo = start + block * range_start
        hi = min(end, start + block * range_end)
        if hi <= lo:
            continue
        ids = flatten_ids[lo:hi].long()  # [K] flattened image·N + gaussian, depth order
        rows = torch.arange(ty * tile_size, min((ty + 1) * tile_size, image_height))
        cols = torch.arange(tx * tile_size, min((tx + 1) * tile_size, image_width))
        r, c = torch.meshgrid(rows, cols, indexing="ij")
        r, c = r.reshape(-1), c.reshape(-1)  # [P] the tile's pixels inside the image
        px = torch.stack([c, r], -1).to(means2d) + 0.5
        d = px[:, None, :] - means2d[ids][None]  # [P, K, 2]
        a, b, cc = conics[ids].unbind(-1)
        sigma = 0.5 * (a * d[..., 0] ** 2 + cc * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
        alpha = torch.clamp(opacities[ids] * torch.exp(-sigma), max=0.999)
        valid = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
        keep = torch.where(valid, 1.0 - alpha, 1.0)
        # T after each slot, multiplied in the kernel's order starting from the pixel's T
        t0 = trans[image, r, c].to(alpha)[:, None]
        t_after = torch.cumprod(torch.cat([t0, keep], dim=1), dim=1)[:, 1:]
        take = valid & (t_after > 1e-4)  # T is non-increasing: the stop and all behind
        p_idx, k_idx = torch.nonzero(take, as_tuple=True)  # row-major: pixel, then depth
        out_g.append(ids[k_idx])
        out_key.append(image * image_height * image_width + r[p_idx] * image_width + c[p_idx])
    if not out_g:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    g, key = torch.cat(out_g), torch.cat(out_key)
    order = torch.sort(key, stable=True).indices  # the kernel's per-pixel output blocks
    g, key = g[order], key[order]
    return g % N, key % (image_width * image_height), key // (image_width * image_height)


def _fake_nerfacc() -> types.ModuleType:
    """nerfacc's two volume-rendering helpers that gsplat's ``accumulate`` imports."""

    def render_weight_from_alpha(alphas, packed_info=None, ray_indices=None, n_rays=None):
        # ray_indices are grouped by ray (front to back inside a ray): lay each ray's
        # samples out in a row, and the exclusive product is a cumprod along it.
        M = alphas.shape[0]
        counts = torch.bincount(ray_indices, minlength=n_rays)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(M) - starts[ray_indices]
        K = int(counts.max()) if M else 0
        rows = alphas.new_ones(n_rays, K + 1).index_put((ray_indices, pos + 1), 1.0 - alphas)
        trans = torch.cumprod(rows, dim=1)[ray_indices, pos]
        return trans * alphas, trans

    def accumulate_along_rays(weights, values=None, ray_indices=None, n_rays=None):
        src = weights[:, None] if values is None else weights[:, None] * values
        return src.new_zeros(n_rays, src.shape[-1]).index_add(0, ray_indices, src)

    module = types.ModuleType("nerfacc")
    module.render_weight_from_alpha = render_weight_from_alpha
    module.accumulate_along_rays = accumulate_along_rays
    return module


@pytest.fixture
def gsplat_reference(monkeypatch):
    """``gsplat.rendering._rasterization`` with its CUDA-only helpers replaced."""

    def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, **_):
        return _torch_impl._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)

    monkeypatch.setattr(rendering, "isect_tiles", isect_tiles)
    monkeypatch.setattr(rendering, "isect_offset_encode", _torch_impl._isect_offset_encode)
    monkeypatch.setattr(_wrapper, "rasterize_to_indices_in_range", _indices_in_range)
    monkeypatch.setitem(sys.modules, "nerfacc", _fake_nerfacc())

    def render(means, quats, scales, opacities, features, viewmats, Ks, W, H, bg, aa):
        mode = "antialiased" if aa else "classic"
        render, alpha, _ = rendering._rasterization(
            means, quats, scales, opacities, features, viewmats, Ks, W, H,
            near_plane=0.01, eps2d=0.3, tile_size=16, backgrounds=bg, rasterize_mode=mode,
        )  # fmt: skip
        return render, alpha

    return render


def _scene(N, C, D, W, H, per_camera, seed, high):
    """Random Gaussians in front of C cameras. ``high``: opacities in [0.9, 1] (some
    exactly 0.999 and 1, where the clamps and the box rules differ), plus a few faint
    ones (< 1/255, culled by gsplat 1.5 and skipped by its reference)."""
    g = torch.Generator().manual_seed(seed)
    f = 1.1 * W
    z = 3.0 + 2.0 * torch.rand(N, generator=g, dtype=F64)
    uv = torch.rand(N, 2, generator=g, dtype=F64) * torch.tensor([W, H], dtype=F64)
    # the first four on pixel centres, where opacities 0.999 and 1 meet the α clamp
    uv[:4] = torch.tensor([[10.5, 12.5], [20.5, 8.5], [30.5, 25.5], [15.5, 30.5]], dtype=F64)
    xy = (uv - torch.tensor([W / 2, H / 2], dtype=F64)) * z[:, None] / f
    means = torch.cat([xy, z[:, None]], -1)
    quats = torch.randn(N, 4, generator=g, dtype=F64)
    scales = 0.08 + 0.25 * torch.rand(N, 3, generator=g, dtype=F64)
    if high:
        opac = 0.9 + 0.1 * torch.rand(N, generator=g, dtype=F64)
        opac[:4] = torch.tensor([1.0, 0.999, 1.0, 0.9995], dtype=F64)
    else:
        opac = 0.02 + 0.33 * torch.rand(N, generator=g, dtype=F64)
    opac[-2:] = torch.tensor([0.5, 0.9], dtype=F64) * ALPHA_THRESHOLD
    feats = torch.rand(*((C,) if per_camera else ()), N, D, generator=g, dtype=F64)
    eye = torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.3, -0.2], [-0.5, 0.2, 0.1]], dtype=F64)[:C]
    viewmats = _torch_look_at(eye, torch.tensor([0.0, 0.0, 4.0], dtype=F64))
    K = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]], dtype=F64)
    bg = torch.rand(C, D, generator=g, dtype=F64)
    return means, quats, scales, opac, feats, viewmats, K.expand(C, 3, 3).clone(), bg


def _torch_look_at(eye, target):  # [C, 3] -> world-to-camera [C, 4, 4], OpenCV axes
    from gphm.geometry import look_at

    return look_at(eye, target, torch.tensor([0.0, -1.0, 0.0], dtype=F64))


_CASES = [  # (D, per-camera features, C, high opacities, antialiased, seed)
    (3, False, 2, True, False, 0),
    (3, True, 3, True, False, 1),
    (32, False, 2, True, False, 2),
    (32, True, 2, False, False, 3),
    (3, False, 2, False, False, 4),
    (3, False, 2, True, True, 5),
]


@pytest.mark.parametrize(("D", "per_camera", "C", "high", "aa", "seed"), _CASES)
def test_torch_path_equals_gsplats_torch_reference_forward_and_backward(
    gsplat_reference, D, per_camera, C, high, aa, seed
):
    N, W, H = 30, 40, 36  # 3×3 gsplat tiles, partial at the border
    scene = _scene(N, C, D, W, H, per_camera, seed, high)
    viewmats, Ks = scene[5], scene[6]
    ours_in = [t.clone().requires_grad_(True) for t in (*scene[:5], scene[7])]
    ref_in = [t.clone().requires_grad_(True) for t in (*scene[:5], scene[7])]
    ours = rasterize_gaussians(
        *ours_in[:5], viewmats, Ks, W, H, ours_in[5], backend="torch", antialiased=aa
    )
    ref = gsplat_reference(*ref_in[:5], viewmats, Ks, W, H, ref_in[5], aa)
    assert ref[0].dtype == F64 and ref[0].shape == ours[0].shape == (C, H, W, D)
    if high:  # the regime where gsplat 1.4-style boxes and a 0.99 clamp would differ
        assert (ours[1] > 0.9).float().mean() > 0.1
        assert (ours[1] > 0.999).any()  # pixels beyond one Gaussian's legacy clamp
    for name, a, b in zip(("render", "alpha"), ours, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=name)
    g = torch.Generator().manual_seed(100 + seed)
    w_r = torch.randn(ours[0].shape, generator=g, dtype=F64)
    w_a = torch.randn(ours[1].shape, generator=g, dtype=F64)
    g_ours = torch.autograd.grad((ours[0] * w_r).sum() + (ours[1] * w_a).sum(), ours_in)
    g_ref = torch.autograd.grad((ref[0] * w_r).sum() + (ref[1] * w_a).sum(), ref_in)
    names = ("means", "quats", "scales", "opacities", "features", "backgrounds")
    for name, a, b in zip(names, g_ours, g_ref):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, atol=1e-10 * b.abs().max().item(), rtol=1e-9, msg=name)


def test_legacy_semantics_differ_from_gsplat_at_high_opacity(gsplat_reference):
    """The comparison above can tell the rules apart: legacy's 0.99 clamp and 3σ-of-λ_max
    boxes do not match gsplat's reference where opacities are near 1."""
    N, C, D, W, H = 30, 2, 3, 40, 36
    scene = _scene(N, C, D, W, H, False, 0, True)
    args = (*scene[:5], scene[5], scene[6], W, H, scene[7])
    legacy = rasterize_gaussians(*args, backend="torch", semantics="legacy")
    ref = gsplat_reference(*args, False)
    assert (legacy[1] - ref[1]).abs().max() > 5e-3
