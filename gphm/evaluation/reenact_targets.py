"""``split=reenact``'s cross-reenactment targets: fitted from 1 or 3 views, or trained people.

A target is one subject B of the sequence, ready to be driven (:class:`Target`): an
identity (an :class:`~gphm.fitting.avatar.Avatar`), its *neutral code* ``z_B`` (what the
neutral baseline holds) and how to place it at B's true head motion. Kinds
(:data:`TARGET_KINDS`, ``reenact.targets``):

* ``1view``: fitted from B's step 0 in the driving camera (:func:`fitted_target`), its
  size/distance settled by the point the rig's cameras are aimed at
  (:func:`~gphm.evaluation.fit.rig_targets`); its pose is the fit's, moved by the true
  motion since step 0;
* ``3view``: fitted from B's step 0 seen by :data:`RIG_VIEWS` cameras together, the
  driving camera first and then the most frontal others, as one calibrated rig (one head
  pose in world, one expression: what ``split=fit fit.views=3`` does);
* ``trained``: B is a person the model was trained on: its trained identity code and its
  trained ``neutral`` frame's expression code, no fit, at its true pose
  (:func:`trained_target`). Only for a sequence written with ``gphm-synth mode=sequence
  identities_from_seed=S`` whose ``S`` is the seed of the run's training set, and only
  when every check of :func:`trained_targets` establishes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from gphm.data.loaders import HeadItem
from gphm.data.synthetic.sequence import REGULAR_GENERATOR
from gphm.evaluation.fit import fit_landmarks, frontal_row, gauge_scale, rig_targets
from gphm.fitting.avatar import Avatar
from gphm.fitting.fit import FitConfig, TrainedRows, fit_images
from gphm.geometry.cameras import rig_center, world_to_camera
from gphm.models.runs import TrainedRun, dataset_fingerprint, seen_by

__all__ = [
    "RIG_VIEWS", "TARGET_KINDS", "Target", "camera_pose_to_world", "check_rig",
    "fitted_target", "gauge_of", "kind_aligns", "moved_pose", "scale_pose", "trained_target",
    "trained_targets",
]  # fmt: skip

#: ``reenact.targets``: how a cross-reenactment target is made (module docstring).
TARGET_KINDS = ("1view", "3view", "trained")
#: Cameras a ``3view`` target is fitted from.
RIG_VIEWS = 3
#: The alignments of a fitted head's figures (``split=fit``'s); a trained one has only "".
FITTED_ALIGN = ("", "_scale_aligned")


def kind_aligns(kind: str) -> tuple[str, ...]:
    """The alignments of a target kind's figures: ``FITTED_ALIGN`` for a fit, only the
    unaligned one for a trained head (nothing was fitted to align)."""
    return ("",) if kind == "trained" else FITTED_ALIGN


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


def gauge_of(model: Any, avatar: Avatar, item: HeadItem) -> float:
    """:func:`~gphm.evaluation.fit.gauge_scale` of a fit against ``item``'s true landmarks
    (in ``item``'s camera frame: the fit's input camera)."""
    return gauge_scale(
        fit_landmarks(model, avatar), world_to_camera(item.viewmat, item.landmarks_3d)
    )


def scale_pose(R: Tensor, T: Tensor, s: float, k: float) -> tuple[Tensor, Tensor, float]:
    """Scale a camera-frame pose by ``k`` about the camera centre."""
    return R, k * T, k * s


@dataclass
class Target:
    """One cross-reenactment target of one kind, ready to be driven."""

    kind: str  # one of TARGET_KINDS
    subject: int  # sequence subject index
    avatar: Avatar  # its identity (and a fit's personalisation); z_exp: its neutral code
    start: HeadItem | None  # a fit's step-0 driving-camera row (pose reference); None: trained
    gauge: float | None  # a fit's gauge scale; None: trained (its true pose, nothing to align)
    entry: dict[str, Any] = field(default_factory=dict)  # per_subject extras

    @property
    def aligns(self) -> tuple[str, ...]:
        return kind_aligns(self.kind)

    def poses(self, align: str, items: list[HeadItem]) -> list[tuple[Tensor, Tensor, float]]:
        """World head poses [B] for the rows ``items`` of one step: a fit's step-0 pose
        (scaled by the gauge for ``_scale_aligned``) moved by the true motion since step 0;
        a trained target's true pose."""
        if self.start is None:
            return [(it.head_R, it.head_T, float(it.head_scale)) for it in items]
        av, k = self.avatar, (self.gauge if align else 1.0)
        world0 = camera_pose_to_world(*scale_pose(av.head_R, av.head_T, float(av.head_scale), k),
                                      self.start.viewmat)  # fmt: skip
        return [moved_pose(world0, self.start, it) for it in items]


