"""Who to render: a training subject (and frame), a fitted avatar, or a photo to fit.

Used by ``scripts/fit_image.py`` and ``scripts/edit_expression.py``. A *spec* string is

* a fitted avatar directory (``avatar.json`` inside), or ``AVATAR_DIR:NAME`` for one of
  its named expressions (an avatar fitted from several images: ``image_0``, ...),
* an image file (``.png/.jpg/.jpeg``): it is fitted first,
* ``SUBJECT`` or ``SUBJECT:EXPRESSION`` (name or index, expression label) or
  ``SUBJECT@FRAME`` (global frame index) of the trained model, resolved by
  :meth:`TrainedRun.resolve_frame`: only trained frames count; a subject without a
  trained frame of that label takes another subject's (the label then says whose).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gphm.data.preprocess.single_image import PreparedImage, prepare_image
from gphm.errors import UserError
from gphm.fitting.avatar import Avatar, is_avatar_dir
from gphm.fitting.fit import FitConfig, FitResult, FitTarget, TrainedRows, fit_images
from gphm.models.runs import TrainedRun

__all__ = ["Source", "resolve_source", "fit_photo", "fit_photos", "IMAGE_SUFFIXES",
           "check_landmarks_in_image"]  # fmt: skip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_INSIDE = 0.5
"""The fraction of given landmarks that must lie inside their image."""


@dataclass
class Source:
    label: str
    kind: str  # "subject" | "avatar" | "image"
    z_id: Tensor  # [Did]
    z_exp: Tensor  # [Dexp]
    model: Any  # the run's model, or a copy personalised by an avatar (f_col)
    point_offsets: Tensor | None = None  # [N, 3] avatar offsets
    image: Tensor | None = None  # [S, S, 3] the photo / a representative input, if any
    info: dict[str, Any] | None = None


def fit_photo(
    run: TrainedRun,
    image: str | Path,
    detector: str = "mediapipe",
    landmarks: str | Path | None = None,
    config: FitConfig | None = None,
    progress: bool = False,
    *,
    face: int = 0,
) -> tuple[PreparedImage, FitResult]:
    """Align a photo to the training framing at the model's output size and fit it.
    ``face``: which face of a photo with several (0 = the largest; see ``prepare_image``)."""
    prepared, result = fit_photos(run, [image], detector, None if landmarks is None
                                  else [landmarks], config, progress, face=face)  # fmt: skip
    return prepared[0], result


def fit_photos(
    run: TrainedRun,
    images: list[str | Path],
    detector: str = "mediapipe",
    landmarks: list[str | Path | None] | None = None,
    config: FitConfig | None = None,
    progress: bool = False,
    *,
    face: int = 0,
) -> tuple[list[PreparedImage], FitResult]:
    """Several photos of one person, each aligned like :func:`fit_photo`, fitted together
    (:func:`~gphm.fitting.fit.fit_images`: one identity, an expression and a pose per
    photo). ``landmarks``: one ``.pts`` file (or None: detect) per photo."""
    size = int(run.extra.get("hr_size") or 0)
    if size <= 0:
        raise ValueError(f"{run.path}: the model does not record its output size (hr_size)")
    if not images:
        raise ValueError("no image given")
    landmarks = list(landmarks) if landmarks is not None else [None] * len(images)
    if len(landmarks) != len(images):
        raise ValueError(f"{len(images)} images but {len(landmarks)} landmark files")
    prepared = [
        prepare_image(
            image,
            detector=None if lmk is not None else detector,
            landmarks=lmk,
            out_size=size,
            face=face,
        )  # fmt: skip
        for image, lmk in zip(images, landmarks)
    ]
    for p, lmk in zip(prepared, landmarks):
        if lmk is not None:
            check_landmarks_in_image(p, lmk)
    targets = [FitTarget.from_prepared(p) for p in prepared]
    result = fit_images(run.model, targets, config, str(run.path), progress=progress,
                        rows=TrainedRows.of_run(run))  # fmt: skip
    return prepared, result


def check_landmarks_in_image(prepared: PreparedImage, landmarks: Any) -> None:
    """Refuse given landmarks of which fewer than :data:`MIN_INSIDE` lie inside their
    image: they belong to another image (or another crop of it), and fitting them would
    fit a blank crop. ``UserError`` naming the landmark file (or ``landmarks``)."""
    H, W = prepared.input_size
    pts = prepared.map_to_input(prepared.landmarks)  # [68, 2] input pixels
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= W) & (pts[:, 1] >= 0) & (pts[:, 1] <= H)
    if inside.mean() < MIN_INSIDE:
        where = str(landmarks) if isinstance(landmarks, (str, Path)) else "landmarks"
        image = prepared.source or "the image"
        raise UserError(
            f"{where}: {int((~inside).sum())} of {len(pts)} landmarks lie outside the "
            f"{W}x{H} image {image}; expected the landmarks of this image (iBUG .pts, "
            "pixels of the image)"
        )


def _from_avatar(run: TrainedRun, avatar: Avatar, label: str, kind: str, image=None) -> Source:
    return Source(
        label=label, kind=kind, z_id=avatar.z_id, z_exp=avatar.z_exp,
        model=avatar.personalised(run.model), point_offsets=avatar.point_offsets, image=image,
        info={"checkpoint": avatar.checkpoint, **avatar.report},
    )  # fmt: skip


def resolve_source(
    spec: str,
    run: TrainedRun,
    config: FitConfig | None = None,
    detector: str = "mediapipe",
) -> Source:
    """Resolve a spec (module docstring) against ``run``."""
    path = Path(spec)
    head, sep, named = spec.rpartition(":")
    if sep and not path.exists() and is_avatar_dir(head):  # AVATAR_DIR:EXPRESSION
        avatar = Avatar.load(head, run.model)
        try:
            z_exp = avatar.expression(named)
        except KeyError as err:
            raise ValueError(f"{spec!r}: {err.args[0]}") from None
        src = _from_avatar(run, avatar, f"{Path(head).name}:{named}", "avatar")
        src.z_exp = z_exp
        return src
    if path.is_dir():
        if not is_avatar_dir(path):
            raise FileNotFoundError(f"{path}: a directory but not a fitted avatar (no avatar.json)")
        return _from_avatar(run, Avatar.load(path, run.model), path.name, "avatar")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image not found")
        prepared, result = fit_photo(run, path, detector, config=config)
        image = torch.from_numpy(prepared.image).float()
        return _from_avatar(run, result.avatar, path.stem, "image", image)
    name, frame, expression = spec, None, None
    if "@" in spec:
        name, f = spec.split("@", 1)
        try:
            frame = int(f)
        except ValueError:
            raise ValueError(f"{spec!r}: expected SUBJECT@FRAME with an integer frame") from None
    elif ":" in spec:
        name, expression = spec.split(":", 1)
    try:
        subject = run.subject_index(name)
    except ValueError as err:
        raise ValueError(
            f"{spec!r} is neither an avatar directory, an image file nor a training subject ({err})"
        ) from None
    resolved = run.resolve_frame(subject, frame, expression)
    model = run.model
    label = f"{run.subjects[subject]}:{resolved.label}"
    info: dict[str, Any] = {"subject": run.subjects[subject], "frame": resolved.frame}
    if resolved.borrowed:
        label += f" ({resolved.describe()})"
        info["expression_from"] = resolved.describe()
    if resolved.note:
        info["note"] = resolved.note
    return Source(
        label=label,
        kind="subject",
        z_id=model.identity_codes.codes.weight[subject].detach(),
        z_exp=model.expression_codes.codes.weight[resolved.frame].detach(),
        model=model,
        info=info,
    )
