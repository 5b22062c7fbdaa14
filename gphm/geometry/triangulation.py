"""Multi-view triangulation of 2D points (landmarks) with calibrated cameras.

Conventions (docs/architecture.md §4): OpenCV cameras, ``viewmats`` [C, 4, 4] world→camera, ``Ks``
[C, 3, 3] in pixels of the images the 2D points were measured in, with pixel centres at
``(i + 0.5, j + 0.5)``: a point projects to ``u = K·(x/z, y/z, 1)`` exactly as in
:func:`gphm.geometry.project_points`.

A missing observation is a NaN coordinate or a zero weight. ``weights`` multiply the
squared residuals (e.g. detector confidences). Computations run in float64; results
come back in the dtype of ``points2d``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["triangulate_dlt", "triangulate_robust", "RobustTriangulation"]


@dataclass
class RobustTriangulation:
    """Result of :func:`triangulate_robust`."""

    points: Tensor  # [L, 3] world points; NaN where fewer than 2 views agree
    inliers: Tensor  # [C, L] bool, observations used for the final estimate
    errors: Tensor  # [C, L] reprojection error (pixels) of ``points``; NaN if missing


def _check_inputs(
    points2d: Tensor, Ks: Tensor, viewmats: Tensor, weights: Tensor | None
) -> tuple[int, int]:
    if points2d.dim() != 3 or points2d.shape[-1] != 2:
        raise ValueError(f"points2d must have shape [C, L, 2], got {list(points2d.shape)}")
    C, L = points2d.shape[:2]
    if Ks.shape != (C, 3, 3):
        raise ValueError(f"Ks must have shape [C, 3, 3] = [{C}, 3, 3], got {list(Ks.shape)}")
    if viewmats.shape not in ((C, 4, 4), (C, 3, 4)):
        raise ValueError(
            f"viewmats must have shape [C, 4, 4] = [{C}, 4, 4], got {list(viewmats.shape)}"
        )
    if weights is not None and weights.shape != (C, L):
        raise ValueError(f"weights must have shape [C, L] = [{C}, {L}], got {list(weights.shape)}")
    if C < 2:
        raise ValueError(f"triangulation needs at least 2 views, got C={C}")
    return C, L


def _observation_weights(points2d: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """Finite points (NaN replaced by 0) and weights [C, L] that are 0 where missing."""
    finite = torch.isfinite(points2d).all(-1)
    w = torch.ones_like(points2d[..., 0]) if weights is None else weights.to(points2d.dtype)
    w = torch.where(finite & (w > 0), w, torch.zeros_like(w))
    return torch.where(finite[..., None], points2d, torch.zeros_like(points2d)), w


def _linear_system(points2d: Tensor, Ks: Tensor, viewmats: Tensor) -> tuple[Tensor, Tensor]:
    """Per-observation rows ``A`` [C, L, 2, 3] and right-hand sides ``b`` [C, L, 2].

    In normalised image coordinates ``x_n = K⁻¹u`` the projection equations
    ``x_n·(r3·X + t3) = r1·X + t1`` (and likewise for y) are linear in ``X``:
    ``(x_n·r3 - r1)·X = t1 - x_n·t3``. Normalising by K keeps the system well
    conditioned (Hartley's normalisation, with the intrinsics as the normaliser).
    """
    ones = torch.ones_like(points2d[..., :1])
    uv1 = torch.cat([points2d, ones], dim=-1)  # [C, L, 3]
    xn = torch.linalg.solve(Ks, uv1.transpose(-1, -2)).transpose(-1, -2)  # [C, L, 3]
    xn = xn[..., :2] / xn[..., 2:]
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    A = xn[..., :, None] * R[:, None, 2:3, :] - R[:, None, :2, :]  # [C, L, 2, 3]
    b = t[:, None, :2] - xn * t[:, None, 2:3]  # [C, L, 2]
    return A, b


def _solve_weighted(A: Tensor, b: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted least squares over views: ``X`` [..., L, 3] and a solvable mask [..., L].

    ``A`` [C, L, 2, 3], ``b`` [C, L, 2], ``w`` [..., C, L]; a landmark needs at least two
    views with positive weight.
    """
    AtA = A.transpose(-1, -2) @ A  # [C, L, 3, 3]
    Atb = (A.transpose(-1, -2) @ b[..., None]).squeeze(-1)  # [C, L, 3]
    M = (w[..., None, None] * AtA).sum(-4)  # [..., L, 3, 3]
    rhs = (w[..., None] * Atb).sum(-3)  # [..., L, 3]
    ok = (w > 0).sum(-2) >= 2
    eye = torch.eye(3, dtype=M.dtype, device=M.device)
    M = torch.where(ok[..., None, None], M, eye)
    X, info = torch.linalg.solve_ex(M, rhs)
    ok = ok & (info == 0) & torch.isfinite(X).all(-1)
    return torch.where(ok[..., None], X, torch.full_like(X, float("nan"))), ok


def triangulate_dlt(
    points2d: Tensor,  # [C, L, 2] pixels
    Ks: Tensor,  # [C, 3, 3]
    viewmats: Tensor,  # [C, 4, 4] world -> camera
    weights: Tensor | None = None,  # [C, L] >= 0, multiplies squared residuals
) -> Tensor:  # [L, 3] world points
    """Linear (DLT) triangulation, batched over landmarks; differentiable.

    Minimises the weighted algebraic error of the projection equations in normalised
    coordinates (the inhomogeneous DLT, ``X_w = 1``). Points with fewer than two
    observations (NaN or weight 0) come back as NaN. No outlier handling: see
    :func:`triangulate_robust`.
    """
    _check_inputs(points2d, Ks, viewmats, weights)
    dtype = points2d.dtype
    pts, w = _observation_weights(points2d.double(), weights)
    A, b = _linear_system(pts, Ks.double(), viewmats.double())
    return _solve_weighted(A, b, w)[0].to(dtype)


def _project(X: Tensor, Ks: Tensor, viewmats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels [..., C, L, 2], depth [..., C, L] and d(uv)/dX [..., C, L, 2, 3] of X [..., L, 3]."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    cam = (R[:, None] @ X[..., None, :, :, None]).squeeze(-1) + t[:, None]  # [..., C, L, 3]
    x, y, z = cam.unbind(-1)
    z_safe = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    s, cx, cy = Ks[:, 0, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    u = (fx * x + s * y) / z_safe + cx
    v = fy * y / z_safe + cy
    zero = torch.zeros_like(z)
    d_cam = torch.stack(
        [
            torch.stack([fx / z_safe, s / z_safe, -(fx * x + s * y) / z_safe**2], -1),
            torch.stack([zero, fy / z_safe, -fy * y / z_safe**2], -1),
        ],
        dim=-2,
    )  # [..., C, L, 2, 3]
    return torch.stack([u, v], -1), z, d_cam @ R[:, None]


def _refine_lm(
    X: Tensor, pts: Tensor, w: Tensor, Ks: Tensor, viewmats: Tensor, iters: int
) -> Tensor:
    """Levenberg–Marquardt on the weighted pixel reprojection error, per landmark."""
    lam = torch.full_like(X[..., 0], 1e-3)

    def cost_of(Y: Tensor) -> Tensor:
        uv, z, _ = _project(Y, Ks, viewmats)
        r2 = ((uv - pts) ** 2).sum(-1)
        return torch.where(w > 0, w * r2, torch.zeros_like(r2)).sum(0)  # [L]

    cost = cost_of(X)
    eye = torch.eye(3, dtype=X.dtype, device=X.device)
    for _ in range(iters):
        uv, _, J = _project(X, Ks, viewmats)
        r = torch.where((w > 0)[..., None], uv - pts, torch.zeros_like(uv))  # [C, L, 2]
        Jw = J * w[..., None, None]
        H = (Jw.transpose(-1, -2) @ J).sum(0)  # [L, 3, 3]
        g = (Jw.transpose(-1, -2) @ r[..., None]).squeeze(-1).sum(0)  # [L, 3]
        damp = lam[:, None, None] * (H * eye + 1e-9 * eye)
        step, info = torch.linalg.solve_ex(H + damp, -g)
        X_new = X + torch.where((info == 0)[:, None], step, torch.zeros_like(step))
        new_cost = cost_of(X_new)
        better = torch.isfinite(new_cost) & (new_cost < cost)
        X = torch.where(better[:, None], X_new, X)
        cost = torch.where(better, new_cost, cost)
        lam = torch.where(better, lam * 0.1, lam * 10.0).clamp(1e-9, 1e9)
    return X


@torch.no_grad()
def triangulate_robust(
    points2d: Tensor,  # [C, L, 2] pixels
    Ks: Tensor,  # [C, 3, 3]
    viewmats: Tensor,  # [C, 4, 4] world -> camera
    weights: Tensor | None = None,  # [C, L] >= 0
    threshold: float = 8.0,  # pixels; larger reprojection errors are outliers
    refine: bool = True,
    refine_iters: int = 10,
) -> RobustTriangulation:
    """Outlier-robust triangulation (exhaustive RANSAC over view pairs, then LM).

    For every landmark: triangulate from each pair of its views, score each candidate by
    the truncated squared reprojection error over all views (MSAC, truncation at
    ``threshold``), keep the best, re-triangulate from its inliers twice, then (with
    ``refine``) minimise the weighted pixel reprojection error over the inliers with
    Levenberg–Marquardt. Handles missing views (NaN / weight 0) and views whose
    detection is wrong, as long as two good views remain. ``C(C-1)/2`` candidates per
    landmark: fine for the tens of cameras of a capture rig. Not differentiable.
    """
    C, L = _check_inputs(points2d, Ks, viewmats, weights)
    dtype = points2d.dtype
    pts, w = _observation_weights(points2d.double(), weights)
    Ks, viewmats = Ks.double(), viewmats.double()
    A, b = _linear_system(pts, Ks, viewmats)
    valid = w > 0

    def inliers_of(X: Tensor) -> tuple[Tensor, Tensor]:  # X [..., L, 3]
        uv, z, _ = _project(X, Ks, viewmats)
        err = (uv - pts).norm(dim=-1)  # [..., C, L]
        ok = valid & (z > 0) & (err < threshold) & torch.isfinite(X)[..., None, :, :].all(-1)
        return ok, err

    # Hypotheses from all view pairs: weights [P, C, L] selecting two views each.
    pairs = torch.tensor(list(itertools.combinations(range(C), 2)), device=pts.device)
    select = torch.zeros(pairs.shape[0], C, dtype=w.dtype, device=w.device)
    select.scatter_(1, pairs, 1.0)
    X_hyp, solvable = _solve_weighted(A, b, select[:, :, None] * w)  # [P, L, 3], [P, L]
    ok, err = inliers_of(X_hyp)
    cost = torch.where(ok, err**2, torch.full_like(err, threshold**2)).sum(-2)  # [P, L]
    # Both sampled views must themselves agree with the hypothesis.
    pair_ok = solvable & (ok & select[:, :, None].bool()).sum(-2).eq(2)
    cost = torch.where(pair_ok, cost, torch.full_like(cost, float("inf")))
    best = cost.argmin(0)  # [L]
    X = X_hyp.gather(0, best[None, :, None].expand(1, L, 3)).squeeze(0)
    inl = ok.gather(0, best[None, None, :].expand(1, C, L)).squeeze(0)  # [C, L]
    found = pair_ok.any(0)

    for _ in range(2):
        X_new, solved = _solve_weighted(A, b, w * inl)
        X = torch.where(solved[:, None], X_new, X)
        inl = inliers_of(X)[0]
    if refine and refine_iters > 0:
        X = torch.where(found[:, None], _refine_lm(X, pts, w * inl, Ks, viewmats, refine_iters), X)
        inl = inliers_of(X)[0]

    good = found & (inl.sum(0) >= 2)
    X = torch.where(good[:, None], X, torch.full_like(X, float("nan")))
    inl = inl & good
    _, err = inliers_of(X)
    err = torch.where(valid, err, torch.full_like(err, float("nan")))
    return RobustTriangulation(points=X.to(dtype), inliers=inl, errors=err.to(dtype))
