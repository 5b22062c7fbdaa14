"""``scripts/evaluate.py split=fit``: fitting from one or a few views, scored on novel views.

Every subject of a dataset the model never saw is fitted from ``views`` = K camera views
of one frame (:func:`~gphm.fitting.fit.fit_images`: K = 1 is single-image fitting; with
``inputs="gt"`` and K > 1 the views are the dataset's calibrated rig, so the fit has one
head pose in world and one expression, and the views fix the head's scale and depth
together; with ``"photo"`` each crop gets its own pose), and the fit is rendered into the frame's
other cameras — placed relative to the first input camera by the dataset's calibration —
and compared with their images.

Which views: the inputs are the most frontal views (:func:`frontal_row`, then the next
most frontal, ...; ``view`` names the first). ``score="others"`` scores every view that
is not an input; ``score="heldout"`` scores only the frame's ``heldout_view`` rows and
never takes them as inputs, so K = 1, 2, 3 are scored on the *same* views and can be
compared (a dataset made with ``heldout_views=1`` and 4 views allows K <= 3).

What the fit is given (``inputs``, recorded in the report):

* ``"gt"``: the input view's image, its ground-truth mask, its true ``K`` and the dataset's
  3D landmarks projected into it (no detector): the fitting algorithm alone is scored.
  A single view also gets, unless ``rig_prior=False``, the point the frame's cameras are
  aimed at as the head's expected position (:func:`rig_targets`): what a user of a
  calibrated rig knows, never the head's true position or size.
* ``"photo"``: the rendered input view only, prepared as a user's photo is
  (:func:`~gphm.data.preprocess.single_image.prepare_image`: detector landmarks,
  segmentation mask, the crop aligned to the training framing, ``K`` estimated from that
  framing). See :func:`crop_camera` for how that fit is placed back among the dataset's
  cameras.

Every metric is reported twice. ``psnr``, ``ssim``, ``psnr_masked``, ``ssim_masked`` and
``lpips`` are **unaligned**: the fit exactly as it came out, which is what a user gets in
a calibrated rig (a single view's size is then settled by the rig's centre, K views by
the views together). The ``*_scale_aligned`` figures first scale the fit about the input
camera centre by :func:`gauge_scale` (least squares against the true 3D landmarks in that
camera's frame), as monocular benchmarks (NoW) align scale: one image cannot tell a small
near head from a large far one, the input view is unchanged by it and only novel views
see the difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from gphm.data.format import SPLITS as DATA_SPLITS
from gphm.data.loaders import HeadDataset, HeadItem
from gphm.data.preprocess.detectors import NoFaceError
from gphm.evaluation.common import image_scores, mean, render_avatar_views, save_side_by_side
from gphm.evaluation.perceptual import resolve_lpips
from gphm.fitting.avatar import Avatar
from gphm.fitting.fit import (
    FitConfig,
    FitResult,
    FitTarget,
    Model,
    TrainedRows,
    fit_images,
)
from gphm.geometry.cameras import (
    camera_centers,
    invert_viewmat,
    project_points,
    rig_center,
    world_to_camera,
)
from gphm.geometry.pose import apply_head_pose
from gphm.inversion.guard import FitCollapseError
from gphm.models.runs import TrainedRun, seen_by

__all__ = [
    "FIT_INPUTS", "FIT_SCORES", "SeenDatasetError", "crop_camera", "evaluate_fit", "fit_landmarks",
    "frontal_row", "gauge_scale", "pose_errors", "render_fit_view", "rig_targets",
    "target_from_item",
]  # fmt: skip

FIT_INPUTS = ("gt", "photo")
FIT_SCORES = ("others", "heldout")

# The unaligned metrics; each also gets a ``<name>_scale_aligned`` twin.
_METRICS = ("psnr", "ssim", "psnr_masked", "ssim_masked", "lpips")


class SeenDatasetError(ValueError):
    """``split=fit`` was asked to fit people the model was trained on."""


def target_from_item(item: HeadItem) -> FitTarget:
    """A fitting target from a dataset row: its image, mask, K and projected landmarks."""
    uv, _ = project_points(item.landmarks_3d, item.viewmat, item.K)
    return FitTarget(image=item.image, mask=item.mask, K=item.K, landmarks=uv)


def frontal_row(items: list[HeadItem]) -> int:
    """Index of the most frontal view: camera centre closest to the face's +z axis."""
    return int(np.argmax([_frontality(it) for it in items]))


