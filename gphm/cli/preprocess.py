"""Preprocess a calibrated multi-view capture into the gphm dataset format.

    python scripts/preprocess.py src=CAPTURE_DIR out=DATA_DIR \
        [detector=mediapipe] [subject=NAME] [resolution=512] [lr_size=128] \
        [mask=auto|user|segment|hull] [template=mean|first] [heldout_cameras=[cam3]] \
        [val_cameras=[cam5]] [strict=false] [drop_outlier_views=false] [cache=DIR] \
        [keep_cache=false] [overwrite=false]

Input layout (``gphm/data/preprocess/capture.py``)::

    CAPTURE_DIR/frames/{frame}/{cam}.png    images (.png/.jpg/.jpeg)
    CAPTURE_DIR/masks/{frame}/{cam}.png     optional user masks
    CAPTURE_DIR/cameras.json                {"cam": {"intrinsic": 3x3, "extrinsic": 3x4|4x4}}
                                            (or cameras/{cam}.npz with the same fields)

Steps (``gphm/data/preprocess/multiview.py``): 2D landmarks per view → robust
triangulation → canonical transform and head pose by Umeyama to the canonical landmark
template → masks → dataset (written atomically). Per-frame results are cached in
``DATA_DIR.cache/`` (or ``cache=``) so an interrupted run resumes; the cache is marked as
ours when created, a folder of other files is refused as cache, and only our own files
are removed after success. ``out`` may not be, contain or lie inside ``src`` (nor
``cache`` be or contain ``src`` or ``out``), and ``overwrite=true`` replaces only a gphm
dataset. ``heldout_cameras`` rows get split ``heldout_view`` (only reported),
``val_cameras`` rows ``val_view`` (for choosing defaults); the lists must be disjoint.
Bad images (unreadable, no face) are reported by path and skipped (``strict=true``:
refused); ``DATA_DIR/preprocess_report.json`` lists skipped views, outlier views and
skipped frames. Bad input: one line naming the
file and field, exit status 2.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from gphm.cli import UserError, run_cli, write_report
from gphm.data.importers.nersemble import CaptureError
from gphm.data.preprocess.detectors import BackendUnavailableError
from gphm.data.preprocess.multiview import PreprocessOptions, preprocess_capture


@dataclass
class PreprocessConfig(PreprocessOptions):
    src: str = MISSING
    """Capture folder (frames/, cameras.json or cameras/, optional masks/)."""
    out: str = MISSING
    """Dataset folder to create."""
    overwrite: bool = False
    """Replace an existing dataset at ``out`` (only once the new one is complete)."""


def main(cfg: PreprocessConfig) -> dict[str, Any]:
    opts = PreprocessOptions(**{f.name: getattr(cfg, f.name) for f in fields(PreprocessOptions)})
    try:
        report = preprocess_capture(cfg.src, cfg.out, opts, overwrite=cfg.overwrite)
    except CaptureError as err:  # messages name the file relative to src
        msg = str(err)
        raise UserError(msg if msg.startswith(cfg.src) else f"{cfg.src}: {msg}") from None
    except (FileExistsError, BackendUnavailableError) as err:
        raise UserError(str(err)) from None
    write_report(Path(cfg.out) / "preprocess_report.json", report)
    return report


def summary(report: dict[str, Any]) -> str:
    h, w = report["image_size"]
    return (
        f"preprocessed {report['rows']} rows ({report['frames']} frames x "
        f"{len(report['cameras'])} cameras, {h}x{w}) into {report['out']} in "
        f"{report['seconds']:.1f}s; skipped {len(report['skipped_views'])} bad view(s), "
        f"{len(report['outlier_views'])} outlier view(s), "
        f"{len(report['skipped_frames'])} frame(s) (see preprocess_report.json)"
    )


def cli(argv: list[str] | None = None) -> int:
    """The ``preprocess`` command: parse ``argv`` (default: the process's), run, summarise."""
    return run_cli(PreprocessConfig, main, argv, summary=summary)


if __name__ == "__main__":
    sys.exit(cli())
