"""CPU tests of the Gaussian rasterizer: closed forms, gsplat "classic" rules, the fast
tiled path against the dense reference (forward and backward), gradcheck, errors."""

import logging
import math

import pytest
import torch

from gphm.geometry import axis_angle_to_quat, intrinsics, look_at
from gphm.render import gaussians as gaussians_module
from gphm.render import rasterize_gaussians
from gphm.render._gaussians_reference import rasterize_naive
from gphm.render._gaussians_torch import (
    ALPHA_THRESHOLD,
    CHUNK_ELEMENTS,
    SEMANTICS,
    conics_and_radii,
    plan_tiles,
    project_gaussians,
)

F64 = torch.float64


def _cameras(C: int, f: float, width: int, height: int, dtype=F64, cx=None, cy=None):
    """C identical cameras at the origin looking down +z (world = camera frame)."""
    viewmats = torch.eye(4, dtype=dtype).expand(C, 4, 4).clone()
    cx = width / 2 if cx is None else cx
    cy = height / 2 if cy is None else cy
    Ks = intrinsics(f, f, cx, cy, dtype=dtype).expand(C, 3, 3).clone()
    return viewmats, Ks


def _on_axis(z, scale, opacity, n_feat=3, dtype=F64):
    """Isotropic Gaussians on the optical axis at depths ``z``."""
    z = torch.as_tensor(z, dtype=dtype).reshape(-1)
    N = z.numel()
    means = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], -1)
    quats = torch.randn(N, 4, dtype=dtype)  # isotropic: rotation must not matter
    scales = torch.full((N, 3), scale, dtype=dtype)
    opac = torch.full((N,), opacity, dtype=dtype)
    feats = torch.rand(N, n_feat, dtype=dtype)
    return means, quats, scales, opac, feats


def _random_scene(N, C, D, width, height, per_camera, dtype=F64, seed=0):
    """Random Gaussians in front of C cameras, some projected exactly onto tile borders."""
    g = torch.Generator().manual_seed(seed)
    f = 1.1 * width
    z = 3.0 + 2.0 * torch.rand(N, generator=g, dtype=dtype)
    uv = torch.rand(N, 2, generator=g, dtype=dtype) * torch.tensor([width, height], dtype=dtype)
    # Tile borders (multiples of 8 and 16 px) and the image corner: straddling Gaussians.
    border = torch.tensor([[16, 16], [32, 8], [8, 24], [16.0, 35.0], [0.0, 0.0]], dtype=dtype)
    uv[: len(border)] = border[: min(N, len(border))]
    uv[5:11] = torch.tensor([width * 0.55, height * 0.45], dtype=dtype)  # a stack
    xy = (uv - torch.tensor([width / 2, height / 2], dtype=dtype)) * z[:, None] / f
    means = torch.cat([xy, z[:, None]], -1)
    quats = torch.randn(N, 4, generator=g, dtype=dtype)
    scales = 0.03 + 0.2 * torch.rand(N, 3, generator=g, dtype=dtype)
    opac = 0.05 + 0.9 * torch.rand(N, generator=g, dtype=dtype)
    opac[:3] = torch.tensor([1.0, 0.995, 0.999], dtype=dtype)[: min(N, 3)]  # α clamp
    opac[5:11] = 0.97  # with the stack below: pixels that reach the transmittance stop
    feats = torch.rand(*((C,) if per_camera else ()), N, D, generator=g, dtype=dtype)
    eye = torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.3, -0.2], [-0.5, 0.2, 0.1]], dtype=dtype)[:C]
    target = torch.tensor([0.0, 0.0, 4.0], dtype=dtype)
    viewmats = look_at(eye, target, torch.tensor([0.0, -1.0, 0.0], dtype=dtype))
    Ks = intrinsics(f, f, width / 2, height / 2, dtype=dtype).expand(C, 3, 3).clone()
    bg = torch.rand(C, D, generator=g, dtype=dtype)
    return means, quats, scales, opac, feats, viewmats, Ks, bg


def _pixel_centres(width, height, dtype=F64):
    jj, ii = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ii.to(dtype) + 0.5, jj.to(dtype) + 0.5


