"""Pure-torch Gaussian splatting with gsplat's "classic" semantics (docs/architecture.md §5.1).

Pipeline, each step a separate function:

1. :func:`project_gaussians` — EWA projection of the 3D covariances (autograd);
2. :func:`conics_and_radii` — inverse 2D covariance and the per-axis radii of the
   Gaussian's tile box (the rule depends on the :class:`Semantics`);
3. :func:`plan_tiles` — (tile, Gaussian) intersections sorted by tile then depth and
   batched into chunks (no grad);
4. :class:`_CompositeTiles` — per-chunk alpha compositing with a hand-written backward.

Semantics (gsplat ``rasterize_mode="classic"``). Two rules exist, see :data:`SEMANTICS`;
``"gsplat15"`` (the default) is gsplat ≥ 1.5's, CUDA kernels and pure-torch reference
alike, and ``"legacy"`` is what this module did before (gsplat 1.4's tile boxes and a
0.99 clamp), kept so that models trained with it render as they were trained:

* camera-space covariance ``R Σ Rᵀ`` pushed through the perspective Jacobian, whose
  ``x/z, y/z`` are clamped to 1.3× the field of view; ``cov2d + eps2d·I``;
* Gaussians with camera ``z < 0.01`` are culled, and so are those whose radius box lies
  outside the image;
* radii (the half-extents of the tile box, in pixels):

  - ``gsplat15``: per axis, ``r_x = ceil(e·sqrt(Σxx))`` and ``r_y = ceil(e·sqrt(Σyy))``
    with the opacity-aware ``e = min(3.33, sqrt(2·ln(255·o)))`` (``o`` after the
    antialiasing compensation); ``o < 1/255`` is culled. ``{α >= 1/255}`` is the ellipse
    ``dᵀΣ⁻¹d <= e²`` whose bounding box is exactly ``±e·sqrt(Σxx), ±e·sqrt(Σyy)``, so the
    box never cuts off a pixel that would be composited;
  - ``legacy``: ``r_x = r_y = ceil(3·sqrt(λ_max))``; for opacities near 1 this cuts off
    the ellipse's tips (where ``α`` is still up to ~0.011·o);

* a Gaussian is considered for every pixel of the 16×16 tiles its radius box touches
  (``floor((m - r)/16) <= tile < ceil((m + r)/16)`` per axis; pixels outside those tiles
  get nothing from it);
* ``α = min(α_max, o·exp(-½ dᵀ Σ⁻¹ d))`` with ``α_max`` 0.999 (``gsplat15``) or 0.99
  (``legacy``) and ``d`` from the pixel centre ``(i+0.5, j+0.5)`` to the projected mean;
  ``α < 1/255`` is skipped; front to back in depth order; the Gaussian whose ``T·(1-α)``
  would reach ``1e-4`` stops the pixel and is not included;
* ``render = Σ wᵢ fᵢ + T·background``, ``alpha = 1 - T``.

Fast path. Work is done on 8×8 *work tiles*. A (work tile, Gaussian) pair is made when the
work tile lies in one of the Gaussian's 16×16 gsplat tiles *and* meets the tight box of
the ellipse where ``α >= 1/255``; pixels outside that box would be skipped anyway, so the
result is the same as gsplat's while the padded work is about half. Pairs are sorted by
(tile, depth); tiles with similar pair counts are grouped into chunks padded to the
chunk's largest count ``K``, and every chunk is evaluated as dense ``[tiles, 64, K]``
tensors: the exponent by one matmul against a per-pixel quadratic basis, transmittance as
a cumulative sum of ``log(1 - α)`` (nothing underflows), the colours by ``bmm``. The plan
grows with the number of pairs and the scratch buffers with the largest chunk (a budget
of CHUNK_ELEMENTS, or one tile's pairs × 64); nothing is ever pixels × Gaussians. The
backward recomputes α chunk by chunk instead of storing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gphm.geometry.cameras import world_to_camera
from gphm.geometry.rotations import quat_to_matrix

EPS2D = 0.3  # added to the 2D covariance's diagonal (gsplat eps2d)
NEAR_PLANE = 0.01  # camera z below this is culled
ALPHA_THRESHOLD = 1.0 / 255.0
T_THRESHOLD = 1e-4  # transmittance at which a pixel is done
TILE_SIZE = 16  # gsplat's tile: decides which Gaussians a pixel may see
WORK_TILE = 8  # our unit of work; divides TILE_SIZE so gsplat's truncation is kept
CHUNK_ELEMENTS = 1 << 19  # tiles · pixels · K per chunk: 2 MB float32 buffers, cache-friendly
_FOV_CLAMP = 0.3  # the Jacobian's x/z, y/z are clamped to (1 + 0.3)× the field of view
_LOG_T_THRESHOLD = math.log(T_THRESHOLD)
_MIN_EXP = -30.0  # exp(-30)·o < 1/255 for any sane opacity, and exp stays on its fast path
_MAX_EXTENT = 3.33  # gsplat's cap on the opacity-aware extent (in σ); > sqrt(2·ln 255)


@dataclass(frozen=True)
class Semantics:
    """A rasterization rule: the α clamp and how the tile boxes are sized."""

    name: str
    max_alpha: float  # α = min(max_alpha, o·exp(-σ))
    opacity_aware: bool  # per-axis opacity-aware radii (gsplat >= 1.5), else 3σ of λ_max


#: The rules :func:`rasterize_torch` knows, by name (``rasterize_gaussians(semantics=...)``).
SEMANTICS = {
    "gsplat15": Semantics("gsplat15", max_alpha=0.999, opacity_aware=True),
    "legacy": Semantics("legacy", max_alpha=0.99, opacity_aware=False),
}
DEFAULT_SEMANTICS = "gsplat15"


@dataclass(frozen=True)
class Projection:
    """Per-camera 2D Gaussians (culling is decided by :func:`conics_and_radii`)."""

    means2d: Tensor  # [C, N, 2] pixels
    cov2d: Tensor  # [C, N, 3] (xx, xy, yy) including the eps2d blur
    depths: Tensor  # [C, N] camera z


def covariances_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances ``R S² Rᵀ`` [N, 3, 3] from quats [N, 4] (wxyz) and scales [N, 3]."""
    M = quat_to_matrix(quats) * scales[:, None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] wxyz, any norm
    scales: Tensor,  # [N, 3] linear
    viewmats: Tensor,  # [C, 4, 4] world -> camera
    Ks: Tensor,  # [C, 3, 3] pixels (skew ignored, as gsplat)
    width: int,
    height: int,
    eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE,
) -> Projection:
    """EWA projection with gsplat's conventions (differentiable)."""
    means_c = world_to_camera(viewmats, means)  # [C, N, 3]
    R = viewmats[:, None, :3, :3]  # [C, 1, 3, 3]
    cov_c = R @ covariances_3d(quats, scales)[None] @ R.transpose(-1, -2)  # [C, N, 3, 3]
    x, y, z = means_c.unbind(-1)
    # Culled Gaussians still flow through the graph: keep their numbers finite so that
    # zero upstream gradients stay zero instead of becoming NaN.
    z = torch.where(z >= near_plane, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    u, v = x / z, y / z
    # gsplat clamps the Jacobian's view direction to 1.3× the field of view: Gaussians far
    # outside the frustum would otherwise get huge, distorted footprints.
    lim_x = _FOV_CLAMP * 0.5 * width / fx
    lim_y = _FOV_CLAMP * 0.5 * height / fy
    uc = torch.clamp(u, min=-(cx / fx + lim_x), max=(width - cx) / fx + lim_x)
    vc = torch.clamp(v, min=-(cy / fy + lim_y), max=(height - cy) / fy + lim_y)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * uc / z, zero, fy / z, -fy * vc / z], dim=-1)
    J = J.reshape(z.shape + (2, 3))
    cov = J @ cov_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    cov2d = torch.stack([cov[..., 0, 0] + eps2d, cov[..., 0, 1], cov[..., 1, 1] + eps2d], -1)
    means2d = torch.stack([fx * u + cx, fy * v + cy], dim=-1)
    return Projection(means2d=means2d, cov2d=cov2d, depths=means_c[..., 2])


