"""``scripts/evaluate.py split=fit``: single-image fitting scored on novel views.

Every subject of a dataset the model never saw is fitted from one camera view of one
frame, with the dataset's own 3D landmarks projected into that view (no detector), and
the fit is rendered into the frame's other cameras — placed relative to the input
camera by the dataset's calibration — and compared with their images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from gphm import metrics
from gphm.data.format import SPLITS as DATA_SPLITS
from gphm.data.loaders import HeadDataset, HeadItem
from gphm.fitting.avatar import Avatar
from gphm.fitting.fit import FitConfig, FitTarget, Model, fit_image, render_avatar
from gphm.geometry.cameras import (
    camera_centers,
    invert_viewmat,
    project_points,
    world_to_camera,
)
from gphm.geometry.pose import apply_head_pose
from gphm.io.images import image_grid, save_png
from gphm.models.runs import TrainedRun

__all__ = [
    "evaluate_fit", "fit_landmarks", "frontal_row", "gauge_scale", "render_fit_view",
    "target_from_item",
]  # fmt: skip


def target_from_item(item: HeadItem) -> FitTarget:
    """A fitting target from a dataset row: its image, mask, K and projected landmarks."""
    uv, _ = project_points(item.landmarks_3d, item.viewmat, item.K)
    return FitTarget(image=item.image, mask=item.mask, K=item.K, landmarks=uv)


def frontal_row(items: list[HeadItem]) -> int:
    """Index of the most frontal view: camera centre closest to the face's +z axis."""
    scores = []
    for it in items:
        c = camera_centers(it.viewmat[None])[0]
        forward = it.head_R @ torch.tensor([0.0, 0.0, 1.0])
        d = c - it.head_T
        scores.append(float(d @ forward / d.norm().clamp_min(1e-9)))
    return int(np.argmax(scores))


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


@torch.no_grad()
def fit_landmarks(model: Model, avatar: Avatar) -> Tensor:  # [L, 3]
    """The fitted 3D landmarks in the input camera's frame."""
    device = next(model.parameters()).device
    p = model.canonical_landmarks(avatar.z_id[None].to(device), avatar.z_exp[None].to(device))
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
    device = next(net.parameters()).device
    offsets = None if avatar.point_offsets is None else avatar.point_offsets.to(device)
    out = render_avatar(
        net, avatar.z_id[None].to(device), avatar.z_exp[None].to(device),
        avatar.head_R[None].to(device), gauge * avatar.head_T[None].to(device),
        torch.full((1,), gauge * float(avatar.head_scale), device=device),
        viewmat[None].to(device), K[None].to(device), avatar.image_size, offsets,
    )  # fmt: skip
    return out.rgb.clamp(0, 1).cpu()


def evaluate_fit(
    run: TrainedRun,
    data_path: str | Path,
    view: str | None = None,
    frame: str | None = None,
    max_subjects: int = 0,
    config: FitConfig | None = None,
    save_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit each subject of ``data_path`` from camera ``view`` (default: the most
    frontal) of its first frame (or the one labelled ``frame``); score the other views."""
    model = run.model
    ds = HeadDataset(data_path, split=list(DATA_SPLITS), lr_size=run.extra.get("lr_size"))
    subjects = sorted(set(ds.subjects.tolist()))
    if max_subjects:
        subjects = subjects[:max_subjects]
    names = ds.meta["subjects"]
    keys = ("psnr", "psnr_masked", "ssim", "ssim_masked", "psnr_unaligned")
    scores: dict[str, list[float]] = {k: [] for k in keys}
    per_subject, tiles = [], []
    for s in tqdm(subjects, desc="fit subjects", disable=not progress):
        rows = np.flatnonzero(ds.subjects == s)
        frames = [int(ds.frames[r]) for r in rows]
        if frame is not None:
            labelled = [f for f in frames if ds.meta["frames"][f].get("expression") == frame]
            if not labelled:
                raise ValueError(f"{data_path}: subject {names[s]!r} has no frame {frame!r}")
            chosen = labelled[0]
        else:
            chosen = min(frames)
        items = [ds[int(r)] for r in rows if ds.frames[r] == chosen]
        if len(items) < 2:
            raise ValueError(f"{data_path}: frame {chosen} has fewer than 2 views to score")
        cams = [it.camera for it in items]
        if view is None:
            i_in = frontal_row(items)
        elif view in cams:
            i_in = cams.index(view)
        else:
            raise ValueError(f"{data_path}: no camera {view!r} in frame {chosen}; has {cams}")
        source = items[i_in]
        result = fit_image(model, target_from_item(source), config, str(run.path))
        av = result.avatar
        net = av.personalised(model)
        others = [it for j, it in enumerate(items) if j != i_in]
        to_input = invert_viewmat(source.viewmat[None])[0]
        truth = world_to_camera(source.viewmat, source.landmarks_3d)  # input camera frame
        gauge = gauge_scale(fit_landmarks(model, av), truth)
        view_scores: dict[str, list[float]] = {k: [] for k in keys}
        with torch.no_grad():
            for it in others:
                vm = it.viewmat @ to_input
                gt, m = it.image[None], it.mask[None]
                unaligned_rgb = render_fit_view(net, av, vm, it.K)
                view_scores["psnr_unaligned"].append(float(metrics.psnr(unaligned_rgb, gt)[0]))
                rgb = render_fit_view(net, av, vm, it.K, gauge)
                view_scores["psnr"].append(float(metrics.psnr(rgb, gt)[0]))
                view_scores["psnr_masked"].append(float(metrics.masked_psnr(rgb, gt, m)[0]))
                view_scores["ssim"].append(float(metrics.ssim(rgb, gt)[0]))
                view_scores["ssim_masked"].append(float(metrics.masked_ssim(rgb, gt, m)[0]))
                if len(tiles) < 64 and it is others[len(others) // 2]:
                    tiles += [source.image, result.render, rgb[0], it.image]
        for k in keys:
            scores[k] += view_scores[k]
        per_subject.append({
            "subject": names[s], "frame": chosen, "input_view": source.camera,
            "novel_views": len(others), "seconds": round(result.seconds, 2),
            "landmark_error_px": round(result.landmark_error_px, 3),
            "psnr_input": round(result.psnr, 3),
            "psnr": round(float(np.mean(view_scores["psnr"])), 3),
            "psnr_unaligned": round(float(np.mean(view_scores["psnr_unaligned"])), 3),
            "gauge_scale": round(gauge, 4),
        })  # fmt: skip
    report: dict[str, Any] = {
        "split": "fit",
        "n": len(scores["psnr"]),
        "subjects": len(subjects),
        "model": type(model).__name__,
        **{k: round(float(np.mean(v)), 4 if "ssim" in k else 3) for k, v in scores.items()},
        "lpips": None,
        "fit_seconds_mean": round(float(np.mean([p["seconds"] for p in per_subject])), 2),
        "fit_seconds_max": round(float(np.max([p["seconds"] for p in per_subject])), 2),
        "landmark_error_px": round(
            float(np.mean([p["landmark_error_px"] for p in per_subject])), 3
        ),
        "per_subject": per_subject,
    }
    if save_dir is not None and tiles:
        save_png(Path(save_dir) / "side_by_side.png", image_grid(tiles, ncols=4))
        report["images"] = ["side_by_side.png"]
        report["columns"] = ["input", "fit (input view)", "fit (novel view)", "ground truth"]
    return report
