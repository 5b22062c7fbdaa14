"""Step 1 of :mod:`gphm.data.preprocess.multiview`: per-frame detections, cached.

For every view of a frame: read the image, detect the 68 landmarks and, when the mask
mode needs it, run the person segmenter (probability stored as uint8 at the stored image
size). A view whose image is unreadable, has the wrong size or shows no face is *bad*:
its status and reason are recorded (``strict`` raises :class:`CaptureError` instead).

One ``{frame}.npz`` per frame in the cache folder, keyed by the detector name, the mask
mode, the stored size and each image's name, size and modification time; a missing,
torn or stale entry is recomputed, so an interrupted run resumes where it stopped.

The cache folder is ours only if it holds :data:`CACHE_MARKER` (written when we create
it, or adopt an empty folder): a non-empty folder without it is refused, never written
into, and :func:`remove_cache` deletes only our own files from a marked folder (the
marker and the folder itself only if nothing else is left in it).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from gphm.data.importers.nersemble import CaptureError
from gphm.data.preprocess.capture import CaptureLayout, View
from gphm.data.preprocess.detectors import LandmarkDetector, NoFaceError, get_detector
from gphm.data.preprocess.masks import Segmenter, get_segmenter, load_mask
from gphm.data.preprocess.single_image import read_rgb
from gphm.io.atomic import atomic_write_bytes

__all__ = [
    "CACHE_MARKER",
    "Backends",
    "FrameData",
    "detect_frames",
    "first_image_size",
    "open_cache",
    "remove_cache",
]

_CACHE_VERSION = 1
CACHE_MARKER = ".gphm-preprocess-cache"


@dataclass
class FrameData:
    """Per-frame detections (the cached part), for the frame's views in order."""

    landmarks: np.ndarray  # [C, 68, 2] source pixels, NaN for bad views
    status: list[str]  # per view: ok | unreadable | no_face
    detail: list[str]  # per view: the reason, "" when ok
    prob: np.ndarray  # [C, h, w] uint8 person probability at output size ([C, 0, 0] if unused)

    def to_bytes(self, key: str) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            key=np.array(key),
            landmarks=self.landmarks,
            status=np.array(self.status),
            detail=np.array(self.detail),
            prob=self.prob,
        )
        return buf.getvalue()

    @staticmethod
    def load(path: Path, key: str) -> FrameData | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    return None
                status = [str(s) for s in z["status"]]
                return FrameData(z["landmarks"], status, [str(s) for s in z["detail"]], z["prob"])
        except (OSError, ValueError, KeyError, EOFError):
            return None  # a torn or foreign file: recompute


def _needs_segmentation(view: View, mode: str) -> bool:
    return mode == "segment" or (mode == "auto" and view.mask is None)


def _frame_key(views: list[View], mask_mode: str, det_name: str, out_hw: tuple[int, int]) -> str:
    parts: list[Any] = [_CACHE_VERSION, det_name, mask_mode, list(out_hw)]
    for v in views:
        try:
            st = v.image.stat()
            parts.append([v.camera, v.image.name, st.st_size, st.st_mtime_ns])
        except OSError:
            parts.append([v.camera, v.image.name, None])
        parts.append(_needs_segmentation(v, mask_mode))
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


class Backends:
    """Detector and segmenter, created only when a frame has to be (re)processed."""

    def __init__(
        self,
        detector_name: str,
        detector: LandmarkDetector | None = None,
        segmenter: Segmenter | None = None,
    ):
        self._name, self._det, self._seg = detector_name, detector, segmenter

    @property
    def detector(self) -> LandmarkDetector:
        if self._det is None:
            self._det = get_detector(self._name)
        return self._det

    @property
    def segmenter(self) -> Segmenter:
        if self._seg is None:
            self._seg = get_segmenter("mediapipe")
        return self._seg

    @property
    def detector_name(self) -> str:
        return getattr(self._det, "name", None) or self._name


