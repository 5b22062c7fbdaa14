"""Expression metrics: does the rendered expression change the image as the truth does?

Whole-image PSNR barely moves when a model ignores its expression code: most pixels of
a head do not change between expressions. These metrics look only where the truth
changes. Each evaluation item is a quadruple of images of one head at one pose and
camera:

* ``gt_expr``, ``gt_neutral``: the generator's render with the item's expression and
  with the neutral expression (its *neutral twin*, see
  :mod:`gphm.data.synthetic.truth`);
* ``pred_expr``, ``pred_neutral``: the model's render with the expression's code and with
  the subject's neutral code.

Definitions (images ``[..., H, W, 3]`` float in [0, 1]; leading dims are items):

* **support** (:func:`expression_support`): the pixels where the truth's expression
  changes the image, ``max_c |gt_expr − gt_neutral| > threshold`` (default 4/255).
* **support gain** (:func:`support_gain_db`): PSNR against ``gt_expr`` on the support,
  rendered with the expression's code minus rendered with the neutral code. 0 dB: the
  code does nothing useful; a model reproducing the truth within noise σ scores
  ``20·log10(rms(D_gt) / σ)``.
* **capture** (:func:`capture`): ``⟨D_pred, D_gt⟩ / ⟨D_gt, D_gt⟩`` with
  ``D = expr − neutral`` (pixels × channels, on the support when given). 1: the model
  changes the image as the truth does; 0: not at all (or orthogonally); > 1: overshoots;
  < 0: changes it the other way.
* **landmark displacement capture** (:func:`landmark_displacement_capture`): the same
  projection for the displacement of the posed landmarks from the neutral twin's, per
  face region (:data:`IBUG68_REGIONS`).

Undefined cases are NaN, never 0: an empty support (the truth changes nothing on this
item) gives NaN gain and NaN capture; a region whose true landmarks move less than
``min_displacement`` (RMS, canonical units) gives NaN landmark capture. NaN items are
left out of pooling (:func:`pool_expression_stats`), which reports how many were used.

Pooling (per label and over all labels) is **pixel-weighted**: the squared errors of
all support pixels of all items are summed before the PSNR is taken (the PSNR of the
union of the supports), and capture sums numerators and denominators over items
(``Σ⟨D_pred, D_gt⟩ / Σ⟨D_gt, D_gt⟩``, an energy-weighted mean of per-item captures). A
large expression (jaw_open) therefore weighs more than a small one (blink) in the
pooled figure, which is why every label is also reported on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "IBUG68_REGIONS",
    "SUPPORT_THRESHOLD",
    "ExpressionStats",
    "expression_support",
    "support_psnr",
    "support_gain_db",
    "capture",
    "expression_stats",
    "landmark_displacement_capture",
    "pool_expression_stats",
    "pool_landmark_capture",
]

#: Default support threshold: a truth pixel changes by more than 4 of 255 levels.
SUPPORT_THRESHOLD = 4.0 / 255.0
_MIN_MSE = 1e-12  # as gphm.metrics.psnr: identical images give 120 dB

#: iBUG-68 landmark index ranges of the face regions (end exclusive).
IBUG68_REGIONS: dict[str, range] = {
    "jaw": range(0, 17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "mouth": range(48, 68),
}


def _check_images(**images: Tensor) -> torch.Size:
    shapes = {name: tuple(x.shape) for name, x in images.items()}
    first = next(iter(shapes.values()))
    if len(first) < 3 or first[-1] != 3:
        raise ValueError(f"images must be [..., H, W, 3], got {shapes}")
    if any(s != first for s in shapes.values()):
        raise ValueError(f"images must all have the same shape, got {shapes}")
    return torch.Size(first)


def expression_support(
    gt_expr: Tensor,  # [..., H, W, 3]
    gt_neutral: Tensor,  # [..., H, W, 3]
    threshold: float = SUPPORT_THRESHOLD,
) -> Tensor:  # [..., H, W] bool
    """Pixels where the truth's expression changes the image: ``max_c |Δ| > threshold``."""
    _check_images(gt_expr=gt_expr, gt_neutral=gt_neutral)
    return (gt_expr - gt_neutral).abs().amax(-1) > threshold