@pytest.mark.parametrize(
    ("dtype", "eps2d", "antialiased", "o"),
    [(torch.float32, None, False, 0.8), (F64, None, False, 0.8), (F64, 0.05, False, 0.8),
     (F64, 0.3, True, 0.8), (F64, None, False, 1.0), (torch.float32, None, False, 1.0)],
)  # fmt: skip
def test_isotropic_gaussian_matches_closed_form(dtype, eps2d, antialiased, o):
    """None: the default screen-space blur, gsplat's 0.3 px². Antialiased: the opacity is
    scaled by sqrt(det Σ / det(Σ + eps·I)) = var₀ / (var₀ + eps) for an isotropic splat.
    o = 1: the default (gsplat15) α clamp of 0.999 at the centre, and the tile box still
    holds every pixel with α >= 1/255 (legacy's 3σ box would cut off its rim)."""
    W = H = 24
    f, z, s = 20.0, 4.0, 0.5
    means, quats, scales, opac, feats = _on_axis([z], s, o, dtype=dtype)
    viewmats, Ks = _cameras(1, f, W, H, dtype)
    bg = torch.tensor([[0.2, 0.5, 0.9]], dtype=dtype)
    blur = ({} if eps2d is None else {"eps2d": eps2d}) | {"antialiased": antialiased}
    render, alpha = rasterize_gaussians(
        means, quats, scales, opac, feats, viewmats, Ks, W, H, bg, backend="torch", **blur
    )
    assert render.shape == (1, H, W, 3) and alpha.shape == (1, H, W, 1)
    assert render.dtype == dtype and alpha.dtype == dtype
    u, v = _pixel_centres(W, H, dtype)
    r2 = (u - W / 2) ** 2 + (v - H / 2) ** 2
    var0 = (f * s / z) ** 2
    var = var0 + (0.3 if eps2d is None else eps2d)
    expected = (o * var0 / var if antialiased else o) * torch.exp(-0.5 * r2 / var)
    expected = expected.clamp(max=SEMANTICS["gsplat15"].max_alpha)
    expected = torch.where(expected >= ALPHA_THRESHOLD, expected, 0.0)  # skipped
    assert (expected == 0).any() and (expected > 0.5).any()  # both regimes are exercised
    tol = 1e-12 if dtype == F64 else 2e-6
    torch.testing.assert_close(alpha[0, ..., 0], expected, atol=tol, rtol=0)
    want = expected[..., None] * feats[0] + (1 - expected[..., None]) * bg[0]
    torch.testing.assert_close(render[0], want, atol=tol, rtol=0)


@pytest.mark.parametrize("semantics", ["gsplat15", "legacy"])
def test_near_opaque_gaussian_hides_far_one_regardless_of_order(semantics):
    W = H = 16
    a_max = SEMANTICS[semantics].max_alpha
    means, quats, scales, _, _ = _on_axis([3.0, 6.0], 0.3, 0.0)
    # far: 0.8, so that T·(1 - 0.8) >= 2e-4 behind either clamp (no transmittance stop)
    opac = torch.tensor([1.0, 0.8], dtype=F64)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)  # near: red, far: green
    viewmats, Ks = _cameras(1, 20.0, W, H, cx=8.5, cy=8.5)  # mean on a pixel centre
    args = (viewmats, Ks, W, H)
    r1, a1 = rasterize_gaussians(means, quats, scales, opac, feats, *args, semantics=semantics)
    flip = torch.tensor([1, 0])
    r2, a2 = rasterize_gaussians(
        means[flip], quats[flip], scales[flip], opac[flip], feats[flip], *args,
        semantics=semantics,
    )  # fmt: skip
    torch.testing.assert_close(r1, r2, atol=1e-14, rtol=0)
    torch.testing.assert_close(a1, a2, atol=1e-14, rtol=0)
    centre = r1[0, 8, 8]
    torch.testing.assert_close(centre, torch.tensor([a_max, (1 - a_max) * 0.8], dtype=F64))


