"""Calibrated multi-view capture → gphm dataset (``scripts/preprocess.py``).

Input layout: :mod:`gphm.data.preprocess.capture`. Steps:

1. **Per frame** (:mod:`.frame_cache`, cached so that an interrupted run resumes): read
   each view, detect 68 landmarks, and (when the mask mode needs it) run the person
   segmenter. A view whose image is unreadable, of the wrong size, or shows no face is
   *bad*: reported by path and left out of everything (``strict=True`` refuses the run).
2. **Triangulation** per frame with :func:`gphm.geometry.triangulate_robust` (pixel
   threshold ``outlier_threshold`` × image height). A view whose detections mostly
   disagree with the others (inlier fraction < ``outlier_view_fraction``) is an *outlier
   view*: its landmarks are not used, it is reported, and its image is kept (unless
   ``drop_outlier_views``): the image and calibration are still good training data.
3. **Canonical space and head pose** (landmarks in :data:`RIGID_LANDMARKS` only):
   a. each frame's landmarks are aligned to the canonical template ``G``
      (:func:`canonical_landmarks`) by Umeyama: ``X_f ≈ s_f·R_f·G + T_f``;
   b. reference pose ``P_ref``: frame 0's (``template="first"``) or the mean pose
      (``"mean"``: mean scale and translation, chordal mean rotation);
   c. the canonical transform ``S = P_ref⁻¹`` maps source world → dataset world, so
      the head at the reference pose is upright, faces +z, is centred and has the
      template's size (within about ±0.9);
   d. the subject's template ``Y``: frame 0's landmarks in dataset world (``first``) or
      the mean over frames of each frame's landmarks brought back by its pose from (a)
      (``mean``); landmarks never triangulated are taken from ``G``;
   e. head pose per frame: Umeyama of ``Y`` onto the frame's landmarks, rigid
      (``head_scale = 1``) unless ``pose_scale``.
   Landmarks a frame could not triangulate are filled with its posed template ``s·R·Y + T``
   (counted in the report).
4. **Masks**: the user mask when there is one (mode ``auto`` or ``user``), else the
   segmentation refined with the hull of the frame's 3D landmarks reprojected into the
   view (:func:`refine_mask`; mode ``segment`` forces this), or that hull alone (``hull``).
   Reprojected 3D landmarks rather than the view's own detection keep a bad detection
   out of the mask.
5. Rows (images resized to ``resolution``, K rescaled, cameras and landmarks mapped by
   ``S``) are written with :func:`gphm.data.format.write_dataset` (atomic).

The per-frame cache lives in ``<out>.cache/`` (``cache=`` to move it), one ``.npz`` per
frame keyed by the detector, the mask mode, the output size and each image's size and
modification time; stale entries are recomputed. After a successful run our entries are
deleted unless ``keep_cache`` (:func:`.frame_cache.remove_cache`); a folder we did not
create is never used nor cleaned (:func:`.frame_cache.open_cache`).

Paths are checked before any work: ``out`` must not be ``src``, inside it or contain it,
and ``cache`` must not be, contain or lie inside ``out``, nor be or contain ``src``
(:func:`check_paths`); ``overwrite`` replaces only an existing gphm dataset.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from gphm.data.format import (
    FORMAT_VERSION,
    camera_split,
    check_camera_lists,
    check_replaceable,
    write_dataset,
)
from gphm.data.importers.nersemble import CaptureError
from gphm.data.preprocess.capture import CaptureLayout, View, scan_capture
from gphm.data.preprocess.detectors import LandmarkDetector, detector_names
from gphm.data.preprocess.frame_cache import (
    Backends,
    FrameData,
    detect_frames,
    first_image_size,
    remove_cache,
)
from gphm.data.preprocess.masks import Segmenter, hull_mask, load_mask, refine_mask
from gphm.data.preprocess.single_image import read_rgb
from gphm.data.preprocess.template import RIGID_LANDMARKS, canonical_landmarks
from gphm.geometry.pose import decompose_similarity, nearest_rotation, similarity_matrix, umeyama
from gphm.geometry.triangulation import triangulate_robust

__all__ = ["PreprocessOptions", "check_paths", "preprocess_capture"]

MASK_MODES = ("auto", "user", "segment", "hull")


@dataclass
class PreprocessOptions:
    """Options of :func:`preprocess_capture` (and ``scripts/preprocess.py``)."""

    detector: str = "mediapipe"
    """Landmark backend (``mediapipe`` or ``face_alignment``)."""
    subject: str | None = None
    """Subject name; default: the src folder name."""
    resolution: int = 0
    """Stored image height (width keeps the aspect ratio); 0 keeps the source size."""
    lr_size: int | None = None
    """Recorded as meta ``lr_size`` (default low-res height of HeadDataset)."""
    mask: str = "auto"
    """auto (user mask if present, else segment) | user | segment | hull."""
    principal_point_offset: float = 0.5
    """Added to the calibration's cx, cy (OpenCV integer pixel centres → ours)."""
    outlier_threshold: float = 0.01
    """Triangulation inlier threshold, as a fraction of the source image height."""
    outlier_view_fraction: float = 0.5
    """A view with fewer inlier landmarks than this fraction is an outlier view."""
    drop_outlier_views: bool = False
    """Leave outlier views out of the dataset (they are reported either way)."""
    template: str = "mean"
    """Canonical template and reference pose: mean (over frames) | first (frame 0)."""
    pose_scale: bool = False
    """Estimate a per-frame head scale (default: rigid head, head_scale = 1)."""
    heldout_cameras: list[str] = field(default_factory=list)
    """Cameras whose rows get split ``heldout_view`` (only reported)."""
    val_cameras: list[str] = field(default_factory=list)
    """Cameras whose rows get split ``val_view`` (for choosing defaults); disjoint from
    ``heldout_cameras``."""
    strict: bool = False
    """Refuse the run at the first bad image instead of skipping it."""
    cache: str | None = None
    """Per-frame cache folder; default ``<out>.cache``."""
    keep_cache: bool = False
    """Keep the cache after a successful run."""

    def __post_init__(self) -> None:
        if self.detector.replace("-", "_") not in detector_names():
            raise ValueError(f"detector must be one of {detector_names()}, got {self.detector!r}")
        if self.mask not in MASK_MODES:
            raise ValueError(f"mask must be one of {list(MASK_MODES)}, got {self.mask!r}")
        if self.template not in ("mean", "first"):
            raise ValueError(f"template must be 'mean' or 'first', got {self.template!r}")
        if self.resolution < 0:
            raise ValueError(f"resolution must be >= 0, got {self.resolution}")
        if self.lr_size is not None and self.lr_size < 1:
            raise ValueError(f"lr_size must be >= 1, got {self.lr_size}")
        if not 0 < self.outlier_threshold < 1:
            raise ValueError(f"outlier_threshold must be in (0, 1), got {self.outlier_threshold}")
        if not 0 <= self.outlier_view_fraction <= 1:
            raise ValueError(
                f"outlier_view_fraction must be in [0, 1], got {self.outlier_view_fraction}"
            )
        check_camera_lists(self.heldout_cameras, self.val_cameras)


