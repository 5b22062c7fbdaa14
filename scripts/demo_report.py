#!/usr/bin/env python
"""Assemble ``OUT/index.md`` for scripts/demo.sh from what the demo wrote.

python scripts/demo_report.py out=outputs/demo run=outputs/demo/run
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gphm.cli import run_cli
from gphm.io.atomic import atomic_write_text


@dataclass
class DemoReportConfig:
    out: str = MISSING
    run: str = MISSING
    seconds: float = 0.0
    """Wall time of the whole demo, for the header."""


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(cfg: DemoReportConfig) -> dict:
    out, run = Path(cfg.out), Path(cfg.run)
    rel = lambda p: Path(p).resolve().relative_to(out.resolve()).as_posix()  # noqa: E731
    lines = ["# gphm demo", ""]
    if cfg.seconds:
        lines += [f"Whole demo: {cfg.seconds / 60:.1f} min.", ""]
    if (out / "contact_sheet.png").is_file():
        lines += ["## Synthetic training data", "",
                  "Identities × expressions (red boxes: held-out pairs).", "",
                  "![contact sheet](contact_sheet.png)", ""]  # fmt: skip
    train = _json(run / "train_report.json")
    ev = _json(run / "eval" / "guidance_heldout_view.json")
    if train:
        lines += ["## Stage 1: guiding mesh model", "",
                  f"{train['steps']} steps in {train['seconds']:.0f} s "
                  f"({train['processes']} process).", ""]  # fmt: skip
    if ev:
        m = ev["mean_mesh"]
        lines += [
            f"Held-out views ({ev['n']} images never used in training):",
            "",
            "| silhouette IoU | landmark error (% of face size) | PSNR (dB) | SSIM |",
            "|---|---|---|---|",
            f"| {ev['silhouette_iou']:.3f} | {100 * ev['landmark_error_relative']:.2f} | "
            f"{ev['psnr']:.2f} | {ev['ssim']:.3f} |",
            "",
            f"Mean mesh: {m['vertices']} vertices, {m['faces']} faces, watertight "
            f"{m['watertight']}, Euler characteristic {m['euler_characteristic']}, "
            f"{m['components']} component(s).",
            "",
        ]
    previews = sorted((run / "previews").glob("guidance_*.png"))
    if previews:
        lines += ["Last training preview (prediction | ground truth):", "",
                  f"![preview]({rel(previews[-1])})", ""]  # fmt: skip
    for report in sorted(out.glob("render_*/render_report.json")):
        r = _json(report)
        d = report.parent
        lines += [f"### {r['subject']} / {r['expression']}", "",
                  f"Turntable: [{rel(d / 'turntable.mp4')}]({rel(d / 'turntable.mp4')}), "
                  f"mesh: [{rel(d / 'mesh.ply')}]({rel(d / 'mesh.ply')})", "",
                  f"![turntable]({rel(d / 'turntable_strip.png')})", ""]  # fmt: skip
    if (out / "showcase" / "samples.md").is_file():
        lines += ["## Renderers and DMTet", "",
                  "See [showcase/samples.md](showcase/samples.md).", ""]  # fmt: skip
    lines += [
        "## Not in this version yet",
        "",
        "Stage 2 (Gaussian head), single-image fitting, expression editing and identity "
        "interpolation are tracked as open issues.",
        "",
    ]
    atomic_write_text(out / "index.md", "\n".join(lines))
    return {"index": str(out / "index.md"), "heldout_view": ev}


if __name__ == "__main__":
    sys.exit(run_cli(DemoReportConfig, main, summary=lambda r: f"demo report: {r['index']}"))
