"""The synthetic multi-identity head dataset: plan, render, write (docs/architecture.md §8.1).

One frame per (subject, expression) pair, global frame index ``subject · E + expression``
(= the expression-code index), each rendered from every camera of one shared rig with
its own random head pose. With ``mixtures_per_subject = M`` every subject also gets M
*mixture* frames (a capture session's continuous, mixed expressions: a seeded random
mixture of the labels' expressions, :func:`sample_mixture`), and frame indices become
``subject · (E + M) + j`` (labelled frames first). Cost choices for many identities:
``expressions_per_subject`` renders only some labels per subject and ``views_per_subject``
only some cameras (:func:`choose_subject_labels`, :func:`choose_subject_cameras`); frame
indices then number the rendered frames in order (subject by subject) and rows hold only
the subject's cameras. Every ``meta["frames"][i]`` records
its full ``expression_params``; with ``neutral_twins`` the evaluation rows' heads are also
rendered neutral (:func:`write_neutral_twins`, format in :mod:`.truth`).

Output: the dataset (via :func:`gphm.data.format.write_dataset`) plus
``contact_sheet.png`` (subjects × expressions, reference camera) and ``report.json``
inside the dataset directory, all built in a temporary directory and renamed at the end,
so a failure leaves an existing dataset untouched. Everything except ``report.json``
(which records wall-clock time) is byte-identical for a given configuration.

Random streams are keyed by (seed, purpose, subject, expression), so subject ``k`` looks
the same whatever the number of subjects, and frame poses do not depend on the counts.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gphm.data.format import MIXED_EXPRESSION, check_replaceable, write_dataset
from gphm.data.synthetic.config import MakeSyntheticConfig
from gphm.data.synthetic.deform import identity_vertices
from gphm.data.synthetic.head import HeadTemplate, build_template
from gphm.data.synthetic.landmarks import NUM_LANDMARKS
from gphm.data.synthetic.params import (
    EXPRESSION_NAMES,
    EXPRESSIONS,
    ExpressionParams,
    IdentityParams,
    sample_identity,
)
from gphm.data.synthetic.render import (
    CameraRig,
    HeadPose,
    LightRig,
    camera_rig,
    sample_head_pose,
)
from gphm.data.synthetic.splits import (
    choose_combos,
    choose_heldout_cameras,
    choose_val_cameras,
    split_of,
)
from gphm.data.synthetic.truth import (
    EXPRESSION_FIELDS,
    NEUTRAL_TWINS_DIR,
    NeutralTwinWriter,
    render_truth,
    rig_of,
)
from gphm.io.atomic import atomic_directory
from gphm.io.jsonfile import write_report

__all__ = [
    "MIX_LABEL",
    "DatasetPlan",
    "FramePlan",
    "plan_dataset",
    "choose_subject_labels",
    "choose_subject_cameras",
    "sample_mixture",
    "iter_rows",
    "write_neutral_twins",
    "contact_sheet",
    "generate",
]

# Purposes of the random streams (never reorder: it would change every dataset). The
# validation pairs continue the held-out pairs' permutation of _STREAM_COMBOS (one walk
# over the labels is what keeps every label in training, see splits.choose_combos);
# validation cameras are deterministic, like the held-out ones.
_STREAM_IDENTITY, _STREAM_POSE, _STREAM_COMBOS, _STREAM_MIXTURE = 1, 2, 3, 4
_STREAM_LABELS, _STREAM_CAMERAS = 5, 6  # expressions_per_subject, views_per_subject
#: Pose-stream key offset of mixture frames: (subject, _MIXTURE_POSE_KEY + m) never
#: collides with a label's (subject, e), whatever the number of labels.
_MIXTURE_POSE_KEY = 1_000_000
#: Label of a mixture frame that is not exactly one label's expression.
MIX_LABEL = MIXED_EXPRESSION
CONTACT_SHEET = "contact_sheet.png"
REPORT = "report.json"
SHEET_TILE = 128  # contact-sheet tiles are at most this many pixels wide
SHEET_MAX_SUBJECTS = 32  # the contact sheet shows the first subjects only


@dataclass(frozen=True)
class FramePlan:
    """One frame: a (subject, expression label) pair or a mixture frame."""

    index: int  # global frame index = subject * (E + M) + j
    subject: int
    expression: int  # index into DatasetPlan.expressions (the label, or MIX_LABEL)
    pose: HeadPose
    mixture: ExpressionParams | None = None  # a mixture frame's parameters

    def params(self, labels: list[str]) -> ExpressionParams:
        """The frame's true expression parameters (``labels``: DatasetPlan.expressions)."""
        return self.mixture if self.mixture is not None else EXPRESSIONS[labels[self.expression]]


