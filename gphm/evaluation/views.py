"""Evaluation of a trained model (either stage) on a dataset split
(docs/architecture.md §3.4, §8.1).

Splits (``SPLITS``): ``val_view`` / ``heldout_view`` and ``val_combo`` / ``heldout_combo``;
the ``val_*`` ones choose defaults, the ``heldout_*`` ones are only reported.

* ``*_view``: training frames seen from cameras never used in training; each row is
  rendered with its own identity and (trained) expression codes.
* ``*_combo``: (subject, expression) pairs never trained. Expression transfer by code
  swapping: subject A is rendered with the ``z_exp`` of a *trained* frame of another
  subject B showing the same expression label (B = the next subject after A that has
  one), at A's ground-truth head pose and camera, and compared with A's image.

Report keys (means over rows unless said otherwise):

* ``psnr`` / ``ssim`` (full hr image), ``psnr_masked`` / ``ssim_masked`` (the head region
  of the ground-truth hr mask), ``lpips`` (AlexNet LPIPS v0.1, full hr image; ``null``
  with ``lpips_unavailable`` giving the reason when it cannot be computed, never 0).
* ``silhouette_iou_lr``: IoU of the rendered and ground-truth masks at the *low*
  resolution the model renders (``lr_size``), before the upsampler.
* ``n``: rows; ``n_empty``: rows with an empty head mask (or two empty lr silhouettes),
  whose masked metrics are undefined (NaN) — they are left out of those means only.
* Landmarks: a row's predicted 3D landmarks depend on its codes and head pose, not on
  its camera. For ``*_combo`` rows they are a held-out measurement (A's identity with B's
  expression against A's true landmarks): ``landmark_error`` (canonical units) and
  ``landmark_error_relative`` (fraction of the face's size). For ``*_view`` rows they
  are the *training* frames' landmarks seen again, so they are reported as
  ``landmark_error_training_frames`` (and ``..._relative``), never as a held-out number.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gphm.data.loaders import HeadDataset, collate_views
from gphm.evaluation import metrics
from gphm.evaluation.common import (
    image_scores,
    render_rows,
    rounded,
    row_batches,
    save_side_by_side,
)
from gphm.evaluation.perceptual import LPIPSMetric, resolve_lpips
from gphm.geometry.mesh import euler_characteristic, is_watertight
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel

__all__ = [
    "evaluate_model", "evaluate_expression_gain", "mesh_report", "trained_frames_by_label",
    "transfer_frames", "SPLITS",
]  # fmt: skip

SPLITS = ("val_view", "val_combo", "heldout_view", "heldout_combo")
"""The splits :func:`evaluate_model` scores (``*_view``: own codes, ``*_combo``: transfer)."""


def mesh_report(verts: torch.Tensor, faces: torch.Tensor) -> dict[str, Any]:
    """Topology of a mesh: counts, watertightness, Euler characteristic, components."""
    F = faces.cpu().numpy()
    n = int(verts.shape[0])
    rows = np.concatenate([F[:, 0], F[:, 1], F[:, 2]])
    cols = np.concatenate([F[:, 1], F[:, 2], F[:, 0]])
    graph = coo_matrix((np.ones_like(rows), (rows, cols)), shape=(n, n))
    components = connected_components(graph, directed=False)[0] if n else 0
    return {
        "vertices": n,
        "faces": int(faces.shape[0]),
        "watertight": bool(is_watertight(faces)),
        "euler_characteristic": int(euler_characteristic(verts, faces)),
        "components": int(components),
    }


def trained_frames_by_label(
    frames: list[dict[str, Any]], train_frames: Iterable[int], subjects: list[str]
) -> dict[str, dict[int, int]]:
    """``expression label -> {subject index: its lowest trained frame with that label}``.

    ``frames``: the dataset's (or run's) frame records (``subject``, ``expression``);
    ``train_frames``: indices of the frames whose expression codes were trained. Raises
    ValueError for an index outside ``frames``.
    """
    by_label: dict[str, dict[int, int]] = {}
    for f in sorted({int(f) for f in train_frames}):
        if not 0 <= f < len(frames):
            raise ValueError(
                f"train frame {f} is not a frame of the dataset (0..{len(frames) - 1})"
            )
        info = frames[f]
        s = info["subject"]
        s = subjects.index(s) if isinstance(s, str) else int(s)
        by_label.setdefault(info.get("expression"), {}).setdefault(s, f)
    return by_label


def transfer_frames(
    frames: list[dict[str, Any]], train_frames: Iterable[int], subjects: list[str]
) -> dict[tuple[int, str], int]:
    """``(subject A, expression label) -> trained frame of another subject B`` with that
    label, B being the first subject after A (cyclically) that has one.

    Arguments as :func:`trained_frames_by_label`: only trained frames are ever chosen as
    a source, for each subject B the lowest such frame of the label.
    """
    by_label = trained_frames_by_label(frames, train_frames, subjects)
    table = {}
    n = len(subjects)
    for label, donors in by_label.items():
        for a in range(n):
            for k in range(1, n):
                b = (a + k) % n
                if b in donors:
                    table[(a, label)] = donors[b]
                    break
    return table


def _view_rows(
    ds: HeadDataset, data_path: str | Path, split: str, trained: set[int]
) -> dict[tuple[int, str], int] | None:
    """The code-swap table of a ``*_combo`` split (:func:`transfer_frames`), None for a
    ``*_view`` split, whose rows must all be trained frames (else ValueError)."""
    frames_meta, subjects = ds.meta["frames"], list(ds.meta["subjects"])
    if split.endswith("_combo"):
        return transfer_frames(frames_meta, trained, subjects)
    untrained = sorted({int(f) for f in ds.frames} - trained)
    if untrained:
        raise ValueError(
            f"{data_path}: {split} rows show {len(untrained)} frame(s) whose expression "
            f"codes were not trained (e.g. {untrained[:5]}); *_view rows must be "
            "training frames"
        )
    return None


def _donors(
    b: Any, swap: dict[tuple[int, str], int], data_path: str | Path, split: str
) -> list[int]:
    """The transfer source frame of every row of batch ``b`` (ValueError when none)."""
    try:
        return [swap[(int(s), e)] for s, e in zip(b.subject, b.expression)]
    except KeyError as err:
        raise ValueError(
            f"{data_path}: no trained frame of another subject shows expression "
            f"{err.args[0][1]!r}, so {split} cannot be evaluated by code swapping"
        ) from None


def _view_report(
    model: Any, split: str, n: int, acc: dict[str, list[torch.Tensor]], combo: bool
) -> dict[str, Any]:
    """The means of the per-row scores ``acc`` with the module doc's keys."""
    rows = {k: torch.cat(v).cpu() for k, v in acc.items() if v}
    mean = {k: metrics.finite_mean(v)[0] for k, v in rows.items()}
    empty = ~(rows["psnr_masked"].isfinite() & rows["ssim_masked"].isfinite()
              & rows["iou"].isfinite())  # fmt: skip
    lmk_key = "landmark_error" if combo else "landmark_error_training_frames"
    return {
        "split": split,
        "n": n,
        "n_empty": int(empty.sum()),
        "model": type(model).__name__,
        "psnr": rounded(mean["psnr"], 3),
        "psnr_masked": rounded(mean["psnr_masked"], 3),
        "ssim": rounded(mean["ssim"], 4),
        "ssim_masked": rounded(mean["ssim_masked"], 4),
        "lpips": rounded(mean.get("lpips"), 4),
        "silhouette_iou_lr": rounded(mean["iou"], 4),
        lmk_key: rounded(mean["lmk"], 5),
        f"{lmk_key}_relative": rounded(mean["lmk_rel"], 5),
    }


