"""``scripts/evaluate.py split=reenact``: tracking and reenactment scored against ground truth.

On a sequence dataset (``make_synthetic.py mode=sequence``) every subject performs the
same sequence, so the true image of subject B making the driver's expression of step
``t`` exists: it is B's own row of step ``t``. The benchmark

1. tracks the **driver** subject from the driving camera (``cam_00``; ground-truth
   landmarks and masks, as ``split=fit`` with ``fit.inputs=gt``): identity fitted on
   step 0, then every step (:func:`~gphm.tracking.track.track_frames`);
2. **self-reenactment** (``self_*``): the tracked driver (its codes and tracked head
   pose) rendered into the *other* cameras, vs their images;
3. **cross-reenactment** (``cross_*``): every other subject, fitted from its own step 0
   (driving camera), rendered with the driver's tracked ``z_exp`` of each step at its own
   ground-truth head motion, vs its images of that step from *all* cameras. The fitted
   head is moved by the true motion relative to step 0 (``G_t ∘ G_0⁻¹``), so the fit's own
   pose estimate of step 0 is kept;
   ``cross_*_relative``: the same with the driver's code *change* instead of its code,
   ``z_B + (z_A(t) - z_A(0))`` (``z_B``: B's fitted step-0 code), which carries less of
   the driver's identity in its expression codes;
4. a **neutral baseline** of both (``*_neutral``): the same renders with the fitted
   first-step expression held throughout, so the gain from tracking is
   ``cross_gain_db = cross_psnr - cross_psnr_neutral``.

Every image metric comes unaligned and ``*_scale_aligned`` as in ``split=fit``
(:func:`~gphm.evaluation.fit.gauge_scale` of each fit against the true landmarks of its
input view, applied about the driving camera's centre). Also: ``seconds_per_frame``
(tracking, after the identity frame), ``jitter`` (mean landmark acceleration of the
tracked landmarks, px) next to ``jitter_truth`` (the same of the true landmarks: the
sequence's own motion), ``landmark_error_px`` (tracked vs true, px). With a ``save_dir``
the driver's tracking is written to ``save_dir/tracking`` (a ``track_video.py`` output:
``reenact.py driver=RUN/eval/reenact/tracking`` uses it) with ``side_by_side.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gphm.data.loaders import HeadItem
from gphm.evaluation import metrics
from gphm.evaluation.fit import fit_landmarks, gauge_scale, target_from_item
from gphm.fitting.avatar import Avatar
from gphm.fitting.fit import TrainedRows, fit_image, render_avatar
from gphm.geometry.cameras import world_to_camera
from gphm.io.images import image_grid, save_png
from gphm.models.runs import TrainedRun
from gphm.tracking.inputs import frames_from_dataset, sequence_steps, subject_rows
from gphm.tracking.outputs import write_tracking
from gphm.tracking.track import TrackConfig, landmark_jitter, track_frames

__all__ = ["evaluate_reenact", "camera_pose_to_world", "moved_pose"]

_KINDS = ("self", "cross")
_VARIANTS = ("", "_neutral")
_ALIGN = ("", "_scale_aligned")


def camera_pose_to_world(
    R: Tensor,  # [3, 3] canonical -> camera
    T: Tensor,  # [3]
    scale: float,
    viewmat: Tensor,  # [4, 4] world -> that camera
) -> tuple[Tensor, Tensor, float]:
    """The same head pose expressed in world coordinates (``x_w = V⁻¹ x_cam``)."""
    Rv, tv = viewmat[:3, :3], viewmat[:3, 3]
    return Rv.T @ R, Rv.T @ (T - tv), scale


def moved_pose(
    pose: tuple[Tensor, Tensor, float],  # world pose at step 0 (R [3, 3], T [3], s)
    start: HeadItem,  # ground truth of step 0
    now: HeadItem,  # ground truth of step t
) -> tuple[Tensor, Tensor, float]:
    """``pose`` moved by the true head motion from ``start`` to ``now``: ``G_t ∘ G_0⁻¹ ∘ pose``
    with ``G(x) = s·R·x + T``."""
    R, T, s = pose
    k = float(now.head_scale) / float(start.head_scale)
    M = now.head_R @ start.head_R.T
    return M @ R, k * (M @ (T - start.head_T)) + now.head_T, k * s


def _gauge(model: Any, avatar: Avatar, item: HeadItem) -> float:
    return gauge_scale(
        fit_landmarks(model, avatar), world_to_camera(item.viewmat, item.landmarks_3d)
    )


@torch.no_grad()
def _render(net, avatar: Avatar, z_exp: Tensor, poses, items: list[HeadItem], size: int) -> Tensor:
    """[B, S, S, 3]: ``avatar``'s identity with ``z_exp`` [Dexp] at world ``poses`` [B]
    seen by the items' cameras."""
    device = next(net.parameters()).device
    B = len(items)
    R = torch.stack([p[0] for p in poses]).float().to(device)
    T = torch.stack([p[1] for p in poses]).float().to(device)
    s = torch.tensor([float(p[2]) for p in poses], device=device)
    offsets = None if avatar.point_offsets is None else avatar.point_offsets.to(device)
    out = render_avatar(
        net, avatar.z_id[None].to(device).expand(B, -1), z_exp[None].to(device).expand(B, -1),
        R, T, s, torch.stack([it.viewmat for it in items]).to(device),
        torch.stack([it.K for it in items]).to(device), size, offsets,
    )  # fmt: skip
    return out.rgb.clamp(0, 1).cpu()