@dataclass(frozen=True)
class DatasetPlan:
    """Everything decided before rendering (pure function of the config)."""

    config: MakeSyntheticConfig
    subjects: list[str]
    identities: list[IdentityParams]
    expressions: list[str]
    rig: CameraRig
    frames: list[FramePlan]
    heldout_cameras: list[int]
    heldout_combos: set[tuple[int, int]]
    reference_camera: int  # the most frontal camera, always in training
    val_cameras: list[int] = dataclasses.field(default_factory=list)
    val_combos: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    subject_cameras: list[list[int]] = dataclasses.field(default_factory=list)
    """Per subject its rendered cameras (sorted rig indices); empty: every camera."""

    def cameras_of(self, subject: int) -> list[int]:
        """Rig indices of the cameras rendered for ``subject`` (sorted)."""
        if self.subject_cameras:
            return self.subject_cameras[subject]
        return list(range(len(self.rig.names)))

    def num_rows(self) -> int:
        return sum(len(self.cameras_of(f.subject)) for f in self.frames)

    def meta(self, template: HeadTemplate) -> dict[str, Any]:
        """``meta.json`` content (docs/architecture.md §8.1); generator parameters exclude
        ``out``."""
        cfg = dataclasses.asdict(self.config)
        for key in ("out", "overwrite", "identities_from_seed"):  # the last: mode=sequence only
            cfg.pop(key)
        cfg["heldout_views"] = len(self.heldout_cameras)
        cfg["heldout_combos_per_subject"] = self.config.resolved_heldout_combos()
        cfg["val_views"] = len(self.val_cameras)
        cfg["val_combos_per_subject"] = self.config.resolved_val_combos()
        R = self.config.resolution
        return {
            "subjects": self.subjects,
            "expressions": self.expressions,
            "cameras": self.rig.names,
            "num_frames": len(self.frames),
            "frames": [
                {
                    "subject": f.subject,
                    "expression": self.expressions[f.expression],
                    "expression_params": f.params(self.expressions).to_dict(),
                }
                for f in self.frames
            ],
            "landmark_convention": "ibug68",
            "image_size": [R, R],
            "canonical_transform": {
                "scale": 1.0,
                "R": np.eye(3).tolist(),
                "T": [0.0, 0.0, 0.0],
            },
            "generator": {
                "name": "gphm.data.synthetic",
                "params": cfg,
                "mesh": template.describe(),
                "cameras": {
                    "azimuth_deg": self.rig.azimuth.tolist(),
                    "elevation_deg": self.rig.elevation.tolist(),
                    "reference": self.rig.names[self.reference_camera],
                    "heldout": [self.rig.names[c] for c in self.heldout_cameras],
                    "val": [self.rig.names[c] for c in self.val_cameras],
                },
                "heldout_combos": [
                    {"subject": s, "expression": self.expressions[e]}
                    for s, e in sorted(self.heldout_combos)
                ],
                "val_combos": [
                    {"subject": s, "expression": self.expressions[e]}
                    for s, e in sorted(self.val_combos)
                ],
                "lights": {"space": "canonical head", **dataclasses.asdict(LightRig())},
                "identities": [ident.to_dict() for ident in self.identities],
                "expression_params": {
                    n: EXPRESSIONS[n].to_dict() for n in self.expressions if n != MIX_LABEL
                },
                "expression_fields": list(EXPRESSION_FIELDS),
                "mixtures": {
                    "per_subject": self.config.mixtures_per_subject,
                    "intensity": [
                        self.config.mixture_min_intensity,
                        self.config.mixture_max_intensity,
                    ],
                    "max_active": self.config.mixture_max_active,
                    "basis": mixture_basis(self.expressions),
                },
                "neutral_twins": self.config.neutral_twins,
            },
        }


def mixture_basis(labels: list[str]) -> list[str]:
    """The labels a mixture mixes: the non-neutral ones of ``labels``."""
    return [n for n in labels if n not in ("neutral", MIX_LABEL)]


