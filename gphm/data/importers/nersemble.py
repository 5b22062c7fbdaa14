"""Import a NeRSemble-style capture as written by the public multiview 3DMM fitting tools.

Layout under ``src`` (``{frame}`` and ``{cam}`` are folder/file name parts; frames are
taken in sorted folder-name order, which defines the global frame index)::

    images/{frame}/image_{cam}.jpg          RGB (.jpg, .jpeg or .png); image_lowres_* ignored
    images/{frame}/mask_{cam}.png           8-bit mask (.png, .jpg or .jpeg), same size
    cameras/{frame}/camera_{cam}.npz        extrinsic [3, 4] world→camera (OpenCV),
                                            intrinsic [3, 3] pixels
    params/{frame}/params.npz               pose [6] or [1, 6]: axis-angle, translation;
                                            scale [] / [1] / [1, 1]
    params/{frame}/lmk_3d.npy               [L, 3] world landmarks of the frame, or
    lmk_3d.npy                              [F, L, 3] for all frames (used only when the
                                            per-frame files are absent)
    frames.json                             optional: {"<frame>": {"subject": str,
                                            "expression": str, "split": "train" |
                                            "val_combo" | "heldout_combo"}}, every key
                                            optional

Defaults: one subject named after ``src`` (or ``subject=``), expression label = frame
name, split ``train`` (``heldout_view`` for ``heldout_cameras``, ``val_view`` for
``val_cameras``; the two lists must be disjoint). A frame's ``*_combo`` split wins over
its cameras' (every camera of the frame gets it). Every camera must see the head (head
centre in front of it, head overlapping the image): a row that does not is refused.

The 3DMM pose maps model space to source world, ``x_src = scale·R(pose[:3])·x_m +
pose[3:]``; the model's axes are taken to be +y up, +z out of the face (BFM, FLAME).

Canonical transform (``canonical="auto"``), one similarity ``S: x ↦ s·R·x + T`` for the
whole capture, from the landmarks and head poses of all frames:

* centre ``c`` = mean of all landmarks of all frames (source world);
* rotation ``R = R̄ᵀ`` with ``R̄`` the chordal mean of the frames' head rotations, so the
  average head is upright (+y) and faces +z;
* scale ``s = landmark_radius / max |x_lmk − c|`` (default 0.4: the landmarks span the
  face, the whole head is about twice that and stays within about ±0.9).

Cameras, landmarks and head poses all go through ``S``. The canonical head space is the
dataset world at the mean head pose (mean rotation, scale and translation), so a frame
in that pose has ``head_R = I``, ``head_scale = 1``, ``head_T = 0``; in general
``head_pose_f = S ∘ P_f ∘ (S ∘ P_mean)⁻¹`` with ``P_f`` the frame's 3DMM pose.
``canonical="none"`` keeps the source world and uses the 3DMM pose as head pose (so the
canonical head space is the 3DMM model space).

Intrinsics: sources follow OpenCV's convention (pixel centres at integer coordinates);
``principal_point_offset`` (default 0.5) is added to ``cx, cy`` to reach ours (centres
at ``i + 0.5``). ``resolution`` > 0 resizes images to that height (box filter) and
rescales K exactly.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gphm.data.format import (
    FORMAT_VERSION,
    camera_split,
    check_replaceable,
    write_dataset,
)
from gphm.data.importers.common import CaptureError, Importer, ImportOptions
from gphm.geometry.pose import decompose_similarity, nearest_rotation, similarity_matrix
from gphm.geometry.rotations import axis_angle_to_matrix
from gphm.io.npz import load_npz

__all__ = ["CaptureError", "IMPORTER", "ImportOptions", "import_nersemble", "looks_like_nersemble"]

_IMAGE_RE = re.compile(r"^image_(?P<cam>.+)\.(?:jpg|jpeg|png)$")
_MASK_EXTS = (".png", ".jpg", ".jpeg")
_FRAME_SPLITS = ("train", "val_combo", "heldout_combo")  # splits frames.json may give


# ----------------------------------------------------------------------------- reading


def _rel(src: Path, p: Path) -> str:
    try:
        return p.relative_to(src).as_posix()
    except ValueError:
        return str(p)


def _load_npz(src: Path, p: Path, fields: dict[str, tuple[tuple[int, ...], ...]]) -> dict:
    """Load ``fields`` (name → accepted shapes, first one is the canonical) from an npz."""
    rel = _rel(src, p)
    if not p.is_file():
        raise CaptureError(f"{rel}: file not found")
    try:
        data = load_npz(p)  # sizes checked before anything is inflated
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CaptureError(f"{rel}: cannot read npz ({type(err).__name__}: {err})") from None
    out = {}
    for name, shapes in fields.items():
        if name not in data:
            raise CaptureError(f"{rel}: missing field '{name}' (has {sorted(data)})")
        a = data[name]
        if a.shape not in shapes:
            want = " or ".join(str(s) for s in shapes)
            raise CaptureError(f"{rel}: field '{name}' has shape {a.shape}, expected {want}")
        try:
            a = a.astype(np.float64).reshape(shapes[0])
        except (TypeError, ValueError):
            raise CaptureError(f"{rel}: field '{name}' is not numeric ({a.dtype})") from None
        if not np.all(np.isfinite(a)):
            raise CaptureError(f"{rel}: field '{name}' has non-finite values")
        out[name] = a
    return out


def _load_npy(src: Path, p: Path, what: str) -> np.ndarray:
    rel = _rel(src, p)
    try:
        a = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CaptureError(f"{rel}: cannot read {what} ({type(err).__name__}: {err})") from None
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
        raise CaptureError(f"{rel}: {what} must be finite numbers")
    return a.astype(np.float64)


def _find(folder: Path, stem: str, exts: tuple[str, ...]) -> Path | None:
    for ext in exts:
        if (folder / (stem + ext)).is_file():
            return folder / (stem + ext)
    return None


@dataclass
class _View:
    camera: str
    image: Path
    mask: Path
    K: np.ndarray  # [3, 3] source pixels, OpenCV pixel centres
    extrinsic: np.ndarray  # [3, 4] source world → camera


@dataclass
class _Frame:
    name: str
    views: list[_View]
    pose_R: np.ndarray  # [3, 3]
    pose_T: np.ndarray  # [3]
    pose_scale: float
    landmarks: np.ndarray  # [L, 3] source world
    subject: str = ""
    expression: str = ""
    split: str = "train"


def _read_frames_json(src: Path, frame_names: list[str]) -> dict[str, dict[str, str]]:
    p = src / "frames.json"
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CaptureError(f"frames.json: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CaptureError("frames.json: expected an object {frame: {subject, expression, split}}")
    for name, entry in data.items():
        if name not in frame_names:
            raise CaptureError(f"frames.json: frame '{name}' has no folder images/{name}")
        if not isinstance(entry, dict) or set(entry) - {"subject", "expression", "split"}:
            raise CaptureError(
                f"frames.json: entry '{name}' must be an object with optional keys "
                "subject, expression, split"
            )
        if not all(isinstance(v, str) and v for v in entry.values()):
            raise CaptureError(f"frames.json: entry '{name}' values must be non-empty strings")
        if entry.get("split", "train") not in _FRAME_SPLITS:
            raise CaptureError(
                f"frames.json: entry '{name}' split {entry['split']!r}, expected one of "
                f"{', '.join(_FRAME_SPLITS)} (heldout_view and val_view are per camera: use "
                "heldout_cameras= and val_cameras=)"
            )
    return data


def scan_capture(src: Path, opts: ImportOptions) -> list[_Frame]:
    """Read and check every camera, pose and landmark file (images are opened later)."""
    images_dir = src / "images"
    if not images_dir.is_dir():
        raise CaptureError(f"images: folder not found under {src}")
    names = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    if not names:
        raise CaptureError("images: no frame folders")
    per_frame_json = _read_frames_json(src, names)
    root_lmk = None
    if not (src / "params" / names[0] / "lmk_3d.npy").is_file() and (src / "lmk_3d.npy").is_file():
        root_lmk = _load_npy(src, src / "lmk_3d.npy", "landmarks")
        if root_lmk.ndim != 3 or root_lmk.shape[0] != len(names) or root_lmk.shape[2] != 3:
            raise CaptureError(
                f"lmk_3d.npy: has shape {root_lmk.shape}, expected (F={len(names)}, L, 3)"
            )
    frames = []
    for fi, name in enumerate(names):
        views = []
        for p in sorted((images_dir / name).iterdir()):
            m = _IMAGE_RE.match(p.name)
            if not m or p.name.startswith("image_lowres_"):
                continue
            cam = m.group("cam")
            mask = _find(images_dir / name, f"mask_{cam}", _MASK_EXTS)
            if mask is None:
                raise CaptureError(
                    f"images/{name}/mask_{cam}.png: file not found (mask of {p.name}; "
                    "also tried .jpg/.jpeg)"
                )
            cam_p = src / "cameras" / name / f"camera_{cam}.npz"
            c = _load_npz(src, cam_p, {"extrinsic": ((3, 4),), "intrinsic": ((3, 3),)})
            views.append(_View(cam, p, mask, c["intrinsic"], c["extrinsic"]))
        if not views:
            raise CaptureError(f"images/{name}: no image_{{cam}}.jpg/.png files")
        params_p = src / "params" / name / "params.npz"
        par = _load_npz(src, params_p, {"pose": ((6,), (1, 6)), "scale": ((), (1,), (1, 1))})
        if not par["scale"] > 0:
            raise CaptureError(
                f"{_rel(src, params_p)}: field 'scale' is {par['scale']}, expected > 0"
            )
        if root_lmk is not None:
            lmk = root_lmk[fi]
        else:
            lmk_p = src / "params" / name / "lmk_3d.npy"
            if not lmk_p.is_file():
                raise CaptureError(f"params/{name}/lmk_3d.npy: file not found (nor lmk_3d.npy)")
            lmk = _load_npy(src, lmk_p, "landmarks")
            if lmk.ndim != 2 or lmk.shape[1] != 3:
                raise CaptureError(
                    f"params/{name}/lmk_3d.npy: has shape {lmk.shape}, expected (L, 3)"
                )
        if frames and lmk.shape != frames[0].landmarks.shape:
            raise CaptureError(
                f"params/{name}/lmk_3d.npy: has {lmk.shape[0]} landmarks, frame "
                f"{frames[0].name} has {frames[0].landmarks.shape[0]}"
            )
        pose = par["pose"]
        R = axis_angle_to_matrix(torch.from_numpy(pose[:3])).numpy()
        entry = per_frame_json.get(name, {})
        frames.append(
            _Frame(
                name=name,
                views=views,
                pose_R=R,
                pose_T=pose[3:].copy(),
                pose_scale=float(par["scale"]),
                landmarks=lmk,
                subject=entry.get("subject", opts.subject or src.resolve().name),
                expression=entry.get("expression", name),
                split=entry.get("split", "train"),
            )
        )
    return frames


# ----------------------------------------------------------------------------- geometry


def canonical_transform(frames: list[_Frame], opts: ImportOptions) -> tuple[np.ndarray, np.ndarray]:
    """(S [4, 4] source world → dataset world, C [4, 4] canonical → model space)."""
    if opts.canonical == "none":
        return np.eye(4), np.eye(4)
    lmk = np.concatenate([f.landmarks for f in frames])  # [F·L, 3]
    c = lmk.mean(0)
    radius = float(np.linalg.norm(lmk - c, axis=1).max())
    if radius <= 0:
        raise CaptureError("landmarks: all landmarks coincide; cannot normalise the scale")
    R0 = nearest_rotation(sum(f.pose_R for f in frames)).T  # chordal mean, inverted
    s0 = opts.landmark_radius / radius
    S = similarity_matrix(s0, R0, -s0 * R0 @ c)
    P_mean = similarity_matrix(
        float(np.mean([f.pose_scale for f in frames])),
        R0.T,
        np.mean([f.pose_T for f in frames], axis=0),
    )
    return S, np.linalg.inv(S @ P_mean)


# ----------------------------------------------------------------------------- import


def import_nersemble(
    src: str | Path,
    out: str | Path,
    opts: ImportOptions | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert the capture at ``src`` into a gphm dataset at ``out``; returns a report.

    Raises :class:`CaptureError` naming the file (relative to ``src``) and field on bad
    input, ``FileExistsError`` if ``out`` exists and not ``overwrite``. Nothing is left
    at ``out`` on failure (an existing dataset there is untouched).
    """
    src, out = Path(src), Path(out)
    opts = opts or ImportOptions()
    if not src.is_dir():
        raise CaptureError(f"{src}: capture folder not found")
    s_res, o_res = src.resolve(), out.resolve()
    if s_res == o_res or s_res in o_res.parents or o_res in s_res.parents:
        how = "is" if s_res == o_res else "is inside" if s_res in o_res.parents else "contains"
        raise CaptureError(
            f"out={out} {how} the capture src={src}: the dataset must be written elsewhere "
            "(overwrite would replace the capture)"
        )
    check_replaceable(out, overwrite)
    frames = scan_capture(src, opts)
    cameras = sorted({v.camera for f in frames for v in f.views})
    for key in ("heldout_cameras", "val_cameras"):
        unknown = sorted(set(getattr(opts, key)) - set(cameras))
        if unknown:
            raise CaptureError(f"{key}: {unknown} not among the cameras {cameras}")
    subjects = list(dict.fromkeys(f.subject for f in frames))
    expressions = list(dict.fromkeys(f.expression for f in frames))

    with Image.open(frames[0].views[0].image) as im0:
        W0, H0 = im0.size
    if opts.resolution:
        H, W = opts.resolution, max(1, round(W0 * opts.resolution / H0))
    else:
        H, W = H0, W0
    if opts.lr_size is not None and opts.lr_size > H:
        raise CaptureError(f"lr_size={opts.lr_size} exceeds the stored image height {H}")

    S, C = canonical_transform(frames, opts)
    s0 = float(np.cbrt(np.linalg.det(S[:3, :3])))
    S_inv = np.linalg.inv(S)
    L = frames[0].landmarks.shape[0]
    convention = opts.landmark_convention
    if convention == "auto":
        convention = "ibug68" if L == 68 else f"unknown{L}"
    _, ct_R, ct_T = decompose_similarity(S)
    meta = {
        "format_version": FORMAT_VERSION,
        "subjects": subjects,
        "expressions": expressions,
        "cameras": cameras,
        "num_frames": len(frames),
        "frames": [
            {"subject": subjects.index(f.subject), "expression": f.expression, "name": f.name}
            for f in frames
        ],
        "landmark_convention": convention,
        "image_size": [H, W],
        "canonical_transform": {"scale": s0, "R": ct_R.tolist(), "T": ct_T.tolist()},
        "generator": {"importer": "nersemble", "source": str(src), "options": asdict(opts)},
    }
    if opts.lr_size is not None:
        meta["lr_size"] = opts.lr_size

    def rows() -> Iterator[dict[str, Any]]:
        for fi, f in enumerate(frames):
            P = similarity_matrix(f.pose_scale, f.pose_R, f.pose_T)
            head_s, head_R, head_T = decompose_similarity(S @ P @ C)
            lmk = f.landmarks @ S[:3, :3].T + S[:3, 3]
            for v in f.views:
                rgb, mask, (W1, H1) = _read_view(src, v, (W, H))
                K = v.K.copy()
                K[:2, 2] += opts.principal_point_offset
                K[:2] *= np.array([[W / W1], [H / H1]])
                E = np.eye(4)
                E[:3] = v.extrinsic
                viewmat = E @ S_inv
                viewmat[:3] *= s0  # undo the scale so the camera stays rigid
                viewmat[:3, :3] = nearest_rotation(viewmat[:3, :3])
                split = camera_split(v.camera, opts.heldout_cameras, opts.val_cameras)
                yield {
                    "subject": subjects.index(f.subject),
                    "subject_name": f.subject,
                    "frame": fi,
                    "expression": f.expression,
                    "camera": v.camera,
                    "image": rgb,
                    "mask": mask,
                    "K": K,
                    "viewmat": viewmat,
                    "head_R": head_R,
                    "head_T": head_T,
                    "head_scale": head_s,
                    "landmarks_3d": lmk,
                    "split": split if f.split == "train" else f.split,  # combos win
                }

    num_rows = sum(len(f.views) for f in frames)
    try:
        write_dataset(out, rows(), meta, overwrite=overwrite, num_rows_hint=num_rows)
    except ValueError as err:
        if isinstance(err, CaptureError):
            raise
        raise CaptureError(f"{src}: imported rows are invalid: {err}") from err
    world_lmk = np.stack([f.landmarks for f in frames]).reshape(-1, 3) @ S[:3, :3].T + S[:3, 3]
    return {
        "out": str(out),
        "rows": num_rows,
        "frames": len(frames),
        "subjects": subjects,
        "cameras": cameras,
        "image_size": [H, W],
        "canonical_transform": meta["canonical_transform"],
        "landmarks_centre": world_lmk.mean(0).tolist(),
        "landmarks_max_abs": float(np.abs(world_lmk).max()),
    }