def blur_compensation(cov2d: Tensor, eps2d: float) -> Tensor:  # [C, N, 3] -> [C, N]
    """gsplat's ``"antialiased"`` opacity factor ``sqrt(det(Σ₂D) / det(Σ₂D + eps2d·I))``
    (Mip-Splatting's 2D filter), from the blurred ``cov2d``: the screen-space blur then
    spreads a Gaussian's footprint without adding to its total weight, so a Gaussian much
    thinner than a pixel contributes about its area instead of a full-opacity smear."""
    xx, xy, yy = cov2d.unbind(-1)
    det_blur = (xx * yy - xy * xy).clamp_min(1e-10)
    det_orig = (xx - eps2d) * (yy - eps2d) - xy * xy
    return torch.sqrt(torch.clamp(det_orig / det_blur, min=0.0))


def conics_and_radii(
    proj: Projection,
    opacities: Tensor,  # [C, N] effective opacities (after any antialiasing compensation)
    width: int,
    height: int,
    semantics: Semantics = SEMANTICS[DEFAULT_SEMANTICS],
    near_plane: float = NEAR_PLANE,
) -> tuple[Tensor, Tensor]:  # conics [C, N, 3] (a, b, c), radii [C, N, 2] int64 (0 = culled)
    """Inverse 2D covariances ``(a, b, c)`` (``σ = ½(a dx² + c dy²) + b dx dy``) and the
    per-axis radii ``(r_x, r_y)`` of the tile boxes, both zero for culled Gaussians.

    ``semantics.opacity_aware`` (gsplat ≥ 1.5): ``r = ceil(e·sqrt(diag Σ₂D))`` with
    ``e = min(3.33, sqrt(2·ln(255·o)))``, and ``o < 1/255`` culled. Otherwise (gsplat 1.4,
    ``legacy``): ``r_x = r_y = ceil(3·sqrt(λ_max))`` whatever the opacity.
    """
    xx, xy, yy = proj.cov2d.unbind(-1)
    det = xx * yy - xy * xy
    ok = det > 0
    det = torch.where(ok, det, torch.ones_like(det))  # finite gradients when culled
    conics = torch.stack([yy / det, -xy / det, xx / det], dim=-1)
    with torch.no_grad():
        if semantics.opacity_aware:
            visible = opacities >= ALPHA_THRESHOLD
            level = torch.log(torch.clamp(opacities / ALPHA_THRESHOLD, min=1.0))
            extent = torch.clamp(torch.sqrt(2.0 * level), max=_MAX_EXTENT)[..., None]
            var = torch.stack([xx, yy], dim=-1).clamp(min=0.0)
            radii = torch.ceil(extent * torch.sqrt(var))
            # o = 1/255 exactly gives e = 0: gsplat culls it (radius_clip = 0) too.
            ok = ok & visible & (radii > 0).all(-1)
        else:
            b = 0.5 * (xx + yy)
            lam = b + torch.sqrt(torch.clamp(b * b - det, min=0.01))
            radii = torch.ceil(3.0 * torch.sqrt(lam))[..., None].expand(*lam.shape, 2)
        rx, ry = radii.unbind(-1)
        mx, my = proj.means2d.unbind(-1)
        inside = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        keep = ok & (proj.depths >= near_plane) & inside
        radii = torch.where(keep[..., None], radii, torch.zeros_like(radii)).long()
    return conics, radii