def sample_mixture(
    rng: np.random.Generator,
    basis: list[str],  # labels of EXPRESSIONS to mix
    intensity: tuple[float, float],  # [lo, hi] of each mixed label's weight
    max_active: int,
) -> ExpressionParams:
    """``Σ wᵢ·EXPRESSIONS[bᵢ]`` over 1..``max_active`` distinct labels of ``basis`` (the
    count uniform, then the labels), ``wᵢ ~ U[lo, hi]``; each activation clipped to 1."""
    count = int(rng.integers(1, min(max_active, len(basis)) + 1))
    chosen = rng.choice(len(basis), size=count, replace=False)
    weights = rng.uniform(intensity[0], intensity[1], size=count)
    total = np.zeros(len(EXPRESSION_FIELDS))
    for b, w in zip(chosen, weights):
        params = EXPRESSIONS[basis[int(b)]]
        total += w * np.array([getattr(params, f) for f in EXPRESSION_FIELDS])
    total = np.clip(total, 0.0, 1.0)
    return ExpressionParams(**{f: float(v) for f, v in zip(EXPRESSION_FIELDS, total)})


def _mixture_frames(
    cfg: MakeSyntheticConfig, labels: list[str], untrained: set[tuple[int, int]]
) -> tuple[dict[tuple[int, int], ExpressionParams], list[str]]:
    """``{(subject, m): params}`` of the mixture frames and the labels extended with
    :data:`MIX_LABEL` when a mixture is not exactly a label's expression.

    A subject's mixtures never move a field of its ``untrained`` (held-out or validation)
    labels' expressions (e.g. no smile_l in a mixture when ``smile`` is held out): mixture
    frames are trained, and would leak those pairs' expressions into training.
    """
    intensity = (cfg.mixture_min_intensity, cfg.mixture_max_intensity)
    mixtures = {}
    for s in range(cfg.num_identities):
        held = [labels[e] for t, e in untrained if t == s]
        used = {f for n in held for f, v in EXPRESSIONS[n].to_dict().items() if v}
        basis = [n for n in mixture_basis(labels)
                 if not used & {f for f, v in EXPRESSIONS[n].to_dict().items() if v}]  # fmt: skip
        if not basis and cfg.mixtures_per_subject:
            raise ValueError(
                f"mixtures_per_subject: subject {s} has no expression left to mix (each of "
                f"{mixture_basis(labels)} moves a field of its held-out or validation "
                "labels); raise num_expressions or lower heldout/val_combos_per_subject"
            )
        for m in range(cfg.mixtures_per_subject):
            rng = np.random.default_rng([cfg.seed, _STREAM_MIXTURE, s, m])
            mixtures[(s, m)] = sample_mixture(rng, basis, intensity, cfg.mixture_max_active)
    exact = {EXPRESSIONS[n]: n for n in labels}
    if any(p not in exact for p in mixtures.values()):
        labels = [*labels, MIX_LABEL]
    return mixtures, labels


def plan_dataset(cfg: MakeSyntheticConfig) -> DatasetPlan:
    """Subjects, expressions, cameras, poses and splits of the dataset ``cfg`` describes."""
    K, E, M = cfg.num_identities, cfg.num_expressions, cfg.mixtures_per_subject
    identities = [
        sample_identity(np.random.default_rng([cfg.seed, _STREAM_IDENTITY, s])) for s in range(K)
    ]
    labels = list(EXPRESSION_NAMES[:E])
    heldout_combos, val_combos = choose_combos(
        K,
        E,
        cfg.resolved_heldout_combos(),
        cfg.resolved_val_combos(),
        np.random.default_rng([cfg.seed, _STREAM_COMBOS]),
    )
    mixtures, labels = _mixture_frames(cfg, labels, heldout_combos | val_combos)
    frames: list[FramePlan] = []
    subject_labels = choose_subject_labels(cfg, heldout_combos | val_combos)
    for s in range(K):
        frames += [
            FramePlan(
                index=len(frames) + j,  # s · (E + M) + e when every label is rendered
                subject=s,
                expression=e,
                pose=sample_head_pose(np.random.default_rng([cfg.seed, _STREAM_POSE, s, e])),
            )
            for j, e in enumerate(subject_labels[s])
        ]
        for m in range(M):
            params = mixtures[(s, m)]
            key = _MIXTURE_POSE_KEY + m
            frames.append(FramePlan(
                index=len(frames),
                subject=s,
                expression=next(
                    (e for e in range(E) if EXPRESSIONS[labels[e]] == params), len(labels) - 1
                ),
                pose=sample_head_pose(np.random.default_rng([cfg.seed, _STREAM_POSE, s, key])),
                mixture=params,
            ))  # fmt: skip
    rig = camera_rig(cfg.num_views, cfg.resolution)
    reference = rig.most_frontal()
    heldout_cameras = choose_heldout_cameras(cfg.num_views, cfg.resolved_heldout_views(), reference)
    return DatasetPlan(
        config=cfg,
        subjects=[f"synth_{s:03d}" for s in range(K)],
        identities=identities,
        expressions=labels,
        rig=rig,
        frames=frames,
        heldout_cameras=heldout_cameras,
        heldout_combos=heldout_combos,
        reference_camera=reference,
        val_cameras=choose_val_cameras(
            cfg.num_views, cfg.resolved_val_views(), reference, heldout_cameras
        ),
        val_combos=val_combos,
        subject_cameras=choose_subject_cameras(cfg, reference),
    )