def gauge_scale(
    fitted: Tensor,  # [L, 3] the fit's landmarks in the input camera's frame
    truth: Tensor,  # [L, 3] the ground truth's landmarks in the same frame
) -> float:
    """The scale ``k`` about the camera centre that best aligns ``fitted`` with ``truth``:
    argmin_k ||k·fitted - truth||² = <fitted, truth> / <fitted, fitted> over finite rows.
    Scaling camera-frame points by ``k`` leaves their projections unchanged."""
    if fitted.shape != truth.shape or fitted.shape[-1] != 3:
        raise ValueError(
            f"fitted and truth must both be [L, 3], got {list(fitted.shape)} and "
            f"{list(truth.shape)}"
        )
    ok = torch.isfinite(fitted).all(-1) & torch.isfinite(truth).all(-1)
    f, t = fitted[ok].double(), truth[ok].double()
    if f.shape[0] == 0 or float((f * f).sum()) == 0.0:
        raise ValueError("gauge_scale needs at least one finite, non-zero landmark")
    return float((f * t).sum() / (f * f).sum())


def crop_camera(
    to_input: Tensor,  # [2, 3] prepared pixels -> input pixels (PreparedImage.to_input)
    K_input: Tensor,  # [3, 3] true intrinsics of the input image
) -> tuple[Tensor, Tensor]:  # R_crop [3, 3], K_crop [3, 3]
    """The camera that sees a prepared (similarity-warped) crop of an input image.

    ``prepare_image`` warps the photo by a 2D similarity ``u_in = s·Rot(θ)·u + b``. For a
    pinhole camera with square pixels that warp is exactly a camera at the same centre,
    turned about its optical axis by θ, with other intrinsics: a point with coordinates
    ``x_in`` in the input camera's frame has ``x_crop = R_crop @ x_in`` with
    ``R_crop = Rz(θ)ᵀ`` (``x_in = Rz(θ) x_crop``, depth unchanged), and projects into the
    crop by ``K_crop`` (focal f/s, principal point ``Rot(θ)ᵀ(c - b)/s``).

    A fit of the crop is made with the framing's *estimated* ``K`` instead of ``K_crop``
    (nobody knows a photo's focal length); its head pose is in the crop camera's frame,
    and ``R_crop.T`` takes it back into the input camera's frame exactly (the rotation is
    our own warp, not an estimate). What is left is the error of the estimated ``K``.
    """
    A = to_input[:, :2].double()
    s = float(torch.linalg.det(A)) ** 0.5
    rot = A / s  # [2, 2] rotation, prepared -> input pixel directions
    Rz = torch.eye(3, dtype=torch.float64)
    Rz[:2, :2] = rot
    K = K_input.double()
    f = torch.stack([K[0, 0], K[1, 1]]) / s
    c = rot.T @ (K[:2, 2] - to_input[:, 2].double()) / s
    K_crop = torch.tensor([[f[0], 0, c[0]], [0, f[1], c[1]], [0, 0, 1]], dtype=torch.float64)
    return Rz.T.to(K_input.dtype), K_crop.to(K_input.dtype)


def pose_errors(
    R_fit: Tensor,  # [3, 3] fitted canonical -> input camera rotation
    T_fit: Tensor,  # [3] fitted translation in the input camera's frame
    item: HeadItem,  # the input view (true head pose in world, true viewmat)
    gauge: float = 1.0,
) -> dict[str, float]:
    """Fitted vs true head pose of the input view.

    ``rotation_error_deg``: the angle of ``R_fitᵀ R_true``. ``translation_error``: the
    distance between the fitted and the true head origins (``T``) in world space divided
    by the true ``head_scale``, i.e. in canonical-head units (the canonical head spans
    about ±0.9); world and camera frames differ by a rigid motion, so the distance is
    measured in the input camera's frame. ``translation_error_scale_aligned``: the same
    after scaling the fit by ``gauge`` about the camera centre.
    """
    R_true = item.viewmat[:3, :3] @ item.head_R
    T_true = item.viewmat[:3, :3] @ item.head_T + item.viewmat[:3, 3]
    cos = ((R_fit.T.double() @ R_true.double()).trace() - 1) / 2
    angle = math.degrees(math.acos(float(cos.clamp(-1.0, 1.0))))
    scale = float(item.head_scale)
    return {
        "rotation_error_deg": angle,
        "translation_error": float((T_fit - T_true).norm()) / scale,
        "translation_error_scale_aligned": float((gauge * T_fit - T_true).norm()) / scale,
    }


