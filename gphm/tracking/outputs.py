"""What ``track_video.py`` and ``reenact.py`` write: a tracking directory and a
reenactment video.

Tracking directory (:func:`write_tracking`)::

    tracking.safetensors  z_exp [T, Dexp], head_R [T, 3, 3], head_T [T, 3], K [T, 3, 3],
                          landmarks / input_landmarks [T, L, 2], carried [T]
    tracking.json         frames, carried frames, identity frame, seconds, source
    avatar/               the fitted identity (scripts/edit_expression.py accepts it)
    frames/00000.png ...  the (aligned) input frames, what reenact.py shows as the driver
    overlay.mp4           input | tracked render | landmarks (input green, tracked red)
    report.json           seconds_per_frame, landmark_error_px (per frame and mean), jitter

Reenactment (:func:`reenact`): the target identity rendered with the driver's per-frame
expression codes, at the driver's head pose (``pose="driver"``) or at the canonical pose
seen by the training framing camera (``pose="target"``: the target's own, still head).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gphm.fitting.sources import Source
from gphm.io.images import draw_points, image_grid, load_image, save_png
from gphm.io.jsonfile import write_report
from gphm.io.video import save_mp4
from gphm.tracking.track import TrackFrame, Tracking, landmark_jitter, render_tracking

__all__ = [
    "TRANSFERS",
    "write_tracking",
    "tracking_report",
    "reenact",
    "driver_frames",
    "even_frame",
    "REENACT_POSES",
]

REENACT_POSES = ("driver", "target")
TRANSFERS = ("absolute", "relative")


def even_frame(image: Tensor) -> Tensor:  # [H, W, 3] -> even H and W (H.264)
    H, W = image.shape[:2]
    return image[: H - H % 2, : W - W % 2]


def tracking_report(tracking: Tracking) -> dict[str, Any]:
    """``seconds_per_frame``, per-frame and mean ``landmark_error_px``, ``jitter`` (mean
    landmark acceleration of the tracked landmarks, px) and ``jitter_input`` (the same of
    the input landmarks: the motion the video itself has)."""
    errors = tracking.landmark_errors()
    finite = [e for e in errors if e is not None]
    spf = tracking.seconds_per_frame()
    jitter, jitter_in = landmark_jitter(tracking.landmarks), None
    if not any(tracking.carried):
        jitter_in = landmark_jitter(tracking.input_landmarks)
    return {
        "num_frames": tracking.num_frames,
        "carried_frames": [t for t, c in enumerate(tracking.carried) if c],
        "identity_frame": tracking.identity_frame,
        "seconds_per_frame": None if spf is None else round(spf, 4),
        "identity_fit_seconds": tracking.info.get("identity_fit_seconds"),
        "landmark_error_px": round(float(np.mean(finite)), 4) if finite else None,
        "landmark_error_px_per_frame": [None if e is None else round(e, 4) for e in errors],
        "jitter": None if jitter is None else round(jitter, 4),
        "jitter_input": None if jitter_in is None else round(jitter_in, 4),
        "image_size": tracking.image_size,
    }


def overlay_frames(run_model: Any, tracking: Tracking, frames: list[TrackFrame]) -> list[Tensor]:
    """[T] of [S, 3S, 3]: input | tracked render | input with landmarks."""
    net = tracking.avatar.personalised(run_model)
    T, S = tracking.num_frames, tracking.image_size
    eye = torch.eye(4).expand(T, 4, 4)
    renders = render_tracking(net, tracking.avatar, tracking.z_exp, tracking.head_R,
                              tracking.head_T, float(tracking.avatar.head_scale), eye,
                              tracking.K, S)  # fmt: skip
    out = []
    for t, f in enumerate(frames):
        marked = draw_points(f.image.float().cpu(), tracking.input_landmarks[t])
        marked = draw_points(marked, tracking.landmarks[t], (1.0, 0.0, 0.0))
        out.append(even_frame(image_grid([f.image.float().cpu(), renders[t], marked], ncols=3)))
    return out


def write_tracking(
    out: str | Path,
    run_model: Any,
    tracking: Tracking,
    frames: list[TrackFrame],
    source: dict[str, Any],
    fps: int = 24,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the tracking directory (module docstring) atomically; returns the report."""
    tracking.info = {**tracking.info, "source": source}
    report = tracking_report(tracking) | {"source": source}

    def extra(tmp: Path) -> None:
        for t, f in enumerate(frames):
            save_png(tmp / "frames" / f"{t:05d}.png", f.image)
        save_mp4(tmp / "overlay.mp4", overlay_frames(run_model, tracking, frames), fps=fps)
        write_report(tmp / "report.json", report)

    tracking.save(out, overwrite=overwrite, extra=extra)
    report["outputs"] = ["tracking.safetensors", "tracking.json", "avatar/", "frames/",
                         "overlay.mp4", "report.json"]  # fmt: skip
    return report


