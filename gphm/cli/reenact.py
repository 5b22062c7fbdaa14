"""Reenactment: drive a target with a tracked video's expressions (issue 19).

    python scripts/reenact.py checkpoint=RUN driver=TRACKING_DIR|VIDEO \
        target=SUBJECT|AVATAR_DIR|IMAGE out=OUT [pose=driver|target] [size=S]

``driver``: a directory written by ``scripts/track_video.py``, or a video / frame folder
(tracked first into ``OUT/driver``). ``target``: a training subject (``NAME``,
``NAME:EXPRESSION``, ``NAME@FRAME``: its identity), a fitted avatar directory or a photo
(fitted first). ``pose=driver`` (default) moves the target's head as the driver's moves,
seen by the driver's camera; ``pose=target`` keeps the target still at the canonical pose
seen by the training framing camera. Writes ``OUT/reenact.mp4`` (driver | target driven,
side by side), ``OUT/frames/00000.png ...`` (the driven target) and ``OUT/report.json``.
A non-empty ``OUT`` is refused unless ``overwrite=true``, and ``OUT`` may never be, hold
or lie inside the driver, the target or the checkpoint (their files would be overwritten).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from gphm.cli import UserError, check_device_option, cli_device, run_cli, write_report
from gphm.data.preprocess.detectors import BackendUnavailableError, NoFaceError
from gphm.models.runs import load_run
from gphm.tracking.outputs import REENACT_POSES, TRANSFERS
from gphm.tracking.pipeline import reenact_to_dir
from gphm.tracking.track import TrackConfig


@dataclass
class ReenactConfig:
    checkpoint: str = MISSING
    """Trained run directory (RUN/model is used)."""
    driver: str = MISSING
    """A track_video.py output directory, or a video / folder of frames to track."""
    target: str = MISSING
    """A training subject, a fitted avatar directory or a photo."""
    out: str = MISSING
    pose: str = "driver"
    """driver: the driver's head motion | target: the target still, canonical pose."""
    size: int | None = None
    """Output height/width (default: the driver's frame size)."""
    transfer: str = "absolute"
    """absolute: the driver's expression codes | relative: the target's own code plus the
    driver's change since its first frame (less of the driver's identity)."""
    detector: str = "mediapipe"
    fps: int = 24
    track: TrackConfig = field(default_factory=TrackConfig)
    """Tracking options when driver is a video."""
    overwrite: bool = False
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""

    def __post_init__(self) -> None:
        check_device_option(self.device)
        if self.pose not in REENACT_POSES:
            raise ValueError(f"pose must be one of {'|'.join(REENACT_POSES)}, got {self.pose!r}")
        if self.size is not None and not 16 <= self.size <= 2048:
            raise ValueError(f"size must be in 16..2048, got {self.size}")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if self.transfer not in TRANSFERS:
            raise ValueError(
                f"transfer must be one of {'|'.join(TRANSFERS)}, got {self.transfer!r}"
            )


def check_reenact_out(out: Path, inputs: dict[str, str]) -> None:
    """Refuse (``FileExistsError``, one line) an ``out`` that is, holds or lies inside one
    of ``inputs`` (``{"driver": path, ...}``; names that are no existing path, such as a
    training subject, are skipped): reenact writes ``report.json`` and ``frames/`` into
    ``out``, which would overwrite a tracking's own report and input frames. ``out``
    inside the checkpoint (a run directory) is allowed: nothing of the run is replaced."""
    where = out.resolve()
    for option, value in inputs.items():
        path = Path(value)
        if not path.exists():
            continue
        inp = path.resolve()
        inside = option != "checkpoint" and where.is_relative_to(inp)
        if inp.is_relative_to(where) or inside:
            how = "is" if inp == where else "holds" if inp.is_relative_to(where) else "lies in"
            raise FileExistsError(
                f"out={out} {how} the {option}={value}; reenact would overwrite its files "
                "(report.json, frames/): choose another out"
            )


def main(cfg: ReenactConfig) -> dict[str, Any]:
    try:
        check_reenact_out(Path(cfg.out), {"driver": cfg.driver, "target": cfg.target,
                                          "checkpoint": cfg.checkpoint})  # fmt: skip
        run = load_run(cfg.checkpoint, device=cli_device(cfg.device))
        report = reenact_to_dir(
            run, cfg.driver, cfg.target, cfg.out, pose=cfg.pose, size=cfg.size,
            transfer=cfg.transfer, config=cfg.track, detector=cfg.detector, fps=cfg.fps,
            overwrite=cfg.overwrite, progress=sys.stderr.isatty(),
        )  # fmt: skip
    except NoFaceError as err:
        raise UserError(f"{err} — a photo target needs one visible face") from None
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError,
            BackendUnavailableError) as err:  # fmt: skip
        raise UserError(str(err)) from None
    write_report(Path(cfg.out) / "report.json", report)
    return report


def cli(argv: list[str] | None = None) -> int:
    """The ``reenact`` command: parse ``argv`` (default: the process's), run, summarise."""
    return run_cli(ReenactConfig, main, argv, summary=lambda r: (
        f"reenact: {r['target']['label']} driven by {r['driver']} ({r['num_frames']} frames, "
        f"pose={r['pose']}) -> {r['out']}/reenact.mp4"
    ))  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli())
