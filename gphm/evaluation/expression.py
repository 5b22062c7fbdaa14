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

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gphm.data.synthetic.params import EXPRESSIONS
from gphm.data.synthetic.render import HeadPose
from gphm.data.synthetic.truth import DatasetTruth, load_neutral_twins, rig_of
from gphm.geometry.landmarks import IBUG68_REGIONS
from gphm.io.images import box_downsample

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
    "EXPRESSION_SPLITS",
    "evaluate_expressions",
    "evaluate_expression_probe",
    "difference_picture",
    "lr_bicubic",
]

#: Default support threshold: a truth pixel changes by more than 4 of 255 levels.
SUPPORT_THRESHOLD = 4.0 / 255.0
_MIN_MSE = 1e-12  # as gphm.evaluation.metrics.psnr: identical images give 120 dB


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


# ----------------------------------------------------------------------------- a trained run

#: Splits :func:`evaluate_expressions` scores, and which codes render the expression.
EXPRESSION_SPLITS = {
    "train": "own",
    "val_view": "own",
    "heldout_view": "own",
    "val_combo": "transferred",
    "heldout_combo": "transferred",
}


def _items(stats: ExpressionStats) -> list[ExpressionStats]:
    """One :class:`ExpressionStats` per item of a batched one (leading dims flattened)."""
    fields = [f.name for f in dataclasses.fields(ExpressionStats)]
    flat = {f: getattr(stats, f).reshape(-1) for f in fields}
    n = flat[fields[0]].shape[0]
    return [ExpressionStats(**{f: v[i] for f, v in flat.items()}) for i in range(n)]


def _composite(image: np.ndarray, mask: np.ndarray) -> Tensor:  # uint8 -> [H, W, 3] float
    """As the dataset loader does with a row: RGB over white with the mask."""
    rgb = torch.from_numpy(image.astype(np.float32) / 255.0)
    alpha = torch.from_numpy(mask.astype(np.float32) / 255.0)[..., None]
    return rgb * alpha + (1.0 - alpha)


def _at(images: Tensor, size: tuple[int, int]) -> Tensor:  # [B, H, W, 3] -> [B, h, w, 3]
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    return torch.stack([box_downsample(im, size) for im in images])


class _NeutralTruth:
    """The neutral twin of a dataset row: stored by ``gphm-synth``, or rendered on demand
    by the generator (:class:`~gphm.data.synthetic.truth.DatasetTruth`) for rows that
    have none (e.g. ``train`` rows of a dataset written with ``neutral_twins=eval``)."""

    def __init__(self, data_path: str | Path, meta: dict[str, Any]):
        self.twins = load_neutral_twins(data_path)  # UserError: none; regenerate
        self.meta = meta
        self._truth: DatasetTruth | None = None
        self.rendered = 0

    def __call__(self, item: Any) -> tuple[Tensor, Tensor]:  # [H, W, 3], [L, 3]
        row = int(item.row)
        if row in self.twins:
            image, mask, lmk = self.twins.get(row)
            return _composite(image, mask), torch.from_numpy(lmk)
        if self._truth is None:
            self._truth = DatasetTruth(self.meta)
        record = {"subject": int(item.subject), "frame": int(item.frame), "camera": item.camera,
                  "head_R": item.head_R.numpy(), "head_T": item.head_T.numpy(),
                  "head_scale": float(item.head_scale), "viewmat": item.viewmat.numpy(),
                  "K": item.K.numpy()}  # fmt: skip
        views = self._truth.render_row(record, expression=EXPRESSIONS["neutral"])
        self.rendered += 1
        return _composite(views.images[0], views.masks[0]), torch.from_numpy(views.landmarks_3d)


def _expression_codes(
    split: str, frames_meta: list, subjects: list[str], trained: Iterable[int], neutral: str
) -> tuple[dict[int, int], dict[tuple[int, str], int] | None]:
    """The subjects' neutral frames and, for a ``*_combo`` split, the transfer table."""
    from gphm.evaluation.views import trained_frames_by_label, transfer_frames

    base = trained_frames_by_label(frames_meta, trained, subjects).get(neutral, {})
    if not base:
        raise ValueError(
            f"no subject has a trained frame labelled {neutral!r} (labels: "
            f"{', '.join(sorted({str(m['expression']) for m in frames_meta}))}); pass neutral=LABEL"
        )
    table = None
    if EXPRESSION_SPLITS[split] == "transferred":
        table = transfer_frames(frames_meta, trained, subjects)
    return base, table