@pytest.mark.parametrize(("semantics", "a_max"), [("gsplat15", 0.999), ("legacy", 0.99)])
def test_alpha_is_clamped_and_clamped_pixels_pass_no_opacity_gradient(semantics, a_max):
    W = H = 16
    assert SEMANTICS[semantics].max_alpha == a_max
    means, quats, scales, opac, feats = _on_axis([4.0], 0.4, 1.5)
    for t in (means, scales, opac, feats):
        t.requires_grad_(True)
    viewmats, Ks = _cameras(1, 20.0, W, H, cx=8.5, cy=8.5)
    bg = torch.tensor([[0.0, 0.5, 1.0]], dtype=F64)
    render, alpha = rasterize_gaussians(
        means, quats, scales, opac, feats, viewmats, Ks, W, H, bg, semantics=semantics
    )
    assert alpha.max() == a_max
    clamped = alpha[0, ..., 0] == a_max
    assert 1 < clamped.sum() < W * H  # a disc of clamped pixels, not the whole image
    torch.testing.assert_close(render[0, 8, 8], a_max * feats[0].detach() + (1 - a_max) * bg[0])
    loss = (render[0][clamped] ** 2).sum() + alpha[0][clamped].sum()
    g_means, g_scales, g_opac, g_feats = torch.autograd.grad(loss, [means, scales, opac, feats])
    assert g_opac.abs().max() == 0 and g_scales.abs().max() == 0 and g_means.abs().max() == 0
    assert g_feats.abs().max() > 0  # the colour still gets its gradient


