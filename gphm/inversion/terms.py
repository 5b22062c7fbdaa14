"""Every loss term of fitting and tracking: a small pure function each.

A term returns an **unweighted** scalar; its weight is the config option of the same
name (:data:`TERMS`), applied by :func:`weighted_total` (the engine). To add a term,
see the package docstring (:mod:`gphm.inversion`).

Shapes: renders ``[B, S, S, 3]`` in [0, 1] (hr), silhouettes ``[B, s, s, 1]`` (lr),
landmarks ``[B, L, 2]`` pixels; position offsets ``[N, 3]`` canonical units, colour
offsets ``[N, C]``, opacity-logit offsets ``[N]`` or ``[N, 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from gphm import losses

__all__ = ["TERMS", "code_prior", "color_offset_size", "dssim", "landmark_reprojection",
           "laplacian", "offset_size", "offset_smoothness", "offset_symmetry",
           "opacity_offset_size", "photometric_l1", "pose_change", "prior_views",
           "silhouette", "standard_prior", "code_change", "weighted_total"]  # fmt: skip

TERMS: dict[str, str] = {
    "rgb": "L1 between render and image (photometric_l1)",
    "dssim": "D-SSIM between render and image (dssim)",
    "mask": "1 - IoU of the rendered alpha and the target mask (silhouette)",
    "landmark": "squared landmark reprojection error in units of the image size",
    "code": "diagonal Gaussian prior of the trained codebooks (code_prior)",
    "offset": "||position offsets||^2 (offset_size)",
    "color_offset": "||colour-feature offsets||^2 (color_offset_size)",
    "opacity_offset": "(opacity-logit offsets)^2 (opacity_offset_size)",
    "smooth": "fitting: kNN-Laplacian of the offsets; tracking: z_exp change (code_change)",
    "symmetry": "left-right symmetry of the offsets (offset_symmetry)",
    "prior_views": "L1 of side views against the phase-1 avatar's (prior_views)",
    "pose_smooth": "squared change of the pose increments from the previous frame",
}
"""Term name -> what it measures. The name is also the weight's option name."""


def photometric_l1(rgb: Tensor, image: Tensor) -> Tensor:  # [B, S, S, 3] x2 -> []
    return losses.l1(rgb, image)


def dssim(rgb: Tensor, image: Tensor) -> Tensor:  # [B, S, S, 3] x2 -> []
    return losses.dssim(rgb, image)


def silhouette(alpha: Tensor, mask: Tensor) -> Tensor:  # [B, s, s, 1] x2 -> []
    """1 − IoU of the rendered alpha and the target mask (both at the rasteriser's size)."""
    return losses.silhouette_iou(alpha, mask)


def landmark_reprojection(
    uv: Tensor, target: Tensor, valid: Tensor, size: int
) -> Tensor:  # [..., L, 2], [..., L, 2], [..., L] bool -> []
    """Mean over valid rows of the squared reprojection error in units of the image
    size ``size``."""
    d2 = (((uv - target) / size) ** 2).sum(-1)
    return (d2 * valid).sum() / valid.sum().clamp_min(1)


def standard_prior(u: Tensor) -> Tensor:  # [B, D] standardised codes -> []
    """``mean(u²)``: ~1 for a typical trained code (``u = (z − mean) / std``)."""
    return (u**2).mean()


def code_prior(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:  # [B, D], [D], [D] -> []
    """Negative log-likelihood (up to constants, per dimension) of codes under the
    diagonal Gaussian of a trained codebook: ~1 for a typical training code."""
    return standard_prior((z - mean) / std)


def offset_size(points: Tensor) -> Tensor:  # [N, 3] -> []
    return (points**2).sum(-1).mean()


def color_offset_size(colors: Tensor) -> Tensor:  # [N, C] -> []
    return (colors**2).mean()


def opacity_offset_size(opacity: Tensor) -> Tensor:  # [N(, 1)] -> []
    return (opacity**2).mean()


#: Each row minus the mean of its neighbours' rows, squared (:func:`gphm.losses.knn_laplacian`).
laplacian = losses.knn_laplacian


def offset_smoothness(points: Tensor | None, colors: Tensor | None, nbrs: Tensor) -> Tensor:
    """kNN-Laplacian of the position offsets plus that of the colour offsets per channel."""
    smooth: Tensor | float = 0.0
    if points is not None:
        smooth = smooth + laplacian(points, nbrs)
    if colors is not None:
        smooth = smooth + laplacian(colors, nbrs) / colors.shape[1]
    return smooth if torch.is_tensor(smooth) else torch.tensor(float(smooth))


def offset_symmetry(points: Tensor | None, colors: Tensor | None, mirror: Tensor) -> Tensor:
    """A Gaussian's colour offset equals its mirror image's (``mirror`` [N]), its position
    offset the mirrored one (x negated: the canonical head is symmetric about x = 0)."""
    sym: Tensor | float = 0.0
    if points is not None:
        flip = torch.tensor([-1.0, 1.0, 1.0], device=points.device)
        sym = sym + ((points - points[mirror] * flip) ** 2).sum(-1).mean()
    if colors is not None:
        sym = sym + ((colors - colors[mirror]) ** 2).mean()
    return sym if torch.is_tensor(sym) else torch.tensor(float(sym))


def prior_views(rgb: Tensor, alpha: Tensor, rgb0: Tensor, alpha0: Tensor) -> Tensor:
    """L1 of a side view (RGB and silhouette) against the phase-1 avatar's."""
    return losses.l1(rgb, rgb0) + losses.l1(alpha, alpha0)


def code_change(u: Tensor, u_prev: Tensor) -> Tensor:  # [B, D] x2 -> []
    """Squared change of standardised codes from the previous frame (mean over D)."""
    return ((u - u_prev) ** 2).mean()


def pose_change(rot: Tensor, trans: Tensor, rot_prev: Tensor, trans_prev: Tensor) -> Tensor:
    """Squared change of the axis-angle (rad) and translation increments, summed."""
    return ((rot - rot_prev) ** 2).sum() + ((trans - trans_prev) ** 2).sum()


def weighted_total(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """``Σ weights[name] · term`` in the order of ``terms`` (a term without a weight is
    logged only)."""
    return sum(weights[k] * v for k, v in terms.items() if k in weights)  # type: ignore[return-value]