# ----------------------------------------------------------------------------- paths


def _contains(outer: Path, inner: Path) -> bool:  # resolved paths; True if equal too
    return inner == outer or outer in inner.parents


def check_paths(src: str | Path, out: str | Path, cache: str | Path) -> None:
    """Refuse (:class:`CaptureError`) paths that would let the run replace or clean the
    capture or the dataset: ``out`` equal to, inside or containing ``src``; ``cache``
    equal to or containing ``src``; ``cache`` equal to, inside or containing ``out``."""
    s, o, c = (Path(p).resolve() for p in (src, out, cache))
    if _contains(s, o) or _contains(o, s):
        how = "is" if s == o else "is inside" if _contains(s, o) else "contains"
        raise CaptureError(
            f"out={out} {how} the capture src={src}: the dataset must be written elsewhere "
            "(overwrite would replace the capture)"
        )
    if _contains(c, s):
        how = "is" if c == s else "contains"
        raise CaptureError(f"cache={cache} {how} the capture src={src}: choose another cache=")
    if _contains(c, o) or _contains(o, c):
        how = "is" if c == o else "contains" if _contains(c, o) else "is inside"
        raise CaptureError(f"cache={cache} {how} out={out}: choose another cache=")


# ----------------------------------------------------------------------------- geometry