def test_transmittance_stop_excludes_the_gaussian_that_would_cross_1e_4():
    W = H = 16
    z = torch.tensor([7.0, 3.0, 5.0, 4.0, 6.0], dtype=F64)  # shuffled depths
    means, quats, scales, opac, _ = _on_axis(z, 0.3, 0.95)
    order = torch.argsort(z)
    feats = torch.eye(5, dtype=F64)[torch.argsort(order)]  # channel k = k-th nearest
    viewmats, Ks = _cameras(1, 20.0, W, H, cx=8.5, cy=8.5)
    bg = torch.full((1, 5), 0.5, dtype=F64)
    render, alpha = rasterize_gaussians(means, quats, scales, opac, feats, viewmats, Ks, W, H, bg)
    # Hand computation at the pixel under the means (α = 0.95 for all): T goes 1, 0.05,
    # 0.0025, 1.25e-4; the 4th would leave 6.25e-6 <= 1e-4, so it and the 5th are out.
    t_final = 0.05**3
    want = torch.tensor([0.95, 0.05 * 0.95, 0.05**2 * 0.95, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(render[0, 8, 8], want + t_final * 0.5, atol=1e-15, rtol=0)
    torch.testing.assert_close(alpha[0, 8, 8, 0], torch.tensor(1 - t_final, dtype=F64))
    naive = rasterize_naive(means, quats, scales, opac, feats, viewmats, Ks, W, H, bg)
    torch.testing.assert_close(render, naive[0], atol=1e-14, rtol=0)


def test_alpha_below_1_over_255_is_skipped():
    W = H = 16
    means, quats, scales, _, feats = _on_axis([4.0], 0.5, 0.0)
    viewmats, Ks = _cameras(1, 20.0, W, H, cx=8.5, cy=8.5)
    bg = torch.tensor([[0.3, 0.6, 0.9]], dtype=F64)
    faint = torch.tensor([0.99 * ALPHA_THRESHOLD], dtype=F64)  # even the peak is skipped
    render, alpha = rasterize_gaussians(means, quats, scales, faint, feats, viewmats, Ks, W, H, bg)
    assert (alpha == 0).all() and (render == bg[0]).all()
    just = torch.tensor([1.01 * ALPHA_THRESHOLD], dtype=F64)  # only the peak pixel counts
    render, alpha = rasterize_gaussians(means, quats, scales, just, feats, viewmats, Ks, W, H, bg)
    assert (alpha > 0).sum() == 1
    torch.testing.assert_close(alpha[0, 8, 8, 0], just[0], atol=1e-15, rtol=0)


def test_gaussians_closer_than_the_near_plane_are_culled():
    W = H = 16
    z = torch.tensor([0.005, -1.0, 0.02], dtype=F64)  # too near, behind, visible
    means, quats, scales, opac, feats = _on_axis(z, 0.002, 0.9)
    viewmats, Ks = _cameras(1, 20.0, W, H)
    for idx, visible in ((0, False), (1, False), (2, True)):
        args = [t[idx : idx + 1].clone().requires_grad_(True) for t in (means, scales, opac)]
        render, alpha = rasterize_gaussians(
            args[0],
            quats[idx : idx + 1],
            args[1],
            args[2],
            feats[idx : idx + 1],
            viewmats,
            Ks,
            W,
            H,
        )
        assert bool((alpha > 0).any()) == visible
        (render.sum() + alpha.sum()).backward()
        for t in args:
            assert torch.isfinite(t.grad).all()
            if not visible:
                assert (t.grad == 0).all()


def test_legacy_tile_truncation_is_reproduced_and_gsplat15_does_not_truncate():
    """legacy (gsplat 1.4's boxes) only evaluates a Gaussian on the 16×16 tiles its 3σ box
    touches: pixels just beyond, where α would still exceed 1/255, get nothing. gsplat15's
    opacity-aware box (sqrt(2·ln(255·0.95))·σ ≈ 3.32σ, i.e. ceil(10.71) = 11 px) reaches
    the next tile, so those pixels count there."""
    W, H = 32, 16
    f, z = 20.0, 4.0
    s = math.sqrt(10.0) * z / f  # (f·s/z)² = 10: radius ceil(3·sqrt(10.3 + 0.1)) = 10 px
    means, quats, scales, opac, feats = _on_axis([z], s, 0.95)
    viewmats, Ks = _cameras(1, f, W, H, cx=6.0, cy=8.0)  # 6 + 10 = 16: the tile border
    args = (means, quats, scales, opac, feats, viewmats, Ks, W, H)
    _, legacy = rasterize_gaussians(*args, semantics="legacy")
    var = (f * s / z) ** 2 + 0.3
    row = legacy[0, 8, :, 0]
    assert row[15] > 0 and row[16] == 0
    col16 = 0.95 * math.exp(-0.5 * (10.5**2 + 0.5**2) / var)  # pixel (16, 8) from (6, 8)
    assert col16 > ALPHA_THRESHOLD  # column 16 would count
    _, alpha = rasterize_gaussians(*args)  # the default: gsplat15
    torch.testing.assert_close(alpha[0, 8, 16, 0], torch.tensor(col16, dtype=F64))
    # everything legacy kept is unchanged (0.95 stays below both clamps)
    kept = legacy > 0
    torch.testing.assert_close(alpha[kept], legacy[kept], atol=1e-15, rtol=0)


def test_gsplat15_radii_are_per_axis_and_opacity_aware():
    """r = ceil(min(3.33, sqrt(2·ln(255·o)))·sqrt(Σii)) per axis (gsplat 1.5's projection);
    o < 1/255 is culled; legacy: ceil(3·sqrt(λ_max)) on both axes."""
    W = H = 64
    f, z = 40.0, 4.0
    means = torch.tensor([[0.0, 0.0, z]] * 3, dtype=F64)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3, dtype=F64)
    scales = torch.tensor([[0.4, 0.1, 0.1]] * 3, dtype=F64)  # σ_x = 4 px, σ_y = 1 px
    opac = torch.tensor([1.0, 0.1, 0.5 * ALPHA_THRESHOLD], dtype=F64)
    viewmats, Ks = _cameras(1, f, W, H)
    proj = project_gaussians(means, quats, scales, viewmats, Ks, W, H)
    _, radii = conics_and_radii(proj, opac[None], W, H, SEMANTICS["gsplat15"])
    var = torch.tensor([16.3, 1.3], dtype=F64)
    for n, o in enumerate(opac[:2].tolist()):
        e = min(3.33, math.sqrt(2 * math.log(255 * o)))
        assert radii[0, n].tolist() == torch.ceil(e * var.sqrt()).long().tolist()
    assert radii[0, 2].tolist() == [0, 0]  # culled: even its peak is below 1/255
    _, radii = conics_and_radii(proj, opac[None], W, H, SEMANTICS["legacy"])
    r = math.ceil(3 * math.sqrt(16.3))
    assert radii[0].tolist() == [[r, r]] * 3


@pytest.mark.parametrize(
    ("backend", "antialiased"), [("auto", False), ("torch", False), ("torch", True)]
)
def test_gradcheck_float64(backend, antialiased):
    """Two cameras (one shifted), per-camera features, 2×2 work tiles; opacities in
    [0.3, 0.7] and 4 Gaussians keep every pixel away from the clamp and the stop."""
    W, H, N, C = 12, 10, 4, 2
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(N, 2, generator=g, dtype=F64) - 0.5
    means = torch.cat([xy, 3 + torch.rand(N, 1, generator=g, dtype=F64)], -1)
    quats = torch.randn(N, 4, generator=g, dtype=F64)
    scales = 0.15 + 0.2 * torch.rand(N, 3, generator=g, dtype=F64)
    opac = 0.3 + 0.4 * torch.rand(N, generator=g, dtype=F64)
    feats = torch.rand(C, N, 2, generator=g, dtype=F64)
    bg = torch.rand(C, 2, generator=g, dtype=F64)
    viewmats, Ks = _cameras(C, 12.0, W, H)
    viewmats[1, 0, 3] = 0.2
    inputs = [t.requires_grad_(True) for t in (means, quats, scales, opac, feats, bg)]

    def fn(m, q, s, o, f, b):
        return rasterize_gaussians(
            m, q, s, o, f, viewmats, Ks, W, H, b, backend=backend, antialiased=antialiased
        )

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize(
    ("D", "per_camera", "eps2d", "antialiased", "semantics"),
    [(1, False, 0.3, False, "gsplat15"), (3, True, 0.3, False, "gsplat15"),
     (32, False, 0.3, False, "gsplat15"), (32, True, 0.3, False, "legacy"),
     (3, False, 0.02, False, "gsplat15"), (3, True, 0.1, True, "gsplat15"),
     (3, False, 0.3, False, "legacy"), (3, True, 0.1, True, "legacy")],
)  # fmt: skip
def test_fast_path_matches_naive_reference_forward_and_backward(
    D, per_camera, eps2d, antialiased, semantics
):
    C, N, W, H = 2, 40, 40, 36  # 3×3 gsplat tiles (partial at the border), 5×5 work tiles
    scene = _random_scene(N, C, D, W, H, per_camera)
    means, quats, scales, opac, feats, viewmats, Ks, bg = scene
    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, feats, bg)]
    blur = {"eps2d": eps2d, "antialiased": antialiased, "semantics": semantics}
    fast = rasterize_gaussians(*inputs[:5], viewmats, Ks, W, H, inputs[5], backend="torch", **blur)
    naive = rasterize_naive(*inputs[:5], viewmats, Ks, W, H, inputs[5], **blur)
    assert (fast[1] > 0.5).float().mean() > 0.1  # a scene with real coverage
    assert fast[1].max() > 1 - 1e-3  # and pixels where compositing stops
    for a, b in zip(fast, naive):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    g = torch.Generator().manual_seed(1)
    w_r, w_a = (
        torch.randn(fast[0].shape, generator=g, dtype=F64),
        torch.randn(fast[1].shape, generator=g, dtype=F64),
    )
    grads_fast = torch.autograd.grad((fast[0] * w_r).sum() + (fast[1] * w_a).sum(), inputs)
    grads_naive = torch.autograd.grad((naive[0] * w_r).sum() + (naive[1] * w_a).sum(), inputs)
    for name, a, b in zip(
        ["means", "quats", "scales", "opac", "feats", "bg"], grads_fast, grads_naive
    ):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, atol=1e-9 * b.abs().max().item(), rtol=1e-9, msg=name)


