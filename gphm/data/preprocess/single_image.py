"""Single-image preparation for fitting: detect, align to the training framing, mask, K.

**Training framing** (:class:`Framing`): the image a frontal camera of the synthetic rig
(:mod:`gphm.data.synthetic.render`: distance 4 from the look-at point, field of view
≈ 36.7° so that the whole head covers 66 % of the image height) sees of the canonical
landmark template (:func:`~gphm.data.preprocess.template.canonical_landmarks`) at the
identity head pose. Projecting the template's right-eye centre, left-eye centre and
mouth-corner midpoint gives three target positions (for 512 px: eyes at about
(209, 227) and (303, 227), mouth at (256, 321)).

**Alignment**: the 2D similarity (rotation, uniform scale, translation) that maps the
same three points of the photo's landmarks onto the targets in the least-squares sense
(eyes and mouth weighted equally) warps the photo into an ``out_size``² image. Rotation
in the image plane, position and scale are normalised; yaw and pitch are left to the
head pose that fitting estimates.

**Camera**: ``K`` is the framing camera's (focal from the framing's field of view,
principal point at the image centre). The true focal length of a photo is unknown; this
one is consistent with the framing, so a model head at the framing's distance projects
at the size of the aligned face.

Pixel convention everywhere: pixel centres at (i + 0.5, j + 0.5), like our K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from gphm.data.preprocess.detectors import (
    BackendUnavailableError,
    Detection,
    LandmarkDetector,
    NoFaceError,
    check_rgb_image,
    detect_faces,
    get_detector,
)
from gphm.data.preprocess.masks import (
    HEAD_MARGIN,
    Segmenter,
    composite_on_white,
    face_axis,
    get_segmenter,
    head_hull_mask,
    hull_mask,
    load_mask,
    refine_mask,
)
from gphm.data.preprocess.template import canonical_landmarks, framing_points
from gphm.data.synthetic.render import CAMERA_DISTANCE, FRAMING, HEAD_EXTENT, LOOK_AT
from gphm.geometry.cameras import focal_from_fov, look_at, project_points
from gphm.io.atomic import atomic_write_text
from gphm.io.images import read_image

__all__ = [
    "Framing",
    "below_neck_cut",
    "PreparedImage",
    "prepare_image",
    "read_pts",
    "read_rgb",
    "similarity_2d",
    "warp_image",
    "write_pts",
]

#: Field of view of the synthetic rig (degrees): the head (HEAD_EXTENT tall) covers
#: FRAMING of the image height at CAMERA_DISTANCE.
TRAINING_FOV = math.degrees(2.0 * math.atan(HEAD_EXTENT / (2.0 * FRAMING * CAMERA_DISTANCE)))


@dataclass(frozen=True)
class Framing:
    """Camera that defines the training framing (defaults: the synthetic rig's)."""

    fov_degrees: float = TRAINING_FOV
    """Full field of view across the (square) image."""
    camera_distance: float = CAMERA_DISTANCE
    """Distance of the frontal camera from ``look_at`` along +z (canonical units)."""
    look_at: tuple[float, float, float] = LOOK_AT
    """Canonical point at the image centre."""

    def K(self, size: int) -> np.ndarray:  # [3, 3] float64
        f = focal_from_fov(self.fov_degrees, size)
        return np.array([[f, 0.0, size / 2.0], [0.0, f, size / 2.0], [0.0, 0.0, 1.0]])

    def viewmat(self) -> np.ndarray:  # [4, 4] float64, canonical (world) -> camera
        target = torch.tensor(self.look_at, dtype=torch.float64)
        eye = target + torch.tensor([0.0, 0.0, self.camera_distance], dtype=torch.float64)
        return look_at(eye, target).numpy()

    def landmarks(self, size: int) -> np.ndarray:  # [68, 2] pixels
        """The canonical template's landmarks as this camera sees them."""
        uv, _ = project_points(
            torch.from_numpy(np.array(canonical_landmarks())),
            torch.from_numpy(self.viewmat())[None],
            torch.from_numpy(self.K(size))[None],
        )
        return uv[0].numpy()

    def targets(self, size: int) -> np.ndarray:  # [3, 2] pixels
        """Target right-eye centre, left-eye centre and mouth-corner midpoint."""
        return framing_points(self.landmarks(size))


def similarity_2d(
    src: np.ndarray,  # [N, 2]
    dst: np.ndarray,  # [N, 2]
    weights: np.ndarray | None = None,  # [N] >= 0
) -> np.ndarray:  # [2, 3]: dst ≈ M[:, :2] @ src + M[:, 2]
    """Least-squares 2D similarity (rotation, uniform scale, translation; no reflection).

    Closed form in complex numbers: ``d = a·s + b`` with ``a = Σ w·d̃·conj(s̃) / Σ w·|s̃|²``
    on centred points. Needs two distinct points.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or dst.shape != src.shape:
        raise ValueError(f"src and dst must both be [N, 2], got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    ms, md = (w * zs).sum(), (w * zd).sum()
    denom = (w * np.abs(zs - ms) ** 2).sum()
    if not denom > 1e-12:
        raise ValueError("similarity_2d: the source points coincide")
    a = (w * (zd - md) * np.conj(zs - ms)).sum() / denom
    b = md - a * ms
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def _invert_affine(M: np.ndarray) -> np.ndarray:  # [2, 3] -> [2, 3]
    A_inv = np.linalg.inv(M[:, :2])
    return np.concatenate([A_inv, -A_inv @ M[:, 2:]], axis=1)


def _apply(M: np.ndarray, pts: np.ndarray) -> np.ndarray:  # [..., 2]
    return pts @ M[:, :2].T + M[:, 2]


def warp_image(
    image: np.ndarray,  # [H, W, C] or [H, W], uint8 or float32
    M: np.ndarray,  # [2, 3] input pixels -> output pixels (centres at i + 0.5)
    size: tuple[int, int],  # (H_out, W_out)
    border: str = "replicate",  # or "zero"
) -> np.ndarray:  # [H_out, W_out(, C)], dtype of image
    """Resample ``image`` under the affine map ``M`` (bilinear).

    A strong shrink (scale < 0.75) first area-averages the image down to about the output
    pixel density, so the result is not aliased. OpenCV puts pixel centres at integers:
    the matrix is shifted by half a pixel on both sides.
    """
    H, W = image.shape[:2]
    scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
    if scale < 0.75:
        w2, h2 = max(1, round(W * scale)), max(1, round(H * scale))
        image = cv2.resize(image, (w2, h2), interpolation=cv2.INTER_AREA)
        M = M @ np.diag([W / w2, H / h2, 1.0])  # input coords of the shrunk image
    M_cv = M.copy()
    M_cv[:, 2] = M[:, 2] + M[:, :2] @ np.array([0.5, 0.5]) - 0.5
    mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
    return cv2.warpAffine(
        image, M_cv, (size[1], size[0]), flags=cv2.INTER_LINEAR, borderMode=mode, borderValue=0
    )


# ----------------------------------------------------------------------------- files


def read_rgb(path: str | Path) -> np.ndarray:  # [H, W, 3] uint8
    """An image file as uint8 RGB, decoded by :func:`gphm.io.images.read_image` (upright,
    any bit depth or colour mode, a transparent cutout composited on white); errors name it.
    """
    return _to_uint8(read_image(path).rgb)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:  # float [..., 3] in [0, 1] -> uint8
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def read_pts(path: str | Path, pixel_origin: float = 1.0) -> np.ndarray:  # [N, 2]
    """Landmarks from an iBUG ``.pts`` file, converted to our pixel convention.

    iBUG files (``version: 1``, ``n_points: N``, ``{``, N lines ``x y``, ``}``) count
    pixels from 1 (MATLAB: the first pixel's centre is at 1.0): ``pixel_origin`` is that
    centre's coordinate in the file (1.0 for iBUG/300-W, 0.0 for tools in OpenCV's
    convention); we return ``x - pixel_origin + 0.5``. Blank lines and ``#`` comments
    are skipped. Errors are one ``ValueError`` line naming the file and the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: landmark file not found")
    lines: list[tuple[int, str]] = []  # (1-based line number, stripped text)
    for no, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{path}: line {no}: not UTF-8 text (is this a .pts file?)") from None
        if text and not text.startswith("#"):
            lines.append((no, text))
    header: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i][1] != "{":
        no, text = lines[i]
        key, sep, value = text.partition(":")
        if not sep:
            raise ValueError(f"{path}: line {no}: {text[:40]!r}: expected 'key: value' or '{{'")
        header[key.strip()] = value.strip()
        i += 1
    if "n_points" not in header or not header["n_points"].isdigit():
        raise ValueError(f"{path}: missing or bad 'n_points' in the header")
    n = int(header["n_points"])
    if i >= len(lines):
        raise ValueError(f"{path}: no '{{' line: expected {n} 'x y' lines between '{{' and '}}'")
    body = lines[i + 1 : i + n + 1]
    pts = np.empty((n, 2), dtype=np.float64)
    for k, (no, text) in enumerate(body):
        if text == "}":
            raise ValueError(f"{path}: line {no}: '}}' after {k} points, expected {n}")
        try:
            values = [float(v) for v in text.split()]
        except ValueError:
            values = []
        if len(values) != 2 or not np.isfinite(values).all():
            raise ValueError(f"{path}: line {no}: {text[:40]!r}: expected two finite numbers 'x y'")
        pts[k] = values
    if len(body) < n:
        raise ValueError(f"{path}: ends after {len(body)} of {n} points (no closing '}}')")
    closing = lines[i + n + 1] if i + n + 1 < len(lines) else None
    if closing is None or closing[1] != "}":
        where = f"line {closing[0]}" if closing else "end of file"
        raise ValueError(f"{path}: {where}: expected '}}' after {n} points")
    return pts - pixel_origin + 0.5