def _support_sse(pred: Tensor, gt: Tensor, support: Tensor) -> Tensor:  # -> [...]
    """Sum of squared errors over the support pixels and all channels."""
    err = ((pred - gt) ** 2).sum(-1) * support.to(pred.dtype)
    return err.flatten(-2).sum(-1)


def _psnr_from_sse(sse: Tensor, count: Tensor) -> Tensor:
    """PSNR of ``sse`` over ``count`` values; NaN where ``count`` is 0."""
    mse = sse / count.clamp_min(1)
    value = -10.0 * torch.log10(mse.clamp_min(_MIN_MSE))
    return torch.where(count > 0, value, torch.full_like(value, math.nan))


def support_psnr(
    pred: Tensor,  # [..., H, W, 3]
    gt: Tensor,  # [..., H, W, 3]
    support: Tensor,  # [..., H, W] bool
) -> Tensor:  # [...] dB
    """PSNR (peak 1) over the support pixels and all channels; NaN on an empty support,
    120 dB when identical there."""
    _check_images(pred=pred, gt=gt)
    count = support.flatten(-2).sum(-1) * 3
    return _psnr_from_sse(_support_sse(pred, gt, support), count)


def support_gain_db(
    pred_expr: Tensor,  # [..., H, W, 3] rendered with the expression's code
    pred_neutral: Tensor,  # [..., H, W, 3] rendered with the subject's neutral code
    gt_expr: Tensor,  # [..., H, W, 3] the truth with the expression
    gt_neutral: Tensor,  # [..., H, W, 3] the truth's neutral twin (unused if support given)
    support: Tensor | None = None,  # [..., H, W] bool; default expression_support(gt...)
) -> Tensor:  # [...] dB
    """PSNR against ``gt_expr`` on the support with the expression's code minus with the
    neutral code. 0 for a renderer that ignores the code; NaN on an empty support."""
    _check_images(
        pred_expr=pred_expr, pred_neutral=pred_neutral, gt_expr=gt_expr, gt_neutral=gt_neutral
    )
    if support is None:
        support = expression_support(gt_expr, gt_neutral)
    return support_psnr(pred_expr, gt_expr, support) - support_psnr(pred_neutral, gt_expr, support)


def capture(
    pred_expr: Tensor,  # [..., H, W, 3]
    pred_neutral: Tensor,  # [..., H, W, 3]
    gt_expr: Tensor,  # [..., H, W, 3]
    gt_neutral: Tensor,  # [..., H, W, 3]
    support: Tensor | None = None,  # [..., H, W] bool; None: the whole image
) -> Tensor:  # [...]
    """``⟨D_pred, D_gt⟩ / ⟨D_gt, D_gt⟩`` of the difference images ``D = expr − neutral``.

    Sums over pixels (the support's, when given) and channels. NaN where the truth does
    not change the image (``⟨D_gt, D_gt⟩ = 0``).
    """
    _check_images(
        pred_expr=pred_expr, pred_neutral=pred_neutral, gt_expr=gt_expr, gt_neutral=gt_neutral
    )
    d_pred, d_gt = pred_expr - pred_neutral, gt_expr - gt_neutral
    weight = 1.0 if support is None else support.to(d_gt.dtype)[..., None]
    dot = (d_pred * d_gt * weight).flatten(-3).sum(-1)
    energy = (d_gt * d_gt * weight).flatten(-3).sum(-1)
    return torch.where(energy > 0, dot / energy.clamp_min(1e-30), torch.full_like(dot, math.nan))