@torch.no_grad()
def evaluate_expressions(
    model: Any,  # GuidanceModel | GaussianHead (anything with their render interface)
    data_path: str | Path,
    split: str = "heldout_view",
    neutral: str = "neutral",
    lr_size: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    train_frames: Iterable[int] | None = None,
    threshold: float = SUPPORT_THRESHOLD,
    progress: bool = False,
) -> dict[str, Any]:
    """Expression metrics of a trained model on one split of a synthetic dataset.

    Every non-neutral row of ``split`` is rendered at its true head pose and camera twice:
    with the expression's code (``own``: the row's trained frame code on ``train`` and
    ``*_view`` rows; ``transferred``: on ``*_combo`` rows, the code of another subject's
    trained frame with the label, as ``split=*_combo`` does) and with the subject's
    trained ``neutral`` frame code. They are scored against the row's image and its
    neutral twin (``gt_neutral``, from ``gphm-synth``'s ``neutral_twins``; rows without
    a stored twin are rendered by the generator on demand): support gain, capture and
    landmark displacement capture (module docstring), per label and pooled (``all``),
    pixel-weighted. Images are compared at the model's output size (the truth
    box-downsampled when smaller). Rows of subjects without a trained neutral frame, or
    of a pair without a transfer source, are skipped (``n_skipped``).

    Raises :class:`~gphm.errors.UserError` when the dataset has no neutral twins.
    """
    # The run-evaluation machinery is imported here: the metric functions above stay
    # importable on their own (they are pure tensor math).
    from gphm.data.loaders import HeadDataset, collate_views
    from gphm.evaluation.common import render_rows, row_batches

    if split not in EXPRESSION_SPLITS:
        raise ValueError(f"split must be one of {list(EXPRESSION_SPLITS)}, got {split!r}")
    ds = HeadDataset(data_path, split=split, lr_size=lr_size)
    twin_of = _NeutralTruth(data_path, ds.meta)
    frames_meta, subjects = ds.meta["frames"], list(ds.meta["subjects"])
    train_ds = ds if split == "train" else None
    if train_frames is None:
        train_frames = (train_ds or HeadDataset(data_path, "train", lr_size)).frames.tolist()
    base, table = _expression_codes(split, frames_meta, subjects, train_frames, neutral)
    model = model.to(device).eval()
    context = model.render_context()
    acc = _Accumulator(threshold, ds.lr_size)
    skipped = 0
    for idx in row_batches(len(ds), batch_size, f"eval expressions {split}", progress):
        keep, sources, missed = _scored_rows([ds[i] for i in idx], table, base, neutral)
        skipped += missed
        if not keep:
            continue
        b = collate_views(keep).to(device)
        z_id = model.identity_codes(b.subject)
        codes = model.expression_codes(torch.tensor(sources, device=device))
        ref = model.expression_codes(torch.tensor([base[int(s)] for s in b.subject], device=device))
        out_e = render_rows(model, b, z_id, codes, context)
        out_n = render_rows(model, b, z_id, ref, context)
        size = tuple(out_e.rgb.shape[1:3])
        twins = [twin_of(it) for it in keep]
        gt_n = _at(torch.stack([t[0] for t in twins]), size)
        keys = [{"subject": subjects[int(it.subject)], "frame": int(it.frame),
                 "camera": str(it.camera), "code_frame": int(src)}
                for it, src in zip(keep, sources)]  # fmt: skip
        acc.add(out_e, out_n, _at(b.image.cpu(), size), gt_n, list(b.expression),
                b.landmarks_3d.cpu(), torch.stack([t[1] for t in twins]), keys)  # fmt: skip
    report: dict[str, Any] = {
        "split": f"expression:{split}",
        "model": type(model).__name__,
        "codes": EXPRESSION_SPLITS[split],
        "neutral": neutral,
        "threshold": threshold,
        "pooling": "pixel-weighted (union of supports); capture energy-weighted",
        "n": len(acc.labels),
        "n_skipped": skipped,
        "neutral_twins_rendered": twin_of.rendered,
    }
    return report | acc.pooled()