def driver_frames(directory: str | Path, num_frames: int) -> list[Tensor] | None:
    """The driver's input frames saved by :func:`write_tracking` (None when absent)."""
    d = Path(directory) / "frames"
    files = [d / f"{t:05d}.png" for t in range(num_frames)]
    if not all(p.is_file() for p in files):
        return None
    return [load_image(p) for p in files]


def reenact(
    target: Source,
    driver: Tracking,
    pose: str = "driver",
    size: int | None = None,
    transfer: str = "absolute",
) -> tuple[list[Tensor], float]:
    """Render ``target`` with ``driver``'s per-frame expression codes (module docstring).
    ``transfer="relative"`` gives the target its own code plus the driver's change from
    its identity frame, ``z_target + z_driver(t) - z_driver(t0)``, instead of the driver's
    code itself. Returns the frames ([size, size, 3] each) and the mean seconds per frame."""
    if pose not in REENACT_POSES:
        raise ValueError(f"pose must be one of {'|'.join(REENACT_POSES)}, got {pose!r}")
    if transfer not in TRANSFERS:
        raise ValueError(f"transfer must be one of {'|'.join(TRANSFERS)}, got {transfer!r}")
    codes = driver.z_exp
    if transfer == "relative":
        codes = target.z_exp[None] + codes - codes[driver.identity_frame]
    from gphm.data.preprocess.single_image import Framing
    from gphm.fitting.fit import render_avatar

    S = size or driver.image_size
    T = driver.num_frames
    net = target.model
    device = next(net.parameters()).device
    factor = net.upsampler.config.factor
    if S % factor:
        raise ValueError(f"size={S} must be a multiple of the model's upsampling factor {factor}")
    if pose == "driver":
        R, Tr = driver.head_R, driver.head_T
        scale = torch.full((T,), float(driver.avatar.head_scale))
        viewmats = torch.eye(4).expand(T, 4, 4)
        K = driver.K.clone()
        K[:, :2] *= S / driver.image_size
    else:
        framing = Framing()
        R, Tr, scale = torch.eye(3).expand(T, 3, 3), torch.zeros(T, 3), torch.ones(T)
        viewmats = torch.from_numpy(framing.viewmat()).float().expand(T, 4, 4)
        K = torch.from_numpy(framing.K(S)).float().expand(T, 3, 3)
    offsets = None if target.point_offsets is None else target.point_offsets.to(device)
    z_id = target.z_id[None].to(device)
    context = net.render_context()
    frames, t0 = [], time.perf_counter()
    with torch.no_grad():
        for t in range(T):
            r = render_avatar(net, z_id, codes[t : t + 1].to(device),
                              R[t : t + 1].to(device), Tr[t : t + 1].to(device),
                              scale[t : t + 1].to(device), viewmats[t : t + 1].to(device),
                              K[t : t + 1].to(device), S, offsets, context)  # fmt: skip
            frames.append(r.rgb[0].clamp(0, 1).cpu())
    return frames, (time.perf_counter() - t0) / max(1, T)
