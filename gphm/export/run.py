"""Export an identity of a trained run: a training subject or a fitted avatar.

Every trained expression label of the run is exported. A training subject's label is
its own trained frame with that label, else another subject's
(:meth:`TrainedRun.trained_frame`: only trained codes, the donor recorded in the
report); a fitted avatar takes the lowest-index subject's. The neutral expression is
the label ``neutral`` when the run has one trained, else the first trained label (the
report says so); ``neutral=LABEL`` chooses another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from gphm.export.animatable import ExportReport, export_animatable
from gphm.export.axes import DEFAULT_UP
from gphm.export.fidelity import FidelityOptions
from gphm.fitting.avatar import Avatar, is_avatar_dir
from gphm.models.gaussian_head import GaussianHead
from gphm.models.runs import TrainedRun

__all__ = ["ExportIdentity", "resolve_identity", "trained_expressions", "export_run"]

NEUTRAL = "neutral"


@dataclass
class ExportIdentity:
    name: str
    kind: str  # "subject" | "avatar"
    z_id: Tensor  # [Did]
    model: GaussianHead  # the run's model, or an avatar's personalised copy
    subject: int | None = None  # training subject index (None for an avatar)
    point_offsets: Tensor | None = None  # [N, 3] avatar offsets
    info: dict[str, Any] = field(default_factory=dict)


def resolve_identity(run: TrainedRun, identity: str | int | Path | Avatar) -> ExportIdentity:
    """A subject name or index, a fitted avatar directory, or a loaded :class:`Avatar`."""
    if not isinstance(run.model, GaussianHead):
        raise ValueError(
            f"{run.path}: holds a {type(run.model).__name__}; an animatable export needs a "
            "Gaussian head (train stage=gaussian or stage=all)"
        )
    if isinstance(identity, (str, Path)) and Path(identity).is_dir():
        path = Path(identity)
        if not is_avatar_dir(path):
            raise FileNotFoundError(f"{path}: a directory but not a fitted avatar (no avatar.json)")
        avatar = Avatar.load(path, run.model)
        info = {"avatar": str(path.resolve()), "checkpoint": avatar.checkpoint}
        return _from_avatar(run, avatar, path.name, info)
    if isinstance(identity, Avatar):
        return _from_avatar(run, identity, "avatar", {"checkpoint": identity.checkpoint})
    try:
        s = run.trained_subject(str(identity) if isinstance(identity, Path) else identity)
    except ValueError as err:
        raise ValueError(
            f"subject={identity}: neither a fitted avatar directory nor a training subject ({err})"
        ) from None
    z_id = run.model.identity_codes.codes.weight[s].detach()
    return ExportIdentity(run.subjects[s], "subject", z_id, run.model, subject=s,
                          info={"subject": run.subjects[s]})  # fmt: skip


def _from_avatar(run: TrainedRun, avatar: Avatar, name: str, info: dict) -> ExportIdentity:
    model = avatar.personalised(run.model)
    return ExportIdentity(name, "avatar", avatar.z_id, model, None, avatar.point_offsets,
                          info | {"fine_tuned_colour": avatar.f_col is not None})  # fmt: skip


def trained_expressions(
    run: TrainedRun, subject: int | None
) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """``label -> z_exp`` [Dexp] for every trained label, and ``label -> provenance``."""
    codes: dict[str, Tensor] = {}
    info: dict[str, dict[str, Any]] = {}
    weight = run.model.expression_codes.codes.weight
    for label in run.trained_labels():
        r = run.trained_frame(subject, label)
        codes[label] = weight[r.frame].detach()
        info[label] = {"frame": r.frame, "subject": r.subject_name}
        if r.borrowed:
            info[label]["expression_from"] = r.describe()
        if r.note:
            info[label]["note"] = r.note
    return codes, info


def export_run(
    run: TrainedRun,
    identity: str | int | Path | Avatar,
    out_dir: str | Path,
    *,
    neutral: str | None = None,
    num_components: int = 8,
    sh_degree: int = 3,
    overwrite: bool = False,
    fidelity: FidelityOptions | None | bool = True,
    up: str = DEFAULT_UP,
) -> ExportReport:
    """:func:`export_animatable` of ``identity`` with every trained label of ``run``.

    ``fidelity``: True measures the curve at the run's output size (``hr_size``, else
    256 px), False/None skips it, or pass :class:`FidelityOptions`. ``up``: ``"+y"``
    (canonical space) or ``"-y"`` (y-down viewers; :mod:`gphm.export.axes`)."""
    who = resolve_identity(run, identity)
    codes, provenance = trained_expressions(run, who.subject)
    if not codes:
        raise ValueError(f"{run.path}: the run records no trained frame to export")
    note = None
    if neutral is None:
        if NEUTRAL in codes:
            neutral = NEUTRAL
        else:
            neutral = next(iter(codes))
            note = (f"the run has no trained {NEUTRAL!r} label; the first trained label "
                    f"{neutral!r} is the neutral expression")  # fmt: skip
    elif neutral not in codes:
        raise ValueError(
            f"neutral={neutral}: not a trained expression label; trained: {list(codes)}"
        )
    if fidelity is True:
        fidelity = FidelityOptions(size=int(run.extra.get("hr_size") or 256))
    elif fidelity is False:
        fidelity = None
    metadata: dict[str, Any] = {
        "checkpoint": str(run.path),
        "identity": {"name": who.name, "kind": who.kind, **who.info},
        "expressions": provenance,
    }
    if note:
        metadata["neutral_note"] = note
    return export_animatable(
        who.model, who.z_id, out_dir, codes, neutral=neutral, point_offsets=who.point_offsets,
        num_components=num_components, sh_degree=sh_degree, overwrite=overwrite,
        fidelity=fidelity, metadata=metadata, up=up,
    )  # fmt: skip
