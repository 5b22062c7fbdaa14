"""Image and geometry metrics (evaluation only; no gradients needed).

Conventions: images are ``[..., H, W, C]`` in [0, 1], masks ``[..., H, W, 1]`` (a pixel is
in the mask when its value is > 0.5), with any leading batch shape ``...`` (at least one
dimension). Every image metric returns one value per image, shaped ``[...]``.

Undefined values are NaN, never a made-up number: a masked metric over an empty mask has
no pixels to average, and the IoU of two empty masks is 0/0. Aggregate per-image values
with :func:`finite_mean`, which leaves the NaN rows out of the mean and counts them, so a
report can say ``n_empty``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from gphm.losses import ssim as _ssim

__all__ = [
    "finite_mean",
    "psnr",
    "masked_psnr",
    "ssim",
    "masked_ssim",
    "mask_iou",
    "landmark_error",
]

# PSNR of two identical images would be +inf; clamping the MSE gives 120 dB instead, a
# finite "perfect" score (float32 images cannot resolve errors that small anyway).
_MIN_MSE = 1e-12


def _images(*xs: Tensor) -> tuple[tuple[int, ...], list[Tensor]]:
    """The leading batch shape and the tensors reshaped to ``[B, H, W, C]``."""
    if xs[0].dim() < 4:
        raise ValueError(f"expected images [..., H, W, C], got shape {list(xs[0].shape)}")
    lead = tuple(xs[0].shape[:-3])
    return lead, [x.reshape(-1, *x.shape[-3:]) for x in xs]


def finite_mean(values: Tensor | Iterable[float]) -> tuple[float | None, int]:
    """``(mean of the finite entries, number of non-finite entries)`` of a 1-D sequence.

    The mean is ``None`` when no entry is finite (including an empty sequence). NaN
    entries are the rows a metric is undefined for (e.g. an empty mask); ±inf entries are
    counted and left out too, so one degenerate row can never turn a mean into inf.
    """
    t = torch.as_tensor(values if isinstance(values, Tensor) else list(values))
    t = t.detach().to("cpu", torch.float64).flatten()
    ok = torch.isfinite(t)
    n_bad = int((~ok).sum())
    if not bool(ok.any()):
        return None, n_bad
    return float(t[ok].mean()), n_bad


@torch.no_grad()
def psnr(pred: Tensor, target: Tensor) -> Tensor:  # [..., H, W, C] x2 -> [...] dB
    """Peak signal-to-noise ratio per image for values in [0, 1] (peak 1).

    ``-10 log10(MSE)`` with the MSE over all pixels and channels of each image; identical
    images give 120 dB (MSE clamped to 1e-12).
    """
    mse = ((pred - target) ** 2).flatten(-3).mean(-1)
    return -10 * torch.log10(mse.clamp_min(_MIN_MSE))


@torch.no_grad()
def masked_psnr(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:  # -> [...] dB
    """PSNR over the pixels where ``mask`` [..., H, W, 1] > 0.5 (the head region).

    The MSE averages over the masked pixels and all channels. An empty mask gives NaN.
    """
    m = (mask > 0.5).to(pred.dtype)
    se = (((pred - target) ** 2) * m).flatten(-3).sum(-1)
    n = m.flatten(-3).sum(-1) * pred.shape[-1]
    mse = (se / n.clamp_min(1)).clamp_min(_MIN_MSE)
    return torch.where(n > 0, -10 * torch.log10(mse), torch.nan)


@torch.no_grad()
def ssim(pred: Tensor, target: Tensor) -> Tensor:  # [..., H, W, C] x2 -> [...]
    """Per-image SSIM, the mean of the SSIM map over its valid region and channels.

    Gaussian window 11, σ 1.5, C1 = 0.01², C2 = 0.03² (data range 1), population
    (co)variances: the same number as ``skimage.metrics.structural_similarity(a, b,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
    channel_axis=-1)``. skimage filters the whole image with reflected borders and then
    drops 5 pixels at each border before averaging; we only compute those valid pixels
    (a "valid" convolution), so the averaged pixels and their values are the same.
    Images need H, W >= 11.
    """
    lead, (p, t) = _images(pred, target)
    return _ssim(p, t, reduce=False).flatten(1).mean(1).reshape(lead)


@torch.no_grad()
def masked_ssim(pred: Tensor, target: Tensor, mask: Tensor, window: int = 11) -> Tensor:
    """SSIM averaged over the head region (``mask`` [..., H, W, 1] > 0.5) -> [...].

    The SSIM map covers the valid region (``window // 2`` pixels in from each border, as
    in :func:`ssim`), so the mask is cropped the same way: the value is the mean of the
    channel-averaged SSIM map over the masked pixels of that region. NaN when no masked
    pixel lies in it (an empty mask, or one that touches only the border strip).
    """
    lead, (p, t, mask) = _images(pred, target, mask)
    s = _ssim(p, t, window=window, reduce=False)  # [B, H', W']
    r = window // 2
    m = (mask[:, r : mask.shape[1] - r, r : mask.shape[2] - r, 0] > 0.5).to(s.dtype)
    n = m.flatten(1).sum(1)
    out = torch.where(n > 0, (s * m).flatten(1).sum(1) / n.clamp_min(1), torch.nan)
    return out.reshape(lead)


@torch.no_grad()
def mask_iou(pred: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:  # -> [...]
    """IoU of binarised masks [..., H, W, 1] (``> threshold``), at their own resolution.

    Both masks must have the same size; the IoU is measured at that resolution (callers
    say which in their report key, e.g. ``silhouette_iou_lr``). Two empty masks have no
    union: their IoU is NaN (0/0), not 1 and not 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"mask_iou: pred {list(pred.shape)} vs target {list(target.shape)}")
    p, t = pred > threshold, target > threshold
    inter = (p & t).flatten(-3).sum(-1).double()
    union = (p | t).flatten(-3).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), math.nan).float()


@torch.no_grad()
def landmark_error(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:  # [B, L, 3] x2
    """(mean Euclidean error [B], relative error [B]) of 3D landmarks.

    Non-finite target landmarks (not annotated) are skipped; a row without any finite
    landmark gives NaN. The relative error divides by the diagonal of the ground-truth
    landmarks' bounding box — the face's size, smaller than the head, so this is a
    conservative "% of head size".
    """
    valid = torch.isfinite(target).all(-1)
    err = (pred - torch.nan_to_num(target)).norm(dim=-1)
    count = valid.sum(1)
    mean = (err * valid).sum(1) / count.clamp_min(1)
    mean = torch.where(count > 0, mean, torch.nan)
    t = torch.where(valid[..., None], target, torch.nan)
    size = (t.nan_to_num(-1e9).amax(1) - t.nan_to_num(1e9).amin(1)).norm(dim=-1)
    return mean, mean / size.clamp_min(1e-12)