def test_fast_path_float32_is_close_to_float64_reference():
    C, N, W, H, D = 2, 40, 40, 36, 3
    scene = _random_scene(N, C, D, W, H, per_camera=False)
    fast = rasterize_gaussians(
        *[t.float() for t in scene[:5]], *[t.float() for t in scene[5:7]], W, H, scene[7].float()
    )
    naive = rasterize_naive(*scene[:5], *scene[5:7], W, H, scene[7])
    assert fast[0].dtype == torch.float32
    for a, b in zip(fast, naive):
        # float32 rounding can flip an α across 1/255 (≈0.004 of one pixel's colour)
        assert (a.double() - b).abs().max() < 1e-2
        assert (a.double() - b).abs().mean() < 1e-5


def test_several_cameras_render_as_separate_calls():
    C, N, W, H, D = 3, 30, 24, 20, 4
    means, quats, scales, opac, feats, viewmats, Ks, bg = _random_scene(N, C, D, W, H, True)
    render, alpha = rasterize_gaussians(means, quats, scales, opac, feats, viewmats, Ks, W, H, bg)
    assert render.shape == (C, H, W, D)
    for c in range(C):
        one = rasterize_gaussians(
            means,
            quats,
            scales,
            opac,
            feats[c : c + 1],
            viewmats[c : c + 1],
            Ks[c : c + 1],
            W,
            H,
            bg[c : c + 1],
        )
        torch.testing.assert_close(render[c : c + 1], one[0], atol=1e-14, rtol=0)
        torch.testing.assert_close(alpha[c : c + 1], one[1], atol=1e-14, rtol=0)
    assert not torch.allclose(render[0], render[1])


