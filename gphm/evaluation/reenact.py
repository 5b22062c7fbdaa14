"""``scripts/evaluate.py split=reenact``: tracking and reenactment scored against ground truth.

On a sequence dataset (``make_synthetic.py mode=sequence``) every subject performs the
same sequence, so the true image of subject B making the driver's expression of step
``t`` exists: it is B's own row of step ``t``. The benchmark

1. tracks the **driver** subject from the driving camera (``cam_00``; ground-truth
   landmarks and masks, as ``split=fit`` with ``fit.inputs=gt``): identity fitted on
   step 0, then every step (:func:`~gphm.tracking.track.track_frames`);
2. **self-reenactment** (``self_*``): the tracked driver (its codes and tracked head
   pose) rendered into the *other* cameras, vs their images;
3. **cross-reenactment** (``cross_<kind>_*``): every other subject B as a **target** of
   each kind asked for (``targets``, :data:`TARGET_KINDS`), rendered with the driver's
   tracked ``z_exp`` of each step at B's own ground-truth head motion, vs B's images of
   that step from *all* cameras:

   * ``1view``: B fitted from one image, its step 0 in the driving camera
     (:func:`~gphm.fitting.fit.fit_images`);
   * ``3view``: B fitted from its step 0 seen by :data:`RIG_VIEWS` cameras together, the
     driving camera and the next most frontal ones, as a calibrated rig (one head pose in
     world, one expression: ``split=fit fit.views=3``);
   * ``trained``: B *is* a person the model was trained on (a sequence written with
     ``identities_from_seed``, :func:`trained_targets` checks it): its trained identity
     code with its trained ``neutral`` frame's expression code, no fit, at its true pose.

   A fitted head is moved by the true motion relative to step 0 (``G_t ∘ G_0⁻¹``), so the
   fit's own pose estimate of step 0 is kept. ``cross_<kind>_*_relative``: the same with
   the driver's code *change* instead of its code, ``z_B + (z_A(t) - z_A(0))`` (``z_B``:
   B's neutral code: the fitted step-0 code, or the trained neutral frame's), which
   carries less of the driver's identity in its expression codes;
4. a **neutral baseline** of both (``*_neutral``): the same renders with ``z_B`` held
   throughout, so the gain from tracking is ``*_gain_db = *_psnr - *_psnr_neutral``;
5. the **expression metrics** of :mod:`gphm.evaluation.expression` on the pixels where
   the truth's expression changes the image, per scored image: ``gt_expr`` = the row,
   ``gt_neutral`` = its neutral twin (same head, pose and camera, neutral expression:
   ``gphm-synth neutral_twins``), ``pred_expr`` = the driven render, ``pred_neutral`` =
   the neutral baseline's. ``*_support_gain_db`` (support PSNR driven minus baseline)
   and ``*_capture`` (``⟨D_pred, D_gt⟩ / ⟨D_gt, D_gt⟩``), pooled pixel- and
   energy-weighted over every scored image, per variant (driven / ``_relative``) and
   alignment; ``*_support_per_label`` the same per sequence label (a step's label: the
   keyframe dominating it) for the driven, unaligned renders; ``*_n_support_items``:
   the images scored so (``*_n_support_empty`` of them with an empty support, left out).
   Only images with a neutral twin are scored this way (``support_cameras="twins"``):
   with the generator's default ``neutral_twins=eval`` that is the **driving camera
   only** (so self-reenactment, scored on the other cameras, gets none);
   ``support_cameras="all"`` renders the missing twins with the generator (about 2 s
   each on a CPU at 128 px). A dataset without twins reports them as null with
   ``support_unavailable``.

The 1-view figures are also reported under their historical names: ``cross_*`` (e.g.
``cross_psnr``, ``cross_gain_db``, ``n_cross``) is ``cross_1view_*`` whenever ``1view``
is among the targets. Every image metric of a fitted target (and of the driver) comes
unaligned and ``*_scale_aligned`` as in ``split=fit`` (:func:`~gphm.evaluation.fit.gauge_scale`
of each fit against the true landmarks of its driving-camera view, applied about that
camera's centre); a trained target has no fit to align: unaligned only. Also:
``seconds_per_frame`` (tracking, after the identity frame), ``jitter`` (mean landmark
acceleration of the tracked landmarks, px) next to ``jitter_truth`` (the same of the true
landmarks: the sequence's own motion), ``landmark_error_px`` (tracked vs true, px),
``per_subject`` (one entry per target and kind, ``target`` naming the kind). With a
``save_dir`` the driver's tracking is written to ``save_dir/tracking`` (a
``track_video.py`` output: ``reenact.py driver=RUN/eval/reenact/tracking`` uses it) with
``side_by_side.png`` (``side_by_side_rows`` says which target, kind and step each row is).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gphm.data.loaders import HeadItem
from gphm.errors import UserError
from gphm.evaluation.common import image_scores, mean, render_avatar_views, save_side_by_side
from gphm.evaluation.expression import (
    ExpressionStats,
    _NeutralTruth,  # a row's neutral twin: stored, or rendered by the generator
    expression_stats,
    pool_expression_stats,
)
from gphm.evaluation.reenact_targets import (
    FITTED_ALIGN,
    RIG_VIEWS,
    TARGET_KINDS,
    Target,
    camera_pose_to_world,
    check_rig,
    fitted_target,
    gauge_of,
    kind_aligns,
    moved_pose,
    scale_pose,
    trained_target,
    trained_targets,
)
from gphm.fitting.avatar import Avatar
from gphm.models.runs import TrainedRun
from gphm.tracking.inputs import frames_from_dataset, sequence_steps, subject_rows
from gphm.tracking.outputs import write_tracking
from gphm.tracking.track import TrackConfig, landmark_jitter, track_frames

__all__ = [
    "RIG_VIEWS", "SUPPORT_CAMERAS", "TARGET_KINDS", "camera_pose_to_world",
    "check_reenact_options", "evaluate_reenact", "moved_pose", "trained_targets",
]  # fmt: skip

#: ``reenact.support_cameras``: the images the expression metrics score.
SUPPORT_CAMERAS = ("twins", "all")

_VARIANTS = ("", "_relative", "_neutral")  # cross; self has no "_relative"


def check_reenact_options(targets: Sequence[str], support_cameras: str = "twins") -> list[str]:
    """``targets`` as a list after checking it: known kinds (:data:`TARGET_KINDS`), none
    twice, at least one; ``ValueError`` naming the option otherwise."""
    if isinstance(targets, str):  # a bare name: hydra's reenact.targets=3view
        targets = [targets]
    targets = [str(t) for t in targets]
    unknown = [t for t in targets if t not in TARGET_KINDS]
    if unknown or not targets or len(set(targets)) != len(targets):
        raise ValueError(
            f"reenact.targets must be a non-empty list of distinct target kinds from "
            f"{list(TARGET_KINDS)} (e.g. reenact.targets=[1view,3view]), got {targets}"
            + (f": unknown {unknown}" if unknown else "")
        )
    if support_cameras not in SUPPORT_CAMERAS:
        raise ValueError(f"reenact.support_cameras must be one of {'|'.join(SUPPORT_CAMERAS)}, "
                         f"got {support_cameras!r}")  # fmt: skip
    return targets


def _render(net, avatar: Avatar, z_exp: Tensor, poses, items: list[HeadItem], size: int) -> Tensor:
    """[B, S, S, 3]: ``avatar``'s identity with ``z_exp`` [Dexp] at world ``poses`` [B]
    seen by the items' cameras."""
    return render_avatar_views(
        net, avatar, z_exp, torch.stack([p[0] for p in poses]).float(),
        torch.stack([p[1] for p in poses]).float(), torch.tensor([float(p[2]) for p in poses]),
        torch.stack([it.viewmat for it in items]), torch.stack([it.K for it in items]), size,
    )  # fmt: skip


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
        self.path = data_path
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


