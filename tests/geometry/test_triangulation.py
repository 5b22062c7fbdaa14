import pytest
import torch

from gphm.geometry.cameras import intrinsics, look_at, project_points
from gphm.geometry.triangulation import triangulate_dlt, triangulate_robust

F64 = torch.float64


def rig(C=6, L=68, dtype=torch.float32):
    """A ring of C cameras around a head-sized point cloud; returns (X, uv, Ks, viewmats)."""
    ang = torch.linspace(-0.9, 0.9, C, dtype=F64)
    eyes = torch.stack([2.5 * torch.sin(ang), 0.3 * torch.cos(3 * ang), 2.5 * torch.cos(ang)], -1)
    viewmats = look_at(eyes, torch.zeros(3, dtype=F64))
    Ks = intrinsics(900.0, 880.0, 256.0, 256.0, dtype=F64).expand(C, 3, 3).clone()
    X = torch.rand(L, 3, dtype=F64) * 1.4 - 0.7
    uv, _ = project_points(X, viewmats, Ks)
    return X.to(dtype), uv.to(dtype), Ks.to(dtype), viewmats.to(dtype)


def test_dlt_exact_without_noise():
    X, uv, Ks, V = rig(dtype=F64)
    out = triangulate_dlt(uv, Ks, V)
    assert out.shape == X.shape and out.dtype == F64
    assert torch.allclose(out, X, atol=1e-9)
    # float32 in, float32 out.
    X, uv, Ks, V = rig()
    out = triangulate_dlt(uv, Ks, V)
    assert out.dtype == torch.float32 and torch.allclose(out, X, atol=1e-4)


def test_dlt_with_pixel_noise_and_weights():
    X, uv, Ks, V = rig(dtype=F64)
    noisy = uv + 0.5 * torch.randn_like(uv)
    err = (triangulate_dlt(noisy, Ks, V) - X).norm(dim=-1)
    assert err.mean() < 3e-3  # 0.5 px at ~900 px focal, 2.5 units away
    # Weight 0 is the same as a missing (NaN) view.
    w = torch.ones(uv.shape[:2], dtype=F64)
    w[2] = 0
    missing = noisy.clone()
    missing[2] = float("nan")
    assert torch.allclose(triangulate_dlt(noisy, Ks, V, w), triangulate_dlt(missing, Ks, V))


def test_dlt_too_few_views_gives_nan():
    X, uv, Ks, V = rig(C=3, L=4, dtype=F64)
    uv = uv.clone()
    uv[1:, 0] = float("nan")  # landmark 0 only seen once
    out = triangulate_dlt(uv, Ks, V)
    assert torch.isnan(out[0]).all() and torch.allclose(out[1:], X[1:], atol=1e-9)


def test_dlt_gradcheck():
    _, uv, Ks, V = rig(C=3, L=2, dtype=F64)
    uv = uv.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda p: triangulate_dlt(p, Ks, V), (uv,))


def test_robust_with_missing_and_corrupted_view():
    X, uv, Ks, V = rig(dtype=F64)
    obs = uv + 0.5 * torch.randn_like(uv)
    obs[1] = float("nan")  # missing view
    obs[3] += 40.0 + 20 * torch.randn_like(obs[3])  # corrupted view, far off
    obs[4, :5] = float("nan")  # a few more missing detections
    dlt_err = (triangulate_dlt(obs, Ks, V) - X).norm(dim=-1).mean()
    res = triangulate_robust(obs, Ks, V, threshold=8.0)
    err = (res.points - X).norm(dim=-1)
    assert err.max() < 5e-3 and err.mean() < 2e-3
    assert dlt_err > 10 * err.mean()
    assert not res.inliers[1].any() and not res.inliers[3].any()
    assert res.inliers[[0, 2, 5]].all() and not res.inliers[4, :5].any()
    assert torch.isnan(res.errors[1]).all()
    assert res.errors[3].min() > 8.0 and res.errors[[0, 2, 5]].max() < 3.0
    # Refinement minimises the pixel error: never worse than the linear estimate.
    plain = triangulate_robust(obs, Ks, V, threshold=8.0, refine=False)
    good = res.inliers
    assert res.errors[good].square().sum() <= plain.errors[good].square().sum() + 1e-9


def test_robust_matches_exact_and_keeps_dtype():
    X, uv, Ks, V = rig()
    res = triangulate_robust(uv, Ks, V)
    assert res.points.dtype == torch.float32 and res.inliers.dtype == torch.bool
    assert torch.allclose(res.points, X, atol=1e-4) and res.inliers.all()


def test_robust_unrecoverable_landmark_is_nan():
    X, uv, Ks, V = rig(C=4, L=3, dtype=F64)
    uv = uv.clone()
    uv[1:, 0] = float("nan")  # one view only
    res = triangulate_robust(uv, Ks, V)
    assert torch.isnan(res.points[0]).all() and not res.inliers[:, 0].any()
    assert torch.allclose(res.points[1:], X[1:], atol=1e-8)


def test_robust_two_views_only():
    X, uv, Ks, V = rig(C=2, L=5, dtype=F64)
    res = triangulate_robust(uv + 0.3 * torch.randn_like(uv), Ks, V)
    assert res.inliers.all() and (res.points - X).norm(dim=-1).max() < 5e-3


def test_bad_shapes():
    _, uv, Ks, V = rig(C=3, L=4)
    with pytest.raises(ValueError, match=r"points2d must have shape \[C, L, 2\]"):
        triangulate_dlt(uv[..., :1], Ks, V)
    with pytest.raises(ValueError, match=r"Ks must have shape \[C, 3, 3\] = \[3, 3, 3\]"):
        triangulate_dlt(uv, Ks[:2], V)
    with pytest.raises(ValueError, match=r"viewmats must have shape \[C, 4, 4\]"):
        triangulate_robust(uv, Ks, V[:, :2])
    with pytest.raises(ValueError, match=r"weights must have shape \[C, L\] = \[3, 4\]"):
        triangulate_dlt(uv, Ks, V, torch.ones(3))
    with pytest.raises(ValueError, match="at least 2 views"):
        triangulate_dlt(uv[:1], Ks[:1], V[:1])