def test_backgrounds_default_to_zero_and_fill_uncovered_pixels():
    C, N, W, H, D = 2, 10, 24, 20, 3
    means, quats, scales, opac, feats, viewmats, Ks, bg = _random_scene(N, C, D, W, H, False)
    r0, a0 = rasterize_gaussians(means, quats, scales, opac, feats, viewmats, Ks, W, H)
    rz, _ = rasterize_gaussians(
        means, quats, scales, opac, feats, viewmats, Ks, W, H, torch.zeros(C, D, dtype=F64)
    )
    rb, _ = rasterize_gaussians(means, quats, scales, opac, feats, viewmats, Ks, W, H, bg)
    torch.testing.assert_close(r0, rz, atol=0, rtol=0)
    torch.testing.assert_close(rb, r0 + (1 - a0) * bg[:, None, None, :], atol=1e-14, rtol=0)
    empty = a0[..., 0] == 0
    assert empty.any()
    assert (rb[empty] == bg[:, None, None, :].expand_as(rb)[empty]).all()


def _second_moments(alpha):  # alpha [H, W] -> (var_u, var_v, cov_uv)
    H, W = alpha.shape
    u, v = _pixel_centres(W, H)
    w = alpha / alpha.sum()
    mu, mv = (w * u).sum(), (w * v).sum()
    return (w * (u - mu) ** 2).sum(), (w * (v - mv) ** 2).sum(), (w * (u - mu) * (v - mv)).sum()


def test_rotation_direction_in_opencv_image_coordinates():
    W = H = 32
    means = torch.tensor([[0.0, 0.0, 5.0]], dtype=F64)
    scales = torch.tensor([[0.8, 0.12, 0.12]], dtype=F64)  # long along its local x
    opac, feats = torch.tensor([0.5], dtype=F64), torch.ones(1, 1, dtype=F64)
    viewmats, Ks = _cameras(1, 20.0, W, H)

    def moments(angle_z):
        q = axis_angle_to_quat(torch.tensor([[0.0, 0.0, angle_z]], dtype=F64))
        _, alpha = rasterize_gaussians(means, q, scales, opac, feats, viewmats, Ks, W, H)
        return _second_moments(alpha[0, ..., 0])

    var_u, var_v, _ = moments(0.0)
    assert var_u > 4 * var_v  # elongated along image x
    var_u, var_v, _ = moments(math.pi / 2)  # 90° about the optical axis
    assert var_v > 4 * var_u  # now along image y
    var_u, var_v, cov = moments(math.radians(30))
    # +30° about +z turns +x towards +y, i.e. down in the image: the long axis points
    # right-down, at +30° from the u axis (image y grows downwards).
    angle = 0.5 * math.degrees(math.atan2(2 * cov, var_u - var_v))
    assert cov > 0 and abs(angle - 30) < 1.5


def _valid_args(N=3, C=2, D=3):
    means, quats, scales, opac, feats, viewmats, Ks, bg = _random_scene(N, C, D, 16, 16, False)
    return dict(
        means=means, quats=quats, scales=scales, opacities=opac, features=feats,
        viewmats=viewmats, Ks=Ks, width=16, height=16, backgrounds=bg,
    )  # fmt: skip


def _skewed(Ks):
    Ks = Ks.clone()
    Ks[0, 0, 1] = 0.5
    return Ks