def gsplat_tile_bounds(
    means2d: Tensor, radii: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:  # lo [..., 2], hi [..., 2] int64, half-open, in 16-px tiles
    """The 16×16 tiles gsplat assigns to each Gaussian: ``[lo, hi)`` per axis, from the
    means [..., 2] and per-axis radii [..., 2] of :func:`conics_and_radii`."""
    r = radii.to(means2d.dtype)
    size = torch.tensor(
        [math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)], device=means2d.device
    )
    lo = torch.floor((means2d - r) / TILE_SIZE).long().clamp(min=0)
    hi = torch.ceil((means2d + r) / TILE_SIZE).long().clamp(min=0)
    return torch.minimum(lo, size), torch.minimum(hi, size)


@dataclass(frozen=True)
class TileChunk:
    """Work tiles evaluated together, each padded to ``K`` (tile, Gaussian) slots."""

    tiles: Tensor  # [T] global work-tile ids (camera-major, row-major inside a camera)
    cams: Tensor  # [T] camera of each tile
    centres: Tensor  # [T, 2] pixel coordinates of each tile's centre
    gauss: Tensor  # [T, K] flattened camera·N + gaussian ids, depth-sorted; 0 in padding
    mask: Tensor  # [T, K] True for real slots


@dataclass(frozen=True)
class TilePlan:
    """No-grad bookkeeping shared by the forward and backward of the compositor."""

    num_cameras: int
    width: int
    height: int
    work_tile: int  # work tiles are work_tile × work_tile pixels
    tiles_x: int  # work tiles per image row
    tiles_y: int
    chunks: list[TileChunk]
    num_pairs: int  # (work tile, Gaussian) pairs
    padded_elements: int  # Σ over chunks of tiles · pixels · K: the work done
    max_chunk_elements: int  # largest chunk's tiles · pixels · K: scratch memory per buffer