def check_rig(seq: Any, views: int) -> None:
    """``ValueError`` unless the sequence ``seq`` (``reenact._Sequence``) has ``views``
    cameras to fit a ``3view`` target from."""
    if views > len(seq.cams):
        raise ValueError(
            f"reenact.targets=3view fits each target from {views} cameras; data.path="
            f"{seq.path} has {len(seq.cams)} ({seq.cams})"
        )


def rig_items(seq: Any, b: int, drive_cam: str, views: int) -> list[HeadItem]:
    """Subject ``b``'s step-0 rows to fit from: the driving camera's, then the most
    frontal other ones (``views`` in all)."""
    check_rig(seq, views)
    rest = [seq.item(b, 0, c) for c in seq.cams if c != drive_cam]
    chosen = [seq.item(b, 0, drive_cam)]
    while len(chosen) < views:
        chosen.append(rest.pop(frontal_row(rest)))
    return chosen


def fitted_target(run: TrainedRun, seq: Any, b: int, drive_cam: str, config: FitConfig,
                  kind: str) -> Target:  # fmt: skip
    """Subject ``b`` fitted from its step 0: one image (``1view``) or :data:`RIG_VIEWS`
    calibrated views (``3view``: one head pose in world, as ``split=fit fit.views=3``)."""
    items = rig_items(seq, b, drive_cam, RIG_VIEWS if kind == "3view" else 1)
    center = rig_center(seq.ds.viewmats([seq.index[(b, 0, c)] for c in seq.cams]))
    t0 = time.perf_counter()
    fit = fit_images(run.model, rig_targets(items, center), config, str(run.path),
                     rows=TrainedRows.of_run(run))  # fmt: skip
    seconds = time.perf_counter() - t0
    gauge = gauge_of(run.model, fit.avatar, items[0])
    entry = {"input_views": [it.camera for it in items], "fit_seconds": round(seconds, 2),
             "fit_landmark_error_px": round(fit.landmark_error_px, 3),
             "gauge_scale": round(gauge, 4), "head_scale": round(fit.head_scale, 4)}  # fmt: skip
    return Target(kind, b, fit.avatar, items[0], gauge, entry)


