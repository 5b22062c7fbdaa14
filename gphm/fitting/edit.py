"""Expression editing (docs/architecture.md §3.5): a source's identity with a target's expression.

A source or target is a :class:`~gphm.fitting.sources.Source` (a training subject and
frame, a fitted avatar, or a photo fitted first; :func:`~gphm.fitting.sources.resolve_source`).
The source keeps its identity code (and an avatar's fine-tuned colours and per-Gaussian
offsets) and takes the target's expression code. ``scripts/edit_expression.py``
(``gphm-edit``) writes the pictures and the video these functions render.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gphm.fitting.sources import Source
from gphm.models.runs import TrainedRun
from gphm.rendering import ViewRig, lerp_codes, render_codes

__all__ = ["render_source", "drive_keyframes", "blend_keyframes"]


def render_source(
    src: Source,
    z_exp: Tensor,  # [B, Dexp]
    rig: ViewRig,
) -> Tensor:  # [B, C, H, W, 3] in [0, 1], CPU
    """``src``'s identity (its model and offsets) with each expression code, from every
    camera of ``rig``, at the canonical pose."""
    z_id = src.z_id[None].expand(z_exp.shape[0], -1)
    return render_codes(src.model, z_id, z_exp, rig, point_offsets=src.point_offsets)


def drive_keyframes(
    run: TrainedRun, target: Source, labels: Sequence[str] = ()
) -> tuple[list[str], list[Tensor], list[str]]:
    """Keyframe labels (``labels``, default the target subject's trained labels, else the
    run's, up to 8; then ``"target"``), their expression codes ``[Dexp]`` and where each
    code comes from. Every label is resolved by :meth:`TrainedRun.trained_frame` (the
    target subject's own trained frame, else another subject's, which the description
    says); a label no subject was trained with is a ``ValueError``, never a silent
    stand-in."""
    name = (target.info or {}).get("subject")
    subject = run.subject_index(name) if name is not None else None
    labels = list(labels)
    if not labels:
        own = run.trained_labels(subject) if subject is not None else []
        labels = (own or run.trained_labels())[:8]
    model = run.model
    codes, sources = [], []
    for label in labels:
        try:
            r = run.trained_frame(subject, label)
        except ValueError as err:
            raise ValueError(f"drive: {err}") from None
        codes.append(model.expression_codes.codes.weight[r.frame].detach())
        sources.append(r.describe())
    return labels + ["target"], codes + [target.z_exp], sources + [target.label]


def blend_keyframes(stops: Sequence[Tensor], steps_between: int) -> Tensor:  # -> [T, D]
    """Codes from ``stops[0]`` through each stop in turn, ``steps_between`` linear steps
    per segment, the last stop included: ``T = steps_between·(len(stops) − 1) + 1``."""
    if len(stops) < 1 or steps_between < 1:
        raise ValueError("blend_keyframes needs >= 1 stop and steps_between >= 1")
    segments = [lerp_codes(a, b, steps_between + 1)[:-1] for a, b in zip(stops[:-1], stops[1:])]
    return torch.cat([*segments, stops[-1][None]])