@torch.no_grad()
def fit_landmarks(model: Model, avatar: Avatar) -> Tensor:  # [L, 3]
    """The fitted 3D landmarks in the input camera's frame."""
    device = next(model.parameters()).device
    offsets = None if avatar.point_offsets is None else avatar.point_offsets.to(device)
    p = model.canonical_landmarks(
        avatar.z_id[None].to(device), avatar.z_exp[None].to(device), offsets
    )
    R, T = avatar.head_R[None].to(device), avatar.head_T[None].to(device)
    scale = torch.full((1,), float(avatar.head_scale), device=device)
    return apply_head_pose(p, R, T, scale)[0].cpu()


@torch.no_grad()
def render_fit_view(
    net: Model,  # the avatar's personalised model (Avatar.personalised)
    avatar: Avatar,
    viewmat: Tensor,  # [4, 4] input camera -> novel camera
    K: Tensor,  # [3, 3] intrinsics of the novel view at avatar.image_size
    gauge: float = 1.0,
) -> Tensor:  # [1, S, S, 3] in [0, 1], on the CPU
    """The fit scaled by ``gauge`` about the input camera, seen from another camera."""
    return render_avatar_views(
        net, avatar, avatar.z_exp, avatar.head_R[None], gauge * avatar.head_T[None],
        torch.full((1,), gauge * float(avatar.head_scale)), viewmat[None], K[None],
        avatar.image_size,
    )  # fmt: skip


def _to_uint8(image: Tensor) -> np.ndarray:  # [H, W, 3] in [0, 1] -> uint8
    return (image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)


_INPUTS = {
    "gt": {"landmarks": "ground truth projected", "mask": "ground truth", "K": "ground truth"},
    "photo": {"landmarks": "detector", "mask": "segmentation", "K": "estimated"},
}


def rig_targets(items: list[HeadItem], center: Tensor | None = None) -> list[FitTarget]:
    """Fitting targets of dataset rows with their true inputs (:func:`target_from_item`);
    several rows are the dataset's calibrated rig (each target gets its camera: one head
    pose in world, one expression). One row with ``center`` (the world point [3] the rig's
    cameras are aimed at, :func:`~gphm.geometry.cameras.rig_center`) gets it, in its
    camera's frame, as its ``head_center``, which settles the single view's size/distance
    ambiguity as a rig's user can."""
    targets = [target_from_item(it) for it in items]
    if len(targets) > 1:
        for t, it in zip(targets, items):
            t.camera = it.viewmat
    elif center is not None:
        targets[0].head_center = world_to_camera(items[0].viewmat, center[None])[0]
    return targets


def _fit_view(
    run: TrainedRun,
    items: list[HeadItem],
    inputs: str,
    config: FitConfig | None,
    detector: Any,
    segmenter: Any,
    center: Tensor | None = None,
) -> tuple[FitResult, dict[str, Any], dict[str, Any]]:
    """Fit the input views ``items`` together; the avatar's pose is in the first input
    camera's (true) frame. ``center``: where the frame's cameras are aimed
    (:func:`rig_targets`; ``inputs="gt"`` only). Returns the result, the ``inputs`` record
    and per-subject extras."""
    rows = TrainedRows.of_run(run)
    if inputs == "gt":
        targets = rig_targets(items, center)
        result = fit_images(run.model, targets, config, str(run.path), rows=rows)
        record = dict(_INPUTS["gt"])
        if targets[0].head_center is not None:
            record["head_center"] = "rig centre"
        return result, record, {}
    from gphm.data.preprocess.single_image import prepare_image

    S = items[0].image.shape[0]
    prepared = [prepare_image(_to_uint8(it.image), detector=detector, segmenter=segmenter,
                              out_size=S) for it in items]  # fmt: skip
    targets = [FitTarget.from_prepared(p) for p in prepared]
    result = fit_images(run.model, targets, config, str(run.path), rows=rows)
    R_crop, K_crop = crop_camera(torch.from_numpy(prepared[0].to_input).float(), items[0].K)
    av = result.avatar
    # Crop camera -> input camera (crop_camera). av.K stays the crop's estimated K: from
    # here on only the pose is used, with the dataset's cameras for the novel views.
    av.head_R, av.head_T = R_crop.T @ av.head_R, R_crop.T @ av.head_T
    # How far the detector is from the truth, in pixels of the input views.
    errors = []
    for it, p in zip(items, prepared):
        truth_uv, _ = project_points(it.landmarks_3d, it.viewmat, it.K)
        detected = torch.from_numpy(p.map_to_input(p.landmarks)).float()
        det_err = (detected - truth_uv).norm(dim=-1)
        errors.append(float(det_err[torch.isfinite(det_err)].mean()))
    record = _INPUTS["photo"] | {"mask": prepared[0].mask_source}  # or alpha / head_hull
    extras = {
        "detector_error_px": round(float(np.mean(errors)), 3),
        "focal_ratio": round(float(targets[0].K[0, 0] / K_crop[0, 0]), 4),  # estimated / true
    }
    return result, record, extras