def _process_frame(
    views: list[View],
    src_hw: tuple[int, int],
    out_hw: tuple[int, int],
    backends: Backends,
    mask_mode: str,
    strict: bool,
) -> FrameData:
    C = len(views)
    landmarks = np.full((C, 68, 2), np.nan)
    status, detail = ["ok"] * C, [""] * C
    needs_seg = [_needs_segmentation(v, mask_mode) for v in views]
    prob = np.zeros((C, *out_hw) if any(needs_seg) else (C, 0, 0), dtype=np.uint8)
    for c, v in enumerate(views):
        try:
            rgb = read_rgb(v.image)
            if rgb.shape[:2] != src_hw:
                raise ValueError(
                    f"{v.rel}: image is {rgb.shape[0]}x{rgb.shape[1]} (HxW), the capture's "
                    f"images are {src_hw[0]}x{src_hw[1]}"
                )
            landmarks[c] = backends.detector.detect(rgb, source=v.rel).landmarks68
        except NoFaceError as err:
            status[c], detail[c] = "no_face", str(err)
        except (ValueError, FileNotFoundError) as err:  # from read_rgb or the size check
            status[c], detail[c] = "unreadable", str(err)
        if status[c] != "ok":
            if strict:
                raise CaptureError(f"{detail[c]} (strict=true refuses bad images)")
            continue
        if v.mask is not None and mask_mode in ("auto", "user"):
            try:
                load_mask(v.mask, src_hw)
            except ValueError as err:  # a bad user mask is bad input, never skipped
                raise CaptureError(str(err)) from None
        if needs_seg[c]:
            p = backends.segmenter.segment(rgb)
            p = cv2.resize(p, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
            prob[c] = np.clip(np.rint(p * 255), 0, 255).astype(np.uint8)
    return FrameData(landmarks, status, detail, prob)


def first_image_size(layout: CaptureLayout) -> tuple[int, int]:
    """(H, W) of the first readable image: the size every image of the capture must have."""
    for frame in layout.frames:
        for v in layout.views[frame]:
            try:
                return read_rgb(v.image).shape[:2]
            except (ValueError, FileNotFoundError):
                continue
    raise CaptureError("frames: no readable image in the capture")


def open_cache(cache: Path) -> Path:
    """Create (or adopt, if empty) the cache folder and mark it ours; reuse a marked one.

    Raises :class:`CaptureError` naming ``cache`` if it is a file or a non-empty folder
    without our marker (a folder of user files, or someone else's): we never write
    into, nor later clean, what we did not create.
    """
    if cache.exists() and not cache.is_dir():
        raise CaptureError(f"cache={cache} exists and is not a folder")
    if cache.is_dir() and not (cache / CACHE_MARKER).is_file():
        if any(cache.iterdir()):
            raise CaptureError(
                f"cache={cache} is a non-empty folder that is not a gphm preprocess cache "
                f"(no {CACHE_MARKER}); not using it: pass another cache= (or delete it if "
                "it is an old gphm cache)"
            )
    cache.mkdir(parents=True, exist_ok=True)
    marker = cache / CACHE_MARKER
    if not marker.is_file():
        marker.write_text("gphm preprocess cache: one {frame}.npz per frame\n", encoding="utf-8")
    return cache


def remove_cache(cache: Path, frames: list[str]) -> None:
    """Delete our entries of ``frames`` (and temporary files a killed run left of them)
    from a marked cache folder; then, if only the marker is left, the marker and the
    folder. Anything else in it (and an unmarked folder) is kept, marker included."""
    if not (cache / CACHE_MARKER).is_file():
        return
    for frame in frames:
        # atomic_write_bytes writes `.{frame}.<random>.npz` next to `{frame}.npz`
        for p in [cache / f"{frame}.npz", *cache.glob(f".{glob.escape(frame)}.*.npz")]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    if [p.name for p in cache.iterdir()] == [CACHE_MARKER]:
        (cache / CACHE_MARKER).unlink()
        with contextlib.suppress(OSError):  # raced by someone adding a file: keep it
            cache.rmdir()


def detect_frames(
    layout: CaptureLayout,
    backends: Backends,
    cache: Path,
    hw: tuple[tuple[int, int], tuple[int, int]],
    mask_mode: str,
    strict: bool = False,
    progress: bool = True,
) -> tuple[dict[str, FrameData], int]:
    """Detections (and segmentations) of every frame, through the cache.

    ``hw`` = (source (H, W), stored (H, W)). Returns the per-frame data and the number
    of frames reused from the cache.
    """
    src_hw, out_hw = hw
    open_cache(cache)
    data, reused = {}, 0
    for frame in tqdm(layout.frames, desc="landmarks", unit="frame", disable=not progress):
        views = layout.views[frame]
        key = _frame_key(views, mask_mode, backends.detector_name, out_hw)
        path = cache / f"{frame}.npz"
        fd = FrameData.load(path, key) if path.is_file() else None
        if fd is None:
            fd = _process_frame(views, src_hw, out_hw, backends, mask_mode, strict)
            atomic_write_bytes(path, fd.to_bytes(key))
        else:
            reused += 1
            bad = [d for s, d in zip(fd.status, fd.detail) if s != "ok"]
            if strict and bad:
                raise CaptureError(f"{bad[0]} (strict=true refuses bad images)")
        data[frame] = fd
    return data, reused
