#!/usr/bin/env python
"""Render a trained model: mesh export and turntables.

    python scripts/render.py checkpoint=RUN out=OUT [subject=NAME|INDEX]
        [expression=LABEL | frame=INDEX] [frames=48] [size=256] [fps=24]

Writes ``OUT/mesh.ply`` and ``OUT/mesh.obj`` (canonical space, vertex colours from the
first three colour channels), ``OUT/turntable.mp4``, a PNG strip of eight views and
``OUT/render_report.json``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gphm.cli import UserError, run_cli, write_report
from gphm.geometry import intrinsics
from gphm.geometry.cameras import orbit_cameras
from gphm.io.images import image_grid, save_png
from gphm.io.mesh import save_mesh
from gphm.io.video import save_mp4
from gphm.models.runs import load_run


@dataclass
class RenderConfig:
    checkpoint: str = MISSING
    """Run directory (or its model/ directory)."""
    out: str = MISSING
    subject: str = "0"
    """Subject name or index."""
    expression: str | None = None
    """Expression label of one of the subject's frames (default: its first frame)."""
    frame: int | None = None
    """Global frame index (expression code); overrides `expression`."""
    frames: int = 48
    """Turntable length."""
    size: int = 256
    """Output height/width in pixels (a multiple of the upsampling factor)."""
    fps: int = 24
    distance: float = 3.0
    elevation: float = 10.0

    def __post_init__(self) -> None:
        if self.frames < 1 or self.size < 16 or self.fps < 1:
            raise ValueError("frames, fps must be >= 1 and size >= 16")


@torch.no_grad()
def main(cfg: RenderConfig) -> dict:
    try:
        run = load_run(cfg.checkpoint)
        subject = run.subject_index(cfg.subject)
        frame = run.frame_index(subject, cfg.frame, cfg.expression)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    model, out = run.model, Path(cfg.out)
    factor = model.config.upsampler.factor
    if cfg.size % factor:
        raise UserError(f"size must be a multiple of the upsampling factor {factor}")
    z_id = model.identity_codes(torch.tensor([subject]))
    z_exp = model.expression_codes(torch.tensor([frame]))
    mm = model.mean_mesh()
    deform = model.deform(mm.verts, mm.features, z_id, z_exp)
    colors = deform.colors[0, :, :3]
    for ext in ("ply", "obj"):
        save_mesh(out / f"mesh.{ext}", deform.points[0], mm.faces, vertex_colors=colors)

    lr = cfg.size // factor
    f = 0.35 * lr * cfg.distance  # the ±1 canonical cube fills ~70 % of the image
    viewmats = orbit_cameras(cfg.frames, cfg.distance, cfg.elevation)
    K = intrinsics(f, f, lr / 2, lr / 2)
    eye3 = torch.eye(3)[None]
    images = []
    for vm in viewmats:
        r = model.render(z_id, z_exp, eye3, torch.zeros(1, 3), torch.ones(1), vm[None], K[None],
                         lr, lr, mean_mesh=mm)  # fmt: skip
        images.append(r.rgb[0])
    save_mp4(out / "turntable.mp4", images, fps=cfg.fps)
    strip = image_grid(images[:: max(1, len(images) // 8)][:8], ncols=8)
    save_png(out / "turntable_strip.png", strip)
    report = {
        "subject": run.subjects[subject],
        "frame": frame,
        "expression": run.extra["frames"][frame].get("expression"),
        "mesh": {"vertices": int(mm.verts.shape[0]), "faces": int(mm.faces.shape[0])},
        "outputs": ["mesh.ply", "mesh.obj", "turntable.mp4", "turntable_strip.png"],
    }
    write_report(out / "render_report.json", report)
    return report


if __name__ == "__main__":
    sys.exit(run_cli(RenderConfig, main, summary=lambda r: (
        f"render: {r['subject']} / {r['expression']} (frame {r['frame']}): "
        f"{r['mesh']['faces']} faces, turntable written"
    )))  # fmt: skip
