import pytest
import torch

from gphm.geometry.cameras import intrinsics, look_at, project_points
from gphm.geometry.pose import scale_from_centers, solve_pnp, umeyama
from gphm.geometry.rotations import axis_angle_to_matrix

BATCH_SHAPES = [(), (3,), (2, 2)]
F64 = torch.float64


def _similarity(shape):
    R = axis_angle_to_matrix(torch.randn(shape + (3,), dtype=F64))
    s = torch.rand(shape, dtype=F64) + 0.5
    T = torch.randn(shape + (3,), dtype=F64)
    return s, R, T


def _apply(s, R, T, x):
    return s[..., None, None] * (x @ R.transpose(-1, -2)) + T[..., None, :]


@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_umeyama_recovers_known_similarity(shape):
    src = torch.randn(shape + (20, 3), dtype=F64)
    s, R, T = _similarity(shape)
    s2, R2, T2 = umeyama(src, _apply(s, R, T, src))
    assert s2.shape == shape and R2.shape == shape + (3, 3) and T2.shape == shape + (3,)
    assert torch.allclose(s2, s) and torch.allclose(R2, R) and torch.allclose(T2, T)


def test_umeyama_rigid_weights_and_noise():
    src = torch.randn(30, 3, dtype=F64)
    s, R, T = _similarity(())
    dst = _apply(torch.ones((), dtype=F64), R, T, src)
    one, R2, T2 = umeyama(src, dst, with_scale=False)
    assert one == 1.0 and torch.allclose(R2, R) and torch.allclose(T2, T)
    # Zero-weight outliers are ignored.
    dst = _apply(s, R, T, src)
    dst[:5] += 10 * torch.randn(5, 3, dtype=F64)
    w = torch.ones(30, dtype=F64)
    w[:5] = 0
    s3, R3, T3 = umeyama(src, dst, w)
    assert torch.allclose(s3, s) and torch.allclose(R3, R) and torch.allclose(T3, T)
    # Noise: close, not exact.
    noisy = _apply(s, R, T, src) + 0.01 * torch.randn(30, 3, dtype=F64)
    s4, R4, _ = umeyama(src, noisy)
    assert (s4 - s).abs() < 0.01 and (R4 - R).abs().max() < 0.02


def test_umeyama_never_returns_a_reflection():
    src = torch.randn(2, 25, 3, dtype=F64)
    mirrored = src * torch.tensor([1.0, 1.0, -1.0], dtype=F64)
    _, R, _ = umeyama(src, mirrored)
    assert torch.allclose(torch.linalg.det(R), torch.ones(2, dtype=F64))
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=F64).expand(2, 3, 3))


def test_umeyama_gradcheck():
    src = torch.randn(6, 3, dtype=F64)
    dst = _apply(*_similarity(()), src) + 0.05 * torch.randn(6, 3, dtype=F64)
    dst.requires_grad_()
    assert torch.autograd.gradcheck(lambda d: umeyama(src, d), (dst,))


def test_umeyama_errors():
    x = torch.zeros(5, 3)
    with pytest.raises(ValueError, match=r"src must have shape \[\.\.\., N, 3\]"):
        umeyama(x[:, :2], x[:, :2])
    with pytest.raises(ValueError, match="dst must have the shape of src"):
        umeyama(x, x[:4])
    with pytest.raises(ValueError, match="at least 3 points"):
        umeyama(x[:2], x[:2])
    with pytest.raises(ValueError, match=r"weights must have shape \[\.\.\., N\]"):
        umeyama(x, x, torch.ones(4))


def _pnp_problem(N=30, noise=0.0):
    X = torch.rand(N, 3) * 1.4 - 0.7
    V = look_at(torch.tensor([0.5, 0.3, 2.6]), torch.tensor([0.05, -0.02, 0.1]))
    K = intrinsics(1000.0, 1000.0, 256.0, 256.0)
    uv, _ = project_points(X, V, K)
    return X, uv + noise * torch.randn_like(uv), K, V