def choose_subject_labels(
    cfg: MakeSyntheticConfig, untrained: set[tuple[int, int]]
) -> list[list[int]]:
    """Per subject the sorted label indices rendered for it (``expressions_per_subject``;
    all ``num_expressions`` by default).

    A subject keeps neutral and its held-out and validation labels (``untrained``: its
    evaluation rows), then fills up with trained labels, least-trained label first over
    the subjects so far (ties broken by a seeded draw per subject), so the trained labels
    are spread evenly. Raises ``ValueError`` if a held-out or validation label is then
    trained by no other subject (the expression-transfer evaluation needs one).
    """
    K, E = cfg.num_identities, cfg.num_expressions
    k = cfg.expressions_per_subject
    if k is None or k >= E:
        return [list(range(E)) for _ in range(K)]
    trained = np.zeros(E, np.int64)
    out = []
    for s in range(K):
        own = {e for t, e in untrained if t == s}
        keep = {0} | own
        rest = [e for e in range(1, E) if e not in keep]
        tie = np.random.default_rng([cfg.seed, _STREAM_LABELS, s]).permutation(len(rest))
        ranked = sorted(range(len(rest)), key=lambda i: (trained[rest[i]], tie[i]))
        chosen = [rest[i] for i in ranked[: max(0, k - len(keep))]]
        trained[[0, *chosen]] += 1
        out.append(sorted(keep | set(chosen)))
    for s, e in sorted(untrained):
        if not any(e in out[t] and (t, e) not in untrained for t in range(K) if t != s):
            raise ValueError(
                f"expressions_per_subject={k}: expression {EXPRESSION_NAMES[e]!r}, held out "
                f"or validation for subject {s}, is trained for no other subject; raise "
                f"expressions_per_subject or num_identities, or lower "
                f"heldout_combos_per_subject / val_combos_per_subject"
            )
    return out


def choose_subject_cameras(cfg: MakeSyntheticConfig, reference: int) -> list[list[int]]:
    """Per subject its sorted camera indices (``views_per_subject``; empty list: all):
    the most frontal camera ``reference`` plus a seeded random choice of the others
    (splits stay by camera, so a subject may have no rows of a held-out camera)."""
    v, V = cfg.views_per_subject, cfg.num_views
    if v is None or v >= V:
        return []
    others = [c for c in range(V) if c != reference]
    out = []
    for s in range(cfg.num_identities):
        rng = np.random.default_rng([cfg.seed, _STREAM_CAMERAS, s])
        pick = rng.choice(len(others), size=v - 1, replace=False)
        out.append(sorted([reference, *(others[int(i)] for i in pick)]))
    return out