def _read_view(
    src: Path, v: _View, size: tuple[int, int]
) -> tuple[Image.Image, Image.Image, tuple[int, int]]:
    """RGB image and L mask resized to ``size`` = (W, H); also the source (W, H)."""
    try:
        with Image.open(v.image) as im:
            rgb = im.convert("RGB")
        with Image.open(v.mask) as im:
            mask = im.convert("L")
    except (OSError, UnidentifiedImageError) as err:
        raise CaptureError(f"{_rel(src, v.image)}: cannot read image ({err})") from None
    if mask.size != rgb.size:
        raise CaptureError(
            f"{_rel(src, v.mask)}: mask is {mask.size[0]}x{mask.size[1]}, image "
            f"{v.image.name} is {rgb.size[0]}x{rgb.size[1]} (W x H)"
        )
    W1, H1 = rgb.size
    W, H = size
    if abs(W1 / H1 - W / H) > 0.01 * W / H:
        raise CaptureError(
            f"{_rel(src, v.image)}: is {W1}x{H1}, its aspect ratio differs from the first "
            f"image's (stored size {W}x{H}); all images must share one aspect ratio"
        )
    if (W1, H1) != (W, H):
        rgb = rgb.resize((W, H), Image.Resampling.BOX)
        mask = mask.resize((W, H), Image.Resampling.BOX)
    return rgb, mask, (W1, H1)


def looks_like_nersemble(src: Path) -> bool:
    """Whether ``src`` has this layout's signature: ``images/`` and ``cameras/`` folders
    and an ``image_{cam}`` file in the first frame folder (no file is read)."""
    images = src / "images"
    if not (images.is_dir() and (src / "cameras").is_dir()):
        return False
    first = next((p for p in sorted(images.iterdir()) if p.is_dir()), None)
    return first is not None and any(_IMAGE_RE.match(p.name) for p in first.iterdir())


IMPORTER = Importer(
    name="nersemble",
    detect=looks_like_nersemble,
    run=lambda src, out, opts, overwrite: import_nersemble(src, out, opts, overwrite=overwrite),
    description="images/FRAME/image_CAM.jpg, cameras/FRAME/camera_CAM.npz, params/",
)
