"""Image and geometry metrics (evaluation only; no gradients needed)."""

from __future__ import annotations

import torch
from torch import Tensor

from gphm.losses import ssim as _ssim

__all__ = [
    "psnr",
    "masked_psnr",
    "ssim",
    "masked_ssim",
    "mask_iou",
    "landmark_error",
]


@torch.no_grad()
def psnr(pred: Tensor, target: Tensor) -> Tensor:  # [B, H, W, C] x2 -> [B] dB
    """Peak signal-to-noise ratio per image for values in [0, 1]."""
    mse = ((pred - target) ** 2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


@torch.no_grad()
def masked_psnr(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:  # -> [B] dB
    """PSNR over the pixels where ``mask`` [B, H, W, 1] > 0.5 (the head region)."""
    m = (mask > 0.5).to(pred.dtype)
    se = (((pred - target) ** 2) * m).flatten(1).sum(1)
    n = (m.flatten(1).sum(1) * pred.shape[-1]).clamp_min(1)
    return -10 * torch.log10((se / n).clamp_min(1e-12))


@torch.no_grad()
def ssim(pred: Tensor, target: Tensor) -> Tensor:  # [B, H, W, C] x2 -> [B]
    """Per-image SSIM (Gaussian window 11, σ 1.5; see :func:`gphm.losses.ssim`)."""
    return _ssim(pred, target, reduce=False).flatten(1).mean(1)


@torch.no_grad()
def masked_ssim(pred: Tensor, target: Tensor, mask: Tensor, window: int = 11) -> Tensor:
    """SSIM averaged over the head region (``mask`` [B, H, W, 1] > 0.5) -> [B].

    The SSIM map covers the valid region (``window // 2`` pixels in from each border),
    so the mask is cropped the same way.
    """
    s = _ssim(pred, target, window=window, reduce=False)  # [B, H', W']
    r = window // 2
    m = (mask[:, r : mask.shape[1] - r, r : mask.shape[2] - r, 0] > 0.5).to(s.dtype)
    return (s * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


@torch.no_grad()
def mask_iou(pred: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:  # -> [B]
    """IoU of binarised masks [B, H, W, 1]."""
    p, t = pred > threshold, target > threshold
    inter = (p & t).flatten(1).sum(1).float()
    union = (p | t).flatten(1).sum(1).float().clamp_min(1)
    return inter / union


@torch.no_grad()
def landmark_error(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:  # [B, L, 3] x2
    """(mean Euclidean error [B], relative error [B]) of 3D landmarks.

    The relative error divides by the diagonal of the ground-truth landmarks' bounding
    box — the face's size, smaller than the head, so this is a conservative "% of head
    size".
    """
    valid = torch.isfinite(target).all(-1)
    err = (pred - torch.nan_to_num(target)).norm(dim=-1)
    mean = (err * valid).sum(1) / valid.sum(1).clamp_min(1)
    t = torch.where(valid[..., None], target, torch.nan)
    size = (t.nan_to_num(-1e9).amax(1) - t.nan_to_num(1e9).amin(1)).norm(dim=-1)
    return mean, mean / size.clamp_min(1e-12)
