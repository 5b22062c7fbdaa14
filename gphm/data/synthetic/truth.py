"""The generator's truth on demand: any identity, any expression, any pose and camera.

The synthetic generator knows every parameter of every image it writes, so an
evaluation can ask it for images that were never written: the row's head with the
neutral expression (its *neutral twin*), or another subject with this frame's
expression (the truth of an expression transfer). :func:`render_truth` is the one
renderer for all of them (the dataset rows themselves go through the same
:func:`~gphm.data.synthetic.render.render_views` call); :class:`DatasetTruth` rebuilds
the generator's subjects, mesh and per-frame expression parameters from a dataset's
``meta.json``.

**Neutral twins on disk** (written by ``gphm-synth``, option ``neutral_twins``): the folder
``OUT/neutral_twins/`` next to the dataset holds ``index.json`` and one RGBA PNG per
twinned row (RGB: the neutral head composited on white, exactly like the row's
``image``; alpha: its ``mask``), named ``<frame:06d>_<camera>.png``. ``index.json``::

    {"version": 1, "selection": "eval" | "all", "expression": "neutral",
     "rows": [{"row": i, "frame": f, "camera": "cam_03", "split": "heldout_combo",
               "file": "000012_cam_03.png", "landmarks_3d": [[x, y, z] × 68]}, ...]}

``row`` is the dataset row index, ``landmarks_3d`` the twin's posed world landmarks
(the row's convention). Datasets written before this have no such folder and still
load; :func:`load_neutral_twins` then says how to regenerate them.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gphm.data.synthetic.deform import identity_vertices
from gphm.data.synthetic.head import HeadTemplate, build_template, make_head, vertex_normals
from gphm.data.synthetic.params import (
    EXPRESSIONS,
    AppearanceParams,
    ExpressionParams,
    IdentityParams,
    ShapeParams,
)
from gphm.data.synthetic.render import CameraRig, HeadPose, render_views
from gphm.errors import UserError
from gphm.io.atomic import atomic_write_text

__all__ = [
    "EXPRESSION_FIELDS",
    "NEUTRAL_TWINS_DIR",
    "TWIN_SELECTIONS",
    "DatasetTruth",
    "NeutralTwins",
    "NeutralTwinWriter",
    "TruthViews",
    "expression_from_dict",
    "expression_vector",
    "identity_from_dict",
    "load_neutral_twins",
    "render_truth",
    "rig_of",
]

#: The expression parameter vector's order: :class:`ExpressionParams`' fields.
EXPRESSION_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ExpressionParams))
NEUTRAL_TWINS_DIR = "neutral_twins"
TWINS_INDEX = "index.json"
TWINS_VERSION = 1
#: ``neutral_twins`` option: none | eval (rows of evaluation splits) | all rows.
TWIN_SELECTIONS = ("none", "eval", "all")


def expression_vector(params: ExpressionParams) -> np.ndarray:  # [len(EXPRESSION_FIELDS)]
    """The activations in :data:`EXPRESSION_FIELDS` order, float64."""
    return np.array([getattr(params, f) for f in EXPRESSION_FIELDS], dtype=np.float64)


def expression_from_dict(values: Mapping[str, Any], where: str = "expression") -> ExpressionParams:
    """:class:`ExpressionParams` from a ``{field: activation}`` record (missing fields 0);
    ``ValueError`` naming ``where`` on an unknown field or a non-number."""
    unknown = sorted(set(values) - set(EXPRESSION_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown expression fields {unknown} (known: "
                         f"{', '.join(EXPRESSION_FIELDS)})")  # fmt: skip
    try:
        return ExpressionParams(**{k: float(v) for k, v in values.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: expression activations must be numbers ({err})") from None


def identity_from_dict(record: Mapping[str, Any]) -> IdentityParams:
    """Inverse of :meth:`IdentityParams.to_dict` (JSON lists back to RGB tuples)."""
    shape = ShapeParams(**{k: float(v) for k, v in record["shape"].items()})
    app = {
        k: (tuple(float(c) for c in v) if isinstance(v, list | tuple) else float(v))
        for k, v in record["appearance"].items()
    }
    return IdentityParams(shape=shape, appearance=AppearanceParams(**app))


def rig_of(
    viewmats: np.ndarray,  # [C, 4, 4] world -> camera (OpenCV)
    Ks: np.ndarray,  # [C, 3, 3] pixels of a resolution × resolution image
    resolution: int,
    names: list[str] | None = None,
) -> CameraRig:
    """Any cameras (e.g. a dataset row's ``viewmat`` / ``K``) as a :class:`CameraRig`;
    its azimuth / elevation are unknown here and left 0 (rendering does not use them)."""
    viewmats = np.asarray(viewmats, dtype=np.float64).reshape(-1, 4, 4)
    Ks = np.asarray(Ks, dtype=np.float64).reshape(-1, 3, 3)
    C = viewmats.shape[0]
    if Ks.shape[0] != C:
        raise ValueError(f"{C} viewmats but {Ks.shape[0]} intrinsics")
    names = names or [f"cam_{i:02d}" for i in range(C)]
    zeros = np.zeros(C)
    return CameraRig(list(names), zeros, zeros.copy(), viewmats, Ks, int(resolution))


@dataclass(frozen=True)
class TruthViews:
    """The generator's render of one head from every camera of a rig."""

    images: np.ndarray  # [C, H, W, 3] uint8 composited on white (as a row's image)
    masks: np.ndarray  # [C, H, W] uint8, 255 = head
    landmarks_3d: np.ndarray  # [68, 3] float32 posed world landmarks


def render_truth(
    template: HeadTemplate,
    identity: IdentityParams,
    expression: ExpressionParams,
    pose: HeadPose,
    rig: CameraRig,
    supersample: int = 2,
    neutral: np.ndarray | None = None,  # [V, 3] identity_vertices(template, identity), reused
) -> TruthViews:
    """Render ``identity`` with ``expression`` at ``pose`` from every camera of ``rig``,
    exactly as the generator renders its rows (same call, same bytes)."""
    head = make_head(template, identity, expression, neutral)
    normals = vertex_normals(head.verts, template.faces)
    views = render_views(
        head.verts, template.faces, normals, head.albedo, pose, rig, supersample=supersample
    )
    return TruthViews(views.images, views.masks, pose.apply(head.landmarks).astype(np.float32))


class DatasetTruth:
    """The generator behind a synthetic dataset, rebuilt from its ``meta.json``.

    ``render(subject, expression, pose, rig)`` renders subject ``subject`` (an index into
    ``meta["subjects"]``) with any expression; :meth:`frame_expression` is the true
    expression of a frame (per-frame ``expression_params`` when the dataset records them,
    else the label's parameters: datasets of older generators).
    """

    def __init__(self, meta: Mapping[str, Any], where: str = "meta.json"):
        gen = meta.get("generator") or {}
        if not str(gen.get("name", "")).startswith("gphm.data.synthetic"):
            raise UserError(
                f"{where}: not a gphm synthetic dataset (generator "
                f"{gen.get('name')!r}); the truth can only be rendered for gphm-synth data"
            )
        self.meta = meta
        self.where = where
        params = gen.get("params", {})
        self.supersample = int(params.get("supersample", 2))
        self.resolution = int(meta["image_size"][0])
        mesh = gen.get("mesh", {})
        frequency = int(mesh.get("frequency", params.get("mesh_frequency", 40)))
        self.template = (
            build_template(frequency, float(mesh["focus"]))
            if "focus" in mesh
            else build_template(frequency)
        )
        try:
            self.identities = [identity_from_dict(r) for r in gen["identities"]]
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"{where}: generator.identities missing or unreadable ({type(err).__name__}: "
                f"{err}); regenerate the dataset with gphm-synth"
            ) from None
        if len(self.identities) != len(meta["subjects"]):
            raise UserError(f"{where}: {len(self.identities)} generator.identities for "
                            f"{len(meta['subjects'])} subjects")  # fmt: skip
        self._labels = {
            name: expression_from_dict(v, f"{where}: generator.expression_params.{name}")
            for name, v in gen.get("expression_params", {}).items()
        }
        self._neutral: dict[int, np.ndarray] = {}

    def frame_expression(self, frame: int) -> ExpressionParams:
        """The true expression parameters of dataset frame ``frame``."""
        record = self.meta["frames"][frame]
        if "expression_params" in record:
            return expression_from_dict(
                record["expression_params"], f"{self.where}: frames[{frame}].expression_params"
            )
        seq = self.meta.get("sequence")
        if seq is not None and "sequence_step" in record:
            return expression_from_dict(seq["expression_params"][record["sequence_step"]])
        label = record["expression"]
        if label in self._labels:
            return self._labels[label]
        if label in EXPRESSIONS:
            return EXPRESSIONS[label]
        raise UserError(f"{self.where}: frames[{frame}] has label {label!r} and no parameters")

    def neutral_vertices(self, subject: int) -> np.ndarray:  # [V, 3], cached per subject
        if subject not in self._neutral:
            if len(self._neutral) > 8:
                self._neutral.clear()
            self._neutral[subject] = identity_vertices(self.template, self.identities[subject])
        return self._neutral[subject]

    def render(
        self, subject: int, expression: ExpressionParams, pose: HeadPose, rig: CameraRig
    ) -> TruthViews:
        """Subject ``subject`` with ``expression`` at ``pose``, every camera of ``rig``."""
        return render_truth(
            self.template, self.identities[subject], expression, pose, rig,
            supersample=self.supersample, neutral=self.neutral_vertices(subject),
        )  # fmt: skip

    def render_row(
        self,
        row: Mapping[str, Any],
        subject: int | None = None,
        expression: ExpressionParams | None = None,
    ) -> TruthViews:
        """The truth at a dataset row's head pose and camera, for ``subject`` (default the
        row's) with ``expression`` (default the row's frame's): one camera. The row's
        pose is float32, so this may differ from the row's own image by rounding (at most
        a level at a few silhouette pixels)."""
        subject = int(row["subject"]) if subject is None else subject
        if expression is None:
            expression = self.frame_expression(int(row["frame"]))
        pose = HeadPose(
            R=np.asarray(row["head_R"], dtype=np.float64),
            T=np.asarray(row["head_T"], dtype=np.float64),
            scale=float(row["head_scale"]),
        )
        rig = rig_of(row["viewmat"], row["K"], self.resolution, [str(row["camera"])])
        return self.render(subject, expression, pose, rig)


