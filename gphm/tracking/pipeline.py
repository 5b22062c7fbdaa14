"""The two commands' work, callable from Python (``scripts/track_video.py`` and
``scripts/reenact.py`` only parse options and call these)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gphm.fitting.sources import resolve_source
from gphm.io.atomic import check_output_dir
from gphm.io.images import image_grid, save_png
from gphm.io.video import save_mp4
from gphm.models.runs import TrainedRun
from gphm.tracking.inputs import frames_from_dataset, frames_from_video
from gphm.tracking.outputs import driver_frames, even_frame, reenact, write_tracking
from gphm.tracking.track import (
    TRACKING_JSON,
    TrackConfig,
    Tracking,
    is_tracking_dir,
    track_frames,
)

__all__ = ["track_video", "reenact_to_dir", "load_frames"]


def load_frames(
    run: TrainedRun,
    video: str | None = None,
    data: str | None = None,
    subject: str | None = None,
    camera: str | None = None,
    detector: Any = "mediapipe",
    max_frames: int = 0,
):
    """Frames of ``video`` (an .mp4 or image folder) or of a dataset subject's camera,
    at the model's output size; and a record of where they came from."""
    size = int(run.extra.get("hr_size") or 0)
    if size <= 0:
        raise ValueError(f"{run.path}: the model does not record its output size (hr_size)")
    if (video is None) == (data is None):
        raise ValueError("give exactly one of video=PATH or data=DIR (with subject=NAME)")
    if data is not None:
        if subject is None:
            raise ValueError("data=DIR needs subject=NAME (a subject of the dataset)")
        frames, items, ds = frames_from_dataset(data, subject, camera, run.extra.get("lr_size"))
        if max_frames:
            frames = frames[:max_frames]
        if ds.meta["image_size"] != [size, size]:
            raise ValueError(
                f"data={data}: images are {ds.meta['image_size']}, the model renders "
                f"{size}x{size}; generate the sequence at resolution={size}"
            )
        source = {"kind": "dataset", "data": str(data), "subject": str(subject),
                  "camera": frames[0].info["camera"],
                  "landmarks": "ground truth projected"}  # fmt: skip
        return frames, source
    frames = frames_from_video(video, size, detector=detector, max_frames=max_frames)
    name = detector if isinstance(detector, str) else getattr(detector, "name", "custom")
    return frames, {"kind": "video", "video": str(video), "landmarks": name}


def track_video(
    run: TrainedRun,
    out: str | Path,
    video: str | None = None,
    data: str | None = None,
    subject: str | None = None,
    camera: str | None = None,
    config: TrackConfig | None = None,
    detector: Any = "mediapipe",
    max_frames: int = 0,
    fps: int = 24,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Track a video (or a dataset subject's camera) and write ``out`` (see
    :mod:`gphm.tracking.outputs`); returns the report. ``overwrite`` replaces an earlier
    tracking directory as a whole, never a folder of other files."""
    check_output_dir(out, overwrite)
    if Path(out).is_dir() and any(Path(out).iterdir()) and not is_tracking_dir(out):
        raise FileExistsError(
            f"out={out} is a non-empty folder that is not a tracking ({TRACKING_JSON}); not "
            "replacing it even with overwrite=true: choose another out"
        )
    frames, source = load_frames(run, video, data, subject, camera, detector, max_frames)
    tracking = track_frames(run, frames, config, progress=progress)
    report = write_tracking(out, run.model, tracking, frames, source, fps=fps,
                            overwrite=overwrite)  # fmt: skip
    report["out"] = str(out)
    report["checkpoint"] = str(run.path)
    # How much of each frame's head mask the tracked render covers (None: not rendered).
    report["coverage_per_frame"] = tracking.info.get("coverage")
    report["low_coverage_frames"] = tracking.info.get("low_coverage_frames", [])
    return report


def reenact_to_dir(
    run: TrainedRun,
    driver: str,
    target: str,
    out: str | Path,
    pose: str = "driver",
    size: int | None = None,
    transfer: str = "absolute",
    config: TrackConfig | None = None,
    detector: str = "mediapipe",
    fps: int = 24,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Drive ``target`` (a training subject, avatar dir or image: :func:`resolve_source`)
    with ``driver`` (a tracking directory, or a video tracked first into
    ``out/driver``); writes ``out/reenact.mp4`` (driver | target driven) and
    ``out/frames/``; returns the report."""
    out = Path(out)
    check_output_dir(out, overwrite)
    if is_tracking_dir(driver):
        tracking = Tracking.load(driver, run.model)
        driver_dir = Path(driver)
    elif not Path(driver).exists():
        raise FileNotFoundError(
            f"driver={driver}: neither a track_video.py output directory ({TRACKING_JSON}) "
            "nor a video file or frame folder"
        )
    else:
        driver_dir = out / "driver"
        track_video(run, driver_dir, video=driver, config=config, detector=detector, fps=fps,
                    overwrite=True, progress=progress)  # fmt: skip
        tracking = Tracking.load(driver_dir, run.model)
    src = resolve_source(target, run, detector=detector)
    frames, spf = reenact(src, tracking, pose=pose, size=size, transfer=transfer)
    S = frames[0].shape[0]
    inputs = driver_frames(driver_dir, tracking.num_frames)
    sides = []
    for t, f in enumerate(frames):
        if inputs is not None and inputs[t].shape == f.shape:
            sides.append(even_frame(image_grid([inputs[t], f], ncols=2)))
        else:
            sides.append(even_frame(f))
        save_png(out / "frames" / f"{t:05d}.png", f)
    save_mp4(out / "reenact.mp4", sides, fps=fps)
    return {
        "driver": str(driver),
        "target": {"spec": target, "label": src.label, "kind": src.kind, **(src.info or {})},
        "pose": pose,
        "transfer": transfer,
        "num_frames": len(frames),
        "size": S,
        "carried_frames": [t for t, c in enumerate(tracking.carried) if c],
        "render_seconds_per_frame": round(spf, 4),
        "checkpoint": str(run.path),
        "out": str(out),
        "outputs": ["reenact.mp4", "frames/"] + (["driver/"] if driver_dir != Path(driver) else []),
        "side_by_side": inputs is not None,
    }
