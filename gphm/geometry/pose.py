"""Rigid / similarity pose estimation: Umeyama alignment and PnP.

Conventions (docs/architecture.md §4): a similarity maps ``src`` to ``dst`` as
``dst ≈ s·R·src + T`` with a proper rotation (``det R = +1``), the same form as the head
pose ``x_w = s·R·x_c + T``. PnP returns the world→camera transform of an OpenCV camera
(``x_cam = R·x_world + T``), the top of a ``viewmat``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "apply_head_pose",
    "umeyama",
    "solve_pnp",
    "similarity_matrix",
    "nearest_rotation",
    "decompose_similarity",
    "scale_from_centers",
]


def umeyama(
    src: Tensor,  # [..., N, 3]
    dst: Tensor,  # [..., N, 3]
    weights: Tensor | None = None,  # [..., N] >= 0
    with_scale: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:  # s [...], R [..., 3, 3], T [..., 3]
    """Least-squares similarity (Umeyama 1991): minimises ``Σ w·|s·R·src + T - dst|²``.

    ``R`` is always a proper rotation (a reflection is never returned, even when it
    would fit better). ``with_scale=False`` fixes ``s = 1`` (rigid). Batched over
    leading dimensions and differentiable (through an SVD, so gradients are unstable
    for degenerate point sets with repeated singular values). Needs ``N >= 3`` points
    not all on one line.
    """
    if src.dim() < 2 or src.shape[-1] != 3:
        raise ValueError(f"src must have shape [..., N, 3], got {list(src.shape)}")
    if dst.shape != src.shape:
        raise ValueError(f"dst must have the shape of src {list(src.shape)}, got {list(dst.shape)}")
    if src.shape[-2] < 3:
        raise ValueError(f"umeyama needs at least 3 points, got N={src.shape[-2]}")
    if weights is None:
        weights = torch.ones_like(src[..., 0])
    elif weights.shape != src.shape[:-1]:
        raise ValueError(
            f"weights must have shape [..., N] = {list(src.shape[:-1])}, got {list(weights.shape)}"
        )
    w = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)  # [..., N]
    mu_src = (w[..., None] * src).sum(-2)
    mu_dst = (w[..., None] * dst).sum(-2)
    a, b = src - mu_src[..., None, :], dst - mu_dst[..., None, :]
    cov = (w[..., None] * b).transpose(-1, -2) @ a  # [..., 3, 3] Σ w·b·aᵀ
    U, S, Vh = torch.linalg.svd(cov)
    # Flip the weakest axis when U·Vᵀ would be a reflection.
    sign = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    d = torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], dim=-1)
    R = (U * d[..., None, :]) @ Vh
    if with_scale:
        var_src = (w * (a * a).sum(-1)).sum(-1)
        s = (S * d).sum(-1) / var_src.clamp_min(1e-12)
    else:
        s = torch.ones_like(S[..., 0])
    T = mu_dst - s[..., None] * (R @ mu_src[..., None]).squeeze(-1)
    return s, R, T


def solve_pnp(
    points3d: Tensor,  # [N, 3] world points
    points2d: Tensor,  # [N, 2] pixels (pixel centres at i + 0.5, like K)
    K: Tensor,  # [3, 3]
    init: tuple[Tensor, Tensor] | None = None,  # (R [3, 3], T [3]) initial guess
) -> tuple[Tensor, Tensor]:  # R [3, 3], T [3]: x_cam = R·x_world + T
    """Camera pose from 2D–3D correspondences (OpenCV, no lens distortion).

    EPnP gives an initial estimate (or ``init`` is used), then Levenberg–Marquardt
    refines the reprojection error; with 6+ points the iterative solver is tried too
    and the estimate with the lower error wins. Rows with a NaN are ignored. Since
    ``K`` and ``points2d`` share the same pixel convention, it does not matter that
    OpenCV places pixel centres at integers. Runs in float64 on the CPU; the result has
    the dtype and device of ``points3d``. Not differentiable.
    """
    if points3d.dim() != 2 or points3d.shape[-1] != 3:
        raise ValueError(f"points3d must have shape [N, 3], got {list(points3d.shape)}")
    N = points3d.shape[0]
    if points2d.shape != (N, 2):
        raise ValueError(f"points2d must have shape [N, 2] = [{N}, 2], got {list(points2d.shape)}")
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape [3, 3], got {list(K.shape)}")
    p3 = points3d.detach().cpu().double().numpy()
    p2 = points2d.detach().cpu().double().numpy()
    Kn = K.detach().cpu().double().numpy()
    keep = np.isfinite(p3).all(1) & np.isfinite(p2).all(1)
    p3, p2 = np.ascontiguousarray(p3[keep]), np.ascontiguousarray(p2[keep])
    if p3.shape[0] < 4:
        raise ValueError(
            f"solve_pnp needs at least 4 finite correspondences (6 or more recommended), "
            f"got {p3.shape[0]} of N={N}"
        )

    candidates = []
    if init is not None:
        R0 = init[0].detach().cpu().double().numpy()
        candidates.append((cv2.Rodrigues(R0)[0], init[1].detach().cpu().double().numpy()))
    ok, rvec, tvec = cv2.solvePnP(p3, p2, Kn, None, flags=cv2.SOLVEPNP_EPNP)
    if ok:
        candidates.append((rvec, tvec))
    if p3.shape[0] >= 6:
        ok, rvec, tvec = cv2.solvePnP(p3, p2, Kn, None, flags=cv2.SOLVEPNP_ITERATIVE)
        if ok:
            candidates.append((rvec, tvec))
    best, best_err = None, np.inf
    for rvec, tvec in candidates:
        rvec, tvec = cv2.solvePnPRefineLM(
            p3, p2, Kn, None, rvec.reshape(3, 1).copy(), tvec.reshape(3, 1).copy()
        )
        proj = cv2.projectPoints(p3, rvec, tvec, Kn, None)[0].reshape(-1, 2)
        err = float(np.square(proj - p2).sum(1).mean())
        if np.isfinite(err) and err < best_err:
            best, best_err = (rvec, tvec), err
    if best is None:
        raise RuntimeError(f"solve_pnp: OpenCV found no pose for {p3.shape[0]} correspondences")
    R = cv2.Rodrigues(best[0])[0]
    out = {"dtype": points3d.dtype, "device": points3d.device}
    return torch.as_tensor(R, **out), torch.as_tensor(best[1].reshape(3), **out)


def similarity_matrix(scale: float, R: np.ndarray, T: np.ndarray) -> np.ndarray:  # [4, 4]
    """4×4 matrix of ``x ↦ scale·R·x + T`` (NumPy, float64)."""
    M = np.eye(4)
    M[:3, :3] = scale * np.asarray(R)
    M[:3, 3] = np.asarray(T)
    return M


def nearest_rotation(A: np.ndarray) -> np.ndarray:  # [3, 3] -> [3, 3]
    """The proper rotation closest to ``A`` in Frobenius norm (SVD projection)."""
    U, _, Vt = np.linalg.svd(A)
    d = np.sign(np.linalg.det(U @ Vt)) or 1.0
    return U @ np.diag([1.0, 1.0, d]) @ Vt


def decompose_similarity(M: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(scale, R [3, 3], T [3]) of a 4×4 similarity ``M`` (inverse of similarity_matrix)."""
    s = float(np.cbrt(np.linalg.det(M[:3, :3])))
    return s, nearest_rotation(M[:3, :3] / s), M[:3, 3].copy()