def _png_rgba(image: np.ndarray, mask: np.ndarray) -> bytes:
    rgba = np.concatenate([image, mask[..., None]], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class NeutralTwinWriter:
    """Streams neutral twins into ``directory`` (one PNG each); :meth:`close` writes
    ``index.json``. Byte-deterministic for the same calls."""

    def __init__(self, directory: str | Path, selection: str):
        if selection not in TWIN_SELECTIONS[1:]:
            raise ValueError(f"selection must be eval or all, got {selection!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.selection = selection
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        row: int,
        frame: int,
        camera: str,
        split: str,
        image: np.ndarray,  # [H, W, 3] uint8
        mask: np.ndarray,  # [H, W] uint8
        landmarks_3d: np.ndarray,  # [L, 3]
    ) -> None:
        name = f"{frame:06d}_{camera}.png"
        (self.directory / name).write_bytes(_png_rgba(image, mask))
        self.rows.append({
            "row": row, "frame": frame, "camera": camera, "split": split, "file": name,
            "landmarks_3d": np.asarray(landmarks_3d, dtype=np.float32).tolist(),
        })  # fmt: skip

    def close(self) -> None:
        index = {"version": TWINS_VERSION, "selection": self.selection,
                 "expression": "neutral", "rows": self.rows}  # fmt: skip
        atomic_write_text(self.directory / TWINS_INDEX, json.dumps(index) + "\n")


@dataclass(frozen=True)
class NeutralTwins:
    """A dataset's neutral twins: look one up by dataset row index."""

    directory: Path
    selection: str
    by_row: dict[int, dict[str, Any]]  # row index -> index.json record

    def __contains__(self, row: int) -> bool:
        return row in self.by_row

    def get(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image [H, W, 3] uint8, mask [H, W] uint8, landmarks_3d [L, 3] float32)``
        of row ``row``'s twin; ``KeyError`` naming the row if it has none."""
        if row not in self.by_row:
            raise KeyError(
                f"row {row} has no neutral twin in {self.directory} (selection "
                f"{self.selection!r}; regenerate with neutral_twins=all for every row)"
            )
        rec = self.by_row[row]
        path = self.directory / rec["file"]
        try:
            with Image.open(path) as im:
                rgba = np.asarray(im.convert("RGBA"))
        except OSError as err:
            raise UserError(f"{path}: unreadable neutral twin ({err})") from None
        lmk = np.asarray(rec["landmarks_3d"], dtype=np.float32)
        return rgba[..., :3].copy(), rgba[..., 3].copy(), lmk


def load_neutral_twins(dataset_dir: str | Path) -> NeutralTwins:
    """The neutral twins of the dataset at ``dataset_dir``; ``UserError`` (one line) if
    it has none (written by an older generator or with ``neutral_twins=none``)."""
    directory = Path(dataset_dir) / NEUTRAL_TWINS_DIR
    index_path = directory / TWINS_INDEX
    if not index_path.is_file():
        raise UserError(
            f"{dataset_dir}: this dataset has no neutral twins ({index_path} missing); "
            "regenerate it with gphm-synth (neutral_twins=eval, the default, or all)"
        )
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        rows = {int(r["row"]): r for r in index["rows"]}
        version, selection = index["version"], str(index["selection"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{index_path}: unreadable ({type(err).__name__}: {err})") from None
    if version != TWINS_VERSION:
        raise UserError(f"{index_path}: unknown version {version!r} (expected {TWINS_VERSION})")
    return NeutralTwins(directory, selection, rows)