@dataclass(frozen=True)
class ExpressionStats:
    """Per-item sufficient statistics of the image metrics (every field ``[...]``), so
    metrics can be pooled over items exactly (pixel- and energy-weighted)."""

    values: Tensor  # image pixels × 3 channels
    support_values: Tensor  # support pixels × 3 channels
    sse_expr: Tensor  # Σ (pred_expr − gt_expr)² on the support
    sse_neutral: Tensor  # Σ (pred_neutral − gt_expr)² on the support
    dot: Tensor  # ⟨D_pred, D_gt⟩ on the support
    energy: Tensor  # ⟨D_gt, D_gt⟩ on the support

    @property
    def support_gain_db(self) -> Tensor:  # [...]
        return _psnr_from_sse(self.sse_expr, self.support_values) - _psnr_from_sse(
            self.sse_neutral, self.support_values
        )

    @property
    def capture(self) -> Tensor:  # [...]
        nan = torch.full_like(self.dot, math.nan)
        return torch.where(self.energy > 0, self.dot / self.energy.clamp_min(1e-30), nan)


@torch.no_grad()
def expression_stats(
    pred_expr: Tensor,  # [..., H, W, 3]
    pred_neutral: Tensor,  # [..., H, W, 3]
    gt_expr: Tensor,  # [..., H, W, 3]
    gt_neutral: Tensor,  # [..., H, W, 3]
    threshold: float = SUPPORT_THRESHOLD,
) -> ExpressionStats:
    """The statistics of :func:`support_gain_db` and :func:`capture` (both on the
    support) for each item; float64 sums."""
    _check_images(
        pred_expr=pred_expr, pred_neutral=pred_neutral, gt_expr=gt_expr, gt_neutral=gt_neutral
    )
    pe, pn, ge, gn = (x.double() for x in (pred_expr, pred_neutral, gt_expr, gt_neutral))
    support = expression_support(ge, gn, threshold)
    w = support.double()[..., None]
    d_pred, d_gt = pe - pn, ge - gn
    support_values = support.flatten(-2).sum(-1).double() * 3
    H, W = support.shape[-2:]
    return ExpressionStats(
        values=torch.full_like(support_values, H * W * 3.0),
        support_values=support_values,
        sse_expr=_support_sse(pe, ge, support),
        sse_neutral=_support_sse(pn, ge, support),
        dot=(d_pred * d_gt * w).flatten(-3).sum(-1),
        energy=(d_gt * d_gt * w).flatten(-3).sum(-1),
    )


def pool_expression_stats(
    stats: Sequence[ExpressionStats],  # one per item (any leading shape, flattened)
    labels: Sequence[str],  # [len(stats)] the item's expression label
) -> dict[str, dict[str, float | int]]:
    """Per-label and pooled (key ``"all"``) metrics, pixel-weighted (module docstring).

    Each entry: ``support_gain_db``, ``capture``, ``support_fraction`` (support pixels
    over image pixels, all items of the group, empty ones included), ``items`` (items
    with a non-empty support, the ones pooled) and ``items_empty`` (left out: the truth
    changed nothing). Metrics of a group without usable items are NaN.
    """
    if len(stats) != len(labels):
        raise ValueError(f"{len(stats)} stats but {len(labels)} labels")
    groups: dict[str, list[ExpressionStats]] = {}
    for s, label in zip(stats, labels):
        groups.setdefault(str(label), []).append(s)
        groups.setdefault("all", []).append(s)
    out: dict[str, dict[str, float | int]] = {}
    for name in [*sorted(k for k in groups if k != "all"), "all"]:
        if name not in groups:
            continue
        cat = {f: torch.cat([getattr(s, f).reshape(-1) for s in groups[name]]) for f in (
            "values", "support_values", "sse_expr", "sse_neutral", "dot", "energy")}  # fmt: skip
        used = cat["support_values"] > 0
        total = ExpressionStats(**{f: v[used].sum() for f, v in cat.items()})
        out[name] = {
            "support_gain_db": float(total.support_gain_db),
            "capture": float(total.capture),
            "support_fraction": float(cat["support_values"].sum() / cat["values"].sum()),
            "items": int(used.sum()),
            "items_empty": int((~used).sum()),
        }
    return out


