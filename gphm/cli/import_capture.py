"""Import a multiview capture into the gphm dataset format.

    python scripts/import_capture.py src=CAPTURE_DIR out=DATA_DIR [layout=auto|nersemble] \
        [canonical=auto|none] [resolution=512] [lr_size=128] [subject=NAME] \
        [heldout_cameras=[222200037,220700191]] [val_cameras=[222200049]] [overwrite=true]

``layout=auto`` (the default) recognises the capture's layout by its files; the known
layouts are the importers of :mod:`gphm.data.importers` (``nersemble``: NeRSemble-style
captures). The NeRSemble layout, the canonical transform and every option are described
in ``gphm/data/importers/nersemble.py`` and ``data/README.md``. ``heldout_cameras`` rows
get split ``heldout_view`` (only reported), ``val_cameras`` rows ``val_view`` (for
choosing defaults); the two lists must be disjoint. Writes the dataset
atomically to ``out`` (nothing is left behind on error) and a report to
``out/import_report.json``; prints a one-line summary. Bad input: one line naming the
file and field, exit status 2.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from gphm.cli import UserError, run_cli, write_report
from gphm.data.importers import CaptureError, ImportOptions, import_capture, layouts


@dataclass
class ImportConfig(ImportOptions):
    src: str = MISSING
    """Capture folder (images/, cameras/, params/, lmk_3d.npy)."""
    out: str = MISSING
    """Dataset folder to create."""
    overwrite: bool = False
    """Replace an existing dataset at ``out`` (only once the new one is complete)."""
    layout: str = "auto"
    """Capture layout: ``auto`` (recognised by its files) or an importer's name."""

    def __post_init__(self) -> None:
        super().__post_init__()
        known = layouts()
        if self.layout != "auto" and self.layout not in known:
            raise ValueError(
                f"layout must be auto or one of {', '.join(known)}, got {self.layout!r}"
            )


def main(cfg: ImportConfig) -> dict[str, Any]:
    opts = ImportOptions(
        **{k: getattr(cfg, k) for k in ImportOptions.__dataclass_fields__}  # type: ignore[attr-defined]
    )
    t0 = time.perf_counter()
    try:
        report = import_capture(cfg.src, cfg.out, cfg.layout, opts, overwrite=cfg.overwrite)
    except CaptureError as err:
        raise UserError(f"{cfg.src}: {err}") from None
    except FileExistsError as err:
        raise UserError(str(err)) from None
    write_report(Path(cfg.out) / "import_report.json", report)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def summary(report: dict[str, Any]) -> str:
    h, w = report["image_size"]
    return (
        f"imported {report['rows']} rows ({report['frames']} frames x "
        f"{len(report['cameras'])} cameras, {len(report['subjects'])} subject(s), {h}x{w}) "
        f"into {report['out']} in {report['seconds']:.1f}s"
    )


def cli(argv: list[str] | None = None) -> int:
    """The ``import_capture`` command: parse ``argv`` (default: the process's), run, summarise."""
    return run_cli(ImportConfig, main, argv, summary=summary)


if __name__ == "__main__":
    sys.exit(cli())
