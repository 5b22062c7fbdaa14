"""Frames to track: a sequence dataset's camera, an ``.mp4`` file or a folder of images.

* :func:`frames_from_dataset` — one subject seen by one camera of a gphm dataset, in
  ``sequence_step`` order (``frame`` order for datasets without the column). Each frame
  gets its ground-truth image, mask, ``K`` and the dataset's 3D landmarks projected: no
  detector, like ``split=fit`` with ``fit.inputs=gt``; and, where the frame's cameras are
  aimed at one point, that point as its ``head_center`` (the first fit's size). The
  camera is the world origin of the tracking, so the returned items say where the other
  cameras are.
* :func:`frames_from_video` — every frame goes through
  :func:`~gphm.data.preprocess.single_image.prepare_image` (detector landmarks,
  segmentation mask, aligned to the training framing at the model's output size). A frame
  where the detector finds no face becomes a :class:`TrackFrame` without landmarks (the
  tracker carries the previous frame over). Note that each frame is aligned on its own
  landmarks, so in-plane head motion (position, scale, roll) is normalised away by the
  crop; the tracked pose holds what is left (yaw, pitch, depth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from gphm.data.format import SPLITS
from gphm.data.loaders import HeadDataset, HeadItem
from gphm.data.preprocess.detectors import NoFaceError
from gphm.evaluation.fit import target_from_item
from gphm.fitting.sources import IMAGE_SUFFIXES
from gphm.geometry.cameras import rig_center, world_to_camera
from gphm.io.images import box_downsample
from gphm.tracking.track import TrackFrame

__all__ = ["frames_from_dataset", "frames_from_video", "read_video", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


def subject_rows(ds: HeadDataset, subject: str | int) -> tuple[int, list[int]]:
    """``(subject index, dataset indices of its rows)``; ``ValueError`` naming the choices."""
    names = ds.meta["subjects"]
    if isinstance(subject, str) and subject in names:
        s = names.index(subject)
    else:
        try:
            s = int(subject)
        except (TypeError, ValueError):
            raise ValueError(f"{ds.path}: no subject {subject!r}; it has {names}") from None
        if not 0 <= s < len(names):
            raise ValueError(f"{ds.path}: subject index {s} out of range [0, {len(names)})")
    return s, [i for i in range(len(ds)) if int(ds.subjects[i]) == s]


def sequence_steps(ds: HeadDataset) -> dict[int, int]:
    """Global frame index -> sequence step (the frame index itself without the column)."""
    frames = ds.meta["frames"]
    return {f: int(frames[f].get("sequence_step", f)) for f in range(len(frames))}


def frames_from_dataset(
    data_path: str | Path,
    subject: str | int,
    camera: str | None = None,
    lr_size: int | None = None,
) -> tuple[list[TrackFrame], list[HeadItem], HeadDataset]:
    """The rows of ``subject`` at ``camera`` (default: the sequence's driving camera,
    else the first camera), ordered by sequence step. Returns the frames, their dataset
    items (same order) and the dataset."""
    ds = HeadDataset(data_path, split=list(SPLITS), lr_size=lr_size)
    cams = list(ds.meta["cameras"])
    if camera is None:
        camera = (ds.meta.get("sequence") or {}).get("driving_camera") or cams[0]
    if camera not in cams:
        raise ValueError(f"{data_path}: no camera {camera!r}; it has {cams}")
    _, rows = subject_rows(ds, subject)
    steps = sequence_steps(ds)
    cam_col = ds.ds.data.column("camera").to_pylist()
    picked = [i for i in rows if cam_col[int(ds.indices[i])] == camera]
    picked.sort(key=lambda i: (steps[int(ds.frames[i])], int(ds.frames[i])))
    items = [ds[i] for i in picked]
    centers = rig_centers(ds, rows)
    frames = []
    for it in items:
        tgt = target_from_item(it)
        c = centers.get(int(it.frame))
        frames.append(TrackFrame(image=tgt.image, mask=tgt.mask, K=tgt.K, landmarks=tgt.landmarks,
                                 head_center=None if c is None else
                                 world_to_camera(it.viewmat, c[None])[0],
                                 info={"frame": int(it.frame), "camera": it.camera,
                                       "step": steps[int(it.frame)]}))  # fmt: skip
    return frames, items, ds


def rig_centers(ds: HeadDataset, rows: list[int]) -> dict[int, torch.Tensor | None]:
    """Global frame index -> the world point its cameras are aimed at
    (:func:`~gphm.geometry.cameras.rig_center`, None where they define none), over the
    dataset indices ``rows`` (one subject's), from :meth:`HeadDataset.viewmats`."""
    by_frame: dict[int, list[int]] = {}
    for i in rows:
        by_frame.setdefault(int(ds.frames[i]), []).append(i)
    return {f: rig_center(ds.viewmats(ids)) for f, ids in by_frame.items()}


def read_video(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """``[(name, uint8 [H, W, 3])]`` of an ``.mp4`` (imageio-ffmpeg) or an image folder
    (sorted by file name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"video={path}: a folder without {'/'.join(IMAGE_SUFFIXES)} images")
        from gphm.data.preprocess.single_image import read_rgb

        return [(p.name, read_rgb(p)) for p in files]
    if not path.is_file():
        raise FileNotFoundError(f"video={path}: no such file or folder")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(
            f"video={path}: expected a video ({'/'.join(VIDEO_SUFFIXES)}) or a folder of frames"
        )
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(str(path))
        frames = [(f"{path.name}#{i}", np.asarray(f)[..., :3]) for i, f in enumerate(reader)]
        reader.close()
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"video={path}: cannot decode ({err})") from None
    if not frames:
        raise ValueError(f"video={path}: no frames")
    return frames


def frames_from_video(
    path: str | Path,
    size: int,
    detector: Any = "mediapipe",
    segmenter: Any = None,
    max_frames: int = 0,
) -> list[TrackFrame]:
    """Prepare every frame of a video or image folder (module docstring) at ``size``."""
    from gphm.data.preprocess.single_image import Framing, prepare_image

    raw = read_video(path)
    if max_frames:
        raw = raw[:max_frames]
    K = torch.from_numpy(Framing().K(size)).float()
    out = []
    for name, rgb in raw:
        try:
            p = prepare_image(rgb, detector=detector, segmenter=segmenter, out_size=size)
        except NoFaceError:
            # Keep the frame for the overlay (resized, unaligned); no landmarks: carried.
            H, W = rgb.shape[:2]
            side = min(H, W)  # the centred square, so the overlay is not stretched
            y0, x0 = (H - side) // 2, (W - side) // 2
            img = torch.from_numpy(rgb[y0 : y0 + side, x0 : x0 + side].astype(np.float32) / 255)
            img = box_downsample(img, (size, size))
            info = {"file": name, "no_face": True}
            out.append(TrackFrame(img, torch.zeros(size, size, 1), K, None, info=info))
            continue
        out.append(TrackFrame(
            image=torch.from_numpy(p.image).float(), mask=torch.from_numpy(p.mask).float(),
            K=torch.from_numpy(p.K).float(), landmarks=torch.from_numpy(p.landmarks).float(),
            info={"file": name, "to_input": np.round(p.to_input, 5).tolist(),
                  "mask_source": p.mask_source},
        ))  # fmt: skip
    return out