@torch.no_grad()
def plan_tiles(
    means2d: Tensor,  # [C, N, 2]
    cov2d: Tensor,  # [C, N, 3]
    depths: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int64, 0 = culled
    opacities: Tensor,  # [C, N]
    width: int,
    height: int,
    work_tile: int | None = None,
    chunk_elements: int | None = None,
) -> TilePlan:
    """Intersect Gaussians with work tiles, sort by (tile, depth) and batch into chunks."""
    work_tile = work_tile or WORK_TILE
    chunk_elements = chunk_elements or CHUNK_ELEMENTS
    C, N = depths.shape
    device = means2d.device
    assert TILE_SIZE % work_tile == 0, "work tiles must subdivide gsplat's 16-px tiles"
    ratio = TILE_SIZE // work_tile
    tx, ty = math.ceil(width / work_tile), math.ceil(height / work_tile)
    size = torch.tensor([tx, ty], device=device)
    lo16, hi16 = gsplat_tile_bounds(means2d, radii, width, height)
    # Tight box of {α >= 1/255}: σ <= log(255·o), whose half-extent along x is
    # sqrt(2·log(255·o)·Σxx). Widened a little so rounding can only add work.
    level = torch.log(torch.clamp(opacities * 255.0, min=1.0))
    var = torch.stack([cov2d[..., 0], cov2d[..., 2]], dim=-1)
    extent = torch.sqrt(2.0 * level[..., None] * var) * 1.001 + 1e-3
    first_px = torch.ceil(means2d - extent - 0.5).long()
    last_px = torch.floor(means2d + extent - 0.5).long()
    lo = torch.maximum(lo16 * ratio, torch.div(first_px, work_tile, rounding_mode="floor"))
    hi = torch.minimum(hi16 * ratio, torch.div(last_px, work_tile, rounding_mode="floor") + 1)
    lo, hi = lo.clamp(min=0), torch.minimum(hi, size)
    extent_tiles = (hi - lo).clamp(min=0)
    visible = (radii > 0).all(-1) & (opacities >= ALPHA_THRESHOLD)
    counts = (extent_tiles[..., 0] * extent_tiles[..., 1] * visible).reshape(-1)  # [C*N]

    gid = torch.repeat_interleave(torch.arange(C * N, device=device), counts)
    P = gid.numel()
    local = torch.arange(P, device=device) - (torch.cumsum(counts, 0) - counts)[gid]
    w = extent_tiles.reshape(-1, 2)[gid, 0]
    lo_flat = lo.reshape(-1, 2)[gid]
    tile = (gid // N) * (tx * ty) + (lo_flat[:, 1] + local // w) * tx + lo_flat[:, 0] + local % w
    # Front to back inside a tile: sort once by (tile, global depth rank); a stable depth
    # sort makes ties follow the input order, as in the naive reference.
    rank = torch.empty(C * N, dtype=torch.long, device=device)
    rank[torch.sort(depths.reshape(-1), stable=True).indices] = torch.arange(C * N, device=device)
    order = torch.sort(tile * (C * N) + rank[gid]).indices
    tile, gid = tile[order], gid[order]

    tile_counts = torch.bincount(tile, minlength=C * tx * ty)
    starts = torch.cumsum(tile_counts, 0) - tile_counts
    busy = torch.nonzero(tile_counts).squeeze(1)
    busy = busy[torch.sort(tile_counts[busy], descending=True, stable=True).indices]
    chunks, padded, largest = [], 0, 0
    sizes = tile_counts[busy].tolist()
    pixels = work_tile * work_tile
    i = 0
    while i < len(sizes):
        # Greedy: the first (largest) tile fixes K; take more tiles while the chunk fits
        # the budget and padding wastes at most half of it.
        K, j = sizes[i], i + 1
        while j < len(sizes) and (j - i + 1) * K * pixels <= chunk_elements and 2 * sizes[j] >= K:
            j += 1
        ids = busy[i:j]
        slots = starts[ids, None] + torch.arange(K, device=device)
        mask = torch.arange(K, device=device) < tile_counts[ids, None]
        local_tile = ids % (tx * ty)
        centres = torch.stack([local_tile % tx, local_tile // tx], -1) * work_tile
        chunks.append(
            TileChunk(
                tiles=ids,
                cams=ids // (tx * ty),
                centres=centres.to(means2d.dtype) + 0.5 * work_tile,
                gauss=torch.where(mask, gid[torch.where(mask, slots, 0)], 0),
                mask=mask,
            )
        )
        padded += (j - i) * K * pixels
        largest = max(largest, (j - i) * K * pixels)
        i = j
    return TilePlan(C, width, height, work_tile, tx, ty, chunks, P, padded, largest)


def _pixel_basis(work_tile: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[P, 6] monomials (u², uv, v², u, v, 1) of the work-tile pixel centres relative to
    the tile centre, so that ``σ = basis @ coefficients`` is one matmul per chunk."""
    r = torch.arange(work_tile, dtype=dtype, device=device) + 0.5 - 0.5 * work_tile
    v, u = torch.meshgrid(r, r, indexing="ij")  # pixel p = row·work_tile + column
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)], dim=-1)


def _sigma_coefficients(m: Tensor, conics: Tensor) -> Tensor:  # [T, 6, K]
    """σ(u, v) = ½a(u-mx)² + b(u-mx)(v-my) + ½c(v-my)², expanded in the basis monomials.

    ``m`` [T, K, 2] are the means relative to the tile centre, ``conics`` [T, K, 3].
    """
    mx, my = m.unbind(-1)
    a, b, c = conics.unbind(-1)
    gx, gy = a * mx + b * my, b * mx + c * my
    return torch.stack([0.5 * a, b, 0.5 * c, -gx, -gy, 0.5 * (mx * gx + my * gy)], dim=-2)


def _sigma_coefficients_backward(
    m: Tensor, conics: Tensor, g: Tensor
) -> tuple[Tensor, Tensor]:  # d/dm [T, K, 2], d/dconics [T, K, 3]
    """Chain rule of :func:`_sigma_coefficients` for upstream gradients ``g`` [T, 6, K]."""
    mx, my = m.unbind(-1)
    a, b, c = conics.unbind(-1)
    g_uu, g_uv, g_vv, g_u, g_v, g_1 = g.unbind(-2)
    gx, gy = a * mx + b * my, b * mx + c * my
    # coefficient 5 is ½(mx·gx + my·gy) = ½(a mx² + 2b mx my + c my²)
    d_mx = -a * g_u - b * g_v + gx * g_1
    d_my = -b * g_u - c * g_v + gy * g_1
    d_a = 0.5 * g_uu - mx * g_u + 0.5 * mx * mx * g_1
    d_b = g_uv - my * g_u - mx * g_v + mx * my * g_1
    d_c = 0.5 * g_vv - my * g_v + 0.5 * my * my * g_1
    return torch.stack([d_mx, d_my], -1), torch.stack([d_a, d_b, d_c], -1)


@dataclass
class _ChunkState:
    """Per-pixel, per-slot compositing quantities of one chunk, [T, P, K] unless noted."""

    alpha: Tensor  # min(α_max, o·exp(-σ)), set to 0 where below 1/255 (skipped)
    above: Tensor  # 1.0 while the transmittance after the slot is above 1e-4, else 0.0
    weights: Tensor  # α·T for included slots, else 0
    t_final: Tensor  # [T, P] transmittance behind all included slots


class _Workspace:
    """Scratch buffers reused by every chunk of one call, viewed as [T, P, K].

    On CPU a fresh multi-megabyte tensor page-faults on first write (one fault per
    4 KiB), which costs more than the arithmetic done on it; the hot loop therefore
    writes into these buffers with ``out=`` and in-place ops.
    """

    def __init__(self, count: int, numel: int, like: Tensor):
        self._flat = [like.new_empty(numel) for _ in range(count)]

    def views(self, shape: tuple[int, ...]) -> list[Tensor]:
        n = math.prod(shape)
        return [b[:n].view(shape) for b in self._flat]


def _evaluate_chunk(
    basis: Tensor,  # [P, 6]
    coef: Tensor,  # [T, 6, K] coefficients of σ
    opac: Tensor,  # [T, K]
    bufs: list[Tensor],  # 4 scratch [T, P, K] buffers, overwritten
    max_alpha: float,
    unclamped: Tensor | None = None,  # [T, P, K] scratch: set to 1.0 where o·exp(-σ) <= α_max
) -> _ChunkState:
    """Front-to-back compositing of one chunk (gsplat's per-pixel loop, vectorised).

    Written for CPU speed: in-place ops; float masks written by comparisons with
    ``out=`` (multiplying by a bool tensor converts it first); ``log(1 - α)`` rather than
    the slower ``log1p``; ``exp`` arguments kept above -30, as float32 ``exp`` takes a slow
    path below -87 (the values clamped there end up masked out, so nothing changes).
    """
    alpha, log_keep, weights, above = bufs
    torch.matmul(basis, -coef, out=alpha)  # -σ
    alpha.clamp_(min=_MIN_EXP).exp_().mul_(opac[:, None, :])
    if unclamped is not None:  # gsplat passes gradients where o·exp(-σ) <= α_max, inclusive
        torch.le(alpha, max_alpha, out=unclamped)
    alpha.clamp_(max=max_alpha)
    # Skipped slots (α < 1/255) get α = 0: they leave T unchanged and get no weight.
    F.threshold_(alpha, _below(ALPHA_THRESHOLD, alpha.dtype), 0.0)
    torch.neg(alpha, out=log_keep).add_(1.0).log_()
    log_t = torch.cumsum(log_keep, dim=-1, out=weights)  # log T after each slot
    # log T is non-increasing, so "T after the slot <= 1e-4" marks a suffix of the slots:
    # its first is gsplat's stopping Gaussian (not included), the rest never run.
    torch.gt(log_t, _LOG_T_THRESHOLD, out=above)
    # log T in front of each slot -> weights α·T, zero once stopped.
    log_t.sub_(log_keep).clamp_(min=_MIN_EXP).exp_().mul_(alpha).mul_(above)
    # Σ wᵢ = 1 - T_final exactly (telescoping), so one sum gives the final transmittance.
    t_final = (1.0 - weights.sum(-1)).clamp_(min=0.0)
    return _ChunkState(alpha, above, weights, t_final)


def _below(x: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``x``: ``y > _below(x)`` is ``y >= x`` in dtype."""
    x_t = torch.tensor(x, dtype=dtype)
    return torch.nextafter(x_t, torch.zeros_like(x_t)).item()


def _chunk_inputs(
    chunk: TileChunk, means2d: Tensor, conics: Tensor, opacities: Tensor, feature_index: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gathered slot inputs: relative means [T,K,2], conics [T,K,3], opacities [T,K]
    (0 in padding, so padded slots are skipped as α = 0) and feature rows [T,K]."""
    m = means2d[chunk.gauss] - chunk.centres[:, None, :]
    opac = opacities[chunk.gauss] * chunk.mask
    return m, conics[chunk.gauss], opac, feature_index[chunk.gauss]


def _tiles_to_image(x: Tensor, plan: TilePlan) -> Tensor:  # [C, H, W, D]
    """[C·tiles, P, D] work-tile layout -> image layout."""
    C, D, s = plan.num_cameras, x.shape[-1], plan.work_tile
    x = x.reshape(C, plan.tiles_y, plan.tiles_x, s, s, D).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(C, plan.tiles_y * s, plan.tiles_x * s, D)
    return x[:, : plan.height, : plan.width]


def _image_to_tiles(x: Tensor, plan: TilePlan) -> Tensor:  # [C·tiles, P, D]
    """Image layout [C, H, W, D] -> work-tile layout (zero-padded at the borders)."""
    s = plan.work_tile
    pad_h, pad_w = plan.tiles_y * s - plan.height, plan.tiles_x * s - plan.width
    x = torch.nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    x = x.reshape(plan.num_cameras, plan.tiles_y, s, plan.tiles_x, s, x.shape[-1])
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, x.shape[-1])


class _CompositeTiles(torch.autograd.Function):
    """Alpha compositing of projected Gaussians with a hand-written backward.

    Per pixel, with ``g = dL/drender``, ``gA = dL/dalpha``, ``T_i`` the transmittance in
    front of slot ``i`` and ``S_i = Σ_{j>i} w_j (g·f_j) + T_final (g·bg - gA)`` (what lies
    behind it): ``dL/dα_i = T_i (g·f_i) - S_i / (1 - α_i)`` for included slots; zero for
    skipped and stopped slots, and zero into σ and opacity where ``o·exp(-σ) > max_alpha``
    (clamped; gsplat's ``<=`` test, so a value equal to the clamp still passes gradients).
    Since ``α = o·exp(-σ)``: ``dL/dσ = -α dL/dα`` and ``dL/do = Σ_pixels α dL/dα / o``.
    """

    @staticmethod
    def forward(
        ctx, means2d, conics, opacities, features, backgrounds, feature_index, plan, max_alpha
    ):
        # means2d [M, 2], conics [M, 3], opacities [M] for the M = C·N camera-Gaussians;
        # features [F, D] with feature_index [M] its row for each; backgrounds [C, D];
        # max_alpha the α clamp of the semantics.
        P = plan.work_tile**2
        basis = _pixel_basis(plan.work_tile, means2d.dtype, means2d.device)
        ws = _Workspace(4, plan.max_chunk_elements, means2d)
        n_tiles = plan.num_cameras * plan.tiles_x * plan.tiles_y
        tile_cam = torch.arange(n_tiles, device=means2d.device) // (plan.tiles_x * plan.tiles_y)
        out = backgrounds[tile_cam][:, None, :].expand(-1, P, -1).clone()
        t_final = means2d.new_ones(n_tiles, P)
        for chunk in plan.chunks:
            m, con, opac, fidx = _chunk_inputs(chunk, means2d, conics, opacities, feature_index)
            shape = (len(chunk.tiles), P, chunk.gauss.shape[1])
            coef = _sigma_coefficients(m, con)
            s = _evaluate_chunk(basis, coef, opac, ws.views(shape), max_alpha)
            out[chunk.tiles] = torch.baddbmm(
                s.t_final[..., None] * backgrounds[chunk.cams, None], s.weights, features[fidx]
            )
            t_final[chunk.tiles] = s.t_final
        ctx.plan, ctx.max_alpha = plan, max_alpha
        ctx.save_for_backward(
            means2d, conics, opacities, features, backgrounds, feature_index, t_final
        )
        alpha = 1.0 - _tiles_to_image(t_final[..., None], plan)
        return _tiles_to_image(out, plan), alpha

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_render, grad_alpha):
        means2d, conics, opacities, features, backgrounds, feature_index, t_final = (
            ctx.saved_tensors
        )
        plan: TilePlan = ctx.plan
        P = plan.work_tile**2
        basis = _pixel_basis(plan.work_tile, means2d.dtype, means2d.device)
        ws = _Workspace(7, plan.max_chunk_elements, means2d)
        g_tiles = _image_to_tiles(grad_render, plan)  # [tiles, P, D]
        ga_tiles = _image_to_tiles(grad_alpha, plan)[..., 0]  # [tiles, P]
        d_means, d_conics = torch.zeros_like(means2d), torch.zeros_like(conics)
        d_opac, d_feat = torch.zeros_like(opacities), torch.zeros_like(features)
        for chunk in plan.chunks:
            m, con, opac, fidx = _chunk_inputs(chunk, means2d, conics, opacities, feature_index)
            bufs = ws.views((len(chunk.tiles), P, chunk.gauss.shape[1]))
            coef = _sigma_coefficients(m, con)
            unclamped = bufs[6]
            s = _evaluate_chunk(basis, coef, opac, bufs[:4], ctx.max_alpha, unclamped)  # again
            tmp, w_gf, behind = bufs[1], bufs[4], bufs[5]
            g, f = g_tiles[chunk.tiles], features[fidx]  # [T, P, D], [T, K, D]
            torch.bmm(g, f.transpose(1, 2), out=w_gf).mul_(s.weights)  # w_i (g·f_i)
            prefix = torch.cumsum(w_gf, dim=-1, out=behind)
            d_t_final = (g * backgrounds[chunk.cams, None]).sum(-1) - ga_tiles[chunk.tiles]
            total = (prefix[..., -1] + s.t_final * d_t_final)[..., None]
            behind = prefix.neg_().add_(total)  # S_i: everything behind slot i
            # α·dL/dα = w_i (g·f_i) - S_i α_i / (1 - α_i), kept for unclamped, included
            # slots (skipped ones already have α = 0).
            torch.neg(s.alpha, out=tmp).add_(1.0).reciprocal_().mul_(s.alpha).mul_(behind)
            a_grad = w_gf.sub_(tmp)
            a_grad.mul_(unclamped).mul_(s.above)
            d_coef = -(basis.T @ a_grad)  # dL/d(σ coefficients), [T, 6, K]
            d_m, d_con = _sigma_coefficients_backward(m, con, d_coef)
            gauss = chunk.gauss.reshape(-1)
            d_means.index_add_(0, gauss, d_m.reshape(-1, 2))
            d_conics.index_add_(0, gauss, d_con.reshape(-1, 3))
            # Σ_pixels α dL/dα is the basis' constant moment; padded slots have o = 0.
            d_o = -d_coef[:, 5] / torch.where(opac > 0, opac, 1.0)
            d_opac.index_add_(0, gauss, d_o.reshape(-1))
            d_f = torch.bmm(s.weights.transpose(1, 2), g)  # [T, K, D]
            d_feat.index_add_(0, fidx.reshape(-1), d_f.reshape(-1, d_f.shape[-1]))
        d_bg = (_tiles_to_image(t_final[..., None], plan) * grad_render).sum(dim=(1, 2))
        return d_means, d_conics, d_opac, d_feat, d_bg, None, None, None


def rasterize_torch(
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
    """Tiled pure-torch rasterizer (inputs already validated by the public wrapper)."""
    rule = SEMANTICS[semantics]
    C, N, D = viewmats.shape[0], means.shape[0], features.shape[-1]
    if backgrounds is None:
        backgrounds = features.new_zeros(C, D)
    proj = project_gaussians(means, quats, scales, viewmats, Ks, width, height, eps2d)
    opac = opacities[None].expand(C, N)
    if antialiased:
        opac = opac * blur_compensation(proj.cov2d, eps2d)
    conics, radii = conics_and_radii(proj, opac.detach(), width, height, rule)
    plan = plan_tiles(proj.means2d, proj.cov2d, proj.depths, radii, opac, width, height)
    ids = torch.arange(C * N, device=means.device)
    per_camera = features.dim() == 3
    return _CompositeTiles.apply(
        proj.means2d.reshape(-1, 2),
        conics.reshape(-1, 3),
        opac.reshape(-1),
        features.reshape(-1, D),
        backgrounds,
        ids if per_camera else ids % max(N, 1),
        plan,
        rule.max_alpha,
    )
