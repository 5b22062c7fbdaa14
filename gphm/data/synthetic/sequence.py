"""Synthetic *sequences* with ground truth: every subject performs the same performance.

``make_synthetic.py mode=sequence`` writes a gphm dataset (:mod:`gphm.data.format`) in
which each of K subjects performs **one shared** continuous sequence of F steps, seen by
V cameras. Step ``t`` of one subject and step ``t`` of another show the same expression
parameters and the same head pose, which is what makes cross-identity reenactment
measurable: drive subject B with A's tracked step ``t`` and compare with B's true image
of step ``t``.

* **Expression** (:func:`plan_sequence`): keyframes at evenly spaced steps (about one
  every ``STEPS_PER_KEYFRAME`` steps, the last at step F - 1), the first
  one ``neutral``, the others walking seeded permutations (every label before any
  repeat, never the same label twice in a row) of the non-neutral labels among the first
  ``num_expressions`` of :data:`~gphm.data.synthetic.params.EXPRESSIONS`;
  between keyframes every :class:`ExpressionParams` field is blended with a smoothstep
  (C¹: no velocity jumps at keyframes). A row's ``expression`` label is the keyframe that
  dominates the blend at that step.
* **Head motion**: yaw / pitch / roll are sums of two seeded sinusoids each (at most
  12° / 7° / 4°), translation a small sinusoid (≤ 0.03), unit scale; every curve is 0 at
  step 0, so the first step is the neutral face at the identity pose, which is the frame
  trackers fit the person from.
* **Cameras** (:func:`sequence_rig`): ``cam_00`` looks straight at the face (the driving
  camera a tracker watches); the others alternate left / right up to ±60° azimuth at
  small elevations. The focal length frames the head as the regular synthetic rig does.
* **Subjects** come from their own random stream, so they are never the people of a
  regular synthetic set (of any seed): a sequence dataset is for evaluating and driving.
  With ``identities_from_seed=S`` they are instead the people of the regular
  (``mode=expressions``) set of seed ``S``: subject ``s`` is sampled exactly as that set
  samples its subject ``s`` (its identity stream, :func:`sequence_identities`) and named
  as there (``synth_000``, ...), so a model trained on that set is scored on its own
  training subjects (``split=reenact reenact.targets=[trained]``). ``meta.json`` records
  it (``generator.params.identities_from_seed`` and ``generator.identities_from``).

Global frame index ``subject · F + step``. Every row also carries the optional column
``sequence_step``; ``meta.json`` records the whole sequence under ``"sequence"`` (keyframes,
per-step expression parameters and head pose, the driving camera) and every
``frames[i]`` entry its ``sequence_step`` and full ``expression_params``, so in-between
steps are scoreable against :class:`gphm.data.synthetic.truth.DatasetTruth` renders. With
``neutral_twins`` (default ``eval``: the driving camera's rows; ``all``: every row) the
rows' heads are also rendered neutral into ``neutral_twins/`` (format in :mod:`.truth`).

**Split**: every row is ``heldout_combo``. A sequence's (subject, expression) pairs are
never used in training (the trainer finds no ``train`` rows and says so), and
``scripts/evaluate.py split=reenact`` scores all rows whatever their split.

Output next to the dataset: ``contact_sheet.png`` (subjects × a few steps, driving
camera), ``preview_<subject>.mp4`` (all cameras side by side, one per subject) and
``report.json``. Everything but ``report.json`` (wall-clock time) and the MP4 files
(encoder metadata) is byte-identical for a given configuration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from gphm.data.format import check_replaceable, write_dataset
from gphm.data.synthetic.config import MakeSyntheticConfig
from gphm.data.synthetic.deform import identity_vertices
from gphm.data.synthetic.generate import _STREAM_IDENTITY as _REGULAR_IDENTITY_STREAM
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
    rig_from_angles,
)
from gphm.data.synthetic.truth import (
    EXPRESSION_FIELDS,
    NEUTRAL_TWINS_DIR,
    NeutralTwinWriter,
    render_truth,
    rig_of,
)
from gphm.geometry import axis_angle_to_matrix
from gphm.io.atomic import atomic_directory
from gphm.io.jsonfile import write_report

__all__ = [
    "SequencePlan",
    "SEQUENCE_SPLIT",
    "REGULAR_GENERATOR",
    "DRIVING_CAMERA",
    "blend_expressions",
    "plan_sequence",
    "sequence_rig",
    "sequence_identities",
    "iter_sequence_rows",
    "write_sequence_twins",
    "generate_sequence",
]

# Random streams of a sequence dataset (never reorder). Identities use their own stream
# (not generate._STREAM_IDENTITY): sequence subjects are never a training set's people,
# unless identities_from_seed asks for them (sequence_identities).
_STREAM_IDENTITY, _STREAM_KEYFRAMES, _STREAM_MOTION = 11, 12, 13
SEQUENCE_SPLIT = "heldout_combo"
#: ``generator.name`` of the regular (mode=expressions) sets whose people
#: ``identities_from_seed`` borrows.
REGULAR_GENERATOR = "gphm.data.synthetic"
DRIVING_CAMERA = "cam_00"
STEPS_PER_KEYFRAME = 6  # about one expression change every 6 steps (0.25 s at 24 fps)
MAX_SIDE_AZIMUTH = 60.0
CONTACT_SHEET = "contact_sheet.png"
REPORT = "report.json"
SHEET_STEPS = 8  # columns of the contact sheet
SHEET_TILE = 128
PREVIEW_FPS = 12
MAX_PREVIEWS = 8  # MP4 previews for the first subjects only

_FIELDS = [f.name for f in dataclasses.fields(ExpressionParams)]


def _smoothstep(x: np.ndarray) -> np.ndarray:
    return x * x * (3.0 - 2.0 * x)


def blend_expressions(a: ExpressionParams, b: ExpressionParams, w: float) -> ExpressionParams:
    """``(1 - w)·a + w·b`` field by field (activations stay in [0, 1])."""
    return ExpressionParams(**{f: (1.0 - w) * getattr(a, f) + w * getattr(b, f) for f in _FIELDS})


@dataclass(frozen=True)
class SequencePlan:
    """Everything decided before rendering (a pure function of the config)."""

    config: MakeSyntheticConfig
    subjects: list[str]
    identities: list[IdentityParams]
    labels: list[str]  # the expression labels the keyframes are drawn from (meta expressions)
    keyframes: list[tuple[int, str]]  # (step, label); step 0 is neutral
    expressions: list[ExpressionParams]  # [F] per step
    dominant: list[str]  # [F] label of the keyframe dominating each step
    poses: list[HeadPose]  # [F] per step, shared by every subject
    rig: CameraRig

    @property
    def num_steps(self) -> int:
        return len(self.expressions)

    def frame_index(self, subject: int, step: int) -> int:
        return subject * self.num_steps + step

    def meta(self, template: HeadTemplate) -> dict[str, Any]:
        """``meta.json`` content (docs/architecture.md §8.1) with the sequence under
        ``"sequence"``."""
        cfg = dataclasses.asdict(self.config)
        for key in ("out", "overwrite", "heldout_views", "heldout_combos_per_subject",
                    "val_views", "val_combos_per_subject"):  # fmt: skip
            cfg.pop(key)  # meaningless here: every row is SEQUENCE_SPLIT
        regular = self.config.identities_from_seed
        if regular is None:  # recorded only when set: the default's meta.json is unchanged
            cfg.pop("identities_from_seed")
        R = self.config.resolution
        F = self.num_steps
        meta = {
            "subjects": self.subjects,
            "expressions": self.labels,
            "cameras": self.rig.names,
            "num_frames": len(self.subjects) * F,
            "frames": [
                {
                    "subject": s,
                    "expression": self.dominant[t],
                    "sequence_step": t,
                    "expression_params": self.expressions[t].to_dict(),
                }
                for s in range(len(self.subjects))
                for t in range(F)
            ],
            "landmark_convention": "ibug68",
            "image_size": [R, R],
            "canonical_transform": {"scale": 1.0, "R": np.eye(3).tolist(), "T": [0.0, 0.0, 0.0]},
            "sequence": {
                "num_steps": F,
                "driving_camera": DRIVING_CAMERA,
                "split": SEQUENCE_SPLIT,
                "keyframes": [{"step": t, "expression": n} for t, n in self.keyframes],
                "expression_params": [e.to_dict() for e in self.expressions],
                "head_pose": [
                    {"R": p.R.tolist(), "T": p.T.tolist(), "scale": p.scale} for p in self.poses
                ],
            },
            "generator": {
                "name": "gphm.data.synthetic.sequence",
                "params": cfg,
                "mesh": template.describe(),
                "cameras": {
                    "azimuth_deg": self.rig.azimuth.tolist(),
                    "elevation_deg": self.rig.elevation.tolist(),
                    "reference": DRIVING_CAMERA,
                },
                "lights": {"space": "canonical head", **dataclasses.asdict(LightRig())},
                "identities": [ident.to_dict() for ident in self.identities],
                "expression_params": {n: EXPRESSIONS[n].to_dict() for n in self.labels},
                "expression_fields": list(EXPRESSION_FIELDS),
                "neutral_twins": self.config.neutral_twins,
            },
        }
        if regular is not None:  # whose people perform; absent: the sequence's own
            meta["generator"]["identities_from"] = {
                "generator": REGULAR_GENERATOR, "seed": regular,
                "subjects": "subject s is that set's subject s (same name, same identity)",
            }  # fmt: skip
        return meta


def sequence_rig(num_views: int, resolution: int) -> CameraRig:
    """``cam_00`` frontal (azimuth 0, elevation 0); the others alternate left / right,
    evenly up to ±60° azimuth, at elevations cycling through -8°, 6°, 12°."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    n = num_views - 1
    pairs = max(1, math.ceil(n / 2))
    side = [(-1.0) ** (j + 1) * MAX_SIDE_AZIMUTH * (j // 2 + 1) / pairs for j in range(n)]
    azimuth = np.asarray([0.0, *side])
    elevation = np.asarray([0.0, *[(-8.0, 6.0, 12.0)[j % 3] for j in range(n)]])
    return rig_from_angles(azimuth, elevation, resolution)


def _motion(num_steps: int, rng: np.random.Generator) -> list[HeadPose]:
    """Smooth head motion, exactly the identity pose at step 0 (module docstring)."""
    t = np.arange(num_steps, dtype=np.float64) / 24.0  # seconds at 24 fps
    amplitude = np.array([12.0, 7.0, 4.0])  # yaw, pitch, roll (degrees)
    angles = np.zeros((num_steps, 3))
    for k in range(3):
        freqs = rng.uniform(0.25, 0.6, 2)  # Hz: slow head turns
        weights = rng.dirichlet([2.0, 2.0])
        signs = rng.choice([-1.0, 1.0], 2)
        angles[:, k] = amplitude[k] * sum(
            w * s * np.sin(2.0 * np.pi * f * t) for w, s, f in zip(weights, signs, freqs)
        )
    shift = 0.03 * np.sin(2.0 * np.pi * rng.uniform(0.2, 0.4, 3)[None] * t[:, None])
    shift *= rng.choice([-1.0, 1.0], 3)[None]
    axes = torch.eye(3, dtype=torch.float64)
    poses = []
    for i in range(num_steps):
        yaw, pitch, roll = np.radians(angles[i])
        Rx, Ry, Rz = (
            axis_angle_to_matrix(axes[j] * a).numpy() for j, a in enumerate((pitch, yaw, roll))
        )
        poses.append(HeadPose(R=Ry @ Rx @ Rz, T=shift[i].copy(), scale=1.0))
    return poses


def sequence_identities(cfg: MakeSyntheticConfig) -> tuple[list[str], list[IdentityParams]]:
    """The subjects' names and identities: ``seq_000``, ... from the sequence's own stream,
    or with ``identities_from_seed=S`` the first ``num_identities`` people of the regular
    set of seed ``S``, sampled and named exactly as :func:`~.generate.plan_dataset` does."""
    K, regular = cfg.num_identities, cfg.identities_from_seed
    if regular is None:
        keys, name = [cfg.seed, _STREAM_IDENTITY], "seq_{:03d}"
    else:
        keys, name = [regular, _REGULAR_IDENTITY_STREAM], "synth_{:03d}"
    identities = [sample_identity(np.random.default_rng([*keys, s])) for s in range(K)]
    return [name.format(s) for s in range(K)], identities


def plan_sequence(cfg: MakeSyntheticConfig) -> SequencePlan:
    """Subjects, keyframes, per-step expressions and poses, cameras of ``cfg``."""
    F = cfg.num_frames
    labels = list(EXPRESSION_NAMES[: cfg.num_expressions])
    rng = np.random.default_rng([cfg.seed, _STREAM_KEYFRAMES])
    num_keys = max(2, round((F - 1) / STEPS_PER_KEYFRAME) + 1)
    steps = sorted({round(float(x)) for x in np.linspace(0, F - 1, num_keys)})
    # Walk seeded permutations of the non-neutral labels: every label comes up before any
    # repeats, so even a short sequence shows as many different expressions as it can.
    others = [n for n in labels if n != "neutral"] or labels
    names = ["neutral"]
    while len(names) < len(steps):
        order = [others[i] for i in rng.permutation(len(others))]
        if len(order) > 1 and order[0] == names[-1]:
            order[0], order[-1] = order[-1], order[0]  # never the same label twice in a row
        names.extend(order)
    names = names[: len(steps)]
    keyframes = list(zip(steps, names))
    expressions, dominant = [], []
    for t in range(F):
        j = max(i for i, (s, _) in enumerate(keyframes) if s <= t)
        if j == len(keyframes) - 1:
            expressions.append(EXPRESSIONS[names[j]])
            dominant.append(names[j])
            continue
        (s0, a), (s1, b) = keyframes[j], keyframes[j + 1]
        w = float(_smoothstep(np.asarray((t - s0) / (s1 - s0))))
        expressions.append(blend_expressions(EXPRESSIONS[a], EXPRESSIONS[b], w))
        dominant.append(a if w < 0.5 else b)
    subjects, identities = sequence_identities(cfg)
    return SequencePlan(
        config=cfg,
        subjects=subjects,
        identities=identities,
        labels=labels,
        keyframes=keyframes,
        expressions=expressions,
        dominant=dominant,
        poses=_motion(F, np.random.default_rng([cfg.seed, _STREAM_MOTION])),
        rig=sequence_rig(cfg.num_views, cfg.resolution),
    )


def iter_sequence_rows(
    plan: SequencePlan,
    template: HeadTemplate,
    on_frame: Callable[[int, int, np.ndarray], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Render every (subject, step) from every camera and yield dataset rows.

    ``on_frame(subject, step, images [C, H, W, 3] uint8)`` is called once per frame.
    """
    rig = plan.rig
    for s, identity in enumerate(plan.identities):
        neutral = identity_vertices(template, identity)
        for t in range(plan.num_steps):
            pose = plan.poses[t]
            views = render_truth(
                template, identity, plan.expressions[t], pose, rig,
                supersample=plan.config.supersample, neutral=neutral,
            )  # fmt: skip
            if on_frame is not None:
                on_frame(s, t, views.images)
            landmarks = views.landmarks_3d
            for c, cam in enumerate(rig.names):
                yield {
                    "subject": s,
                    "subject_name": plan.subjects[s],
                    "frame": plan.frame_index(s, t),
                    "expression": plan.dominant[t],
                    "camera": cam,
                    "image": views.images[c],
                    "mask": views.masks[c],
                    "K": rig.Ks[c].astype(np.float32),
                    "viewmat": rig.viewmats[c].astype(np.float32),
                    "head_R": pose.R.astype(np.float32),
                    "head_T": pose.T.astype(np.float32),
                    "head_scale": float(pose.scale),
                    "landmarks_3d": landmarks,
                    "split": SEQUENCE_SPLIT,
                    "sequence_step": t,
                }


def write_sequence_twins(
    directory: Path, plan: SequencePlan, template: HeadTemplate, selection: str
) -> int:
    """Neutral twins of the sequence rows ``selection`` picks (``eval``: the driving
    camera's; ``all``: every row) into ``directory``; returns how many (see :mod:`.truth`)."""
    writer = NeutralTwinWriter(directory, selection)
    rig, C = plan.rig, len(plan.rig.names)
    cams = list(range(C)) if selection == "all" else [rig.names.index(DRIVING_CAMERA)]
    sub = rig_of(rig.viewmats[cams], rig.Ks[cams], rig.resolution, [rig.names[c] for c in cams])
    for s, identity in enumerate(plan.identities):
        neutral = identity_vertices(template, identity)
        for t in range(plan.num_steps):
            views = render_truth(
                template, identity, EXPRESSIONS["neutral"], plan.poses[t], sub,
                supersample=plan.config.supersample, neutral=neutral,
            )  # fmt: skip
            frame = plan.frame_index(s, t)
            for j, c in enumerate(cams):
                writer.add(
                    frame * C + c, frame, rig.names[c], SEQUENCE_SPLIT,
                    views.images[j], views.masks[j], views.landmarks_3d,
                )  # fmt: skip
    writer.close()
    return len(writer.rows)


def _sheet_steps(num_steps: int) -> list[int]:
    n = min(SHEET_STEPS, num_steps)
    return sorted({round(i * (num_steps - 1) / max(1, n - 1)) for i in range(n)})


def sequence_contact_sheet(
    tiles: dict[tuple[int, int], np.ndarray],  # (subject, step) -> [H, W, 3] uint8
    subjects: list[str],
    steps: list[int],
    labels: list[str],  # [F] dominant label per step
) -> Image.Image:
    """Subjects (rows) × steps (columns), driving camera; columns say step and label."""
    H, W = next(iter(tiles.values())).shape[:2]
    rows = sorted({s for s, _ in tiles})
    font = ImageFont.load_default()
    top, left = 28, 64
    sheet = Image.new("RGB", (left + W * len(steps), top + H * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, t in enumerate(steps):
        draw.text((left + j * W + 3, 2), f"step {t}", fill=(0, 0, 0), font=font)
        draw.text((left + j * W + 3, 14), labels[t], fill=(90, 90, 90), font=font)
    for r, s in enumerate(rows):
        draw.text((3, top + r * H + H // 2 - 6), subjects[s], fill=(0, 0, 0), font=font)
        for j, t in enumerate(steps):
            if (s, t) in tiles:
                sheet.paste(Image.fromarray(tiles[(s, t)]), (left + j * W, top + r * H))
    return sheet


def generate_sequence(cfg: MakeSyntheticConfig, progress: bool = True) -> dict[str, Any]:
    """Generate the sequence dataset ``cfg`` describes into ``cfg.out``; returns the
    report. Refuses an existing ``cfg.out`` like :func:`gphm.data.synthetic.generate.generate`."""
    from gphm.io.video import save_mp4  # imageio: only needed here

    t0 = time.perf_counter()
    out = Path(cfg.out)
    check_replaceable(out, cfg.overwrite)
    template = build_template(cfg.mesh_frequency)
    plan = plan_sequence(cfg)
    meta = plan.meta(template)
    sheet_steps = set(_sheet_steps(plan.num_steps))
    tiles: dict[tuple[int, int], np.ndarray] = {}
    previews: dict[int, list[np.ndarray]] = {}

    def keep(subject: int, step: int, images: np.ndarray) -> None:
        if step in sheet_steps and subject < 32:
            tile = Image.fromarray(images[0])
            if tile.width > SHEET_TILE:
                tile = tile.resize((SHEET_TILE, SHEET_TILE), Image.Resampling.BOX)
            tiles[(subject, step)] = np.asarray(tile)
        if subject < MAX_PREVIEWS:
            previews.setdefault(subject, []).append(np.concatenate(list(images), axis=1))

    num_rows = len(plan.subjects) * plan.num_steps * len(plan.rig.names)
    with atomic_directory(out, overwrite=cfg.overwrite) as tmp:
        write_dataset(
            tmp, iter_sequence_rows(plan, template, keep), meta, overwrite=True,
            num_rows_hint=num_rows if progress else None,
        )  # fmt: skip
        sheet = sequence_contact_sheet(tiles, plan.subjects, sorted(sheet_steps), plan.dominant)
        sheet.save(tmp / CONTACT_SHEET, format="PNG", optimize=True)
        twins = 0
        if cfg.neutral_twins != "none":
            twins = write_sequence_twins(tmp / NEUTRAL_TWINS_DIR, plan, template, cfg.neutral_twins)
        preview_names = []
        for s, frames in sorted(previews.items()):
            name = f"preview_{plan.subjects[s]}.mp4"
            save_mp4(tmp / name, frames, fps=PREVIEW_FPS)
            preview_names.append(name)
        written = json.loads((tmp / "meta.json").read_text())
        report = {
            "out": str(out),
            "mode": "sequence",
            "num_rows": written["num_rows"],
            "split_sizes": written["split_sizes"],
            "num_identities": cfg.num_identities,
            "num_frames": cfg.num_frames,
            "num_views": cfg.num_views,
            "resolution": cfg.resolution,
            "seed": cfg.seed,
            "keyframes": [{"step": t, "expression": n} for t, n in plan.keyframes],
            "driving_camera": DRIVING_CAMERA,
            "num_landmarks": NUM_LANDMARKS,
            "contact_sheet": str(out / CONTACT_SHEET),
            "previews": [str(out / n) for n in preview_names],
            "neutral_twins": twins,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        write_report(tmp / REPORT, report)
    return report
