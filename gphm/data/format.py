"""The gphm dataset format (docs/architecture.md §8.1): a Hugging Face ``datasets`` dataset saved
with ``save_to_disk``, plus a ``meta.json`` next to its arrow files.

One row per (subject, frame, camera)::

    subject       int32    subject id, index into meta["subjects"]
    subject_name  string   == meta["subjects"][subject]
    frame         int32    global frame index (= expression-code index), < meta["num_frames"]
    expression    string   == meta["frames"][frame]["expression"]
    camera        string   one of meta["cameras"]
    image         Image    RGB PNG, [H, W] == meta["image_size"]
    mask          Image    L (8-bit) PNG, same size; 255 = head, 0 = background
    K             [3, 3]   float32 intrinsics in pixels of `image`, pixel centres at i + 0.5
    viewmat       [4, 4]   float32 world -> camera, OpenCV (x right, y down, z forward)
    head_R        [3, 3]   float32 head rotation,     x_world = s·R·x_canonical + T
    head_T        [3]      float32 head translation
    head_scale    float32  head scale s > 0
    landmarks_3d  [L, 3]   float32 world landmarks (L fixed per dataset, meta["num_landmarks"])
    split         string   train | val_view | val_combo | heldout_view | heldout_combo

Optional columns (:data:`OPTIONAL_FEATURES`; a dataset has one of them in every row or in
none, and datasets without them read as before)::

    sequence_step int32    step of a shared performance (``make_synthetic.py
                           mode=sequence``): rows of different subjects with the same
                           step show the same expression and head motion

Splits: ``*_view`` rows are training frames seen from cameras never used in training,
``*_combo`` rows are (subject, expression) pairs never used in training (all cameras).
``val_*`` splits are for choosing defaults and ablations, ``heldout_*`` are only
reported. A pair's rows are combo rows whatever the camera (combos win over cameras).

Every row's camera must see the head: the head centre ``head_T`` in front of the camera
and the projected head (a sphere of radius ``head_scale`` about it, or any landmark)
overlapping the image. Datasets are checked again on read (:func:`load_dataset_dir`):
non-finite cameras, poses or landmarks are refused, naming the row.

``landmarks_3d`` is an ``Array2D(shape=(None, 3))``: datasets 5.x supports a dynamic
first dimension, so one module-level :data:`FEATURES` serves every landmark convention;
the writer still enforces one L per dataset and records it in ``meta["num_landmarks"]``.

Writing is atomic (built in a temporary sibling directory and renamed) and
byte-deterministic: images are encoded to PNG by us (fixed settings), rows are streamed
through an ``ArrowWriter`` into a scratch file, and the dataset fingerprint stored in
``state.json`` is a hash of the encoded content instead of a random id.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Array2D, Features, Image, Sequence, Value
from datasets.arrow_writer import ArrowWriter
from datasets.table import MemoryMappedTable
from PIL import Image as PILImage

from gphm.io.atomic import atomic_directory

__all__ = [
    "FEATURES",
    "MIXED_EXPRESSION",
    "FORMAT_VERSION",
    "META_KEYS",
    "OPTIONAL_FEATURES",
    "NUMERIC_FIELDS",
    "SPLITS",
    "camera_sees_head",
    "camera_split",
    "check_camera_lists",
    "check_replaceable",
    "is_dataset_dir",
    "load_dataset_dir",
    "validate_meta",
    "write_dataset",
]

FORMAT_VERSION = 1
SPLITS = ("train", "val_view", "val_combo", "heldout_view", "heldout_combo")
#: ``expression`` of a frame whose expression is a mixture of several basis expressions
#: (or one at a non-standard intensity): it names no label, so no two such frames are
#: assumed to share an expression (training groups codes by label, combos swap by label).
MIXED_EXPRESSION = "mix"
#: Columns whose values must all be finite (checked on write and again on read).
NUMERIC_FIELDS = ("K", "viewmat", "head_R", "head_T", "head_scale", "landmarks_3d")

FEATURES = Features(
    {
        "subject": Value("int32"),
        "subject_name": Value("string"),
        "frame": Value("int32"),
        "expression": Value("string"),
        "camera": Value("string"),
        "image": Image(),
        "mask": Image(),
        "K": Array2D(shape=(3, 3), dtype="float32"),
        "viewmat": Array2D(shape=(4, 4), dtype="float32"),
        "head_R": Array2D(shape=(3, 3), dtype="float32"),
        "head_T": Sequence(Value("float32"), length=3),
        "head_scale": Value("float32"),
        "landmarks_3d": Array2D(shape=(None, 3), dtype="float32"),
        "split": Value("string"),
    }
)

#: Columns a dataset may add to :data:`FEATURES`, all rows or none (checked by the writer).
OPTIONAL_FEATURES = {"sequence_step": Value("int32")}

#: Keys every meta.json must have (the writer adds ``num_rows``, ``num_landmarks`` and
#: ``split_sizes``; any other key is kept as given).
META_KEYS = (
    "format_version",
    "subjects",
    "expressions",
    "cameras",
    "num_frames",
    "frames",
    "landmark_convention",
    "image_size",
    "canonical_transform",
    "generator",
)

_ROT_TOL = 1e-3  # orthonormality tolerance for rotations stored as float32
_WRITER_BATCH = 64  # rows per arrow record batch: bounds memory for large images
_META_NAME = "meta.json"


# ----------------------------------------------------------------------------- splits


def check_camera_lists(heldout: list[str], val: list[str]) -> None:
    """Refuse (``ValueError``) a camera that is both held out and for validation."""
    both = sorted(set(heldout) & set(val))
    if both:
        raise ValueError(
            f"cameras {both} are in both heldout_cameras={list(heldout)} and "
            f"val_cameras={list(val)}: a camera is either held out or for validation"
        )


def camera_split(camera: str, heldout: list[str], val: list[str]) -> str:
    """Split of a row by its camera alone: held-out cameras win over validation ones."""
    if camera in heldout:
        return "heldout_view"
    return "val_view" if camera in val else "train"


# ----------------------------------------------------------------------------- meta


def _jsonable(obj: Any) -> Any:
    """Plain-JSON copy of ``obj`` (numpy arrays/scalars, tuples and paths converted)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch tensor
        return _jsonable(obj.detach().cpu().tolist())
    return obj