def _scored_rows(
    items: list, table: dict | None, base: dict[int, int], neutral: str
) -> tuple[list, list[int], int]:
    """The rows of ``items`` to score, their expression-code sources and how many were
    skipped (no trained neutral frame, or no transfer source); neutral rows are left
    out (the truth does not change: nothing to score)."""
    keep, sources, skipped = [], [], 0
    for it in items:
        s, label = int(it.subject), it.expression
        source = int(it.frame) if table is None else table.get((s, label))
        if label == neutral:
            continue
        if s not in base or source is None:
            skipped += 1
            continue
        keep.append(it)
        sources.append(source)
    return keep, sources, skipped


def lr_bicubic(
    images: Tensor,  # [B, H, W, 3]
    size: tuple[int, int],  # (h, w) the model's render size
) -> Tensor:  # [B, H, W, 3] in [0, 1]
    """``images`` box-downsampled to ``size`` and upsampled back bicubically: what a
    renderer exact at ``size`` followed by a bicubic (not a learned) upsampler would
    output. Its expression metrics against the truth (``lr_bicubic_*`` in the reports)
    show how much of a small motion the render size alone leaves to the upsampler."""
    H, W = images.shape[1:3]
    low = _at(images, size).permute(0, 3, 1, 2)
    up = torch.nn.functional.interpolate(low, size=(H, W), mode="bicubic", align_corners=False)
    return up.clamp(0, 1).permute(0, 2, 3, 1)


class _Accumulator:
    """Batches of expression stats, labels and landmark tuples, pooled at the end; keeps
    the first item of each label for :func:`difference_picture`. With ``lr_size`` (the
    model's render size, when below the scored size) it also scores :func:`lr_bicubic`
    of the truth."""

    def __init__(self, threshold: float, lr_size: tuple[int, int] | None = None) -> None:
        self.threshold = threshold
        self.lr_size = lr_size
        self.reference: list[ExpressionStats] = []
        self.stats: list[ExpressionStats] = []
        self.labels: list[str] = []
        self.lmks: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self.shown: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self.keys: list[dict[str, Any]] = []

    def add(self, out_e: Any, out_n: Any, gt_e: Tensor, gt_n: Tensor, labels: list[str],
            gt_lmk_e: Tensor, gt_lmk_n: Tensor, keys: list[dict[str, Any]]) -> None:  # fmt: skip
        """``out_*``: model outputs (``rgb`` [B, h, w, 3], ``landmarks`` [B, L, 3]) with the
        expression's and the neutral code; ``gt_*`` the truths at the same size; ``keys``
        what names each item in the report's ``per_item`` (subject, frame, ...)."""
        pred_e, pred_n = out_e.rgb.clamp(0, 1).cpu(), out_n.rgb.clamp(0, 1).cpu()
        self.stats.append(expression_stats(pred_e, pred_n, gt_e, gt_n, self.threshold))
        self.keys.extend(keys)
        if self.lr_size is not None and tuple(gt_e.shape[1:3]) != tuple(self.lr_size):
            ref_e, ref_n = lr_bicubic(gt_e, self.lr_size), lr_bicubic(gt_n, self.lr_size)
            self.reference.append(expression_stats(ref_e, ref_n, gt_e, gt_n, self.threshold))
        self.labels.extend(labels)
        for k, label in enumerate(labels):
            self.shown.setdefault(label, (gt_e[k], gt_n[k], pred_e[k], pred_n[k]))
        self.lmks.append((out_e.landmarks.cpu(), out_n.landmarks.cpu(), gt_lmk_e, gt_lmk_n))

    def pooled(self) -> dict[str, Any]:
        report = _pooled_report(self.stats, self.labels, self.lmks)
        report["per_item"] = [
            {**key, "label": label, "support_gain_db": float(it.support_gain_db),
             "capture": float(it.capture)}
            for key, label, it in zip(self.keys, self.labels,
                                      (i for st in self.stats for i in _items(st)))
        ]  # fmt: skip
        if not self.reference or not self.labels:
            return report
        items = [item for st in self.reference for item in _items(st)]
        ref = pool_expression_stats(items, self.labels)
        for label, entry in [*report["per_label"].items(), ("all", report["all"])]:
            entry["lr_bicubic_support_gain_db"] = ref[label]["support_gain_db"]
            entry["lr_bicubic_capture"] = ref[label]["capture"]
        report["lr_bicubic"] = (
            f"the truth box-downsampled to the render size {list(self.lr_size)} and upsampled "
            "bicubically, scored like the model: what an exact lr render without a learned "
            "upsampler would score"
        )
        return report