def _scale_pose(R: Tensor, T: Tensor, s: float, k: float) -> tuple[Tensor, Tensor, float]:
    """Scale a camera-frame pose by ``k`` about the camera centre."""
    return R, k * T, k * s


def evaluate_reenact(
    run: TrainedRun,
    data_path: str | Path,
    driver: str | int,
    config: TrackConfig | None = None,
    camera: str | None = None,
    max_subjects: int = 0,
    save_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The ``split=reenact`` report (module docstring) of ``run`` on the sequence dataset
    ``data_path`` driven by subject ``driver`` (name or index). ``max_subjects``: cross-
    reenact at most this many other subjects (0 = all)."""
    cfg = config or TrackConfig()
    model = run.model
    frames, driver_items, ds = frames_from_dataset(data_path, driver, camera,
                                                   run.extra.get("lr_size"))  # fmt: skip
    if "sequence" not in ds.meta:
        raise ValueError(
            f"data.path={data_path}: not a sequence dataset (no 'sequence' in meta.json); "
            "write one with make_synthetic.py mode=sequence"
        )
    S = int(run.extra.get("hr_size") or 0)
    if list(ds.meta["image_size"]) != [S, S]:
        raise ValueError(
            f"data.path={data_path}: images are {ds.meta['image_size']}, the model renders "
            f"{S}x{S}; generate the sequence at resolution={S}"
        )
    names = ds.meta["subjects"]
    s_drv, _ = subject_rows(ds, driver)
    drive_cam = driver_items[0].camera
    steps = sequence_steps(ds)
    num_steps = len(driver_items)
    # Every row by (subject, step, camera); items decoded once.
    cam_col = ds.ds.data.column("camera").to_pylist()
    index: dict[tuple[int, int, str], int] = {}
    for i in range(len(ds)):
        key = (int(ds.subjects[i]), steps[int(ds.frames[i])], cam_col[int(ds.indices[i])])
        index[key] = i
    cams = list(ds.meta["cameras"])

    def item(s: int, t: int, c: str) -> HeadItem:
        return ds[index[(s, t, c)]]

    tracking = track_frames(run, frames, cfg, progress=progress)
    avatar = tracking.avatar
    scores = {f"{k}_{m}{v}{a}": [] for k in _KINDS for m in ("psnr", "ssim") for v in _VARIANTS
              for a in _ALIGN}  # fmt: skip
    for m in ("psnr", "ssim"):  # cross only: for the driver itself relative = absolute
        for a in _ALIGN:
            scores[f"cross_{m}_relative{a}"] = []
    tiles: list[Tensor] = []

    def score(kind: str, variant: str, align: str, pred: Tensor, gt: Tensor) -> None:
        scores[f"{kind}_psnr{variant}{align}"] += metrics.psnr(pred, gt).tolist()
        scores[f"{kind}_ssim{variant}{align}"] += metrics.ssim(pred, gt).tolist()

    # ---- self: the tracked driver in the other cameras
    others = [c for c in cams if c != drive_cam]
    net = avatar.personalised(model)
    src0 = driver_items[0]
    gauge_drv = _gauge(model, avatar, src0)
    for t in range(num_steps):
        if not others:
            break
        gts = [item(s_drv, t, c) for c in others]
        gt = torch.stack([g.image for g in gts])
        cam_item = driver_items[t]
        for align, k in (("", 1.0), ("_scale_aligned", gauge_drv)):
            R, T, s = _scale_pose(tracking.head_R[t], tracking.head_T[t],
                                  float(avatar.head_scale), k)  # fmt: skip
            pose = camera_pose_to_world(R, T, s, cam_item.viewmat)
            for variant, z in (("", tracking.z_exp[t]), ("_neutral", avatar.z_exp)):
                score("self", variant, align, _render(net, avatar, z, [pose] * len(gts), gts, S),
                      gt)  # fmt: skip

    # ---- cross: every other subject, fitted on its step 0, driven by the tracked codes
    targets = [s for s in range(len(names)) if s != s_drv]
    if max_subjects:
        targets = targets[:max_subjects]
    per_subject = []
    rows = TrainedRows.of_run(run)
    z_drv0 = tracking.z_exp[tracking.identity_frame]  # the driver's own first-step code
    for b in targets:
        start = item(b, 0, drive_cam)
        t0 = time.perf_counter()
        fit = fit_image(model, target_from_item(start), cfg.fit, str(run.path), rows=rows)
        fit_seconds = time.perf_counter() - t0
        av = fit.avatar
        net_b = av.personalised(model)
        gauge_b = _gauge(model, av, start)
        sub = {k: [] for k in scores if k.startswith("cross_psnr")}
        for t in range(num_steps):
            gts = [item(b, t, c) for c in cams]
            gt = torch.stack([g.image for g in gts])
            for align, k in (("", 1.0), ("_scale_aligned", gauge_b)):
                R, T, s = _scale_pose(av.head_R, av.head_T, float(av.head_scale), k)
                world0 = camera_pose_to_world(R, T, s, start.viewmat)
                poses = [moved_pose(world0, start, g) for g in gts]
                drive = tracking.z_exp[t]
                variants = (("", drive), ("_relative", av.z_exp + drive - z_drv0),
                            ("_neutral", av.z_exp))  # fmt: skip
                for variant, z in variants:
                    pred = _render(net_b, av, z, poses, gts, S)
                    before = len(scores[f"cross_psnr{variant}{align}"])
                    score("cross", variant, align, pred, gt)
                    sub[f"cross_psnr{variant}{align}"] += scores[f"cross_psnr{variant}{align}"][
                        before:
                    ]
                    if align == "" and len(tiles) < 64 and t in (num_steps // 2, num_steps - 1):
                        if variant == "":
                            tiles += [driver_items[t].image, gts[0].image, pred[0]]
                        elif variant == "_neutral":
                            tiles.append(pred[0])
        per_subject.append({
            "subject": names[b], "fit_seconds": round(fit_seconds, 2),
            "fit_landmark_error_px": round(fit.landmark_error_px, 3),
            "gauge_scale": round(gauge_b, 4),
            **{k: _mean(v) for k, v in sub.items()},
        })  # fmt: skip

    truth_uv = tracking.input_landmarks
    errors = [e for e in tracking.landmark_errors() if e is not None]
    spf = tracking.seconds_per_frame()
    jitter, jitter_truth = landmark_jitter(tracking.landmarks), landmark_jitter(truth_uv)
    report: dict[str, Any] = {
        "split": "reenact",
        "driver": names[s_drv],
        "driving_camera": drive_cam,
        "num_steps": num_steps,
        "targets": [names[b] for b in targets],
        "n_self": len(scores["self_psnr"]),
        "n_cross": len(scores["cross_psnr"]),
        "model": type(model).__name__,
        **{k: _mean(v, 4 if "ssim" in k else 3) for k, v in scores.items()},
        "seconds_per_frame": None if spf is None else round(spf, 4),
        "identity_fit_seconds": tracking.info.get("identity_fit_seconds"),
        "jitter": None if jitter is None else round(jitter, 4),
        "jitter_truth": None if jitter_truth is None else round(jitter_truth, 4),
        "landmark_error_px": round(float(np.mean(errors)), 4) if errors else None,
        "gauge_scale": round(gauge_drv, 4),
        "track": {
            "steps": cfg.steps,
            "landmark_steps": cfg.landmark_steps,
            "render_size": cfg.render_size,
            "lr": cfg.lr,
            "code": cfg.code,
            "smooth": cfg.smooth,
            "pose_smooth": cfg.pose_smooth,
            "fit_phase1_steps": cfg.fit.phase1_steps,
            "fit_phase2_steps": cfg.fit.phase2_steps,
        },  # fmt: skip
        "inputs": {
            "landmarks": "ground truth projected",
            "mask": "ground truth",
            "K": "ground truth",
        },  # fmt: skip
        "per_subject": per_subject,
    }
    for kind in _KINDS:
        for a in _ALIGN:
            full, base = report[f"{kind}_psnr{a}"], report[f"{kind}_psnr_neutral{a}"]
            gain = None if full is None or base is None else round(full - base, 3)
            report[f"{kind}_gain_db{a}"] = gain
    for a in _ALIGN:
        rel, base = report[f"cross_psnr_relative{a}"], report[f"cross_psnr_neutral{a}"]
        report[f"cross_gain_db_relative{a}"] = None if rel is None or base is None else round(
            rel - base, 3)  # fmt: skip
    if save_dir is not None:  # the driver's tracking: reenact.py driver=SAVE_DIR/tracking
        source = {"kind": "dataset", "data": str(data_path), "subject": names[s_drv],
                  "camera": drive_cam, "landmarks": "ground truth projected"}  # fmt: skip
        write_tracking(Path(save_dir) / "tracking", model, tracking, frames, source,
                       overwrite=True)  # fmt: skip
        report["tracking"] = "tracking/"
    if save_dir is not None and tiles:
        save_png(Path(save_dir) / "side_by_side.png", image_grid(tiles, ncols=4))
        report["images"] = ["side_by_side.png"]
        report["columns"] = ["driver (driving camera)", "target ground truth (same step)",
                             "target driven by the tracked codes", "neutral baseline"]  # fmt: skip
    return report


def _mean(values: list[float], digits: int = 3) -> float | None:
    mean, _ = metrics.finite_mean(values)
    return None if mean is None else round(mean, digits)
