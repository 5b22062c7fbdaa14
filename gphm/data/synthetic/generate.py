"""The synthetic multi-identity head dataset: plan, render, write (DESIGN.md §6).

One frame per (subject, expression) pair, global frame index ``subject · E + expression``
(= the expression-code index), each rendered from every camera of one shared rig with
its own random head pose. Output: the dataset (via :func:`gphm.data.format.write_dataset`)
plus ``contact_sheet.png`` (subjects × expressions, reference camera) and ``report.json``
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

from gphm.data.format import check_replaceable, write_dataset
from gphm.data.synthetic.config import MakeSyntheticConfig
from gphm.data.synthetic.deform import identity_vertices
from gphm.data.synthetic.head import HeadTemplate, build_template, make_head, vertex_normals
from gphm.data.synthetic.landmarks import NUM_LANDMARKS
from gphm.data.synthetic.params import (
    EXPRESSION_NAMES,
    EXPRESSIONS,
    IdentityParams,
    sample_identity,
)
from gphm.data.synthetic.render import (
    CameraRig,
    HeadPose,
    LightRig,
    camera_rig,
    render_views,
    sample_head_pose,
)
from gphm.data.synthetic.splits import (
    choose_combos,
    choose_heldout_cameras,
    choose_val_cameras,
    split_of,
)
from gphm.io.atomic import atomic_directory, atomic_write_text

__all__ = ["DatasetPlan", "FramePlan", "plan_dataset", "iter_rows", "contact_sheet", "generate"]

# Purposes of the random streams (never reorder: it would change every dataset). The
# validation pairs continue the held-out pairs' permutation of _STREAM_COMBOS (one walk
# over the labels is what keeps every label in training, see splits.choose_combos);
# validation cameras are deterministic, like the held-out ones.
_STREAM_IDENTITY, _STREAM_POSE, _STREAM_COMBOS = 1, 2, 3
CONTACT_SHEET = "contact_sheet.png"
REPORT = "report.json"
SHEET_TILE = 128  # contact-sheet tiles are at most this many pixels wide
SHEET_MAX_SUBJECTS = 32  # the contact sheet shows the first subjects only


@dataclass(frozen=True)
class FramePlan:
    """One (subject, expression) frame."""

    index: int  # global frame index = subject * E + expression
    subject: int
    expression: int  # index into DatasetPlan.expressions
    pose: HeadPose


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

    def meta(self, template: HeadTemplate) -> dict[str, Any]:
        """``meta.json`` content (DESIGN.md §6); generator parameters exclude ``out``."""
        cfg = dataclasses.asdict(self.config)
        for key in ("out", "overwrite"):
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
                {"subject": f.subject, "expression": self.expressions[f.expression]}
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
                "expression_params": {n: EXPRESSIONS[n].to_dict() for n in self.expressions},
            },
        }


def plan_dataset(cfg: MakeSyntheticConfig) -> DatasetPlan:
    """Subjects, expressions, cameras, poses and splits of the dataset ``cfg`` describes."""
    K, E = cfg.num_identities, cfg.num_expressions
    identities = [
        sample_identity(np.random.default_rng([cfg.seed, _STREAM_IDENTITY, s])) for s in range(K)
    ]
    frames = [
        FramePlan(
            index=s * E + e,
            subject=s,
            expression=e,
            pose=sample_head_pose(np.random.default_rng([cfg.seed, _STREAM_POSE, s, e])),
        )
        for s in range(K)
        for e in range(E)
    ]
    rig = camera_rig(cfg.num_views, cfg.resolution)
    reference = rig.most_frontal()
    heldout_combos, val_combos = choose_combos(
        K,
        E,
        cfg.resolved_heldout_combos(),
        cfg.resolved_val_combos(),
        np.random.default_rng([cfg.seed, _STREAM_COMBOS]),
    )
    heldout_cameras = choose_heldout_cameras(cfg.num_views, cfg.resolved_heldout_views(), reference)
    return DatasetPlan(
        config=cfg,
        subjects=[f"synth_{s:03d}" for s in range(K)],
        identities=identities,
        expressions=list(EXPRESSION_NAMES[:E]),
        rig=rig,
        frames=frames,
        heldout_cameras=heldout_cameras,
        heldout_combos=heldout_combos,
        reference_camera=reference,
        val_cameras=choose_val_cameras(
            cfg.num_views, cfg.resolved_val_views(), reference, heldout_cameras
        ),
        val_combos=val_combos,
    )


def iter_rows(
    plan: DatasetPlan,
    template: HeadTemplate,
    on_frame: Callable[[FramePlan, np.ndarray], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Render the plan frame by frame and yield dataset rows (DESIGN.md §6 fields).

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
        head = make_head(template, identity, EXPRESSIONS[label], neutral_cache[frame.subject])
        normals = vertex_normals(head.verts, template.faces)
        views = render_views(
            head.verts, template.faces, normals, head.albedo, frame.pose, rig,
            supersample=plan.config.supersample,
        )  # fmt: skip
        if on_frame is not None:
            on_frame(frame, views.images)
        landmarks = frame.pose.apply(head.landmarks).astype(np.float32)
        for c, cam in enumerate(rig.names):
            yield {
                "subject": frame.subject,
                "subject_name": plan.subjects[frame.subject],
                "frame": frame.index,
                "expression": label,
                "camera": cam,
                "image": views.images[c],
                "mask": views.masks[c],
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
        if frame.subject < SHEET_MAX_SUBJECTS:
            tile = Image.fromarray(images[plan.reference_camera])
            if tile.width > SHEET_TILE:
                tile = tile.resize((SHEET_TILE, SHEET_TILE), Image.Resampling.BOX)
            tiles[(frame.subject, frame.expression)] = np.asarray(tile)

    num_rows = len(plan.frames) * len(plan.rig.names)
    with atomic_directory(out, overwrite=cfg.overwrite) as tmp:
        write_dataset(
            tmp, iter_rows(plan, template, keep_tile), meta, overwrite=True,
            num_rows_hint=num_rows if progress else None,
        )  # fmt: skip
        sheet = contact_sheet(
            tiles, plan.subjects, plan.expressions, plan.heldout_combos, plan.val_combos
        )
        sheet.save(tmp / CONTACT_SHEET, format="PNG", optimize=True)
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
            "seconds": round(time.perf_counter() - t0, 2),
        }
        atomic_write_text(tmp / REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