def _trained_neutrals(
    frames_meta: list, subjects: list[str], trained: Iterable[int], neutral: str
) -> tuple[dict, dict[int, int]]:
    """Each label's trained frames by subject and the subjects' ``neutral`` frames
    (ValueError when no subject has one)."""
    from gphm.evaluation.views import trained_frames_by_label

    by_label = trained_frames_by_label(frames_meta, trained, subjects)
    base = by_label.get(neutral, {})
    if not base:
        raise ValueError(f"no subject has a trained frame labelled {neutral!r}; pass neutral=LABEL")
    return by_label, base


def _probe_pairs(
    frames_meta: list, subjects: list[str], trained: Iterable[int], neutral: str
) -> tuple[dict[int, int], list[tuple[int, int, str]]]:
    """Subjects' neutral frames and the ``(subject, frame, label)`` probes: each trained
    subject's lowest trained frame of every other label (mixtures: label ``mix``)."""
    by_label, base = _trained_neutrals(frames_meta, subjects, trained, neutral)
    probes = [
        (s, f, str(label))
        for label, frames in sorted(by_label.items(), key=lambda kv: str(kv[0]))
        if label != neutral
        for s, f in sorted(frames.items())
        if s in base
    ]
    return base, probes


def _transfer_probes(
    frames_meta: list, subjects: list[str], trained: Iterable[int], neutral: str
) -> tuple[dict[int, int], list[tuple[int, int, str]]]:
    """Subjects' neutral frames and the transfer probes ``(subject A, frame f, label)`` of
    ``split=expression_transfer``: cross-identity transfer of any frame's expression,
    continuous mixtures included. Every trained non-neutral frame ``f`` of a subject B (for
    a label, B's lowest trained frame of it; every ``mix`` frame: each is its own
    expression) goes to the next subject A after B (cyclically) with a trained neutral
    frame: A is rendered with f's code and scored against the generator's render of A
    with f's expression parameters, which A never showed."""
    base = _trained_neutrals(frames_meta, subjects, trained, neutral)[1]
    seen: set[tuple[int, str]] = set()
    probes = []
    for f in sorted(set(int(x) for x in trained)):
        m = frames_meta[f]
        b, label = int(m["subject"]), str(m["expression"])
        if label == neutral or (label != "mix" and (b, label) in seen):
            continue
        seen.add((b, label))
        targets = [(b + k) % len(subjects) for k in range(1, len(subjects))]
        a = next((t for t in targets if t in base), None)
        if a is not None:
            probes.append((a, f, label))
    return base, sorted(probes, key=lambda p: (p[2], p[0], p[1]))