# (argument, its bad value from the valid arguments, error type, message pattern)
_BAD_INPUTS = [
    ("means", lambda a: a["means"][:, :2], ValueError, r"means must have shape \[N, 3\]"),
    ("quats", lambda a: a["quats"][:2], ValueError, r"dimension N disagrees .*quats: 2"),
    ("features", lambda a: a["features"][0], ValueError, r"features must have shape \[N, D\] or"),
    ("features", lambda a: a["features"][None].expand(3, -1, -1), ValueError, r"dimension C"),
    ("viewmats", lambda a: a["viewmats"][:, :3], ValueError, r"viewmats must have shape \[C, 4"),
    ("Ks", lambda a: a["Ks"][:1], ValueError, r"dimension C disagrees .*Ks: 1"),
    ("backgrounds", lambda a: a["backgrounds"][:, :2], ValueError, r"dimension D disagrees"),
    ("opacities", lambda a: torch.ones(3).long(), TypeError, r"opacities must be a floating"),
    ("scales", lambda a: a["scales"].float(), TypeError, r"share one dtype.*scales: torch.float32"),
    ("means", lambda a: a["means"].tolist(), TypeError, r"means must be a torch.Tensor"),
    ("quats", lambda a: a["quats"].to("meta"), ValueError, r"quats is on meta .* one device"),
    ("width", lambda a: 0, ValueError, r"width must be a positive int"),
    ("height", lambda a: 16.0, ValueError, r"height must be a positive int"),
    ("Ks", lambda a: _skewed(a["Ks"]), ValueError, r"zero skew"),
    ("backend", lambda a: "cuda", ValueError, r"backend must be one of \('auto', 'torch', 'gsp"),
    ("eps2d", lambda a: -0.1, ValueError, r"eps2d must be a finite number >= 0"),
    ("eps2d", lambda a: float("nan"), ValueError, r"eps2d must be a finite number >= 0"),
    ("semantics", lambda a: "gsplat", ValueError, r"semantics must be one of \['gsplat15', 'l"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "bad", "error", "match"), _BAD_INPUTS)
def test_bad_inputs_give_clear_errors(name, bad, error, match):
    args = _valid_args()
    args[name] = bad(args)
    with pytest.raises(error, match=match):
        rasterize_gaussians(**args)


def test_zero_channels_is_an_error():
    args = _valid_args()
    args.update(features=args["features"][:, :0], backgrounds=None)
    with pytest.raises(ValueError, match=r"at least one channel"):
        rasterize_gaussians(**args)


def test_gsplat_backend_without_cuda_or_gsplat_says_how_to_install(monkeypatch, caplog):
    args = _valid_args()
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors.*pip install gphm\[gpu\]"):
        rasterize_gaussians(**args, backend="gsplat")
    cuda = torch.device("cuda")
    select = gaussians_module.select_backend
    monkeypatch.setattr(gaussians_module, "load_gsplat", lambda: (None, "No module named 'gsplat'"))
    monkeypatch.setattr(gaussians_module, "_warned_fallback", False)
    with pytest.raises(ImportError, match=r"pip install gphm\[gpu\].*No module named 'gsplat'"):
        select("gsplat", cuda, torch.float32)
    with pytest.raises(TypeError, match=r"float32 only"):
        select("gsplat", cuda, F64)
    with caplog.at_level(logging.WARNING, logger=gaussians_module.__name__):
        assert select("auto", cuda, torch.float32) == "torch"
        assert select("auto", cuda, torch.float32) == "torch"
    assert len([r for r in caplog.records if "gsplat is unavailable" in r.message]) == 1
    monkeypatch.setattr(gaussians_module, "load_gsplat", lambda: (object(), ""))
    assert select("auto", cuda, torch.float32) == "gsplat"
    assert select("auto", cuda, F64) == "torch"  # gsplat kernels are float32-only
    assert select("auto", torch.device("cpu"), torch.float32) == "torch"


