"""gphm.evaluation.metrics against scikit-image / numpy references, over batches and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from gphm.evaluation import metrics


def _pair(b: int, h: int, w: int, c: int = 3, dtype=torch.float64):
    x = torch.rand(b, h, w, c, dtype=dtype)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    return x, y


def _disk(b: int, h: int, w: int, radius: float) -> torch.Tensor:  # [B, H, W, 1]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    r = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2).sqrt()
    return (r < radius).to(torch.float64)[None, ..., None].expand(b, h, w, 1).clone()


def _sk_ssim(a: np.ndarray, b: np.ndarray, full: bool = False):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0,
                                 channel_axis=-1, full=full)  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 24, 24, 3), (3, 20, 31, 3), (2, 16, 16, 1)])
def test_psnr_matches_skimage(shape):
    x, y = _pair(*shape)
    got = metrics.psnr(x, y)
    want = [peak_signal_noise_ratio(y[i].numpy(), x[i].numpy(), data_range=1.0)
            for i in range(shape[0])]  # fmt: skip
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_psnr_of_identical_images_is_finite():
    x, _ = _pair(2, 8, 8)
    assert torch.allclose(metrics.psnr(x, x), torch.full((2,), 120.0, dtype=x.dtype))


@pytest.mark.parametrize("shape", [(1, 24, 24, 3), (3, 20, 31, 3), (2, 33, 17, 1)])
def test_ssim_matches_skimage(shape):
    """Same window (11, σ 1.5), constants and border: equal up to float64 rounding."""
    x, y = _pair(*shape)
    got = metrics.ssim(x, y)
    want = [_sk_ssim(x[i].numpy(), y[i].numpy()) for i in range(shape[0])]
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)
    # float32 (what evaluation uses) agrees to single precision.
    np.testing.assert_allclose(metrics.ssim(x.float(), y.float()).numpy(), want, atol=1e-5)


def test_ssim_of_identical_images_is_one():
    x, _ = _pair(2, 16, 16)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2, dtype=x.dtype))


def test_masked_psnr_matches_numpy():
    x, y = _pair(3, 20, 24)
    mask = _disk(3, 20, 24, 7.0)
    mask[1] = 0
    mask[1, 2:5, 3:9] = 0.9  # > 0.5 counts, so does a soft mask
    mask[2, :, :12] = 0.4  # <= 0.5 does not
    got = metrics.masked_psnr(x, y, mask)
    for i in range(3):
        m = mask[i, ..., 0].numpy() > 0.5
        mse = ((x[i].numpy() - y[i].numpy())[m] ** 2).mean()
        assert got[i].item() == pytest.approx(-10 * math.log10(mse), rel=1e-10)


def test_masked_ssim_matches_skimage_map():
    x, y = _pair(2, 30, 26)
    mask = _disk(2, 30, 26, 9.0)
    mask[1, :15] = 0
    got = metrics.masked_ssim(x, y, mask)
    for i in range(2):
        _, smap = _sk_ssim(x[i].numpy(), y[i].numpy(), full=True)  # [H, W, C]
        s = smap.mean(-1)[5:-5, 5:-5]  # channel mean, valid region (skimage's crop)
        m = mask[i, 5:-5, 5:-5, 0].numpy() > 0.5
        assert got[i].item() == pytest.approx(s[m].mean(), abs=1e-9)
    # A full mask is the unmasked SSIM.
    full = torch.ones_like(mask)
    assert torch.allclose(metrics.masked_ssim(x, y, full), metrics.ssim(x, y), atol=1e-12)


def test_empty_masks_give_nan():
    x, y = _pair(2, 24, 24)
    empty = torch.zeros(2, 24, 24, 1, dtype=x.dtype)
    assert torch.isnan(metrics.masked_psnr(x, y, empty)).all()
    assert torch.isnan(metrics.masked_ssim(x, y, empty)).all()
    assert torch.isnan(metrics.mask_iou(empty, empty)).all()
    # Only the empty row is NaN.
    mask = _disk(2, 24, 24, 6.0)
    mask[0] = 0
    p, s = metrics.masked_psnr(x, y, mask), metrics.masked_ssim(x, y, mask)
    assert torch.isnan(p[0]) and torch.isfinite(p[1])
    assert torch.isnan(s[0]) and torch.isfinite(s[1])
    # A mask only inside the 5-pixel border strip has no pixel in the SSIM map.
    border = torch.zeros(1, 24, 24, 1, dtype=x.dtype)
    border[0, :3] = 1
    assert torch.isnan(metrics.masked_ssim(x[:1], y[:1], border)).all()
    assert torch.isfinite(metrics.masked_psnr(x[:1], y[:1], border)).all()


def test_mask_iou_matches_numpy():
    a = _disk(3, 16, 20, 5.0)
    b = torch.roll(a, 2, dims=2)
    b[2] = 0  # IoU with an empty mask is 0 (union is a's pixels)
    got = metrics.mask_iou(a, b)
    for i in range(3):
        p, t = a[i].numpy() > 0.5, b[i].numpy() > 0.5
        assert got[i].item() == pytest.approx((p & t).sum() / (p | t).sum())
    assert got[2].item() == 0.0
    assert torch.equal(metrics.mask_iou(a, a), torch.ones(3))
    with pytest.raises(ValueError, match="mask_iou"):
        metrics.mask_iou(a, a[:, :8])


def test_landmark_error_skips_missing_landmarks():
    target = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [float("nan"), 0, 0]]])
    pred = target.nan_to_num(5.0) + torch.tensor([0.0, 0.1, 0])
    mean, rel = metrics.landmark_error(pred, target)
    assert mean.item() == pytest.approx(0.1) and rel.item() == pytest.approx(0.1)
    none = torch.full((1, 3, 3), float("nan"))
    assert torch.isnan(metrics.landmark_error(pred, none)[0]).all()


def test_finite_mean():
    assert metrics.finite_mean(torch.tensor([1.0, float("nan"), 3.0])) == (2.0, 1)
    assert metrics.finite_mean([1.0, 2.0]) == (1.5, 0)
    assert metrics.finite_mean([float("nan"), float("inf")]) == (None, 2)
    assert metrics.finite_mean([]) == (None, 0)
    assert metrics.finite_mean(torch.tensor([0.5], dtype=torch.float16)) == (0.5, 0)


def test_image_metrics_keep_leading_batch_shapes():
    x, y = _pair(6, 16, 18)
    mask = _disk(6, 16, 18, 5.0)
    flat = {
        "psnr": metrics.psnr(x, y),
        "masked_psnr": metrics.masked_psnr(x, y, mask),
        "ssim": metrics.ssim(x, y),
        "masked_ssim": metrics.masked_ssim(x, y, mask),
        "mask_iou": metrics.mask_iou(mask, torch.roll(mask, 1, dims=2)),
    }
    x, y, mask = (t.reshape(2, 3, *t.shape[1:]) for t in (x, y, mask))
    nested = {
        "psnr": metrics.psnr(x, y),
        "masked_psnr": metrics.masked_psnr(x, y, mask),
        "ssim": metrics.ssim(x, y),
        "masked_ssim": metrics.masked_ssim(x, y, mask),
        "mask_iou": metrics.mask_iou(mask, torch.roll(mask, 1, dims=3)),
    }
    for k, v in nested.items():
        assert v.shape == (2, 3), k
        assert torch.allclose(v.flatten(), flat[k], rtol=0, atol=1e-12), k
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, C\]"):
        metrics.ssim(x[0, 0], y[0, 0])