def _umeyama(src: np.ndarray, dst: np.ndarray, w: np.ndarray, with_scale: bool = True):
    """Similarity ``dst ≈ s·R·src + T`` [4, 4] from the rows with w > 0 and finite points."""
    ok = (w > 0) & np.isfinite(dst).all(1) & np.isfinite(src).all(1)
    s, R, T = umeyama(
        torch.from_numpy(src[ok]),
        torch.from_numpy(dst[ok]),
        torch.from_numpy(w[ok]),
        with_scale=with_scale,
    )
    return similarity_matrix(float(s), R.numpy(), T.numpy())


def _apply(M: np.ndarray, X: np.ndarray) -> np.ndarray:  # [4, 4] similarity on [..., 3]
    return X @ M[:3, :3].T + M[:3, 3]


def _canonicalise(
    X: list[np.ndarray], opts: PreprocessOptions
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Module docstring, step 3: (S [4, 4] source → dataset, Y [68, 3], head poses [4, 4])."""
    G = np.array(canonical_landmarks())
    w = np.zeros(68)
    w[list(RIGID_LANDMARKS)] = 1.0
    generic = [_umeyama(G, x, w) for x in X]  # canonical template -> source world
    if opts.template == "first":
        P_ref = generic[0]
    else:
        s = np.mean([np.cbrt(np.linalg.det(P[:3, :3])) for P in generic])
        R = nearest_rotation(sum(decompose_similarity(P)[1] for P in generic))  # chordal mean
        P_ref = similarity_matrix(float(s), R, np.mean([P[:3, 3] for P in generic], axis=0))
    S = np.linalg.inv(P_ref)
    Xd = [_apply(S, x) for x in X]
    if opts.template == "first":
        Y = Xd[0]
    else:
        back = np.stack([_apply(np.linalg.inv(S @ P), x) for P, x in zip(generic, Xd)])
        finite = np.isfinite(back).all(-1)  # [F, 68]
        Y = np.where(finite[..., None], back, 0.0).sum(0) / np.maximum(finite.sum(0), 1)[:, None]
        Y[finite.sum(0) == 0] = np.nan
    Y = np.where(np.isfinite(Y), Y, G)
    return S, Y, [_umeyama(Y, x, w, with_scale=opts.pose_scale) for x in Xd]


def _dataset_viewmat(viewmat: np.ndarray, S: np.ndarray) -> np.ndarray:  # [4, 4]
    """World→camera in dataset world: ``V·S⁻¹`` rescaled so the camera stays rigid."""
    s0 = float(np.cbrt(np.linalg.det(S[:3, :3])))
    V = viewmat @ np.linalg.inv(S)
    V[:3] *= s0
    V[:3, :3] = nearest_rotation(V[:3, :3])
    return V


def _project(K: np.ndarray, viewmat: np.ndarray, X: np.ndarray) -> np.ndarray:  # [N, 2]
    x = (X @ viewmat[:3, :3].T + viewmat[:3, 3]) @ K.T
    return x[:, :2] / x[:, 2:]


# ----------------------------------------------------------------------------- stages


@dataclass
class _Frame:
    """A frame that made it through triangulation."""

    name: str
    data: FrameData
    points: np.ndarray  # [68, 3] source world, NaN where not triangulated
    write: list[bool]  # per view of the frame: its row goes into the dataset


def _triangulate_frames(
    layout: CaptureLayout,
    data: dict[str, FrameData],
    opts: PreprocessOptions,
    threshold: float,
    report: dict[str, Any],
) -> list[_Frame]:
    """Step 2 for every frame; appends outlier views and skipped frames to ``report``."""
    frames = []
    for name in layout.frames:
        views, fd = layout.views[name], data[name]
        ok = [s == "ok" for s in fd.status]
        if sum(ok) < 2:
            reason = f"{sum(ok)} view(s) with a face, need 2"
            report["skipped_frames"].append({"frame": name, "reason": reason})
            continue
        cams = [layout.cameras[v.camera] for v in views]
        tri = triangulate_robust(
            torch.from_numpy(fd.landmarks),
            torch.from_numpy(np.stack([c.K for c in cams])),
            torch.from_numpy(np.stack([c.viewmat for c in cams])),
            threshold=threshold,
        )
        points = tri.points.numpy()
        if np.isfinite(points[list(RIGID_LANDMARKS)]).all(1).sum() < 4:
            reason = "fewer than 4 rigid landmarks agree in 2+ views"
            report["skipped_frames"].append({"frame": name, "reason": reason})
            continue
        inliers, errors = tri.inliers.numpy(), tri.errors.numpy()
        write = list(ok)
        for c, v in enumerate(views):
            fraction = float(inliers[c].sum() / 68)
            if ok[c] and fraction < opts.outlier_view_fraction:
                report["outlier_views"].append(
                    {
                        "frame": name,
                        "camera": v.camera,
                        "path": v.rel,
                        "inlier_fraction": round(fraction, 3),
                        "median_error_px": round(float(np.nanmedian(errors[c])), 2),
                        "kept": not opts.drop_outlier_views,
                    }
                )
                write[c] = not opts.drop_outlier_views
        frames.append(_Frame(name, fd, points, write))
    return frames


@dataclass
class _Plan:
    """Everything the rows need, in dataset world."""

    layout: CaptureLayout
    opts: PreprocessOptions
    frames: list[_Frame]
    S: np.ndarray  # [4, 4] source world -> dataset world
    poses: list[np.ndarray]  # per frame [4, 4] canonical -> dataset world
    landmarks: list[np.ndarray]  # per frame [68, 3] dataset world, NaN filled
    subject: str
    src_hw: tuple[int, int]
    out_hw: tuple[int, int]


def _rows(plan: _Plan) -> Iterator[dict[str, Any]]:
    (H0, W0), out_hw = plan.src_hw, plan.out_hw
    resize = np.array([out_hw[1] / W0, out_hw[0] / H0])  # source pixels -> stored pixels
    S_inv = np.linalg.inv(plan.S)
    for fi, frame in enumerate(plan.frames):
        head_s, head_R, head_T = decompose_similarity(plan.poses[fi])
        lmk = plan.landmarks[fi]
        for c, v in enumerate(plan.layout.views[frame.name]):
            if not frame.write[c]:
                continue
            cam = plan.layout.cameras[v.camera]
            K = cam.K.copy()
            K[:2] *= resize[:, None]
            uv = _project(cam.K, cam.viewmat, _apply(S_inv, lmk)) * resize  # [68, 2]
            rgb = read_rgb(v.image)
            if rgb.shape[:2] != out_hw:
                rgb = cv2.resize(rgb, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
            prob = frame.data.prob[c] if frame.data.prob.size else None
            yield {
                "subject": 0,
                "subject_name": plan.subject,
                "frame": fi,
                "expression": frame.name,
                "camera": v.camera,
                "image": rgb,
                "mask": _mask(v, prob, uv, plan.opts.mask, out_hw),
                "K": K,
                "viewmat": _dataset_viewmat(cam.viewmat, plan.S),
                "head_R": head_R,
                "head_T": head_T,
                "head_scale": head_s,
                "landmarks_3d": lmk,
                "split": camera_split(v.camera, plan.opts.heldout_cameras, plan.opts.val_cameras),
            }


def _mask(
    view: View, prob: np.ndarray | None, uv: np.ndarray, mode: str, out_hw: tuple[int, int]
) -> np.ndarray:  # [H, W] uint8
    """The row's mask (module docstring, step 4); ``uv`` [68, 2] stored-image pixels."""
    if view.mask is not None and mode in ("auto", "user"):
        m = load_mask(view.mask)
        if m.shape != out_hw:
            m = cv2.resize(m, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
        return m
    if mode == "hull" or prob is None:
        return hull_mask(uv, out_hw).astype(np.uint8) * 255
    return refine_mask(prob.astype(np.float32) / 255.0, uv)


# ----------------------------------------------------------------------------- main


def preprocess_capture(
    src: str | Path,
    out: str | Path,
    opts: PreprocessOptions | None = None,
    overwrite: bool = False,
    detector: LandmarkDetector | None = None,
    segmenter: Segmenter | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Preprocess the capture at ``src`` into a gphm dataset at ``out``; returns a report.

    ``detector`` / ``segmenter`` override the backends named in ``opts`` (tests inject
    fakes). Raises :class:`CaptureError` (bad input, naming the file; a bad image with
    ``strict``), ``FileExistsError``, :class:`BackendUnavailableError`. Nothing is left at
    ``out`` on failure; the per-frame cache stays so that a re-run resumes.
    """
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    opts = opts or PreprocessOptions()
    cache = Path(opts.cache) if opts.cache else out.with_name(out.name + ".cache")
    check_paths(src, out, cache)
    check_replaceable(out, overwrite)
    layout = scan_capture(src, opts.principal_point_offset, require_masks=opts.mask == "user")
    cam_names = sorted(layout.cameras)
    for key in ("heldout_cameras", "val_cameras"):
        unknown = sorted(set(getattr(opts, key)) - set(cam_names))
        if unknown:
            raise CaptureError(f"{key}: {unknown} not among the cameras {cam_names}")
    src_hw = first_image_size(layout)
    out_hw = src_hw
    if opts.resolution:
        out_hw = (opts.resolution, max(1, round(src_hw[1] * opts.resolution / src_hw[0])))
    if opts.lr_size is not None and opts.lr_size > out_hw[0]:
        raise CaptureError(f"lr_size={opts.lr_size} exceeds the stored image height {out_hw[0]}")

    backends = Backends(opts.detector, detector, segmenter)
    hw = (src_hw, out_hw)
    data, reused = detect_frames(layout, backends, cache, hw, opts.mask, opts.strict, progress)
    report: dict[str, Any] = {"skipped_views": [], "outlier_views": [], "skipped_frames": []}
    for name in layout.frames:
        for v, s, d in zip(layout.views[name], data[name].status, data[name].detail):
            if s != "ok":
                report["skipped_views"].append(
                    {"frame": name, "camera": v.camera, "path": v.rel, "reason": s, "detail": d}
                )
    threshold = opts.outlier_threshold * src_hw[0]
    frames = _triangulate_frames(layout, data, opts, threshold, report)
    if not frames:
        bad = "; ".join(f"{s['path']}: {s['reason']}" for s in report["skipped_views"][:5])
        raise CaptureError(f"no frame has 2 views with a face ({bad})")

    S, Y, poses = _canonicalise([f.points for f in frames], opts)
    landmarks, filled = [], 0
    for P, f in zip(poses, frames):
        x = _apply(S, f.points)
        missing = ~np.isfinite(x).all(1)
        filled += int(missing.sum())
        landmarks.append(np.where(missing[:, None], _apply(P, Y), x))
    subject = opts.subject or src.resolve().name
    plan = _Plan(layout, opts, frames, S, poses, landmarks, subject, src_hw, out_hw)
    s0, ct_R, ct_T = decompose_similarity(S)
    meta = {
        "format_version": FORMAT_VERSION,
        "subjects": [subject],
        "expressions": [f.name for f in frames],
        "cameras": cam_names,
        "num_frames": len(frames),
        "frames": [{"subject": 0, "expression": f.name, "name": f.name} for f in frames],
        "landmark_convention": "ibug68",
        "image_size": list(out_hw),
        "canonical_transform": {"scale": s0, "R": ct_R.tolist(), "T": ct_T.tolist()},
        "generator": {"importer": "preprocess", "source": str(src), "options": asdict(opts)},
    }
    if opts.lr_size is not None:
        meta["lr_size"] = opts.lr_size
    num_rows = sum(sum(f.write) for f in frames)
    hint = num_rows if progress else None
    try:
        write_dataset(out, _rows(plan), meta, overwrite=overwrite, num_rows_hint=hint)
    except ValueError as err:  # a row the writer refuses (e.g. a camera not seeing the head)
        if isinstance(err, CaptureError):
            raise
        raise CaptureError(f"preprocessed rows are invalid: {err}") from err
    if not opts.keep_cache:
        remove_cache(cache, layout.frames)
    report.update(
        out=str(out),
        rows=num_rows,
        frames=len(frames),
        frames_reused_from_cache=reused,
        cameras=cam_names,
        subject=subject,
        image_size=list(out_hw),
        canonical_transform=meta["canonical_transform"],
        template=opts.template,
        filled_landmarks=filled,
        cache=str(cache) if opts.keep_cache else None,
        seconds=round(time.perf_counter() - t0, 3),
    )
    return report