@torch.no_grad()
def evaluate_expression_probe(
    model: Any,  # GuidanceModel | GaussianHead
    data_path: str | Path,
    camera: str | None = None,
    neutral: str = "neutral",
    lr_size: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    train_frames: Iterable[int] | None = None,
    threshold: float = SUPPORT_THRESHOLD,
    save_dir: str | Path | None = None,
    transfer: bool = False,
    parts: bool = False,
) -> dict[str, Any]:
    """Expression metrics of the trained subjects at the canonical head pose (the issue's
    measurement; needs no neutral twins, only a ``gphm-synth`` dataset).

    For every trained subject and every label it has a trained frame of (its lowest such
    frame), the model renders the frame's code and the subject's ``neutral`` frame code at
    the identity head pose seen from ``camera`` (default the dataset's reference camera,
    the most frontal); the generator renders the same subject with the frame's true
    expression and with the neutral one at the same pose and camera
    (:class:`~gphm.data.synthetic.truth.DatasetTruth`). Scores as
    :func:`evaluate_expressions`.

    ``transfer=True``: subject A with another subject's frame code (:func:`_transfer_probes`).

    ``save_dir``: also writes ``SAVE_DIR/difference.png`` (:func:`difference_picture`),
    one row per label for the first subject probed with it.

    ``parts=True`` (a Gaussian head only): also which of its expression paths carries
    each expression (:class:`_PartProbes`, report ``parts``).
    """
    from gphm.data.loaders import HeadDataset

    part_probes = _PartProbes(model, threshold) if parts else None
    ds = HeadDataset(data_path, split="train", lr_size=lr_size)
    meta, truth = ds.meta, DatasetTruth(ds.meta)
    camera, row = _probe_camera(ds, camera, data_path)
    trained = ds.frames.tolist() if train_frames is None else train_frames
    pairs = _transfer_probes if transfer else _probe_pairs
    base, probes = pairs(meta["frames"], list(meta["subjects"]), trained, neutral)
    model = model.to(device).eval()
    context = model.render_context()
    (h, w), (H, _) = ds.lr_size, ds.hr_size
    identity = HeadPose(R=np.eye(3), T=np.zeros(3), scale=1.0)
    rig = rig_of(row.viewmat.numpy(), row.K.numpy(), H, [camera])
    acc = _Accumulator(threshold, (h, w))
    for start in range(0, len(probes), batch_size):
        chunk = probes[start : start + batch_size]
        subj = torch.tensor([s for s, _, _ in chunk], device=device)
        z_id = model.identity_codes(subj)
        codes = model.expression_codes(torch.tensor([f for _, f, _ in chunk], device=device))
        ref = model.expression_codes(torch.tensor([base[s] for s, _, _ in chunk], device=device))
        pose = _canonical_pose(row, len(chunk), device)
        out_e = model.render(z_id, codes, *pose, w, h, **context)
        out_n = model.render(z_id, ref, *pose, w, h, **context)
        size = tuple(out_e.rgb.shape[1:3])
        keys = [{"subject": meta["subjects"][s], "code_frame": f} for s, f, _ in chunk]
        gt = _probe_truth(truth, chunk, identity, rig, size)
        acc.add(out_e, out_n, *gt, keys)
        if part_probes is not None:
            render = partial(model.render, z_id, codes, *pose, w, h, **context)
            part_probes.add(render, ref, out_n, gt, keys)
    report: dict[str, Any] = {
        "split": "expression:transfer" if transfer else "expression:probe",
        "model": type(model).__name__,
        "codes": "another subject's frame (transferred)" if transfer else "own",
        "camera": camera,
        "pose": "canonical (identity)",
        "neutral": neutral,
        "threshold": threshold,
        "pooling": "pixel-weighted (union of supports); capture energy-weighted",
        "n": len(acc.labels),
    }
    if save_dir is not None and acc.shown:
        report |= _save_difference_picture(acc.shown, Path(save_dir) / "difference.png")
    if part_probes is not None:
        report |= part_probes.report()
    return report | acc.pooled()


def _canonical_pose(row: Any, B: int, device: torch.device | str) -> tuple[Tensor, ...]:
    """``render``'s pose arguments of B rows at the identity head pose seen from ``row``'s
    camera: R [B, 3, 3], T [B, 3], scale [B], viewmats [B, 4, 4], Ks_lr [B, 3, 3]."""
    return (torch.eye(3, device=device).expand(B, 3, 3), torch.zeros(B, 3, device=device),
            torch.ones(B, device=device), row.viewmat.to(device).expand(B, 4, 4),
            row.K_lr.to(device).expand(B, 3, 3))  # fmt: skip


def _save_difference_picture(shown: dict[str, tuple], path: Path) -> dict[str, Any]:
    """Writes :func:`difference_picture` of ``shown`` (label -> the images of its first
    item), one row per label in sorted order; the report's entries naming it."""
    from gphm.io.images import save_png

    save_png(path, difference_picture([shown[k] for k in sorted(shown)]))
    return {"difference_picture": str(path), "difference_picture_labels": sorted(shown)}


class _PartProbes:
    """Which path of a :class:`~gphm.models.gaussian_head.GaussianHead` carries each
    expression: for every part of :data:`~gphm.models.gaussian_head.EXPRESSION_PARTS`
    the expression is rendered once more with that part fed the neutral code
    (``render(exp_parts=...)``) and scored against the same truth. ``parts[part][label]``
    is the capture left without that part (what the other parts carry); the full capture
    minus it is the part's share."""

    def __init__(self, model: Any, threshold: float) -> None:
        from gphm.models.gaussian_head import EXPRESSION_PARTS, GaussianHead

        if not isinstance(model, GaussianHead):
            raise ValueError(f"expression parts need a Gaussian head (stage 2), not a "
                             f"{type(model).__name__}")  # fmt: skip
        self.accs = {part: _Accumulator(threshold) for part in EXPRESSION_PARTS}

    def add(self, render: Any, ref: Tensor, out_n: Any, gt: tuple, keys: list) -> None:
        """``render(exp_parts=...)``: the model's render of the batch's expression codes with
        ``exp_parts``; ``ref`` the neutral codes; the rest as :meth:`_Accumulator.add`."""
        for part, acc in self.accs.items():
            acc.add(render(exp_parts={part: ref}), out_n, *gt, keys)

    def report(self) -> dict[str, Any]:
        pooled = {part: acc.pooled() for part, acc in self.accs.items()}
        return {
            "parts": {
                part: {
                    label: entry["capture"]
                    for label, entry in [*p["per_label"].items(), ("all", p["all"])]
                }
                for part, p in pooled.items()
            },
            "parts_note": (
                "capture with that part fed the subject's neutral code and the others the "
                "expression's: what the other parts carry (networks: f_exp, f_col, f_att; "
                "position_basis: E_exp; color_basis: C_exp)"
            ),
        }