def _input_views(
    items: list[HeadItem], candidates: list[int], view: str | None, k: int,
    data_path: Any, frame: int,
) -> list[int]:  # fmt: skip
    """Indices of the ``k`` input views among ``candidates``: ``view`` (or the most
    frontal) first, then the remaining candidates from the most frontal on."""
    cams = [it.camera for it in items]
    if view is not None and view not in cams:
        raise ValueError(f"{data_path}: no camera {view!r} in frame {frame}; has {cams}")
    if view is not None and cams.index(view) not in candidates:
        raise ValueError(f"{data_path}: camera {view!r} is held out (fit.score=heldout)")
    if k > len(candidates):
        raise ValueError(
            f"{data_path}: frame {frame} has {len(candidates)} views to fit from, "
            f"fit.views={k} asks for more"
        )
    order = sorted(candidates, key=lambda j: -_frontality(items[j]))
    if view is not None:
        order.remove(cams.index(view))
        order.insert(0, cams.index(view))
    return order[:k]


def _frontality(item: HeadItem) -> float:
    """Cosine between the face's +z axis and the direction to the camera."""
    c = camera_centers(item.viewmat[None])[0]
    forward = item.head_R @ torch.tensor([0.0, 0.0, 1.0])
    d = c - item.head_T
    return float(d @ forward / d.norm().clamp_min(1e-9))


def _digits(key: str) -> int:
    return 3 if key.startswith("psnr") else 4


# Every reported image metric, unaligned and scale-aligned.
_KEYS = tuple(k + suffix for k in _METRICS for suffix in ("", "_scale_aligned"))


@dataclass
class _FrameViews:
    """The frame fitted for one subject: its rows, the input and the scored ones."""

    frame: int
    items: list[HeadItem]
    inputs: list[int]  # indices into items, the first is the pose's reference camera
    scored: list[int]


def _subject_views(
    ds: HeadDataset, row_split: list[str], s: int, frame: str | None, view: str | None,
    views: int, score: str, data_path: str | Path,
) -> _FrameViews:  # fmt: skip
    """Subject ``s``'s frame (its first, or the one labelled ``frame``), its ``views``
    input views and the views scored (:func:`evaluate_fit`); ValueError when they
    cannot be chosen."""
    rows = np.flatnonzero(ds.subjects == s)
    frames = [int(ds.frames[r]) for r in rows]
    if frame is not None:
        labelled = [f for f in frames if ds.meta["frames"][f].get("expression") == frame]
        if not labelled:
            raise ValueError(
                f"{data_path}: subject {ds.meta['subjects'][s]!r} has no frame {frame!r}"
            )
        chosen = labelled[0]
    else:
        chosen = min(frames)
    frame_rows = [int(r) for r in rows if ds.frames[r] == chosen]
    items = [ds[r] for r in frame_rows]
    held = [row_split[int(ds.indices[r])] == "heldout_view" for r in frame_rows]
    if score == "heldout" and not any(held):
        raise ValueError(f"{data_path}: frame {chosen} has no heldout_view rows to score "
                         "(fit.score=heldout)")  # fmt: skip
    candidates = [j for j in range(len(items)) if not (score == "heldout" and held[j])]
    inputs = _input_views(items, candidates, view, views, data_path, chosen)
    scored = [j for j in range(len(items)) if j not in inputs
              and (score == "others" or held[j])]  # fmt: skip
    if not scored:
        raise ValueError(
            f"{data_path}: frame {chosen} has {len(items)} views; fitting from "
            f"{views} leaves none to score"
        )
    return _FrameViews(chosen, items, inputs, scored)