def landmark_displacement_capture(
    pred_lmk_expr: Tensor,  # [..., L, D] posed landmarks, expression's code (D = 2 or 3)
    pred_lmk_neutral: Tensor,  # [..., L, D] same pose and camera, neutral code
    gt_lmk_expr: Tensor,  # [..., L, D] the truth's
    gt_lmk_neutral: Tensor,  # [..., L, D] the truth's neutral twin's
    regions: Mapping[str, Sequence[int] | range] | None = None,  # default IBUG68_REGIONS
    min_displacement: float = 1e-4,
) -> dict[str, Tensor]:  # region -> [...]
    """``⟨d_pred, d_gt⟩ / ⟨d_gt, d_gt⟩`` per region, ``d = lmk_expr − lmk_neutral``.

    Sums over the region's landmarks and coordinates. NaN where the truth's RMS
    displacement in the region (per landmark, Euclidean) is below ``min_displacement``
    (in the landmarks' units): the expression does not move that region.
    """
    shapes = {tuple(x.shape) for x in (pred_lmk_expr, pred_lmk_neutral, gt_lmk_expr,
                                         gt_lmk_neutral)}  # fmt: skip
    if len(shapes) != 1 or len(next(iter(shapes))) < 2:
        raise ValueError(f"landmarks must all be [..., L, D] of one shape, got {sorted(shapes)}")
    regions = IBUG68_REGIONS if regions is None else regions
    num = pred_lmk_expr.shape[-2]
    d_pred = (pred_lmk_expr - pred_lmk_neutral).double()
    d_gt = (gt_lmk_expr - gt_lmk_neutral).double()
    out = {}
    for name, idx in regions.items():
        idx = list(idx)
        if not idx or min(idx) < 0 or max(idx) >= num:
            raise ValueError(f"region {name!r}: indices must be in [0, {num}), got {idx}")
        p, g = d_pred[..., idx, :], d_gt[..., idx, :]
        dot = (p * g).flatten(-2).sum(-1)
        energy = (g * g).flatten(-2).sum(-1)
        moves = energy / len(idx) >= min_displacement**2
        out[name] = torch.where(
            moves, dot / energy.clamp_min(1e-30), torch.full_like(dot, math.nan)
        )
    return out


def pool_landmark_capture(
    pred_lmk_expr: Tensor,  # [N, L, D]
    pred_lmk_neutral: Tensor,
    gt_lmk_expr: Tensor,
    gt_lmk_neutral: Tensor,
    labels: Sequence[str],  # [N]
    regions: Mapping[str, Sequence[int] | range] | None = None,
    min_displacement: float = 1e-4,
) -> dict[str, dict[str, float]]:
    """Landmark capture per label (and ``"all"``) and region, pooled like image capture
    (``Σ dot / Σ energy`` over the items whose region moves); NaN if none does."""
    regions = IBUG68_REGIONS if regions is None else regions
    d_pred = (pred_lmk_expr - pred_lmk_neutral).double()
    d_gt = (gt_lmk_expr - gt_lmk_neutral).double()
    if d_pred.ndim != 3 or d_pred.shape != d_gt.shape or len(labels) != d_pred.shape[0]:
        raise ValueError(
            f"expected [N, L, D] landmarks and N labels, got {tuple(d_pred.shape)}, "
            f"{tuple(d_gt.shape)} and {len(labels)} labels"
        )
    names = [*sorted(set(map(str, labels))), "all"]
    out: dict[str, dict[str, float]] = {}
    for name in names:
        rows = [i for i, lab in enumerate(labels) if name in ("all", str(lab))]
        out[name] = {}
        for region, idx in regions.items():
            idx = list(idx)
            p, g = d_pred[rows][:, idx], d_gt[rows][:, idx]
            energy = (g * g).flatten(-2).sum(-1)
            moves = energy / len(idx) >= min_displacement**2
            dot = (p * g).flatten(-2).sum(-1)
            total = float(energy[moves].sum())
            out[name][region] = float(dot[moves].sum()) / total if total > 0 else math.nan
    return out