def apply_head_pose(
    points: Tensor,  # [B, N, 3] canonical
    R: Tensor,  # [B, 3, 3]
    T: Tensor,  # [B, 3]
    scale: Tensor,  # [B]
) -> Tensor:  # [B, N, 3] world: s·R·x + T
    """Head pose canonical → world (docs/architecture.md §4), batched over B."""
    return scale[:, None, None] * (points @ R.transpose(-1, -2)) + T[:, None, :]


def scale_from_centers(
    T: Tensor,  # [n, 3] fitted head origins of a unit-size head, each in its camera's frame
    centers: Tensor,  # [n, 3] where each camera expects the head origin (e.g. rig_center)
    size_sigma: float,
    center_sigma: float,
) -> float:
    """The head size ``s`` that settles one image's size/distance ambiguity.

    Scaling a head by ``s`` about the camera centre (``T → s·T``) leaves its image
    unchanged, so one image fixes only the direction of ``T``. Two Gaussian priors pick
    ``s``: the size itself, ``(s − 1)/size_sigma`` (the canonical head has size 1), and the
    depth of the origin along its ray, ``(s·|T_i| − <c_i, T_i/|T_i|>) / (center_sigma·|c_i|)``
    (``center_sigma`` is relative to the camera's distance from ``c_i``). The MAP of the
    two is closed-form: ``s = (1/σs² + Σ a_i b_i/w_i²) / (1/σs² + Σ a_i²/w_i²)`` with
    ``a_i = |T_i|``, ``b_i = <c_i, T_i/a_i>``, ``w_i = σc·|c_i|``.
    """
    if T.shape != centers.shape or T.ndim != 2 or T.shape[-1] != 3 or T.shape[0] == 0:
        raise ValueError(
            f"T and centers must both be [n, 3] with n >= 1, got {list(T.shape)} and "
            f"{list(centers.shape)}"
        )
    if not (size_sigma > 0 and center_sigma > 0):
        raise ValueError(f"the sigmas must be > 0, got {size_sigma} and {center_sigma}")
    T, c = T.double(), centers.double()
    a = T.norm(dim=-1)
    b = (c * T).sum(-1) / a.clamp_min(1e-12)
    w2 = (center_sigma * c.norm(dim=-1)) ** 2
    prior = 1.0 / size_sigma**2
    return float((prior + (a * b / w2).sum()) / (prior + (a * a / w2).sum()))
