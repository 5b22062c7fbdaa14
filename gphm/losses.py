"""Loss terms (docs/architecture.md §3.2, §9.1). Pure functions of tensors; weights live in
the configs.

Every image term is a mean over pixels *and* batch rows, computed per row and then
averaged, so a batch split across processes (DDP averages gradients) gives the same
gradient as one process holding the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gphm.geometry.mesh import laplacian_uniform

__all__ = [
    "l1",
    "mse",
    "silhouette_iou",
    "landmark_mse",
    "landmark_distance",
    "offset_l2",
    "code_l2",
    "group_consistency",
    "mesh_laplacian",
    "sdf_sphere",
    "sdf_abs",
    "ssim",
    "dssim",
]


def _check_same_shape(name: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred {list(pred.shape)} and target {list(target.shape)} differ")


def l1(pred: Tensor, target: Tensor) -> Tensor:  # [B, H, W, C] x2 -> []
    """Mean absolute error."""
    _check_same_shape("l1", pred, target)
    return (pred - target).abs().mean()


def mse(pred: Tensor, target: Tensor) -> Tensor:  # [B, H, W, C] x2 -> []
    """Mean squared error (its minimiser is the mean where L1's is the median: at an
    outline whose position is uncertain it blends, which is what PSNR rewards)."""
    _check_same_shape("mse", pred, target)
    return (pred - target).square().mean()


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean squared error over the pixels ``weight`` [B, H, W] (0/1 or soft) selects,
    all channels of ``pred``, ``target`` [B, H, W, C]: ``Σ w (pred − target)² / (C Σ w)``;
    0 where ``weight`` is all zero."""
    _check_same_shape("masked_mse", pred, target)
    if weight.shape != pred.shape[:-1]:
        want = tuple(pred.shape[:-1])
        raise ValueError(f"masked_mse: weight {tuple(weight.shape)} must be {want}")
    w = weight.to(pred.dtype)
    sse = ((pred - target).square().sum(-1) * w).sum()
    return sse / (w.sum() * pred.shape[-1]).clamp_min(1e-12)


def silhouette_iou(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """``mean_b (1 − IoU_b)`` of soft masks ``pred``, ``target`` [B, H, W, 1] in [0, 1]."""
    _check_same_shape("silhouette_iou", pred, target)
    dims = tuple(range(1, pred.dim()))
    inter = (pred * target).sum(dims)
    union = (pred + target - pred * target).sum(dims)
    return (1.0 - (inter + eps) / (union + eps)).mean()


def landmark_mse(pred: Tensor, target: Tensor) -> Tensor:  # [B, L, 3] x2 -> []
    """Mean over landmarks of the squared Euclidean distance; NaN targets are ignored."""
    _check_same_shape("landmark_mse", pred, target)
    return _mean_over_valid(lambda sq: sq, pred, target)


def landmark_distance(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over landmarks of the Euclidean distance (not squared); NaN targets are ignored.

    Its gradient keeps unit size however small the error, where the squared distance's
    vanishes: a smile moves the mouth corners ~0.03 head units, which the squared term
    (~1e-3) leaves to the photometric terms. ``eps`` keeps the gradient at 0 finite."""
    _check_same_shape("landmark_distance", pred, target)
    return _mean_over_valid(lambda sq: sq.add(eps).sqrt(), pred, target)


def _mean_over_valid(per_landmark, pred: Tensor, target: Tensor) -> Tensor:  # -> []
    """Mean of ``per_landmark(squared distance)`` [B, L] over landmarks whose target is
    finite (NaN targets: not visible / not annotated)."""
    valid = torch.isfinite(target).all(-1)  # [B, L]
    value = per_landmark(((pred - torch.nan_to_num(target)) ** 2).sum(-1))
    return (value * valid).sum() / valid.sum().clamp_min(1)


def offset_l2(delta: Tensor) -> Tensor:  # [..., 3] -> []
    """Mean squared norm of per-point offsets."""
    return (delta**2).sum(-1).mean()


def knn_laplacian(x: Tensor, nbrs: Tensor) -> Tensor:  # [N, D], [N, k] -> []
    """kNN-Laplacian energy: each row of ``x`` minus the mean of its ``k`` neighbours'
    rows (``nbrs``, e.g. :func:`gphm.geometry.mesh.knn_indices`), squared, summed over D,
    mean over N. 0 for ``k = 0``."""
    if nbrs.shape[1] == 0:
        return x.new_zeros(())
    return ((x - x[nbrs].mean(1)) ** 2).sum(-1).mean()


def code_l2(code: Tensor) -> Tensor:  # [B, D] -> []
    """Mean squared norm of latent codes (keeps the auto-decoder's codes near 0)."""
    return (code**2).sum(-1).mean()


def group_consistency(codes: Tensor, groups: Tensor) -> Tensor:  # [F, D], [F] -> []
    """Mean squared distance of each code to the mean code of its group.

    ``groups[f]`` is the group id (>= 0) of code ``f``, or -1 to leave it out. Used for
    expression codes of frames that share an expression label: it pulls them together so
    identity has to be explained by ``z_id`` and swapping ``z_exp`` transfers only the
    expression. 0 when no group has a member.
    """
    keep = groups >= 0
    if not bool(keep.any()):
        return codes.sum() * 0.0
    z, g = codes[keep], groups[keep]
    n = int(g.max()) + 1
    sums = z.new_zeros(n, z.shape[-1]).index_add(0, g, z)
    counts = torch.bincount(g, minlength=n).clamp(min=1).to(z.dtype)
    means = sums / counts[:, None]
    return ((z - means[g]) ** 2).sum(-1).mean()


def mesh_laplacian(verts: Tensor, faces: Tensor) -> Tensor:  # [..., V, 3], [F, 3] -> []
    """Uniform Laplacian smoothness of vertex positions."""
    return laplacian_uniform(verts, faces)


def sdf_sphere(sdf: Tensor, points: Tensor, radius: float) -> Tensor:  # [N], [N, 3] -> []
    """Squared error to the signed distance of a sphere of ``radius`` at the origin.

    Used to pre-fit f_mean so DMTet has a surface to start from.
    """
    return ((sdf - (points.norm(dim=-1) - radius)) ** 2).mean()


def sdf_abs(sdf: Tensor) -> Tensor:  # [...] -> []
    """Mean |sdf|: pulls the zero level set through given points (e.g. landmarks)."""
    return sdf.abs().mean()


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(
    pred: Tensor,  # [B, H, W, C] in [0, 1]
    target: Tensor,  # [B, H, W, C]
    window: int = 11,
    sigma: float = 1.5,
    reduce: bool = True,
) -> Tensor:  # [] (or [B, H', W'] map when reduce=False)
    """Structural similarity (Wang et al. 2004) with a Gaussian window, valid region only.

    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1)`` up to border handling (we
    average over the valid region, skimage crops the same border).
    """
    _check_same_shape("ssim", pred, target)
    C = pred.shape[-1]
    x = pred.permute(0, 3, 1, 2)
    y = target.permute(0, 3, 1, 2)
    w = _gaussian_window(window, sigma, C, x)
    mu_x = F.conv2d(x, w, groups=C)
    mu_y = F.conv2d(y, w, groups=C)
    sxx = F.conv2d(x * x, w, groups=C) - mu_x**2
    syy = F.conv2d(y * y, w, groups=C) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=C) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    s = s.mean(1)  # over channels
    return s.mean() if reduce else s


def dssim(pred: Tensor, target: Tensor) -> Tensor:
    """``(1 − SSIM) / 2``: the perceptual substitute used when no VGG weights exist."""
    return (1.0 - ssim(pred, target)) / 2
