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
from gphm.evaluation.common import image_scores, mean, render_avatar_views, save_side_by_side
from gphm.evaluation.fit import fit_landmarks, gauge_scale, target_from_item
from gphm.fitting.avatar import Avatar
from gphm.fitting.fit import TrainedRows, fit_image
from gphm.geometry.cameras import world_to_camera
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


def _render(net, avatar: Avatar, z_exp: Tensor, poses, items: list[HeadItem], size: int) -> Tensor:
    """[B, S, S, 3]: ``avatar``'s identity with ``z_exp`` [Dexp] at world ``poses`` [B]
    seen by the items' cameras."""
    return render_avatar_views(
        net, avatar, z_exp, torch.stack([p[0] for p in poses]).float(),
        torch.stack([p[1] for p in poses]).float(), torch.tensor([float(p[2]) for p in poses]),
        torch.stack([it.viewmat for it in items]), torch.stack([it.K for it in items]), size,
    )  # fmt: skip


def _scale_pose(R: Tensor, T: Tensor, s: float, k: float) -> tuple[Tensor, Tensor, float]:
    """Scale a camera-frame pose by ``k`` about the camera centre."""
    return R, k * T, k * s


class _Sequence:
    """A sequence dataset's rows by (subject, step, camera), items decoded on demand."""

    def __init__(self, ds: Any, data_path: str | Path, size: int):
        if "sequence" not in ds.meta:
            raise ValueError(
                f"data.path={data_path}: not a sequence dataset (no 'sequence' in meta.json); "
                "write one with make_synthetic.py mode=sequence"
            )
        if list(ds.meta["image_size"]) != [size, size]:
            raise ValueError(
                f"data.path={data_path}: images are {ds.meta['image_size']}, the model "
                f"renders {size}x{size}; generate the sequence at resolution={size}"
            )
        self.ds = ds
        self.names = ds.meta["subjects"]
        self.cams = list(ds.meta["cameras"])
        steps = sequence_steps(ds)
        cam_col = ds.ds.data.column("camera").to_pylist()
        self.index = {
            (int(ds.subjects[i]), steps[int(ds.frames[i])], cam_col[int(ds.indices[i])]): i
            for i in range(len(ds))
        }

    def item(self, s: int, t: int, c: str) -> HeadItem:
        return self.ds[self.index[(s, t, c)]]


class _Scores:
    """Per-image PSNR / SSIM lists by ``{kind}_{metric}{variant}{align}``."""

    def __init__(self) -> None:
        self.lists: dict[str, list[float]] = {
            f"{k}_{m}{v}{a}": [] for k in _KINDS for m in ("psnr", "ssim") for v in _VARIANTS
            for a in _ALIGN
        }  # fmt: skip
        for m in ("psnr", "ssim"):  # cross only: for the driver itself relative = absolute
            for a in _ALIGN:
                self.lists[f"cross_{m}_relative{a}"] = []

    def add(self, kind: str, variant: str, align: str, pred: Tensor, gt: Tensor) -> list[float]:
        """Score ``pred`` against ``gt`` ([B, S, S, 3]); returns the PSNRs added."""
        values = image_scores(pred, gt)
        psnr = values["psnr"].tolist()
        self.lists[f"{kind}_psnr{variant}{align}"] += psnr
        self.lists[f"{kind}_ssim{variant}{align}"] += values["ssim"].tolist()
        return psnr


def _score_self(model, tracking, seq: _Sequence, s_drv: int, driver_items, scores, size):
    """Self-reenactment: the tracked driver in the cameras other than the driving one.
    Returns the driver's gauge scale."""
    avatar = tracking.avatar
    others = [c for c in seq.cams if c != driver_items[0].camera]
    net = avatar.personalised(model)
    gauge = _gauge(model, avatar, driver_items[0])
    for t in range(len(driver_items) if others else 0):
        gts = [seq.item(s_drv, t, c) for c in others]
        gt = torch.stack([g.image for g in gts])
        for align, k in (("", 1.0), ("_scale_aligned", gauge)):
            R, T, s = _scale_pose(tracking.head_R[t], tracking.head_T[t],
                                  float(avatar.head_scale), k)  # fmt: skip
            pose = camera_pose_to_world(R, T, s, driver_items[t].viewmat)
            for variant, z in (("", tracking.z_exp[t]), ("_neutral", avatar.z_exp)):
                scores.add("self", variant, align,
                           _render(net, avatar, z, [pose] * len(gts), gts, size), gt)  # fmt: skip
    return gauge