@torch.no_grad()
def evaluate_model(
    model: GuidanceModel | GaussianHead,
    data_path: str | Path,
    split: str = "heldout_view",
    lr_size: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    save_dir: str | Path | None = None,
    num_images: int = 8,
    progress: bool = False,
    train_frames: Iterable[int] | None = None,
    lpips: bool | LPIPSMetric = True,
) -> dict[str, Any]:
    """Scores of ``model`` on ``split`` (one of :data:`SPLITS`); keys in the module doc.

    ``train_frames``: the frames whose expression codes the model trained (a run's
    ``extra["train_frames"]``); default: the dataset's ``train`` split, which is what the
    trainer trains on. ``*_view`` rows must be trained frames and ``*_combo`` sources are
    chosen among them; anything else is a ValueError. ``lpips``: True loads the metric
    with :func:`gphm.evaluation.perceptual.load_lpips` (``null`` plus ``lpips_unavailable`` when it
    cannot), False skips it, or pass a metric to use. ``save_dir``: writes
    ``side_by_side.png`` (prediction | ground truth, the first ``num_images`` rows,
    spread over the split).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {'|'.join(SPLITS)}, got {split!r}")
    ds = HeadDataset(data_path, split=split, lr_size=lr_size)
    if train_frames is None:
        train_frames = HeadDataset(data_path, split="train", lr_size=lr_size).frames.tolist()
    swap = _view_rows(ds, data_path, split, {int(f) for f in train_frames})
    lpips_fn, lpips_reason = resolve_lpips(lpips, ds.hr_size, device)
    model = model.to(device).eval()
    keys = ("iou", "lmk", "lmk_rel", "psnr", "psnr_masked", "ssim", "ssim_masked", "lpips")
    acc: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    show = set(np.linspace(0, len(ds) - 1, min(num_images, len(ds))).round().astype(int).tolist())
    tiles: list[torch.Tensor] = []
    context = model.render_context()
    donors: list[int] = []
    for idx in row_batches(len(ds), batch_size, f"eval {split}", progress):
        b = collate_views([ds[i] for i in idx]).to(device)
        frame = b.frame
        if swap is not None:
            donor = _donors(b, swap, data_path, split)
            donors += donor
            frame = torch.tensor(donor, device=device)
        out = render_rows(model, b, model.identity_codes(b.subject),
                          model.expression_codes(frame), context)  # fmt: skip
        rgb = out.rgb.clamp(0, 1)
        lmk, lmk_rel = metrics.landmark_error(out.landmarks, b.landmarks_3d)
        acc["iou"].append(metrics.mask_iou(out.mask, b.mask_lr))
        acc["lmk"].append(lmk)
        acc["lmk_rel"].append(lmk_rel)
        for k, v in image_scores(rgb, b.image, b.mask, lpips_fn).items():
            acc[k].append(v)
        tiles += [t.cpu() for j, i in enumerate(idx) if i in show for t in (rgb[j], b.image[j])]
    result = _view_report(model, split, len(ds), acc, swap is not None)
    if lpips_fn is None:
        result["lpips_unavailable"] = lpips_reason
    else:
        result |= lpips_fn.describe()
    if swap is not None:
        result["transfer"] = (
            "z_exp of a trained frame with the same expression label from the next subject"
        )
        result["donor_frames"] = sorted(set(donors))
    if "mean_mesh" in context:
        result["mean_mesh"] = mesh_report(context["mean_mesh"].verts, context["mean_mesh"].faces)
    save_side_by_side(save_dir, tiles, result)
    return result


def _psnr_of_mse(mse: float) -> float:
    return round(-10.0 * float(np.log10(max(mse, 1e-12))), 3)


def _gain_entry(own: float, ref: float, n: int) -> dict[str, Any]:
    """PSNRs and gain of ``n`` rows whose summed MSEs are ``own`` and ``ref``."""
    gain = 10.0 * float(np.log10(max(ref, 1e-12) / max(own, 1e-12)))
    return {"n": n, "psnr": _psnr_of_mse(own / n), "psnr_neutral_code": _psnr_of_mse(ref / n),
            "gain_db": round(gain, 3)}  # fmt: skip


@torch.no_grad()
def evaluate_expression_gain(
    model: GuidanceModel | GaussianHead,
    data_path: str | Path,
    neutral: str = "neutral",
    lr_size: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    train_frames: Iterable[int] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """How much the model's expression codes buy on its **own training rows**.

    Every ``train`` row is rendered twice at its true head pose and camera: with its own
    trained codes, and with the same subject's trained ``neutral`` frame's expression
    code. ``gain_db = 10·log10(MSE_neutral_code / MSE_own)`` pooled over the non-neutral
    rows (``per_label``: the same per expression label). No tracker, transfer or fit can
    gain more over a neutral baseline on these expressions than the model itself does on
    the frames it was trained on, so this bounds ``split=reenact``'s gains from above (up
    to the sequence's mix of labels and its blends). Rows of subjects without a trained
    ``neutral`` frame are skipped (``n_skipped``); full-image hr PSNR as ``split=*_view``.
    """
    ds = HeadDataset(data_path, split="train", lr_size=lr_size)
    frames_meta, subjects = ds.meta["frames"], list(ds.meta["subjects"])
    trained = ds.frames.tolist() if train_frames is None else train_frames
    base = trained_frames_by_label(frames_meta, trained, subjects).get(neutral, {})
    if not base:
        raise ValueError(
            f"{data_path}: no subject has a trained frame labelled {neutral!r} (labels: "
            f"{', '.join(sorted({m['expression'] for m in frames_meta}))}); pass neutral=LABEL"
        )
    model = model.to(device).eval()
    context = model.render_context()
    sums: dict[str, list[float]] = {}  # label -> [own squared error, neutral-code, rows]
    skipped = 0
    for idx in row_batches(len(ds), batch_size, "eval expression_gain", progress):
        items = [ds[i] for i in idx]
        keep = [it for it in items if int(it.subject) in base]
        skipped += len(items) - len(keep)
        if not keep:
            continue
        b = collate_views(keep).to(device)
        z_id = model.identity_codes(b.subject)
        ref = torch.tensor([base[int(s)] for s in b.subject], device=device)
        own = render_rows(model, b, z_id, model.expression_codes(b.frame), context)
        held = render_rows(model, b, z_id, model.expression_codes(ref), context)
        e_own = ((own.rgb.clamp(0, 1) - b.image) ** 2).flatten(1).mean(1)  # [B]
        e_ref = ((held.rgb.clamp(0, 1) - b.image) ** 2).flatten(1).mean(1)
        for j, label in enumerate(b.expression):
            acc = sums.setdefault(label, [0.0, 0.0, 0])
            acc[0] += float(e_own[j])
            acc[1] += float(e_ref[j])
            acc[2] += 1
    moving = [v for k, v in sums.items() if k != neutral]
    result: dict[str, Any] = {
        "split": "expression_gain",
        "model": type(model).__name__,
        "neutral": neutral,
        "n": sum(v[2] for v in sums.values()),
        "n_skipped": skipped,
        "per_label": {k: _gain_entry(*v) for k, v in sorted(sums.items())},
    }
    if moving:
        own, ref, n = (sum(v[i] for v in moving) for i in range(3))
        pooled = _gain_entry(own, ref, n)
        result |= {"n_expressive": n, **{k: v for k, v in pooled.items() if k != "n"}}
    else:
        result |= {"n_expressive": 0, "psnr": None, "psnr_neutral_code": None, "gain_db": None}
    return result
