"""Reading a calibrated multi-view capture (the input of ``scripts/preprocess.py``).

Layout under ``src`` (names are case-sensitive; frames are taken in sorted folder-name
order, which defines the global frame index)::

    frames/{frame}/{cam}.png            RGB images (.png, .jpg or .jpeg), one per camera;
                                        a camera may be missing from a frame
    masks/{frame}/{cam}.png             optional user masks (8-bit, 255 = head), same size
    cameras.json                        {"<cam>": {"intrinsic": [3, 3], "extrinsic":
                                        [3, 4] or [4, 4]}, ...}
    cameras/{cam}.npz                   or one npz per camera with the same two fields
                                        (used only when cameras.json is absent)

``intrinsic`` is in pixels of the images, with OpenCV's pixel centres at integers (as
calibration tools write it): ``principal_point_offset`` (default 0.5) is added to cx, cy
to reach ours (centres at i + 0.5). ``extrinsic`` maps world → camera (OpenCV axes: x
right, y down, z forward). Cameras are static over the capture. All images must have the
same size (a view of another size is reported as bad).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gphm.data.importers.nersemble import CaptureError
from gphm.io.npz import load_npz

__all__ = ["Camera", "CaptureLayout", "View", "scan_capture"]

_IMAGE_RE = re.compile(r"^(?P<cam>.+)\.(?:png|jpg|jpeg)$")
_MASK_EXTS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Camera:
    name: str
    K: np.ndarray  # [3, 3] float64, source pixels, our convention (centres at i + 0.5)
    viewmat: np.ndarray  # [4, 4] float64, source world -> camera


@dataclass(frozen=True)
class View:
    frame: str
    camera: str
    image: Path
    mask: Path | None  # user mask, when there is one

    @property
    def rel(self) -> str:
        return f"frames/{self.frame}/{self.image.name}"


@dataclass(frozen=True)
class CaptureLayout:
    src: Path
    cameras: dict[str, Camera]
    frames: list[str]  # sorted frame folder names
    views: dict[str, list[View]]  # frame -> views in camera-name order


def _check_camera(
    where: str, name: str, intrinsic: object, extrinsic: object, offset: float
) -> Camera:
    arrays = {}
    for field, value, shapes in (
        ("intrinsic", intrinsic, ((3, 3),)),
        ("extrinsic", extrinsic, ((3, 4), (4, 4))),
    ):
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise CaptureError(f"{where}: field '{field}' is not numeric") from None
        if a.shape not in shapes:
            want = " or ".join(str(s) for s in shapes)
            raise CaptureError(f"{where}: field '{field}' has shape {a.shape}, expected {want}")
        if not np.isfinite(a).all():
            raise CaptureError(f"{where}: field '{field}' has non-finite values")
        arrays[field] = a
    K = arrays["intrinsic"].copy()
    if not (K[0, 0] > 0 and K[1, 1] > 0 and K[1, 0] == 0 and np.allclose(K[2], [0, 0, 1])):
        raise CaptureError(
            f"{where}: field 'intrinsic' must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]], fx, fy > 0"
        )
    K[:2, 2] += offset
    V = np.eye(4)
    V[:3] = arrays["extrinsic"][:3]
    R = V[:3, :3]
    if not (np.allclose(R @ R.T, np.eye(3), atol=1e-4) and np.linalg.det(R) > 0):
        raise CaptureError(f"{where}: field 'extrinsic' must have a rotation in its 3x3 block")
    return Camera(name, K, V)


def _read_cameras(src: Path, offset: float) -> dict[str, Camera]:
    path = src / "cameras.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CaptureError(f"cameras.json: not valid JSON ({err})") from None
        if not isinstance(data, dict) or not data:
            raise CaptureError("cameras.json: expected {camera: {intrinsic, extrinsic}}")
        cams = {}
        for name, entry in data.items():
            where = f"cameras.json: camera '{name}'"
            if not isinstance(entry, dict) or {"intrinsic", "extrinsic"} - set(entry):
                raise CaptureError(f"{where}: expected an object with intrinsic and extrinsic")
            cams[name] = _check_camera(where, name, entry["intrinsic"], entry["extrinsic"], offset)
        return cams
    folder = src / "cameras"
    files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    if not files:
        raise CaptureError("cameras.json: file not found (nor cameras/*.npz)")
    cams = {}
    for p in files:
        where = f"cameras/{p.name}"
        try:
            data = load_npz(p)  # sizes checked before anything is inflated
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise CaptureError(f"{where}: cannot read npz ({type(err).__name__}: {err})") from None
        missing = {"intrinsic", "extrinsic"} - set(data)
        if missing:
            raise CaptureError(f"{where}: missing field(s) {sorted(missing)} (has {sorted(data)})")
        cams[p.stem] = _check_camera(
            f"{where}: camera '{p.stem}'", p.stem, data["intrinsic"], data["extrinsic"], offset
        )
    return cams


def scan_capture(
    src: str | Path, principal_point_offset: float = 0.5, require_masks: bool = False
) -> CaptureLayout:
    """Find frames, views, user masks and cameras; raises :class:`CaptureError` naming the file.

    Images are not opened here: unreadable ones are found (and reported) when processed.
    """
    src = Path(src)
    if not src.is_dir():
        raise CaptureError(f"{src}: capture folder not found")
    cameras = _read_cameras(src, principal_point_offset)
    frames_dir = src / "frames"
    if not frames_dir.is_dir():
        raise CaptureError("frames: folder not found")
    frames = sorted(p.name for p in frames_dir.iterdir() if p.is_dir())
    if not frames:
        raise CaptureError("frames: no frame folders")
    views: dict[str, list[View]] = {}
    for frame in frames:
        found: dict[str, View] = {}
        for p in sorted((frames_dir / frame).iterdir()):
            m = _IMAGE_RE.match(p.name)
            if not m or not p.is_file():
                continue
            cam = m.group("cam")
            if cam not in cameras:
                raise CaptureError(
                    f"frames/{frame}/{p.name}: camera '{cam}' has no calibration "
                    f"(cameras: {sorted(cameras)})"
                )
            if cam in found:
                raise CaptureError(f"frames/{frame}/{p.name}: a second image of camera '{cam}'")
            mask = next(
                (
                    src / "masks" / frame / (cam + ext)
                    for ext in _MASK_EXTS
                    if (src / "masks" / frame / (cam + ext)).is_file()
                ),
                None,
            )
            if mask is None and require_masks:
                raise CaptureError(
                    f"masks/{frame}/{cam}.png: file not found (mask=user needs a mask per image)"
                )
            found[cam] = View(frame, cam, p, mask)
        if not found:
            raise CaptureError(f"frames/{frame}: no {{cam}}.png/.jpg images")
        views[frame] = [found[c] for c in sorted(found)]
    return CaptureLayout(src, cameras, frames, views)