def write_pts(path: str | Path, landmarks: np.ndarray, pixel_origin: float = 1.0) -> Path:
    """Write ``landmarks`` [N, 2] (our convention) as an iBUG ``.pts`` file, atomically."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise ValueError(f"landmarks must be finite [N, 2], got {pts.shape}")
    body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in pts + pixel_origin - 0.5)
    return atomic_write_text(path, f"version: 1\nn_points: {len(pts)}\n{{\n{body}\n}}\n")


# ----------------------------------------------------------------------------- prepare


@dataclass
class PreparedImage:
    """A photo aligned to the training framing; everything single-image fitting needs."""

    image: np.ndarray  # [S, S, 3] float32 in [0, 1], composited on white with `mask`
    rgb: np.ndarray  # [S, S, 3] float32 in [0, 1], the aligned photo before compositing
    mask: np.ndarray  # [S, S, 1] float32 in [0, 1], 1 = head
    landmarks: np.ndarray  # [68, 2] float64 pixels of `image`, iBUG order
    K: np.ndarray  # [3, 3] float64 intrinsics of `image` (the framing camera)
    to_input: np.ndarray  # [2, 3] float64: u_input = to_input[:, :2] @ u + to_input[:, 2]
    input_size: tuple[int, int]  # (H, W) of the input photo
    source: str | None = None  # input path, when given one
    detection: Detection | None = field(default=None, repr=False)  # None with given landmarks
    mask_source: str = "segmentation"
    """How ``mask`` was made: segmentation | alpha | head_hull | hull | user."""
    faces_found: int | None = None
    """Faces the detector found (None: landmarks were given, nothing was detected)."""
    face: int = 0
    """Which of them was prepared (0 = the largest; sorted by size, largest first)."""

    @property
    def from_input(self) -> np.ndarray:  # [2, 3]: input pixels -> prepared pixels
        return _invert_affine(self.to_input)

    def map_to_input(self, points: np.ndarray) -> np.ndarray:  # [..., 2] -> [..., 2]
        return _apply(self.to_input, np.asarray(points, np.float64))

    def map_from_input(self, points: np.ndarray) -> np.ndarray:  # [..., 2] -> [..., 2]
        return _apply(self.from_input, np.asarray(points, np.float64))


def _landmarks_of(landmarks: np.ndarray | str | Path, size: tuple[int, int]) -> np.ndarray:
    if isinstance(landmarks, (str, Path)):
        where, pts = str(landmarks), read_pts(landmarks)
    else:
        where, pts = "landmarks", np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise ValueError(f"{where}: expected 68 finite iBUG landmarks [68, 2], got {pts.shape}")
    H, W = size
    if not (np.abs(pts - [W / 2, H / 2]) < 1.5 * max(H, W)).all():
        raise ValueError(f"{where}: landmarks lie far outside the {H}x{W} image")
    return pts


def below_neck_cut(
    landmarks: np.ndarray,
    size: tuple[int, int],
    neck: float,
    neck_width: float | None = None,
) -> np.ndarray:
    """[H, W] float32: 1 where a pixel centre lies at most ``neck`` × (chin − brow) below
    the chin (iBUG 68 landmark 8) along the brow → chin axis, else 0. With ``neck_width``,
    below the chin only a band about the face's vertical axis is kept, ``neck_width`` ×
    the jaw's width at the mouth (landmarks 4–12) wide: the neck, not the shoulders or
    a collar beside it, which the head model cannot render."""
    chin = landmarks[8]
    _, axis, length = face_axis(landmarks)  # brow midpoint -> chin
    if length < 1e-6:
        return np.ones(size, np.float32)
    H, W = size
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
    t = ((xs - chin[0]) * axis[0] + (ys - chin[1]) * axis[1]) / (length * length)
    keep = t <= neck
    if neck_width is not None:
        lateral = np.abs((xs - chin[0]) * axis[1] - (ys - chin[1]) * axis[0]) / length  # px
        half = 0.5 * neck_width * float(np.linalg.norm(landmarks[12] - landmarks[4]))
        keep &= (t <= 0) | (lateral <= half)
    return keep.astype(np.float32)


def prepare_image(
    image: np.ndarray | str | Path,  # uint8 [H, W, 3] RGB, or an image file
    detector: LandmarkDetector | str | None = None,  # default: get_detector("mediapipe")
    landmarks: np.ndarray | str | Path | None = None,  # [68, 2] input pixels or a .pts file
    mask: np.ndarray | str | Path | None = None,  # None, "hull", [H, W] uint8/bool, or a file
    segmenter: Segmenter | None = None,  # default: get_segmenter("mediapipe")
    out_size: int = 512,
    framing: Framing | None = None,
    neck: float | None = 0.3,
    *,
    face: int = 0,
    neck_width: float | None = 1.0,
    head_margin: float | None = HEAD_MARGIN,
) -> PreparedImage:
    """Align a photo to the training framing (module docstring) and mask it.

    Landmarks come from ``landmarks`` when given (no detector runs), else from
    ``detector``. ``mask``: None = segmentation refined with the face hull (the
    detector's dense points when there are any, else the 68 landmarks). The segmentation
    is the photo's own alpha when the file is a transparent cutout
    (:mod:`gphm.io.images`), else ``segmenter``'s (MediaPipe by default); when no
    ``segmenter`` is given and MediaPipe is not installed, the mask is
    :func:`~gphm.data.preprocess.masks.head_hull_mask` of the landmarks (face, forehead
    and cranium from the 68 points alone; ``PreparedImage.mask_source`` says which);
    ``"hull"`` = the landmarks' convex hull only (no MediaPipe
    needed; excludes forehead and hair); an array or file = a user mask at the input's
    size. ``neck`` (segmentation masks only): the mask stops ``neck`` × (chin − brow
    height) below the chin, along the face's vertical axis, as the training heads' necks
    do (0.28 on the synthetic set, median over views); a person segmentation would
    otherwise include shoulders and clothes the head model cannot render. ``None`` keeps
    the whole segmentation. ``neck_width``: below the chin only the neck is kept, a band
    ``neck_width`` × the jaw's width (:func:`below_neck_cut`; None: the whole width).
    ``head_margin`` (segmentation masks only): above the chin the segmentation is kept
    only within this fraction of the brow-to-chin height around the landmarks' head hull
    (:func:`~gphm.data.preprocess.masks.head_region`: no car seats, arms or a neighbour's
    shoulder; None: no bound). ``face``: which detected face to prepare when the photo
    shows several, by size (0 = the largest, 1 = the next, ...; ``faces_found`` says how
    many there were); the face's landmarks also restrict the segmentation to its own person
    (:func:`~gphm.data.preprocess.masks.refine_mask`). Raises :class:`NoFaceError`
    (naming the file when given a path), :class:`BackendUnavailableError`,
    ``FileNotFoundError`` / ``ValueError`` naming the bad file or argument (a ``face``
    beyond the faces found among them).
    """
    if out_size < 16:
        raise ValueError(f"out_size must be >= 16, got {out_size}")
    framing = framing or Framing()
    source = str(image) if isinstance(image, (str, Path)) else None
    alpha = None
    if source is not None:
        decoded = read_image(image)
        rgb_in, alpha = _to_uint8(decoded.rgb), decoded.alpha
    else:
        rgb_in = check_rgb_image(image)
    H, W = rgb_in.shape[:2]

    detection = None
    if landmarks is not None:
        lmk_in = _landmarks_of(landmarks, (H, W))
    else:
        if detector is None or isinstance(detector, str):
            detector = get_detector(detector or "mediapipe")
        faces = detect_faces(detector, rgb_in, source=source)
        if not faces:
            raise NoFaceError(source, getattr(detector, "name", ""))
        if not 0 <= face < len(faces):
            where = source or "the image"
            raise ValueError(
                f"face={face}: {len(faces)} face(s) found in {where}; face=INDEX counts "
                f"them by size from 0 (the largest) to {len(faces) - 1}"
            )
        detection = faces[face]
        lmk_in = detection.landmarks68

    if isinstance(mask, str) and mask == "hull":
        mask_in, mask_source = hull_mask(lmk_in, (H, W)).astype(np.uint8) * 255, "hull"
    elif mask is None:
        dense = detection.dense if detection is not None else None
        face_points = dense if dense is not None else lmk_in
        prob, mask_source = alpha, "alpha"  # a transparent cutout is the segmentation
        if prob is None:
            mask_source = "segmentation"
            try:
                prob = (segmenter or get_segmenter("mediapipe")).segment(rgb_in)
            except BackendUnavailableError:
                if segmenter is not None:
                    raise
        if prob is None:  # no segmentation model: the landmarks' head hull
            mask_source = "head_hull"
            mask_in = head_hull_mask(lmk_in, (H, W)).astype(np.uint8) * 255
        else:
            bound = None if head_margin is None else lmk_in
            mask_in = refine_mask(prob, face_points, landmarks=bound, margin=head_margin or 0.0)
    elif isinstance(mask, (str, Path)):
        mask_in, mask_source = load_mask(mask, (H, W)), "user"
    else:
        mask_in, mask_source = np.asarray(mask), "user"
        if mask_in.dtype == np.bool_:
            mask_in = mask_in.astype(np.uint8) * 255
        if mask_in.shape != (H, W) or mask_in.dtype != np.uint8:
            raise ValueError(
                f"mask: expected uint8 or bool [{H}, {W}] like the image, got "
                f"{mask_in.dtype} {mask_in.shape}"
            )

    M = similarity_2d(framing_points(lmk_in), framing.targets(out_size))  # input -> output
    size = (out_size, out_size)
    rgb = warp_image(rgb_in, M, size).astype(np.float32) / 255.0
    m = warp_image(mask_in.astype(np.float32) / 255.0, M, size, border="zero")
    m = np.clip(m, 0.0, 1.0)
    lmk_out = _apply(M, lmk_in)
    if mask is None and neck is not None:
        m = m * below_neck_cut(lmk_out, size, neck, neck_width)
    m = m[..., None]
    return PreparedImage(
        image=composite_on_white(rgb, m),
        rgb=rgb,
        mask=m,
        landmarks=lmk_out,
        K=framing.K(out_size),
        to_input=_invert_affine(M),
        input_size=(H, W),
        source=source,
        detection=detection,
        mask_source=mask_source,
        faces_found=None if landmarks is not None else len(faces),
        face=face,
    )