class _Twins:
    """The neutral twins of a step's rows (``support_cameras``: stored ones, or every row
    with the missing ones rendered by the generator); none when the dataset has none."""

    def __init__(self, data_path: str | Path, meta: dict[str, Any], cameras: str):
        self.render_missing = cameras == "all"
        self.unavailable: str | None = None
        self.truth: _NeutralTruth | None = None
        self._subject, self._cache = -1, {}  # one subject's twins: all its kinds reuse them
        try:
            self.truth = _NeutralTruth(data_path, meta)
        except UserError as err:
            if self.render_missing:
                raise UserError(f"reenact.support_cameras=all: {err}") from None
            self.unavailable = str(err)

    def __call__(self, items: list[HeadItem]) -> tuple[list[int], Tensor] | None:
        """Indices into ``items`` with a twin and the twins ([n, H, W, 3]); None if none."""
        if self.truth is None:
            return None
        keep = [i for i, it in enumerate(items)
                if self.render_missing or int(it.row) in self.truth.twins]  # fmt: skip
        if not keep:
            return None
        return keep, torch.stack([self._twin(items[i]) for i in keep])

    def _twin(self, item: HeadItem) -> Tensor:  # [H, W, 3]
        assert self.truth is not None
        if int(item.subject) != self._subject:
            self._subject, self._cache = int(item.subject), {}
        row = int(item.row)
        if row not in self._cache:
            self._cache[row] = self.truth(item)[0]
        return self._cache[row]