def iter_rows(
    plan: DatasetPlan,
    template: HeadTemplate,
    on_frame: Callable[[FramePlan, np.ndarray], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Render the plan frame by frame and yield dataset rows (docs/architecture.md §8.1 fields).

    ``on_frame(frame, images [C, H, W, 3] uint8)`` is called once per rendered frame.
    """
    rig = plan.rig
    neutral_cache: dict[int, np.ndarray] = {}
    for frame in plan.frames:
        identity = plan.identities[frame.subject]
        if frame.subject not in neutral_cache:
            neutral_cache.clear()  # frames are ordered by subject: keep one
            neutral_cache[frame.subject] = identity_vertices(template, identity)
        label = plan.expressions[frame.expression]
        cams = plan.cameras_of(frame.subject)
        views = render_truth(
            template, identity, frame.params(plan.expressions), frame.pose, _sub_rig(rig, cams),
            supersample=plan.config.supersample, neutral=neutral_cache[frame.subject],
        )  # fmt: skip
        if on_frame is not None:
            on_frame(frame, views.images)
        landmarks = views.landmarks_3d
        for j, c in enumerate(cams):
            cam = rig.names[c]
            yield {
                "subject": frame.subject,
                "subject_name": plan.subjects[frame.subject],
                "frame": frame.index,
                "expression": label,
                "camera": cam,
                "image": views.images[j],
                "mask": views.masks[j],
                "K": rig.Ks[c].astype(np.float32),
                "viewmat": rig.viewmats[c].astype(np.float32),
                "head_R": frame.pose.R.astype(np.float32),
                "head_T": frame.pose.T.astype(np.float32),
                "head_scale": float(frame.pose.scale),
                "landmarks_3d": landmarks,
                "split": split_of(
                    frame.subject,
                    frame.expression,
                    c,
                    plan.heldout_cameras,
                    plan.heldout_combos,
                    plan.val_cameras,
                    plan.val_combos,
                ),
            }


def _sub_rig(rig: CameraRig, cams: list[int]) -> CameraRig:
    """``rig`` itself when ``cams`` is all of it, else its cameras ``cams`` in order."""
    if cams == list(range(len(rig.names))):
        return rig
    return rig_of(rig.viewmats[cams], rig.Ks[cams], rig.resolution, [rig.names[c] for c in cams])


def _split(plan: DatasetPlan, frame: FramePlan, camera: int) -> str:
    return split_of(
        frame.subject, frame.expression, camera, plan.heldout_cameras, plan.heldout_combos,
        plan.val_cameras, plan.val_combos,
    )  # fmt: skip


def write_neutral_twins(
    directory: Path, plan: DatasetPlan, template: HeadTemplate, selection: str
) -> int:
    """Render the neutral twin of every row ``selection`` picks (``eval``: rows not in
    ``train``; ``all``) into ``directory`` (format in :mod:`.truth`); returns how many.

    A twin is the row's subject with the neutral expression at the row's head pose and
    camera, rendered by the call that renders the rows (so a neutral row's twin is the
    row, byte for byte). Only the cameras that need a twin are rendered.
    """
    writer = NeutralTwinWriter(directory, selection)
    rig = plan.rig
    neutral_verts: dict[int, np.ndarray] = {}
    first_row = 0  # dataset row of the frame's first camera (rows: frame by frame)
    for frame in plan.frames:
        rendered = plan.cameras_of(frame.subject)
        row_of = {c: first_row + j for j, c in enumerate(rendered)}
        first_row += len(rendered)
        splits = {c: _split(plan, frame, c) for c in rendered}
        cams = [c for c in rendered if selection == "all" or splits[c] != "train"]
        if not cams:
            continue
        if frame.subject not in neutral_verts:
            neutral_verts.clear()  # frames are ordered by subject: keep one
            identity = plan.identities[frame.subject]
            neutral_verts[frame.subject] = identity_vertices(template, identity)
        sub = rig_of(rig.viewmats[cams], rig.Ks[cams], rig.resolution, [rig.names[c] for c in cams])
        views = render_truth(
            template, plan.identities[frame.subject], EXPRESSIONS["neutral"], frame.pose, sub,
            supersample=plan.config.supersample, neutral=neutral_verts[frame.subject],
        )  # fmt: skip
        for j, c in enumerate(cams):
            writer.add(
                row_of[c], frame.index, rig.names[c], splits[c],
                views.images[j], views.masks[j], views.landmarks_3d,
            )  # fmt: skip
    writer.close()
    return len(writer.rows)


def contact_sheet(
    tiles: dict[tuple[int, int], np.ndarray],  # (subject, expression) -> [H, W, 3] uint8
    subjects: list[str],
    expressions: list[str],
    heldout: set[tuple[int, int]] = frozenset(),  # type: ignore[assignment]
    val: set[tuple[int, int]] = frozenset(),  # type: ignore[assignment]
) -> Image.Image:
    """Grid of subjects (rows) × expressions (columns) with labels; held-out pairs are
    framed in red, validation pairs in blue. Only subjects with tiles get a row."""
    H, W = next(iter(tiles.values())).shape[:2]
    rows = sorted({s for s, _ in tiles})
    font = ImageFont.load_default()
    top, left = (28 if val else 16), 64  # a second legend line for validation pairs
    sheet = Image.new("RGB", (left + W * len(expressions), top + H * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((3, 2), "held out", fill=(220, 40, 40), font=font)
    if val:
        draw.text((3, 14), "val", fill=(40, 90, 220), font=font)
    for e, name in enumerate(expressions):
        draw.text((left + e * W + 3, 2), name, fill=(0, 0, 0), font=font)
    for r, s in enumerate(rows):
        draw.text((3, top + r * H + H // 2 - 6), subjects[s], fill=(0, 0, 0), font=font)
        for e in range(len(expressions)):
            if (s, e) not in tiles:
                continue
            x0, y0 = left + e * W, top + r * H
            sheet.paste(Image.fromarray(tiles[(s, e)]), (x0, y0))
            if (s, e) in heldout:
                draw.rectangle([x0, y0, x0 + W - 1, y0 + H - 1], outline=(220, 40, 40))
            elif (s, e) in val:
                draw.rectangle([x0, y0, x0 + W - 1, y0 + H - 1], outline=(40, 90, 220))
    return sheet


def generate(cfg: MakeSyntheticConfig, progress: bool = True) -> dict[str, Any]:
    """Generate the dataset ``cfg`` describes into ``cfg.out``; returns the report.

    Raises ``FileExistsError`` (before any work) if ``cfg.out`` exists and
    ``cfg.overwrite`` is false, or if it is anything but an empty directory or a gphm
    dataset (``overwrite`` never replaces a folder of user files).
    """
    if cfg.mode == "sequence":  # a shared performance per subject: see .sequence
        from gphm.data.synthetic.sequence import generate_sequence

        return generate_sequence(cfg, progress)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    check_replaceable(out, cfg.overwrite)
    template = build_template(cfg.mesh_frequency)
    plan = plan_dataset(cfg)
    meta = plan.meta(template)
    tiles: dict[tuple[int, int], np.ndarray] = {}

    def keep_tile(frame: FramePlan, images: np.ndarray) -> None:
        if frame.subject < SHEET_MAX_SUBJECTS and frame.mixture is None:
            ref = plan.cameras_of(frame.subject).index(plan.reference_camera)
            tile = Image.fromarray(images[ref])
            if tile.width > SHEET_TILE:
                tile = tile.resize((SHEET_TILE, SHEET_TILE), Image.Resampling.BOX)
            tiles[(frame.subject, frame.expression)] = np.asarray(tile)

    num_rows = plan.num_rows()
    with atomic_directory(out, overwrite=cfg.overwrite) as tmp:
        write_dataset(
            tmp, iter_rows(plan, template, keep_tile), meta, overwrite=True,
            num_rows_hint=num_rows if progress else None,
        )  # fmt: skip
        labels = [n for n in plan.expressions if n != MIX_LABEL]  # mixtures have no column
        sheet = contact_sheet(tiles, plan.subjects, labels, plan.heldout_combos, plan.val_combos)
        sheet.save(tmp / CONTACT_SHEET, format="PNG", optimize=True)
        twins = 0
        if cfg.neutral_twins != "none":
            twins = write_neutral_twins(tmp / NEUTRAL_TWINS_DIR, plan, template, cfg.neutral_twins)
        written = json.loads((tmp / "meta.json").read_text())
        report = {
            "out": str(out),
            "num_rows": written["num_rows"],
            "split_sizes": written["split_sizes"],
            "num_identities": cfg.num_identities,
            "num_expressions": cfg.num_expressions,
            "num_views": cfg.num_views,
            "resolution": cfg.resolution,
            "seed": cfg.seed,
            "expressions": plan.expressions,
            "heldout_cameras": [plan.rig.names[c] for c in plan.heldout_cameras],
            "num_heldout_combos": len(plan.heldout_combos),
            "val_cameras": [plan.rig.names[c] for c in plan.val_cameras],
            "num_val_combos": len(plan.val_combos),
            "mesh_vertices": template.num_vertices,
            "mesh_faces": int(template.faces.shape[0]),
            "num_landmarks": NUM_LANDMARKS,
            "contact_sheet": str(out / CONTACT_SHEET),
            "num_mixture_frames": sum(f.mixture is not None for f in plan.frames),
            "neutral_twins": twins,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        write_report(tmp / REPORT, report)
    return report