def _score_views(
    model: Model, result: FitResult, source: HeadItem, others: list[HeadItem],
    lpips: Callable[[Tensor, Tensor], Tensor] | None, tiles: list[Tensor],
) -> tuple[dict[str, list[float]], float]:  # fmt: skip
    """The fit rendered into the ``others`` cameras (placed relative to the input camera
    ``source``), unaligned and scale-aligned: per-view scores of :data:`_KEYS` and the
    gauge scale. Appends a row of the side-by-side image to ``tiles``."""
    av = result.avatar
    net = av.personalised(model)
    device = next(model.parameters()).device
    to_input = invert_viewmat(source.viewmat[None])[0]
    truth = world_to_camera(source.viewmat, source.landmarks_3d)  # input camera frame
    gauge = gauge_scale(fit_landmarks(model, av), truth)
    view_scores: dict[str, list[float]] = {k: [] for k in _KEYS}
    with torch.no_grad():
        for it in others:
            vm = it.viewmat @ to_input
            gt, m = it.image[None], it.mask[None]
            for suffix, k in (("", 1.0), ("_scale_aligned", gauge)):
                rgb = render_fit_view(net, av, vm, it.K, k)
                values = image_scores(rgb, gt, m)
                if lpips is not None:
                    values["lpips"] = lpips(rgb.to(device), gt.to(device)).cpu()
                for name, v in values.items():
                    view_scores[name + suffix].append(float(v[0]))
            if len(tiles) < 64 and it is others[len(others) // 2]:
                tiles += [source.image, result.render, rgb[0], it.image]
    return view_scores, gauge


def _subject_entry(
    name: str, frame: int, result: FitResult, input_items: list[HeadItem], n_novel: int,
    view_scores: dict[str, list[float]], gauge: float, extras: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One subject's row of ``per_subject``."""
    source = input_items[0]
    pose = pose_errors(result.avatar.head_R, result.avatar.head_T, source, gauge)
    return {
        "subject": name, "frame": frame, "input_view": source.camera,
        "input_views": [it.camera for it in input_items],
        "novel_views": n_novel, "seconds": round(result.seconds, 2),
        "landmark_error_px": round(result.landmark_error_px, 3),
        "psnr_input": round(result.psnr, 3),
        "psnr_input_masked": mean([result.psnr_masked], 3),
        "psnr_input_masked_phase1": mean([result.phase1_psnr_masked], 3),
        "prior_trust": round(result.prior_trust, 3),
        **{k: mean(view_scores[k], _digits(k)) for k in _KEYS if k.startswith("psnr")},
        "gauge_scale": round(gauge, 4), "head_scale": round(result.head_scale, 4),
        "true_head_scale": round(float(source.head_scale), 4),
        **{k: round(v, 4) for k, v in pose.items()},
        **extras,
    }  # fmt: skip


def _fit_report(
    scores: dict[str, list[float]], per_subject: list[dict[str, Any]],
    failed: list[dict[str, Any]], head: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The ``split=fit`` report: ``head`` (split, inputs, counts, options), the means of
    ``scores`` and of the per-subject figures, timings, then ``per_subject``."""
    report = {
        "split": "fit", "inputs": head["inputs"],
        "n": len(scores["psnr"]),
        "n_empty": int(sum(not math.isfinite(v) for v in scores["psnr_masked"])),
        **{k: v for k, v in head.items() if k not in ("split", "inputs")},
        **{k: mean(v, _digits(k)) for k, v in scores.items()},
    }  # fmt: skip
    for k in ("rotation_error_deg", "translation_error", "translation_error_scale_aligned",
              "landmark_error_px", "gauge_scale", "head_scale", "true_head_scale",
              "detector_error_px", "psnr_input",
              "psnr_input_masked", "psnr_input_masked_phase1", "prior_trust"):  # fmt: skip
        if per_subject and k in per_subject[0]:
            report[k] = mean([p[k] for p in per_subject if p[k] is not None], 4)
        elif k in ("rotation_error_deg", "translation_error"):
            report[k] = None  # no fit succeeded
    seconds = [p["seconds"] for p in per_subject]
    report["fit_seconds_mean"] = round(float(np.mean(seconds)), 2) if seconds else None
    report["fit_seconds_max"] = round(float(np.max(seconds)), 2) if seconds else None
    report["per_subject"] = per_subject + failed
    return report


def _check_fit_options(inputs: str, views: int, score: str) -> None:
    if inputs not in FIT_INPUTS:
        raise ValueError(f"fit.inputs must be one of {'|'.join(FIT_INPUTS)}, got {inputs!r}")
    if views < 1:
        raise ValueError(f"fit.views must be >= 1, got {views}")
    if score not in FIT_SCORES:
        raise ValueError(f"fit.score must be one of {'|'.join(FIT_SCORES)}, got {score!r}")


def evaluate_fit(
    run: TrainedRun,
    data_path: str | Path,
    view: str | None = None,
    frame: str | None = None,
    max_subjects: int = 0,
    config: FitConfig | None = None,
    save_dir: str | Path | None = None,
    progress: bool = False,
    inputs: str = "gt",
    allow_seen: bool = False,
    detector: Any = "mediapipe",
    segmenter: Any = None,
    lpips: bool | Callable[[Tensor, Tensor], Tensor] = True,
    views: int = 1,
    score: str = "others",
    rig_prior: bool = True,
) -> dict[str, Any]:
    """Fit each subject of ``data_path`` from ``views`` camera views (the first: ``view``,
    default the most frontal) of its first frame (or the one labelled ``frame``); score
    the other views, or with ``score="heldout"`` the held-out ones (module docstring:
    which views, ``inputs``, unaligned and scale-aligned metrics).

    A dataset the model was trained on (:func:`~gphm.models.runs.seen_by`) raises
    :class:`SeenDatasetError` unless ``allow_seen``. ``detector``/``segmenter``
    (``inputs="photo"``): a backend name or object as :func:`prepare_image` takes them.
    ``lpips``: True loads AlexNet LPIPS (:func:`~gphm.evaluation.perceptual.load_lpips`;
    ``null`` and ``lpips_unavailable`` when it cannot), False skips it, or a metric
    ``(pred [B,H,W,3], target [B,H,W,3]) -> [B]`` to use. ``rig_prior``: a single view
    with ``inputs="gt"`` takes the head's expected position from the point the frame's
    cameras are aimed at (:func:`rig_targets`), as a calibrated rig's user knows it;
    False leaves the size at the canonical one.
    """
    _check_fit_options(inputs, views, score)
    ds = HeadDataset(data_path, split=list(DATA_SPLITS), lr_size=run.extra.get("lr_size"))
    row_split = ds.ds.data.column("split").to_pylist()
    seen = seen_by(run, data_path, ds.meta)
    if seen and not allow_seen:
        raise SeenDatasetError(
            f"data.path={data_path}: {seen}; split=fit scores fits of people the model never "
            "saw (pass fit.allow_seen=true to fit them anyway)"
        )
    subjects = sorted(set(ds.subjects.tolist()))[: max_subjects or None]
    names = ds.meta["subjects"]
    device = next(run.model.parameters()).device
    lpips, lpips_reason = resolve_lpips(lpips, tuple(ds.meta["image_size"]), device)
    scores: dict[str, list[float]] = {k: [] for k in _KEYS}
    per_subject, failed, tiles = [], [], []
    record: dict[str, Any] = {}
    for s in tqdm(subjects, desc="fit subjects", disable=not progress):
        sel = _subject_views(ds, row_split, s, frame, view, views, score, data_path)
        input_items = [sel.items[j] for j in sel.inputs]
        center = None  # where the frame's cameras are aimed: one true view only
        if rig_prior and inputs == "gt" and views == 1:
            center = rig_center(torch.stack([it.viewmat for it in sel.items]))
        try:
            result, record, extras = _fit_view(run, input_items, inputs, config, detector,
                                               segmenter, center)  # fmt: skip
        except (NoFaceError, FitCollapseError) as err:  # failing is part of the score
            failed.append({"subject": names[s], "frame": sel.frame,
                           "input_view": input_items[0].camera, "failed": str(err)})  # fmt: skip
            continue
        others = [sel.items[j] for j in sel.scored]
        view_scores, gauge = _score_views(run.model, result, input_items[0], others, lpips, tiles)
        for k in _KEYS:
            scores[k] += view_scores[k]
        per_subject.append(_subject_entry(names[s], sel.frame, result, input_items, len(others),
                                          view_scores, gauge, extras))  # fmt: skip
    head = {"inputs": record or _INPUTS[inputs], "subjects": len(subjects),
            "failed_fits": len(failed), "views": views, "score": score,
            "model": type(run.model).__name__}  # fmt: skip
    report = _fit_report(scores, per_subject, failed, head)
    if lpips is None:
        report["lpips_unavailable"] = lpips_reason
    if seen:
        report["seen"] = seen  # allowed by fit.allow_seen: these people were trained on
    save_side_by_side(save_dir, tiles, report, ["input", "fit (input view)",
                      "fit (novel view, scale aligned)", "ground truth"])  # fmt: skip
    return report