class _Scores:
    """Per-image PSNR / SSIM lists by ``{prefix}_{metric}{variant}{align}`` and expression
    statistics by ``(prefix, variant, align)`` with one label per entry (a step's)."""

    def __init__(self) -> None:
        self.lists: dict[str, list[float]] = {}
        self.stats: dict[tuple[str, str, str], list[ExpressionStats]] = {}
        self.labels: dict[tuple[str, str, str], list[str]] = {}

    def declare(self, prefix: str, variants: Sequence[str], aligns: Sequence[str]) -> None:
        """Every key of ``prefix`` exists, even if nothing is scored (its mean is null)."""
        for v in variants:
            for a in aligns:
                for m in ("psnr", "ssim"):
                    self.lists.setdefault(f"{prefix}_{m}{v}{a}", [])
                if v != "_neutral":
                    self.stats.setdefault((prefix, v, a), [])
                    self.labels.setdefault((prefix, v, a), [])

    def add(self, prefix: str, variant: str, align: str, pred: Tensor, gt: Tensor) -> None:
        """Score ``pred`` against ``gt`` ([B, S, S, 3])."""
        values = image_scores(pred, gt)
        self.lists[f"{prefix}_psnr{variant}{align}"] += values["psnr"].tolist()
        self.lists[f"{prefix}_ssim{variant}{align}"] += values["ssim"].tolist()

    def add_step(
        self, prefix: str, align: str, preds: dict[str, Tensor], gt: Tensor,
        twins: tuple[list[int], Tensor] | None, label: str,
    ) -> None:  # fmt: skip
        """One step's renders ``preds`` (variant -> [B, S, S, 3], ``"_neutral"`` among them)
        against the rows ``gt`` [B, S, S, 3]; with ``twins`` (indices into B, their twins
        [n, S, S, 3]) also the expression statistics of each variant against the neutral
        render, labelled ``label``."""
        for v, pred in preds.items():
            self.add(prefix, v, align, pred, gt)
        if twins is not None:
            idx, gt_neutral = twins
            for v, pred in preds.items():
                if v != "_neutral":
                    self.stats[(prefix, v, align)].append(expression_stats(
                        pred[idx], preds["_neutral"][idx], gt[idx], gt_neutral))  # fmt: skip
                    self.labels[(prefix, v, align)].append(label)

    def merge(self, other: _Scores) -> None:
        """Append everything ``other`` holds."""
        for k, v in other.lists.items():
            self.lists.setdefault(k, []).extend(v)
        for k, v in other.stats.items():
            self.stats.setdefault(k, []).extend(v)
            self.labels.setdefault(k, []).extend(other.labels[k])