def _probe_camera(ds: Any, camera: str | None, data_path: str | Path) -> tuple[str, Any]:
    """``camera`` (default the generator's reference camera, else the first) and a training
    row seen from it (cameras are shared by every frame of a synthetic set)."""
    meta = ds.meta
    cams = meta.get("generator", {}).get("cameras", {})
    camera = camera or cams.get("reference") or meta["cameras"][0]
    cam_of_row = ds.ds.data.column("camera").to_pylist()
    found = [k for k, r in enumerate(ds.indices) if cam_of_row[r] == camera]
    if not found:
        raise ValueError(
            f"camera {camera!r} has no training row in {data_path} (cameras: {meta['cameras']})"
        )
    return camera, ds[found[0]]


def _probe_truth(
    truth: DatasetTruth, chunk: list[tuple[int, int, str]], pose: Any, rig: Any,
    size: tuple[int, int],
) -> tuple[Tensor, Tensor, list[str], Tensor, Tensor]:  # fmt: skip
    """The generator's renders of ``chunk``'s ``(subject, frame, label)`` probes with the
    frame's expression and with the neutral one (``[B, *size, 3]`` each), the labels and
    the true landmarks of both (``[B, L, 3]``), for :meth:`_Accumulator.add`."""
    gt = [
        [truth.render(s, expr, pose, rig) for expr in
         (truth.frame_expression(f), EXPRESSIONS["neutral"])]
        for s, f, _ in chunk
    ]  # fmt: skip
    gt_e = _at(torch.stack([_composite(g[0].images[0], g[0].masks[0]) for g in gt]), size)
    gt_n = _at(torch.stack([_composite(g[1].images[0], g[1].masks[0]) for g in gt]), size)
    return (gt_e, gt_n, [label for _, _, label in chunk],
            torch.stack([torch.from_numpy(g[0].landmarks_3d) for g in gt]),
            torch.stack([torch.from_numpy(g[1].landmarks_3d) for g in gt]))  # fmt: skip


def difference_picture(
    rows: list[tuple[Tensor, Tensor, Tensor, Tensor]],  # (gt_e, gt_n, pred_e, pred_n), [H, W, 3]
    gain: float = 4.0,
) -> Tensor:  # [rows·(H+2)+2, 4·(W+2)+2, 3]
    """Per row: truth with the expression | truth difference | model with the expression's
    code | model difference. Differences (expression − neutral) are shown as
    ``0.5 + gain·D`` (grey = no change), so both columns use one scale and a model that
    ignores its code shows a flat grey."""
    from gphm.io.images import image_grid

    tiles = []
    for gt_e, gt_n, pred_e, pred_n in rows:
        tiles += [gt_e, (0.5 + gain * (gt_e - gt_n)).clamp(0, 1),
                  pred_e, (0.5 + gain * (pred_e - pred_n)).clamp(0, 1)]  # fmt: skip
    return image_grid(tiles, ncols=4)


def _pooled_report(stats: list, labels: list[str], lmks: list) -> dict[str, Any]:
    """``per_label`` and ``all`` entries from batched stats and landmark tuples."""
    if not labels:
        return {"per_label": {}, "all": None}
    items = [item for st in stats for item in _items(st)]
    per_label = pool_expression_stats(items, labels)
    landmarks = pool_landmark_capture(*(torch.cat([x[k] for x in lmks]) for k in range(4)), labels)
    per_label = {k: {**v, "landmark_capture": landmarks[k]} for k, v in per_label.items()}
    everything = per_label.pop("all")
    return {"per_label": per_label, "all": everything}