def test_legacy_semantics_are_rendered_by_torch_and_refused_by_gsplat(monkeypatch, caplog):
    """gsplat's α clamp (0.999) is compiled in: a legacy model on CUDA renders with the
    torch backend ("auto", one warning), and backend="gsplat" says why it cannot."""
    cuda = torch.device("cuda")
    select = gaussians_module.select_backend
    monkeypatch.setattr(gaussians_module, "load_gsplat", lambda: (object(), ""))
    monkeypatch.setattr(gaussians_module, "_warned_legacy", False)
    with pytest.raises(ValueError, match=r"cannot render semantics='legacy'.*0\.999"):
        select("gsplat", cuda, torch.float32, "legacy")
    with caplog.at_level(logging.WARNING, logger=gaussians_module.__name__):
        assert select("auto", cuda, torch.float32, "legacy") == "torch"
        assert select("auto", cuda, torch.float32, "legacy") == "torch"
    assert len([r for r in caplog.records if "torch backend on CUDA" in r.message]) == 1
    assert select("auto", cuda, torch.float32, "gsplat15") == "gsplat"
    assert select("torch", cuda, torch.float32, "legacy") == "torch"


def test_gsplat_older_than_1_5_counts_as_unavailable(monkeypatch):
    import types

    from gphm.render import _gaussians_gsplat

    for version, ok in (("1.4.0", False), ("1.5.0", True), ("1.5.3+cu121", True)):
        fake = types.SimpleNamespace(__version__=version)
        monkeypatch.setattr(
            _gaussians_gsplat.importlib, "import_module", lambda _n, fake=fake: fake
        )
        _gaussians_gsplat.load_gsplat.cache_clear()
        module, reason = _gaussians_gsplat.load_gsplat()
        assert (module is fake) == ok and (reason == "") == ok
        if not ok:
            assert "gsplat 1.4.0 is older than 1.5" in reason
    _gaussians_gsplat.load_gsplat.cache_clear()


def test_empty_and_fully_culled_scenes_return_the_background():
    C, D, W, H = 2, 3, 20, 12
    viewmats, Ks = _cameras(C, 20.0, W, H)
    bg = torch.rand(C, D, dtype=F64)
    empty = [torch.zeros(0, k, dtype=F64) for k in (3, 4, 3)]
    feats = torch.zeros(0, D, dtype=F64, requires_grad=True)
    render, alpha = rasterize_gaussians(
        *empty, torch.zeros(0, dtype=F64), feats, viewmats, Ks, W, H, bg
    )
    assert render.shape == (C, H, W, D) and alpha.shape == (C, H, W, 1)
    assert (render == bg[:, None, None]).all() and (alpha == 0).all()
    render.sum().backward()  # still differentiable
    means, quats, scales, opac, feats = _on_axis([-2.0, -3.0], 0.3, 0.9)  # all behind
    render, alpha = rasterize_gaussians(means, quats, scales, opac, feats, viewmats, Ks, W, H, bg)
    assert (render == bg[:, None, None]).all() and (alpha == 0).all()


def test_memory_grows_with_tile_overlaps_not_pixels_times_gaussians():
    N, W = 3000, 256
    g = torch.Generator().manual_seed(0)
    d = torch.randn(N, 3, generator=g)
    means = d / d.norm(dim=-1, keepdim=True)
    quats, scales = torch.randn(N, 4, generator=g), torch.full((N, 3), 0.02)
    opac = 0.2 + 0.7 * torch.rand(N, generator=g)
    viewmats = look_at(torch.tensor([[0.0, 0.0, 3.0]]), torch.zeros(3))
    Ks = intrinsics(1.2 * W, 1.2 * W, W / 2, W / 2)[None]
    proj = project_gaussians(means, quats, scales, viewmats, Ks, W, W)
    _, radii = conics_and_radii(proj, opac[None], W, W)
    plan = plan_tiles(proj.means2d, proj.cov2d, proj.depths, radii, opac[None], W, W)
    pixels = plan.work_tile**2
    largest_tile = max(c.gauss.shape[1] for c in plan.chunks)
    assert plan.max_chunk_elements <= max(CHUNK_ELEMENTS, pixels * largest_tile)
    assert plan.padded_elements <= 2 * pixels * plan.num_pairs  # padding wastes at most half
    assert plan.padded_elements < W * W * N / 100
    # every (work tile, Gaussian) pair is evaluated once
    assert sum(int(c.mask.sum()) for c in plan.chunks) == plan.num_pairs