def _finite(value: float, digits: int) -> float | None:
    """``value`` rounded, None when not finite (an undefined metric: JSON has no NaN)."""
    return round(float(value), digits) if np.isfinite(value) else None


def _pooled(stats: list[ExpressionStats], labels: list[str]) -> dict[str, dict[str, Any]]:
    """:func:`pool_expression_stats` rounded for the report (NaN -> None); {} if empty."""
    if not stats:
        return {}
    return {
        label: {"support_gain_db": _finite(p["support_gain_db"], 3),
                "capture": _finite(p["capture"], 4),
                "support_fraction": _finite(p["support_fraction"], 5),
                "items": p["items"], "items_empty": p["items_empty"]}
        for label, p in pool_expression_stats(stats, labels).items()
    }  # fmt: skip


def _support_figures(scores: _Scores, prefix: str) -> dict[str, Any]:
    """``{prefix}_support_gain_db{variant}{align}``, ``{prefix}_capture{variant}{align}``
    (pooled), and for the driven, unaligned renders ``_support_per_label``,
    ``_n_support_items`` and ``_n_support_empty``."""
    out: dict[str, Any] = {}
    for (p, v, a), stats in scores.stats.items():
        if p != prefix:
            continue
        pooled = _pooled(stats, scores.labels[(p, v, a)])
        everything = pooled.pop("all", {})
        out[f"{prefix}_support_gain_db{v}{a}"] = everything.get("support_gain_db")
        out[f"{prefix}_capture{v}{a}"] = everything.get("capture")
        if v == "" and a == "":
            out[f"{prefix}_support_per_label"] = pooled
            out[f"{prefix}_n_support_items"] = (everything.get("items", 0)
                                                + everything.get("items_empty", 0))  # fmt: skip
            out[f"{prefix}_n_support_empty"] = everything.get("items_empty", 0)
    return out


def _gains(report: dict[str, Any], prefix: str, aligns: Sequence[str]) -> dict[str, float | None]:
    """``{prefix}_gain_db{align}`` (tracked codes over the neutral baseline) and, where
    relative renders exist, ``{prefix}_gain_db_relative{align}``, from the mean PSNRs."""

    def gain(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 3)

    out = {}
    for a in aligns:
        base = report[f"{prefix}_psnr_neutral{a}"]
        out[f"{prefix}_gain_db{a}"] = gain(report[f"{prefix}_psnr{a}"], base)
        if f"{prefix}_psnr_relative{a}" in report:
            out[f"{prefix}_gain_db_relative{a}"] = gain(report[f"{prefix}_psnr_relative{a}"], base)
    return out


def _figures(scores: _Scores, prefix: str, aligns: Sequence[str]) -> dict[str, Any]:
    """Every figure of ``prefix``: ``n_{prefix}``, mean PSNR / SSIM, gains, support."""
    out: dict[str, Any] = {f"n_{prefix}": len(scores.lists.get(f"{prefix}_psnr", []))}
    out |= {k: mean(v, 4 if "ssim" in k else 3) for k, v in scores.lists.items()
            if k.startswith(prefix + "_")}  # fmt: skip
    return out | _gains(out, prefix, aligns) | _support_figures(scores, prefix)