@pytest.mark.parametrize("N, noise, tol", [(30, 0.0, 1e-4), (68, 0.5, 5e-3), (4, 0.0, 1e-3)])
def test_solve_pnp_recovers_pose(N, noise, tol):
    X, uv, K, V = _pnp_problem(N, noise)
    R, T = solve_pnp(X, uv, K)
    assert R.dtype == torch.float32 and R.shape == (3, 3) and T.shape == (3,)
    assert (R - V[:3, :3]).abs().max() < tol
    assert (T - V[:3, 3]).abs().max() < 5 * tol
    assert torch.isclose(torch.linalg.det(R), torch.tensor(1.0))


def test_solve_pnp_ignores_nan_rows_and_uses_init():
    X, uv, K, V = _pnp_problem(20, 0.2)
    uv = uv.clone()
    uv[:3] = float("nan")
    R, T = solve_pnp(X, uv, K, init=(V[:3, :3], V[:3, 3]))
    assert (R - V[:3, :3]).abs().max() < 5e-3


def test_solve_pnp_errors():
    X, uv, K, _ = _pnp_problem(6)
    with pytest.raises(ValueError, match="at least 4 finite correspondences"):
        solve_pnp(X[:3], uv[:3], K)
    nan = uv.clone()
    nan[:3] = float("nan")
    with pytest.raises(ValueError, match="got 3 of N=6"):
        solve_pnp(X, nan, K)
    with pytest.raises(ValueError, match=r"points2d must have shape \[N, 2\] = \[6, 2\]"):
        solve_pnp(X, uv[:5], K)
    with pytest.raises(ValueError, match=r"K must have shape \[3, 3\]"):
        solve_pnp(X, uv, K[:2])
    with pytest.raises(ValueError, match=r"points3d must have shape \[N, 3\]"):
        solve_pnp(X[:, :2], uv, K)


def test_similarity_matrix_round_trip():
    import numpy as np

    from gphm.geometry.pose import decompose_similarity, nearest_rotation, similarity_matrix

    R = axis_angle_to_matrix(torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)).numpy()
    M = similarity_matrix(1.7, R, np.array([0.1, -2.0, 3.0]))
    s, R2, T2 = decompose_similarity(M)
    assert abs(s - 1.7) < 1e-12 and np.allclose(R2, R) and np.allclose(T2, [0.1, -2.0, 3.0])
    noisy = R + 1e-3 * np.random.default_rng(0).standard_normal((3, 3))
    P = nearest_rotation(noisy)
    assert np.allclose(P @ P.T, np.eye(3)) and np.linalg.det(P) > 0 and np.allclose(P, R, atol=5e-3)


def test_scale_from_centers_weighs_the_centre_against_the_size_prior():
    # A unit head fitted at T; the true head (size 1.05) sits exactly at the centre c,
    # so the image says T = c / 1.05 (scaling about the camera keeps the image).
    c = torch.tensor([[0.1, -0.05, 4.0]], dtype=torch.float64)
    T = c / 1.05
    assert scale_from_centers(T, c, 1e6, 1e-4) == pytest.approx(1.05, rel=1e-6)  # the centre
    assert scale_from_centers(T, c, 1e-6, 1.0) == pytest.approx(1.0, abs=1e-6)  # the prior
    # Equal weights of the two (σs = σc·|c|/|T|): half way.
    sc = 0.01 * float(c.norm()) / float(T.norm())
    assert scale_from_centers(T, c, sc, 0.01) == pytest.approx(1.025, rel=1e-6)
    # Only the depth along the fitted ray counts: a centre moved across the ray gives the
    # same size.
    side = c
    lateral = torch.linalg.cross(T, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))
    lateral = 0.2 * lateral / lateral.norm()
    assert scale_from_centers(T, side + lateral, 1e6, 1e-4) == pytest.approx(
        scale_from_centers(T, side, 1e6, 1e-4), rel=1e-9
    )
    # Several images of one head: each pulls by its own depth.
    two = scale_from_centers(torch.cat([T, T]), torch.cat([c, c * 1.1]), 1e6, 1e-3)
    assert 1.05 < two < 1.05 * 1.1
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        scale_from_centers(T, c[:, :2], 0.03, 0.01)
    with pytest.raises(ValueError, match="sigmas must be > 0"):
        scale_from_centers(T, c, 0.0, 0.01)