def _recorded_training_set(run: TrainedRun) -> str | None:
    """``data.path`` of ``RUN/config.yaml`` (what training wrote), or None."""
    run_dir = run.path.parent if run.path.name == "model" else run.path
    try:
        recorded = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        return str(recorded["data"]["path"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def _training_meta(run: TrainedRun, trained_data: str | Path | None) -> tuple[Path, dict]:
    """The training set (``trained_data``, default the run's recorded ``data.path``) and its
    meta.json, checked to be the dataset ``run`` was trained on."""
    where = trained_data or _recorded_training_set(run)
    if where is None:
        raise ValueError(
            f"reenact.targets=trained: {run.path.parent} does not record its training set "
            "(no data.path in its config.yaml); pass reenact.trained_data=TRAINING_SET"
        )
    path = Path(where)
    if not (path / "meta.json").is_file():
        raise ValueError(
            f"reenact.targets=trained: no dataset at {path} (no meta.json); pass "
            "reenact.trained_data=TRAINING_SET (the set the run was trained on)"
        )
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    if not seen_by(run, path, meta):
        raise ValueError(
            f"reenact.trained_data={path} is not the dataset the run was trained on "
            f"(fingerprint {dataset_fingerprint(path)}, the run recorded "
            f"{run.extra.get('dataset_fingerprint')}); pass the training set"
        )
    return path, meta


def trained_targets(
    run: TrainedRun,
    seq_meta: dict[str, Any],
    subjects: Sequence[int],  # sequence subject indices
    trained_data: str | Path | None = None,
    neutral: str = "neutral",
    data_path: str | Path = "data.path",
) -> dict[int, tuple[int, int]]:
    """Sequence subject -> (the run's subject, its trained ``neutral`` frame) for the
    ``trained`` targets; ``ValueError`` naming the option unless it is established that
    each is the very person the model was trained on.

    The sequence must have been written with ``identities_from_seed=S``; the run's
    training set (``trained_data``, default the ``data.path`` its ``config.yaml``
    records; it must be the dataset the run was trained on, :func:`~gphm.models.runs.seen_by`)
    must be the regular set of seed ``S``; each subject must be named as a trained
    subject there, with equal generator identity parameters, and have its own trained
    ``neutral`` frame."""
    gen = seq_meta.get("generator") or {}
    regular = (gen.get("params") or {}).get("identities_from_seed")
    if regular is None:
        raise ValueError(
            f"reenact.targets=trained: data.path={data_path} was written without "
            "identities_from_seed, so its subjects are never a training set's people; write "
            "one with gphm-synth mode=sequence identities_from_seed=SEED (the training set's)"
        )
    path, meta = _training_meta(run, trained_data)
    train_gen = meta.get("generator") or {}
    seed = (train_gen.get("params") or {}).get("seed")
    if train_gen.get("name") != REGULAR_GENERATOR or seed != regular:
        raise ValueError(
            f"reenact.targets=trained: data.path={data_path} is performed by the people of "
            f"the regular set of seed {regular}; the run was trained on {path} (generator "
            f"{train_gen.get('name')!r}, seed {seed}): regenerate it with "
            f"identities_from_seed={seed}"
        )
    return {b: _trained_subject(run, seq_meta, meta, b, neutral, path) for b in subjects}


def _trained_subject(run: TrainedRun, seq_meta: dict, train_meta: dict, b: int, neutral: str,
                     path: Path) -> tuple[int, int]:  # fmt: skip
    """(run subject, neutral frame) of sequence subject ``b`` (:func:`trained_targets`)."""
    name = seq_meta["subjects"][b]
    names = list(train_meta["subjects"])
    if name not in names or name not in run.subjects:
        raise ValueError(f"reenact.targets=trained: sequence subject {name!r} is not a "
                         f"subject of the training set {path} ({names})")  # fmt: skip
    j = run.subjects.index(name)
    ident = seq_meta["generator"]["identities"][b]
    if train_meta["generator"]["identities"][names.index(name)] != ident:
        raise ValueError(
            f"reenact.targets=trained: {name} of the sequence and of {path} have different "
            "identity parameters (written by another generator version?)"
        )
    if j not in run.trained_subjects:
        raise ValueError(f"reenact.targets=trained: {name} has no trained frame, its identity "
                         "code was never fitted")  # fmt: skip
    try:
        frame = run.resolve_frame(j, expression=neutral)
    except ValueError as err:
        raise ValueError(f"reenact.targets=trained: {name}: {err}") from None
    if frame.borrowed:
        raise ValueError(f"reenact.targets=trained: {name} has no trained {neutral!r} frame "
                         f"of its own (neutral=LABEL names the label)")  # fmt: skip
    return j, frame.frame


def trained_target(run: TrainedRun, b: int, subject: int, frame: int, size: int) -> Target:
    """Sequence subject ``b`` as the run's trained ``subject``: its identity code and its
    neutral ``frame``'s expression code, no fit."""
    model = run.model
    avatar = Avatar(
        checkpoint=str(run.path), model_class=type(model).__name__,
        z_id=model.identity_codes.codes.weight[subject].detach().cpu(),
        z_exp=model.expression_codes.codes.weight[frame].detach().cpu(),
        head_R=torch.eye(3), head_T=torch.zeros(3), head_scale=1.0,  # unused: true poses
        K=torch.eye(3), image_size=size,
    )  # fmt: skip
    return Target("trained", b, avatar, None, None,
                  {"trained_subject": run.subjects[subject], "neutral_frame": frame})  # fmt: skip