def _score_self(model, tracking, seq: _Sequence, s_drv: int, driver_items, scores, twins, size):
    """Self-reenactment: the tracked driver in the cameras other than the driving one.
    Returns the driver's gauge scale."""
    avatar = tracking.avatar
    others = [c for c in seq.cams if c != driver_items[0].camera]
    net = avatar.personalised(model)
    gauge = gauge_of(model, avatar, driver_items[0])
    for t in range(len(driver_items) if others else 0):
        gts = [seq.item(s_drv, t, c) for c in others]
        gt, twin = torch.stack([g.image for g in gts]), twins(gts)
        for align, k in (("", 1.0), ("_scale_aligned", gauge)):
            R, T, s = scale_pose(tracking.head_R[t], tracking.head_T[t],
                                 float(avatar.head_scale), k)  # fmt: skip
            pose = [camera_pose_to_world(R, T, s, driver_items[t].viewmat)] * len(gts)
            preds = {v: _render(net, avatar, z, pose, gts, size)
                     for v, z in (("", tracking.z_exp[t]), ("_neutral", avatar.z_exp))}  # fmt: skip
            scores.add_step("self", align, preds, gt, twin, gts[0].expression)
    return gauge


def _score_cross(model, tracking, seq: _Sequence, target: Target, driver_items, scores,
                 twins, tiles) -> dict[str, Any]:  # fmt: skip
    """Cross-reenactment of ``target``: driven by the tracked codes at its true head
    motion, all cameras. Returns its ``per_subject`` entry; adds tiles of two steps to
    ``tiles`` (``(tile, row name)`` pairs)."""
    b, av, num_steps = target.subject, target.avatar, len(driver_items)
    prefix, net = f"cross_{target.kind}", av.personalised(model)
    z_drv0 = tracking.z_exp[tracking.identity_frame]  # the driver's own first-step code
    mine = _Scores()  # this target's own figures (per_subject)
    mine.declare(prefix, _VARIANTS, target.aligns)
    for t in range(num_steps):
        gts = [seq.item(b, t, c) for c in seq.cams]
        gt, twin = torch.stack([g.image for g in gts]), twins(gts)
        drive = tracking.z_exp[t]
        codes = (("", drive), ("_relative", av.z_exp + drive - z_drv0), ("_neutral", av.z_exp))
        for align in target.aligns:
            poses = target.poses(align, gts)
            preds = {v: _render(net, av, z, poses, gts, target.avatar.image_size)
                     for v, z in codes}  # fmt: skip
            mine.add_step(prefix, align, preds, gt, twin, gts[0].expression)
            if align == "" and len(tiles) < 64 and t in (num_steps // 2, num_steps - 1):
                row = f"{seq.names[b]} {target.kind} step {t}"
                tiles += [(x, row) for x in (driver_items[t].image, gts[0].image, preds[""][0],
                                             preds["_neutral"][0])]  # fmt: skip
    scores.merge(mine)
    own = _figures(mine, prefix, target.aligns)
    support = (f"{prefix}_support_gain_db", f"{prefix}_capture", f"{prefix}_n_support_items")
    keep = [k for k in own if k.startswith(f"{prefix}_psnr") or k in support]
    return {"subject": seq.names[b], "target": target.kind, **target.entry,
            **{"cross_" + k[len(prefix) + 1 :]: own[k] for k in keep}}  # fmt: skip


def _legacy(report: dict[str, Any]) -> dict[str, Any]:
    """The 1-view figures under their historical names (``cross_1view_x`` -> ``cross_x``,
    ``n_cross_1view`` -> ``n_cross``)."""
    out = {"cross_" + k[len("cross_1view_"):]: v for k, v in report.items()
           if k.startswith("cross_1view_")}  # fmt: skip
    if "n_cross_1view" in report:
        out["n_cross"] = report["n_cross_1view"]
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
    save_side_by_side(save_dir, [x for x, _ in tiles], report, [
        "driver (driving camera)", "target ground truth (same step)",
        "target driven by the tracked codes", "neutral baseline"])  # fmt: skip
    if tiles:
        report["side_by_side_rows"] = [row for _, row in tiles[::4]]


def _cross_targets(run, seq, targets, kinds, drive_cam, cfg, trained, size):
    """Every (subject, kind) target, made one at a time (a fit is slow: yielded lazily)."""
    for b in targets:
        for kind in kinds:
            if kind == "trained":
                yield trained_target(run, b, *trained[b], size)
            else:
                yield fitted_target(run, seq, b, drive_cam, cfg.fit, kind)


def evaluate_reenact(
    run: TrainedRun,
    data_path: str | Path,
    driver: str | int,
    config: TrackConfig | None = None,
    camera: str | None = None,
    max_subjects: int = 0,
    save_dir: str | Path | None = None,
    progress: bool = False,
    targets: Sequence[str] = ("1view",),
    trained_data: str | Path | None = None,
    neutral: str = "neutral",
    support_cameras: str = "twins",
) -> dict[str, Any]:
    """The ``split=reenact`` report (module docstring) of ``run`` on the sequence dataset
    ``data_path`` driven by subject ``driver`` (name or index). ``max_subjects``: cross-
    reenact at most this many other subjects (0 = all); ``targets``: the kinds of target
    made of each (:data:`TARGET_KINDS`; ``trained_data`` and ``neutral``: see
    :func:`trained_targets`); ``support_cameras``: :data:`SUPPORT_CAMERAS`. Bad options
    and a ``trained`` target that cannot be established fail before any tracking."""
    kinds = check_reenact_options(targets, support_cameras)
    cfg = config or TrackConfig()
    frames, driver_items, ds = frames_from_dataset(data_path, driver, camera,
                                                   run.extra.get("lr_size"))  # fmt: skip
    S = int(run.extra.get("hr_size") or 0)
    seq = _Sequence(ds, data_path, S)
    s_drv, _ = subject_rows(ds, driver)
    drive_cam = driver_items[0].camera
    subjects = [s for s in range(len(seq.names)) if s != s_drv][: max_subjects or None]
    if "3view" in kinds:
        check_rig(seq, RIG_VIEWS)  # before any work
    trained = {}
    if "trained" in kinds:
        trained = trained_targets(run, ds.meta, subjects, trained_data, neutral, data_path)
    twins = _Twins(data_path, ds.meta, support_cameras)
    tracking = track_frames(run, frames, cfg, progress=progress)
    scores = _Scores()
    scores.declare("self", ("", "_neutral"), FITTED_ALIGN)
    for kind in kinds:
        scores.declare(f"cross_{kind}", _VARIANTS, kind_aligns(kind))
    gauge_drv = _score_self(run.model, tracking, seq, s_drv, driver_items, scores, twins, S)
    tiles: list[tuple[Tensor, str]] = []
    per_subject = [
        _score_cross(run.model, tracking, seq, target, driver_items, scores, twins, tiles)
        for target in _cross_targets(run, seq, subjects, kinds, drive_cam, cfg, trained, S)
    ]
    report: dict[str, Any] = {
        "split": "reenact", "driver": seq.names[s_drv], "driving_camera": drive_cam,
        "num_steps": len(driver_items), "targets": [seq.names[b] for b in subjects],
        "target_kinds": kinds, "support_cameras": support_cameras,
        "model": type(run.model).__name__,
        **_figures(scores, "self", FITTED_ALIGN),
    }  # fmt: skip
    for kind in kinds:
        report |= _figures(scores, f"cross_{kind}", kind_aligns(kind))
    report |= _legacy(report)
    if twins.unavailable:
        report["support_unavailable"] = twins.unavailable
    report |= {
        **_tracking_figures(tracking), "gauge_scale": round(gauge_drv, 4),
        "track": _track_record(cfg),
        "inputs": {"landmarks": "ground truth projected", "mask": "ground truth",
                   "K": "ground truth"},
        "per_subject": per_subject,
    }  # fmt: skip
    _save(save_dir, report, run.model, tracking, frames, data_path, seq.names[s_drv], drive_cam,
          tiles)  # fmt: skip
    return report