def _is_rotation(R: np.ndarray, tol: float = _ROT_TOL) -> bool:
    return bool(
        np.all(np.isfinite(R))
        and np.abs(R @ R.T - np.eye(3)).max() < tol
        and abs(np.linalg.det(R) - 1.0) < tol
    )


def _unique_names(value: Any, key: str, where: str, allow_empty: bool = False) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: '{key}' must be a list of strings, got {value!r:.80}")
    if not value and not allow_empty:
        raise ValueError(f"{where}: '{key}' must not be empty")
    dups = sorted({v for v in value if value.count(v) > 1})
    if dups:
        raise ValueError(f"{where}: '{key}' has duplicate names {dups}")
    return value


def validate_meta(meta: Mapping[str, Any], where: str = "meta") -> dict[str, Any]:
    """Check ``meta`` and return a normalised plain-JSON copy (the input is not changed).

    ``format_version`` defaults to :data:`FORMAT_VERSION` when absent. ``frames[i]
    ["subject"]`` may be a subject id or a subject name; the copy holds ids. Raises
    ``ValueError`` naming ``where`` and the key on any problem.
    """
    if not isinstance(meta, Mapping):
        raise ValueError(f"{where}: must be a dict, got {type(meta).__name__}")
    m = _jsonable(meta)
    m.setdefault("format_version", FORMAT_VERSION)
    missing = [k for k in META_KEYS if k not in m]
    if missing:
        raise ValueError(f"{where}: missing keys {missing} (required: {list(META_KEYS)})")
    if m["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{where}: unknown format_version {m['format_version']!r} "
            f"(this gphm reads version {FORMAT_VERSION})"
        )
    subjects = _unique_names(m["subjects"], "subjects", where)
    expressions = _unique_names(m["expressions"], "expressions", where, allow_empty=True)
    _unique_names(m["cameras"], "cameras", where)
    n = m["num_frames"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{where}: 'num_frames' must be a positive int, got {n!r}")
    frames = m["frames"]
    if not isinstance(frames, list) or len(frames) != n:
        got = len(frames) if isinstance(frames, list) else type(frames).__name__
        raise ValueError(f"{where}: 'frames' must be a list of num_frames={n} entries, got {got}")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "subject" not in fr or "expression" not in fr:
            raise ValueError(f"{where}: frames[{i}] must be a dict with 'subject' and 'expression'")
        s = fr["subject"]
        if isinstance(s, str) and s in subjects:
            fr["subject"] = subjects.index(s)
        elif not (isinstance(s, int) and not isinstance(s, bool) and 0 <= s < len(subjects)):
            raise ValueError(
                f"{where}: frames[{i}].subject {s!r} is neither a subject id in "
                f"[0, {len(subjects)}) nor a name in 'subjects'"
            )
        if fr["expression"] not in expressions:
            raise ValueError(
                f"{where}: frames[{i}].expression {fr['expression']!r} is not in 'expressions'"
            )
    if not isinstance(m["landmark_convention"], str) or not m["landmark_convention"]:
        raise ValueError(f"{where}: 'landmark_convention' must be a non-empty string")
    size = m["image_size"]
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"{where}: 'image_size' must be [H, W] positive ints, got {size!r}")
    ct = m["canonical_transform"]
    if not isinstance(ct, dict) or not {"scale", "R", "T"} <= set(ct):
        raise ValueError(f"{where}: 'canonical_transform' must be a dict with scale, R, T")
    try:
        scale = float(ct["scale"])
        R = np.asarray(ct["R"], dtype=np.float64)
        T = np.asarray(ct["T"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: 'canonical_transform' is not numeric ({err})") from None
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{where}: canonical_transform.scale must be > 0, got {scale}")
    if R.shape != (3, 3) or not _is_rotation(R):
        raise ValueError(f"{where}: canonical_transform.R must be a 3x3 rotation matrix")
    if T.shape != (3,) or not np.all(np.isfinite(T)):
        raise ValueError(f"{where}: canonical_transform.T must be 3 finite numbers")
    if not isinstance(m["generator"], dict):
        raise ValueError(f"{where}: 'generator' must be a dict")
    for key, value in m.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: '{key}' is not JSON-serialisable ({err})") from None
    return m


# ----------------------------------------------------------------------------- rows


class _RowChecker:
    """Validates and encodes rows against a validated meta; errors name row and field."""

    def __init__(self, meta: dict[str, Any]):
        self.meta = meta
        self.hw = tuple(meta["image_size"])
        self.cameras = set(meta["cameras"])
        self.num_landmarks: int | None = None
        self.seen: dict[tuple[int, str], int] = {}
        self.split_sizes = dict.fromkeys(SPLITS, 0)
        self.where = ""  # " (subject ..., camera ...)" once the row's names are checked
        self.optional: tuple[str, ...] | None = None  # optional columns, set by the first row

    def fail(self, i: int, field: str, msg: str) -> ValueError:
        return ValueError(f"row {i}: field '{field}' {msg}{self.where}")

    def _int(self, i: int, row: Mapping, key: str, hi: int) -> int:
        v = row[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise self.fail(i, key, f"must be an int, got {type(v).__name__}")
        if not 0 <= int(v) < hi:
            raise self.fail(i, key, f"is {int(v)}, expected in [0, {hi})")
        return int(v)

    def _str(self, i: int, row: Mapping, key: str) -> str:
        v = row[key]
        if not isinstance(v, str):
            raise self.fail(i, key, f"must be a str, got {type(v).__name__}")
        return v

    def _array(self, i: int, row: Mapping, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
        v = row[key]
        if hasattr(v, "detach"):  # torch tensor
            v = v.detach().cpu().numpy()
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise self.fail(i, key, f"is not numeric ({type(v).__name__})") from None
        if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
            want = tuple("L" if s is None else s for s in shape)
            raise self.fail(i, key, f"has shape {a.shape}, expected {want}".replace("'", ""))
        if not np.all(np.isfinite(a)):
            raise self.fail(i, key, "has non-finite values")
        return a

    def _png(self, i: int, row: Mapping, key: str, mode: str) -> bytes:
        v = row[key]
        if isinstance(v, PILImage.Image):
            img = v
            if mode == "L" and img.mode == "1":
                img = img.convert("L")
            if img.mode != mode:
                raise self.fail(i, key, f"is a PIL image of mode {img.mode}, expected {mode}")
        elif isinstance(v, np.ndarray):
            a = v
            if mode == "L" and a.ndim == 3 and a.shape[-1] == 1:
                a = a[..., 0]
            if mode == "L" and a.dtype == np.bool_:
                a = a.astype(np.uint8) * 255
            want = "[H, W, 3]" if mode == "RGB" else "[H, W]"
            if a.dtype != np.uint8 or a.ndim != (3 if mode == "RGB" else 2):
                raise self.fail(i, key, f"is {a.dtype} {a.shape}, expected uint8 {want}")
            if mode == "RGB" and a.shape[-1] != 3:
                raise self.fail(i, key, f"has shape {a.shape}, expected uint8 {want}")
            img = PILImage.fromarray(np.ascontiguousarray(a))  # uint8: RGB or L
        else:
            raise self.fail(i, key, f"must be a PIL image or uint8 array, got {type(v).__name__}")
        if (img.height, img.width) != self.hw:
            raise self.fail(
                i, key, f"is {img.height}x{img.width}, expected meta image_size {list(self.hw)}"
            )
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=6, optimize=False)
        return buf.getvalue()

    def __call__(self, i: int, row: Any) -> dict[str, Any]:
        if not isinstance(row, Mapping):
            raise ValueError(f"row {i}: must be a dict, got {type(row).__name__}")
        missing = [k for k in FEATURES if k not in row]
        extra = sorted(str(k) for k in row if k not in FEATURES and k not in OPTIONAL_FEATURES)
        if missing or extra:
            raise ValueError(f"row {i}: missing fields {missing}, unexpected fields {extra}")
        optional = tuple(k for k in OPTIONAL_FEATURES if k in row)
        if self.optional is None:
            self.optional = optional
        elif optional != self.optional:
            raise ValueError(
                f"row {i}: optional fields {list(optional)}, earlier rows have "
                f"{list(self.optional)} (an optional column is in every row or in none)"
            )
        steps = {k: self._int(i, row, k, 2**31 - 1) for k in optional}
        m = self.meta
        self.where = ""
        subject = self._int(i, row, "subject", len(m["subjects"]))
        frame = self._int(i, row, "frame", m["num_frames"])
        name = self._str(i, row, "subject_name")
        if name != m["subjects"][subject]:
            raise self.fail(
                i,
                "subject_name",
                f"is {name!r}, meta subjects[{subject}] is {m['subjects'][subject]!r}",
            )
        fr = m["frames"][frame]
        if fr["subject"] != subject:
            raise self.fail(
                i,
                "subject",
                f"is {subject}, meta frames[{frame}] belongs to subject {fr['subject']}",
            )
        expression = self._str(i, row, "expression")
        if expression != fr["expression"]:
            raise self.fail(
                i, "expression", f"is {expression!r}, meta frames[{frame}] has {fr['expression']!r}"
            )
        camera = self._str(i, row, "camera")
        if camera not in self.cameras:
            raise self.fail(i, "camera", f"{camera!r} is not in meta cameras")
        if (frame, camera) in self.seen:
            raise self.fail(
                i,
                "camera",
                f"(frame {frame}, camera {camera!r}) already "
                f"written by row {self.seen[frame, camera]}",
            )
        self.where = f" (subject {name!r}, camera {camera!r})"
        split = self._str(i, row, "split")
        if split not in SPLITS:
            raise self.fail(i, "split", f"is {split!r}, expected one of {list(SPLITS)}")

        K = self._array(i, row, "K", (3, 3))
        if not (K[0, 0] > 0 and K[1, 1] > 0 and K[1, 0] == 0 and np.allclose(K[2], [0, 0, 1])):
            raise self.fail(i, "K", "must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
        viewmat = self._array(i, row, "viewmat", (4, 4))
        if not np.allclose(viewmat[3], [0, 0, 0, 1]) or not _is_rotation(viewmat[:3, :3]):
            raise self.fail(i, "viewmat", "must be rigid: rotation block and last row [0,0,0,1]")
        head_R = self._array(i, row, "head_R", (3, 3))
        if not _is_rotation(head_R):
            raise self.fail(i, "head_R", "must be a rotation matrix (orthonormal, det +1)")
        head_T = self._array(i, row, "head_T", (3,))
        head_scale = self._array(i, row, "head_scale", ())
        if not head_scale > 0:
            raise self.fail(i, "head_scale", f"is {float(head_scale)}, expected > 0")
        lmk = self._array(i, row, "landmarks_3d", (None, 3))
        if self.num_landmarks is None:
            if len(lmk) == 0:
                raise self.fail(i, "landmarks_3d", "is empty, expected [L, 3] with L >= 1")
            self.num_landmarks = len(lmk)
        elif len(lmk) != self.num_landmarks:
            raise self.fail(
                i,
                "landmarks_3d",
                f"has {len(lmk)} landmarks, earlier rows have {self.num_landmarks}",
            )
        problem = camera_sees_head(K, viewmat, head_T, float(head_scale), lmk, self.hw)
        if problem:
            raise self.fail(i, "viewmat", f"camera does not see the head: {problem}")

        self.seen[frame, camera] = i
        self.split_sizes[split] += 1
        f32 = np.float32
        return {
            "subject": subject,
            "subject_name": name,
            "frame": frame,
            "expression": expression,
            "camera": camera,
            "image": {"bytes": self._png(i, row, "image", "RGB"), "path": None},
            "mask": {"bytes": self._png(i, row, "mask", "L"), "path": None},
            "K": K.astype(f32),
            "viewmat": viewmat.astype(f32),
            "head_R": head_R.astype(f32),
            "head_T": head_T.astype(f32),
            "head_scale": f32(head_scale),
            "landmarks_3d": lmk.astype(f32),
            "split": split,
            **steps,
        }


def camera_sees_head(
    K: np.ndarray,  # [3, 3] intrinsics in pixels of the image
    viewmat: np.ndarray,  # [4, 4] world -> camera (OpenCV, +z forward)
    head_T: np.ndarray,  # [3] head centre in world
    head_scale: float,  # head scale s: the canonical head (about ±1) has radius ~s in world
    landmarks: np.ndarray,  # [L, 3] world landmarks
    hw: tuple[int, int],  # (H, W) of the image
) -> str:
    """Why the camera cannot see the head, or ``""`` when it can.

    The head centre must be in front of the camera, and the head must overlap the image:
    the bounding disc of a sphere of radius ``head_scale`` about the centre (the
    canonical head lies within about ±1) intersects the image, or a landmark in front of
    the camera projects inside it. Deliberately lenient: it catches wrong conventions
    (inverted or camera-to-world ``viewmat``, a flipped axis), not tight framing.
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    c = R @ head_T + t
    if not c[2] > 0:
        return (
            f"head centre is behind it (camera-space z = {c[2]:.4g}; viewmat must map "
            "world -> camera, +z forward)"
        )
    H, W = hw
    (fx, s, cx), (_, fy, cy) = K[0], K[1]
    u, v = fx * c[0] / c[2] + s * c[1] / c[2] + cx, fy * c[1] / c[2] + cy
    r = max(fx, fy) * head_scale / max(c[2] - head_scale, 1e-3 * c[2])  # generous radius
    if -r <= u <= W + r and -r <= v <= H + r:
        return ""
    x = landmarks @ R.T + t
    front = x[:, 2] > 0
    if front.any():
        uv = (x[front] @ K.T)[:, :2] / x[front, 2:]
        inside = (uv[:, 0] >= 0) & (uv[:, 0] <= W) & (uv[:, 1] >= 0) & (uv[:, 1] <= H)
        if inside.any():
            return ""
    return (
        f"head projects to pixel ({u:.4g}, {v:.4g}), radius {r:.3g} px, outside the "
        f"{W}x{H} image (W x H)"
    )


def _update_hash(h: Any, row: dict[str, Any]) -> None:
    for key in [*FEATURES, *(k for k in OPTIONAL_FEATURES if k in row)]:
        v = row[key]
        if isinstance(v, dict):
            v = v["bytes"]
        elif isinstance(v, np.ndarray):
            v = v.tobytes() + repr(v.shape).encode()
        elif isinstance(v, np.generic):
            v = v.tobytes()
        else:
            v = repr(v).encode()
        h.update(key.encode() + b"\0" + v + b"\0")


# ----------------------------------------------------------------------------- write / load


def write_dataset(
    out_dir: str | Path,
    rows: Iterable[dict[str, Any]],
    meta: Mapping[str, Any],
    overwrite: bool = False,
    num_rows_hint: int | None = None,
) -> Path:
    """Validate and write ``rows`` as a gphm dataset at ``out_dir``; returns the path.

    Args:
        out_dir: target directory; refused (``FileExistsError``) if it exists, unless
            ``overwrite`` and it is empty or a gphm dataset (:func:`check_replaceable`).
            It is built in a temporary sibling and renamed when complete: on any error
            (bad row, failing generator) an existing ``out_dir`` is untouched and nothing
            is left behind.
        rows: dicts with exactly the :data:`FEATURES` keys (plus, in every row or in
            none, :data:`OPTIONAL_FEATURES` keys), consumed once (a generator is
            fine: rows are streamed to disk in batches, never all held in memory). Images
            are PIL images (RGB / L or 1) or uint8 arrays ``[H, W, 3]`` / ``[H, W]``
            (``[H, W, 1]`` and bool masks are accepted); matrices are numpy arrays, torch
            tensors or nested lists.
        meta: see :data:`META_KEYS` and :func:`validate_meta`; rows are checked against
            it (subject names, frame → subject/expression, cameras, image size).
        num_rows_hint: expected number of rows; only used for a progress bar.

    Raises ``ValueError`` naming the row index and field for a bad row (and the key for
    bad meta). Identical input gives byte-identical files.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite)
    meta = validate_meta(meta)
    check = _RowChecker(meta)
    digest = hashlib.sha256(b"gphm-dataset-v%d" % FORMAT_VERSION)
    progress_was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            scratch = tmp / ".scratch"
            scratch.mkdir()
            num_rows = 0
            it = iter(enumerate(_progress(rows, num_rows_hint)))
            first = next(it, None)
            if first is None:
                raise ValueError(f"{out_dir}: no rows to write")
            encoded = check(*first)  # the first row decides the optional columns
            features = Features(
                {**FEATURES, **{k: OPTIONAL_FEATURES[k] for k in check.optional or ()}}
            )
            with ArrowWriter(
                features=features,
                path=str(scratch / "rows.arrow"),
                writer_batch_size=_WRITER_BATCH,
            ) as writer:
                while True:
                    _update_hash(digest, encoded)
                    writer.write(features.encode_example(encoded))
                    num_rows += 1
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    encoded = check(*nxt)
                writer.finalize()
            table = MemoryMappedTable.from_file(str(scratch / "rows.arrow"))
            ds = datasets.Dataset(
                table,
                info=datasets.DatasetInfo(features=features),
                fingerprint=digest.hexdigest()[:16],  # content hash, not a random id
            )
            ds.save_to_disk(str(tmp))
            del ds, table
            shutil.rmtree(scratch)
            meta["num_rows"] = num_rows
            meta["num_landmarks"] = check.num_landmarks
            meta["split_sizes"] = check.split_sizes
            text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
            (tmp / _META_NAME).write_text(text, encoding="utf-8")
    finally:
        if progress_was_enabled:
            datasets.enable_progress_bars()
    return out_dir


def is_dataset_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory holding a gphm ``meta.json`` (our marker: a JSON
    object with ``format_version`` and ``generator``); it may be incomplete otherwise."""
    meta_path = Path(path) / _META_NAME
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and "format_version" in meta and "generator" in meta


def check_replaceable(path: str | Path, overwrite: bool) -> None:
    """Refuse (``FileExistsError``, naming ``path``) to replace anything but an empty
    directory or a gphm dataset: ``overwrite`` replaces datasets, never user folders."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=true to replace it)")
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(f"{path} exists and is not a directory; not replacing it")
    if any(path.iterdir()) and not is_dataset_dir(path):
        raise FileExistsError(
            f"{path} is a non-empty folder that is not a gphm dataset (no gphm meta.json); "
            "not replacing it even with overwrite=true: choose another out or remove it"
        )


def _progress(rows: Iterable[dict[str, Any]], total: int | None) -> Iterable[dict[str, Any]]:
    if total is None:
        return rows
    from tqdm.auto import tqdm

    return tqdm(rows, total=total, desc="writing rows", unit="row", leave=False)


def load_dataset_dir(path: str | Path) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Open a gphm dataset directory: returns ``(dataset, meta)``.

    The dataset decodes ``image``/``mask`` to PIL images on access. Raises
    ``FileNotFoundError`` (missing directory, ``meta.json``, ``state.json`` or arrow
    files) or ``ValueError`` (unreadable JSON or arrow data, unknown format version,
    missing columns), always naming the offending path.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: dataset directory not found")
    meta_path = path / _META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path}: missing; not a gphm dataset (write one with "
            "gphm.data.format.write_dataset or scripts/make_synthetic.py)"
        )
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path}: not valid JSON ({err})") from None
    if isinstance(raw, dict) and "format_version" not in raw:
        raise ValueError(f"{meta_path}: missing 'format_version'")
    meta = validate_meta(raw, where=str(meta_path))

    state_path = path / "state.json"
    for p in (state_path, path / "dataset_info.json"):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; the dataset at {path} is incomplete")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        names = [f["filename"] for f in state["_data_files"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{state_path}: unreadable ({type(err).__name__}: {err})") from None
    if not names:
        raise ValueError(f"{state_path}: lists no data files ('_data_files' is empty)")
    data_files = [_inside(path, name, state_path) for name in names]
    for p in data_files:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: arrow file listed in {state_path.name} is missing")
    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as err:
        msg = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(
            f"{path}: cannot read the arrow data ({type(err).__name__}: {msg})"
        ) from None
    if not isinstance(ds, datasets.Dataset):
        raise ValueError(f"{path}: expected a single Dataset, found {type(ds).__name__}")
    missing = [c for c in FEATURES if c not in ds.column_names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    if len(ds) != meta.get("num_rows", len(ds)):
        raise ValueError(
            f"{path}: has {len(ds)} rows but {meta_path.name} says num_rows={meta['num_rows']}"
        )
    _check_finite(path, ds)
    _check_rows(path, ds, meta)
    return ds, meta


def _inside(root: Path, name: Any, state_path: Path) -> Path:
    """``root / name`` for a data-file name of ``state.json``; refused (``ValueError``)
    unless it is a plain relative path that stays inside ``root`` (no absolute path, no
    ``..``, no symlink out), so a crafted dataset cannot make us open files elsewhere."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{state_path}: data-file name {name!r} must be a non-empty string")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or rel.drive:
        raise ValueError(
            f"{state_path}: data file {name!r} leaves the dataset folder (expected a name "
            "relative to it, without '..')"
        )
    p = root / rel
    if not p.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{state_path}: data file {name!r} resolves outside {root}")
    return p


def _flat_values(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values [M] float64, parents [M] row of each value, null [N] bool)`` of a
    (possibly nested-list) numeric column; null lists contribute no values."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    null = np.asarray(arr.is_null(), dtype=bool).copy()
    parents = np.arange(len(arr))
    while True:
        if isinstance(arr, pa.ExtensionArray):
            arr = arr.storage
        elif (
            pa.types.is_list(arr.type)
            or pa.types.is_large_list(arr.type)
            or (pa.types.is_fixed_size_list(arr.type))
        ):
            # list_parent_indices and flatten both skip null lists (counted above).
            parents = parents[np.asarray(pc.list_parent_indices(arr))]
            arr = arr.flatten()
        else:
            break
    values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
    return values, parents, null


def _row_has_nonfinite(column: pa.ChunkedArray) -> np.ndarray:  # [N] bool
    """Rows of a (possibly nested-list) float column with a non-finite or missing value."""
    values, parents, bad = _flat_values(column)
    bad[parents[~np.isfinite(values)]] = True
    return bad


def _check_finite(path: Path, ds: datasets.Dataset) -> None:
    """Refuse rows whose cameras, poses or landmarks are non-finite (naming the first)."""
    for key in NUMERIC_FIELDS:
        try:
            bad = _row_has_nonfinite(ds.data.column(key))
        except (pa.ArrowException, TypeError, ValueError) as err:
            raise ValueError(f"{path}: column '{key}' is not numeric ({err})") from None
        _refuse_rows(path, ds, bad, key, lambda i: "has non-finite values")


def _refuse_rows(path: Path, ds: datasets.Dataset, bad: np.ndarray, key: str, why: Any) -> None:
    """Raise ``ValueError`` naming the first row of ``bad`` ([N] bool), its subject and
    camera, field ``key`` and ``why(i)`` (what is wrong with row ``i``), when any."""
    rows = np.flatnonzero(bad)
    if not len(rows):
        return
    i = int(rows[0])
    subject = ds.data.column("subject_name")[i].as_py()
    camera = ds.data.column("camera")[i].as_py()
    more = f" ({len(rows) - 1} more row(s))" if len(rows) > 1 else ""
    raise ValueError(
        f"{path}: row {i} (subject {subject!r}, camera {camera!r}): field '{key}' {why(i)}{more}"
    )


def _matrices(path: Path, ds: datasets.Dataset, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Column ``key`` as ``[N, *shape]`` float64 (finite: checked before)."""
    values, parents, _ = _flat_values(ds.data.column(key))
    size = int(np.prod(shape))
    counts = np.bincount(parents, minlength=ds.num_rows)
    _refuse_rows(path, ds, counts != size, key,
                 lambda i: f"has {counts[i]} values, expected {list(shape)}")  # fmt: skip
    return values.reshape(ds.num_rows, *shape)


def _not_rotation(R: np.ndarray) -> np.ndarray:  # [N, 3, 3] -> [N] bool
    err = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    return ~((err < _ROT_TOL) & (np.abs(np.linalg.det(R) - 1.0) < _ROT_TOL))


def _check_rows(path: Path, ds: datasets.Dataset, meta: dict[str, Any]) -> None:
    """What the writer checks of every row, checked again on read (a dataset written or
    edited by another tool): ``subject``/``frame`` indices within meta's counts and
    consistent with ``subject_name``, meta ``frames`` and ``expression``; known camera
    and split; intrinsics ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` with fx, fy > 0;
    rigid ``viewmat``, rotation ``head_R``, ``head_scale`` > 0; the same landmark count
    in every row (meta ``num_landmarks``). ``ValueError`` naming the first bad row."""
    subjects, frames = meta["subjects"], meta["frames"]

    def ints(key: str) -> np.ndarray:
        return np.asarray([-1 if v is None else v for v in ds.data.column(key).to_pylist()])

    def strs(key: str) -> list[Any]:
        return ds.data.column(key).to_pylist()

    subject, frame = ints("subject"), ints("frame")
    for key, v, hi, what in (("subject", subject, len(subjects), "meta.json subjects"),
                             ("frame", frame, len(frames), "meta.json num_frames")):  # fmt: skip
        _refuse_rows(path, ds, (v < 0) | (v >= hi), key,
                     lambda i, v=v, hi=hi, what=what: f"is {v[i]}, expected in [0, {hi}) "
                     f"({what})")  # fmt: skip
    names, expressions = strs("subject_name"), strs("expression")
    cameras, splits = strs("camera"), strs("split")
    frame_subject = np.asarray([frames[f]["subject"] for f in frame])
    _refuse_rows(path, ds, frame_subject != subject, "subject",
                 lambda i: f"is {subject[i]}, meta.json frames[{frame[i]}] belongs to subject "
                 f"{frame_subject[i]}")  # fmt: skip
    checks = (
        ("subject_name", lambda i: names[i] != subjects[subject[i]],
         lambda i: f"is {names[i]!r}, meta.json subjects[{subject[i]}] is "
         f"{subjects[subject[i]]!r}"),
        ("expression", lambda i: expressions[i] != frames[frame[i]]["expression"],
         lambda i: f"is {expressions[i]!r}, meta.json frames[{frame[i]}] has "
         f"{frames[frame[i]]['expression']!r}"),
        ("camera", lambda i: cameras[i] not in meta["cameras"],
         lambda i: f"is {cameras[i]!r}, not one of meta.json cameras"),
        ("split", lambda i: splits[i] not in SPLITS,
         lambda i: f"is {splits[i]!r}, expected one of {list(SPLITS)}"),
    )  # fmt: skip
    for key, wrong, why in checks:
        _refuse_rows(path, ds, np.asarray([wrong(i) for i in range(ds.num_rows)], bool), key, why)

    K = _matrices(path, ds, "K", (3, 3))
    bad_K = ~((K[:, 0, 0] > 0) & (K[:, 1, 1] > 0) & (K[:, 1, 0] == 0)
              & np.all(np.abs(K[:, 2] - [0, 0, 1]) < 1e-6, axis=1))  # fmt: skip
    _refuse_rows(path, ds, bad_K, "K", lambda i: f"is {K[i].tolist()}, expected [[fx, s, cx], "
                 "[0, fy, cy], [0, 0, 1]] with fx, fy > 0")  # fmt: skip
    V = _matrices(path, ds, "viewmat", (4, 4))
    bad_V = _not_rotation(V[:, :3, :3]) | np.any(np.abs(V[:, 3] - [0, 0, 0, 1]) > 1e-6, axis=1)
    _refuse_rows(path, ds, bad_V, "viewmat",
                 lambda i: "must be rigid: rotation block and last row [0, 0, 0, 1]")  # fmt: skip
    _refuse_rows(path, ds, _not_rotation(_matrices(path, ds, "head_R", (3, 3))), "head_R",
                 lambda i: "must be a rotation matrix (orthonormal, det +1)")  # fmt: skip
    scale = _matrices(path, ds, "head_scale", ())
    _refuse_rows(path, ds, ~(scale > 0), "head_scale", lambda i: f"is {scale[i]}, expected > 0")

    _, parents, _ = _flat_values(ds.data.column("landmarks_3d"))
    counts = np.bincount(parents, minlength=ds.num_rows) // 3
    want = meta.get("num_landmarks", int(counts[0]) if len(counts) else 0)
    bad = (counts != want) | (counts < 1)
    why = f"landmarks, meta.json num_landmarks is {want}"
    _refuse_rows(path, ds, bad, "landmarks_3d", lambda i: f"has {counts[i]} {why}")
