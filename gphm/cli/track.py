"""Track a face video: per-frame expression code and head pose (issue 19).

    python scripts/track_video.py checkpoint=RUN video=PATH out=OUT [track.steps=2]
    python scripts/track_video.py checkpoint=RUN data=SEQ subject=NAME [camera=cam_00] out=OUT

``video``: an ``.mp4`` (or .mov/.avi/.mkv/.webm) or a folder of ``.png/.jpg`` frames; every
frame is prepared like a photo (MediaPipe landmarks and segmentation, aligned to the
training framing). ``data``/``subject``/``camera``: a dataset subject's frames from one
camera (default: a sequence's driving camera ``cam_00``), with ground-truth landmarks and
masks (no detector). The person is fitted once from the first frame with a face
(``track.fit.*``), then every frame's expression code and head pose are tracked, warm-
started from the previous frame (``track.landmark_steps`` cheap landmark steps, then
``track.steps`` rendered steps at ``track.render_size``; temporal terms ``track.smooth`` on
the code, off by default, and ``track.pose_smooth`` on the pose). Frames without a
detectable face are carried over from the previous frame and listed in ``carried_frames``.

Writes ``OUT/tracking.safetensors`` + ``OUT/tracking.json`` (per-frame ``z_exp``, head
pose, landmarks; the identity in ``OUT/avatar/``), ``OUT/frames/``, ``OUT/overlay.mp4``
(input | tracked render | landmarks: input green, tracked red) and ``OUT/report.json``
(``seconds_per_frame``, per-frame ``landmark_error_px``, ``jitter``: mean landmark
acceleration in px). A non-empty ``OUT`` is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from gphm.cli import UserError, check_device_option, cli_device, run_cli, write_report
from gphm.data.preprocess.detectors import BackendUnavailableError
from gphm.io import limits
from gphm.models.runs import load_run
from gphm.tracking.pipeline import track_video
from gphm.tracking.track import TrackConfig


@dataclass
class TrackVideoConfig:
    checkpoint: str = MISSING
    """Trained run directory (RUN/model is used)."""
    out: str = MISSING
    video: str | None = None
    """An .mp4 file or a folder of frames."""
    data: str | None = None
    """A gphm dataset (e.g. make_synthetic.py mode=sequence) instead of a video."""
    subject: str | None = None
    """With data=: the subject (name or index) to track."""
    camera: str | None = None
    """With data=: the camera (default: the sequence's driving camera)."""
    detector: str = "mediapipe"
    """Landmark detector of video frames."""
    max_frames: int = 0
    """Track at most this many frames (0 = all)."""
    fps: int = 24
    track: TrackConfig = field(default_factory=TrackConfig)
    overwrite: bool = False
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""

    def __post_init__(self) -> None:
        check_device_option(self.device)
        if self.max_frames < 0 or self.fps < 1:
            raise ValueError("max_frames >= 0 and fps >= 1 are required")
        self._check_budget()

    def _check_budget(self) -> None:
        """Refuse a frame count or per-frame work over the time budget before the video
        is read (:mod:`gphm.io.limits`). Per frame: ``track.steps`` renders at
        ``track.render_size`` (forward and backward, about 3 renders' work) and the
        landmark steps (~1/10 of a step each); frames: ``max_frames`` (all = unknown
        here: one frame is counted, the per-frame cost is still bounded). A render size of
        0 (the frame's) counts as 256 px."""
        t = self.track
        size = t.render_size or 256
        limits.check_image_size(f"track.render_size={size}", size, size, channels=32)
        frames = max(1, self.max_frames)
        device = limits.compute_device(self.device)
        pixels = 3.0 * t.steps * size * size
        items = t.steps + 0.1 * t.landmark_steps
        per_frame = limits.work_seconds(pixels=pixels, items=items, device=device)
        what = (f"track.steps={t.steps}, track.landmark_steps={t.landmark_steps}, "
                f"track.render_size={size}")  # fmt: skip
        if self.max_frames:
            what = f"max_frames={self.max_frames} with {what}"
        else:
            what += " per frame"
        limits.check_seconds(frames * per_frame, what, device)


def main(cfg: TrackVideoConfig) -> dict[str, Any]:
    try:
        run = load_run(cfg.checkpoint, device=cli_device(cfg.device))
        report = track_video(
            run, cfg.out, video=cfg.video, data=cfg.data, subject=cfg.subject,
            camera=cfg.camera, config=cfg.track, detector=cfg.detector,
            max_frames=cfg.max_frames, fps=cfg.fps, overwrite=cfg.overwrite,
            progress=sys.stderr.isatty(),
        )  # fmt: skip
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError,
            BackendUnavailableError) as err:  # fmt: skip
        raise UserError(str(err)) from None
    write_report(Path(cfg.out) / "report.json", report)
    return report


def summary(r: dict[str, Any]) -> str:
    carried = r["carried_frames"]
    return (
        f"track_video: {r['num_frames']} frames -> {r['out']}; {r['seconds_per_frame']} s per "
        f"frame (identity fit {r['identity_fit_seconds']} s), landmark error "
        f"{r['landmark_error_px']} px, jitter {r['jitter']} px"
        + (f"; {len(carried)} frame(s) without a face carried over" if carried else "")
    )


def cli(argv: list[str] | None = None) -> int:
    """The ``track`` command: parse ``argv`` (default: the process's), run, summarise."""
    return run_cli(TrackVideoConfig, main, argv, summary=summary)


if __name__ == "__main__":
    sys.exit(cli())