def _score_cross(run, tracking, seq: _Sequence, b: int, driver_items, cfg, scores, tiles, size):
    """Cross-reenactment of subject ``b``: fitted on its step 0 (driving camera), driven
    by the tracked codes at its true head motion, all cameras. Returns its
    ``per_subject`` entry; adds tiles of two steps to ``tiles``."""
    model, num_steps, drive_cam = run.model, len(driver_items), driver_items[0].camera
    start = seq.item(b, 0, drive_cam)
    t0 = time.perf_counter()
    fit = fit_image(model, target_from_item(start), cfg.fit, str(run.path),
                    rows=TrainedRows.of_run(run))  # fmt: skip
    fit_seconds = time.perf_counter() - t0
    av = fit.avatar
    net_b = av.personalised(model)
    gauge_b = _gauge(model, av, start)
    z_drv0 = tracking.z_exp[tracking.identity_frame]  # the driver's own first-step code
    sub: dict[str, list[float]] = {k: [] for k in scores.lists if k.startswith("cross_psnr")}
    for t in range(num_steps):
        gts = [seq.item(b, t, c) for c in seq.cams]
        gt = torch.stack([g.image for g in gts])
        for align, k in (("", 1.0), ("_scale_aligned", gauge_b)):
            R, T, s = _scale_pose(av.head_R, av.head_T, float(av.head_scale), k)
            world0 = camera_pose_to_world(R, T, s, start.viewmat)
            poses = [moved_pose(world0, start, g) for g in gts]
            drive = tracking.z_exp[t]
            variants = (("", drive), ("_relative", av.z_exp + drive - z_drv0),
                        ("_neutral", av.z_exp))  # fmt: skip
            for variant, z in variants:
                pred = _render(net_b, av, z, poses, gts, size)
                sub[f"cross_psnr{variant}{align}"] += scores.add("cross", variant, align, pred, gt)
                if align == "" and len(tiles) < 64 and t in (num_steps // 2, num_steps - 1):
                    if variant == "":
                        tiles += [driver_items[t].image, gts[0].image, pred[0]]
                    elif variant == "_neutral":
                        tiles.append(pred[0])
    return {
        "subject": seq.names[b], "fit_seconds": round(fit_seconds, 2),
        "fit_landmark_error_px": round(fit.landmark_error_px, 3),
        "gauge_scale": round(gauge_b, 4),
        **{k: mean(v, 3) for k, v in sub.items()},
    }  # fmt: skip


def _gains(report: dict[str, Any]) -> dict[str, float | None]:
    """``{kind}_gain_db{align}`` (tracked codes over the neutral baseline) and
    ``cross_gain_db_relative{align}``, from ``report``'s mean PSNRs."""

    def gain(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 3)

    out = {f"{kind}_gain_db{a}": gain(report[f"{kind}_psnr{a}"], report[f"{kind}_psnr_neutral{a}"])
           for kind in _KINDS for a in _ALIGN}  # fmt: skip
    for a in _ALIGN:
        out[f"cross_gain_db_relative{a}"] = gain(report[f"cross_psnr_relative{a}"],
                                                 report[f"cross_psnr_neutral{a}"])  # fmt: skip
    return out


def _track_record(cfg: TrackConfig) -> dict[str, Any]:
    """Every tracking option that changes the tracked codes (the figures' provenance)."""
    return {
        "steps": cfg.steps, "landmark_steps": cfg.landmark_steps,
        "render_size": cfg.render_size, "lr": cfg.lr, "code": cfg.code, "smooth": cfg.smooth,
        "pose_smooth": cfg.pose_smooth, "fit_phase1_steps": cfg.fit.phase1_steps,
        "fit_phase2_steps": cfg.fit.phase2_steps,
    }  # fmt: skip


def _tracking_figures(tracking: Any) -> dict[str, Any]:
    """Speed, jitter and landmark error of the driver's tracking."""
    errors = [e for e in tracking.landmark_errors() if e is not None]
    spf = tracking.seconds_per_frame()
    jitter = landmark_jitter(tracking.landmarks)
    jitter_truth = landmark_jitter(tracking.input_landmarks)
    return {
        "seconds_per_frame": None if spf is None else round(spf, 4),
        "identity_fit_seconds": tracking.info.get("identity_fit_seconds"),
        "jitter": None if jitter is None else round(jitter, 4),
        "jitter_truth": None if jitter_truth is None else round(jitter_truth, 4),
        "landmark_error_px": round(float(np.mean(errors)), 4) if errors else None,
    }


def _save(save_dir, report, model, tracking, frames, data_path, driver, camera, tiles):
    """The driver's tracking (``reenact.py driver=SAVE_DIR/tracking``) and the image."""
    if save_dir is None:
        return
    source = {"kind": "dataset", "data": str(data_path), "subject": driver,
              "camera": camera, "landmarks": "ground truth projected"}  # fmt: skip
    write_tracking(Path(save_dir) / "tracking", model, tracking, frames, source, overwrite=True)
    report["tracking"] = "tracking/"
    save_side_by_side(save_dir, tiles, report, [
        "driver (driving camera)", "target ground truth (same step)",
        "target driven by the tracked codes", "neutral baseline"])  # fmt: skip


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
    frames, driver_items, ds = frames_from_dataset(data_path, driver, camera,
                                                   run.extra.get("lr_size"))  # fmt: skip
    S = int(run.extra.get("hr_size") or 0)
    seq = _Sequence(ds, data_path, S)
    s_drv, _ = subject_rows(ds, driver)
    tracking = track_frames(run, frames, cfg, progress=progress)
    scores = _Scores()
    gauge_drv = _score_self(run.model, tracking, seq, s_drv, driver_items, scores, S)
    targets = [s for s in range(len(seq.names)) if s != s_drv][: max_subjects or None]
    tiles: list[Tensor] = []
    per_subject = [_score_cross(run, tracking, seq, b, driver_items, cfg, scores, tiles, S)
                   for b in targets]  # fmt: skip
    report: dict[str, Any] = {
        "split": "reenact",
        "driver": seq.names[s_drv],
        "driving_camera": driver_items[0].camera,
        "num_steps": len(driver_items),
        "targets": [seq.names[b] for b in targets],
        "n_self": len(scores.lists["self_psnr"]),
        "n_cross": len(scores.lists["cross_psnr"]),
        "model": type(run.model).__name__,
        **{k: mean(v, 4 if "ssim" in k else 3) for k, v in scores.lists.items()},
        **_tracking_figures(tracking),
        "gauge_scale": round(gauge_drv, 4),
        "track": _track_record(cfg),
        "inputs": {"landmarks": "ground truth projected", "mask": "ground truth",
                   "K": "ground truth"},  # fmt: skip
        "per_subject": per_subject,
    }
    report |= _gains(report)
    _save(save_dir, report, run.model, tracking, frames, data_path, seq.names[s_drv],
          driver_items[0].camera, tiles)  # fmt: skip
    return report
