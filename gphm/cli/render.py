"""Render a trained model: turntables, identity × expression grids, identity morphs.

    python scripts/render.py checkpoint=RUN out=OUT [mode=turntable|grid|interpolate]
        [subject=NAME|INDEX] [expression=LABEL | frame=INDEX] [frames=48] [size=256]
        [overwrite=true]

* ``mode=turntable`` (default): one (subject, expression) orbiting 360°:
  ``turntable.mp4``, ``turntable_strip.png`` and the geometry — ``gaussians.ply`` (3D
  Gaussian Splatting layout, canonical space) for a Gaussian head, ``mesh.ply`` /
  ``mesh.obj`` (vertex colours) for a stage-1 model.
* ``mode=grid``: rows = ``subjects`` (default all, up to 8), columns = ``expressions``
  (labels, default all, up to 8), each cell with the subject's identity code and the
  expression code of a training frame with that label (the subject's own when it was
  trained, else another subject's: expression transfer). ``grid.png`` (front view) and
  ``grid.mp4`` (the grid swaying ±``sway`` degrees over ``frames`` frames).
* ``mode=interpolate``: identity codes morphed from ``subject`` to ``subject_b`` with a
  fixed expression while the camera sweeps: ``interpolation.mp4`` and
  ``interpolation_strip.png``.
* ``mode=export``: the animatable export of ``subject`` (a training subject or a fitted
  avatar directory) for 3DGS engines, as ``scripts/export.py`` (:mod:`gphm.export`):
  ``neutral.ply``, ``expressions/<label>.ply``, ``blendshapes.npz/.json`` with
  ``num_components`` components, PLYs at ``sh_degree``; the fidelity curve is measured
  at ``size`` px.

Always writes ``OUT/render_report.json``. A non-empty ``OUT`` is refused (exit status 2)
unless ``overwrite=true``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING
from torch import Tensor

from gphm.api import Head
from gphm.cli import UserError, check_device_option, cli_device, run_cli, write_report
from gphm.export import FidelityOptions, export_run
from gphm.io.atomic import check_output_dir
from gphm.io.images import save_png
from gphm.io.limits import check_frames, compute_device
from gphm.io.mesh import save_mesh
from gphm.io.ply import MAX_SH_DEGREE
from gphm.io.video import save_mp4
from gphm.models.gaussian_head import GaussianHead
from gphm.models.runs import ResolvedFrame, load_run
from gphm.rendering import compose
from gphm.rendering.compose import Orbit
from gphm.rendering.rigs import check_size

MODES = ("turntable", "grid", "interpolate", "export")


@dataclass
class RenderConfig:
    checkpoint: str = MISSING
    """Run directory (or its model/ directory)."""
    out: str = MISSING
    mode: str = "turntable"
    """turntable | grid | interpolate | export."""
    subject: str = "0"
    """Subject name or index (interpolate: the start identity)."""
    subject_b: str = "1"
    """interpolate: the end identity."""
    expression: str | None = None
    """Expression label: the subject's own trained frame with it, else another subject's
    (the report and summary say whose); default: the subject's first trained frame."""
    frame: int | None = None
    """Global frame index (expression code) of a trained frame; overrides `expression`."""
    subjects: list[str] = field(default_factory=list)
    """grid rows (default: all subjects, up to 8)."""
    expressions: list[str] = field(default_factory=list)
    """grid columns (default: all trained expression labels, up to 8)."""
    frames: int = 48
    """Video length (turntable / interpolate / grid)."""
    size: int = 256
    """Output height/width in pixels of one view (a multiple of the upsampling factor)."""
    fps: int = 24
    distance: float = 3.0
    """Orbit radius in canonical units (> 0, at most 1000)."""
    elevation: float = 10.0
    """Camera pitch in degrees, strictly between -90 and 90 (positive: from above)."""
    sway: float = 30.0
    """grid / interpolate: camera azimuth range ±sway degrees (0..180)."""
    overwrite: bool = False
    """Write into a non-empty ``out`` (files with the same names are replaced)."""
    num_components: int = 8
    """export: expression components stored in blendshapes.npz."""
    sh_degree: int = 3
    """export: SH degree of the PLYs (3: 45 zero f_rest_*, 0: the small file)."""
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""

    def __post_init__(self) -> None:
        """Every option is checked here, before the run is read or anything is written
        (the size against the model's upsampling factor right after loading it)."""
        check_device_option(self.device)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {'|'.join(MODES)}, got {self.mode!r}")
        if self.frames < 2 or self.size < 16 or self.fps < 1:
            raise ValueError("frames must be >= 2, fps >= 1 and size >= 16")
        _orbit(self).check()
        if self.frame is not None and self.frame < 0:
            raise ValueError(f"frame must be a trained global frame index >= 0, got {self.frame}")
        if self.num_components < 0:
            raise ValueError(f"num_components must be >= 0, got {self.num_components}")
        if self.sh_degree not in range(MAX_SH_DEGREE + 1):
            raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {self.sh_degree}")
        check_frames(self.size, self.frames, f"frames={self.frames}", compute_device(self.device))


def _orbit(cfg: RenderConfig) -> Orbit:
    return Orbit(size=cfg.size, frames=cfg.frames, elevation=cfg.elevation,
                 distance=cfg.distance, sway=cfg.sway)  # fmt: skip


def _export_geometry(head: Head, z_id: Tensor, z_exp: Tensor, out: Path) -> list[str]:
    model = head.model
    if isinstance(model, GaussianHead):
        head.export_ply(out / "gaussians.ply", z_id, z_exp, overwrite=True)
        return ["gaussians.ply"]
    mm = model.mean_mesh()
    d = model.deform(mm.verts, mm.features, z_id[None], z_exp[None])
    for ext in ("ply", "obj"):
        save_mesh(out / f"mesh.{ext}", d.points[0], mm.faces, vertex_colors=d.colors[0, :, :3])
    return ["mesh.ply", "mesh.obj"]


def _frame_report(r: ResolvedFrame) -> dict[str, Any]:
    """What the report says of the trained frame a composition resolved."""
    info: dict[str, Any] = {"frame": r.frame, "expression": r.label}
    if r.borrowed:
        info["expression_from"] = r.describe()
    if r.note:
        info["note"] = r.note
    return info


def turntable(cfg: RenderConfig, head: Head, out: Path) -> dict[str, Any]:
    run = head.run
    t = compose.turntable(run, cfg.subject, _orbit(cfg), cfg.frame, cfg.expression)
    outputs = _export_geometry(head, t.z_id, t.z_exp, out)
    save_mp4(out / "turntable.mp4", list(t.frames), fps=cfg.fps)
    save_png(out / "turntable_strip.png", t.strip)
    return {
        "subject": run.subjects[t.subject],
        **_frame_report(t.frame),
        "outputs": outputs + ["turntable.mp4", "turntable_strip.png"],
    }


def grid(cfg: RenderConfig, head: Head, out: Path) -> dict[str, Any]:
    run = head.run
    g = compose.grid(run, _orbit(cfg), list(cfg.subjects), list(cfg.expressions))
    save_png(out / "grid.png", g.image)
    save_mp4(out / "grid.mp4", g.video, fps=cfg.fps)
    return {
        "subjects": [run.subjects[s] for s in g.subjects],
        "expressions": g.labels,
        "cells": [
            {"subject": run.subjects[s], "frame": r.frame}
            | ({"expression_from": r.describe()} if r.borrowed else {})
            for s, r in g.cells
        ],
        "outputs": ["grid.png", "grid.mp4"],
    }


def interpolate(cfg: RenderConfig, head: Head, out: Path) -> dict[str, Any]:
    run = head.run
    m = compose.morph(run, cfg.subject, cfg.subject_b, _orbit(cfg), cfg.frame, cfg.expression)
    save_mp4(out / "interpolation.mp4", list(m.frames), fps=cfg.fps)
    save_png(out / "interpolation_strip.png", m.strip)
    return {
        "from": run.subjects[m.start],
        "to": run.subjects[m.end],
        **_frame_report(m.frame),
        "outputs": ["interpolation.mp4", "interpolation_strip.png"],
    }


def export(cfg: RenderConfig, head: Head, out: Path) -> dict[str, Any]:
    rep = export_run(head.run, cfg.subject, out, num_components=cfg.num_components,
                     sh_degree=cfg.sh_degree, overwrite=cfg.overwrite,
                     fidelity=FidelityOptions(size=cfg.size))  # fmt: skip
    return {"subject": rep.metadata["identity"]["name"], "export": rep.to_dict(),
            "outputs": ["neutral.ply", *rep.files["expressions"].values(), "blendshapes.npz",
                        "blendshapes.json", "export_report.json"]}  # fmt: skip


@torch.no_grad()
def main(cfg: RenderConfig) -> dict:
    out = Path(cfg.out)
    try:
        check_output_dir(out, cfg.overwrite)
        head = Head(load_run(cfg.checkpoint), cli_device(cfg.device))
        check_size(cfg.size, head.factor)  # compositions resolve names before writing too
        modes = {"turntable": turntable, "grid": grid, "interpolate": interpolate, "export": export}
        report = modes[cfg.mode](cfg, head, out)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as err:
        raise UserError(str(err)) from None
    report = {"mode": cfg.mode, "model": type(head.model).__name__} | report
    write_report(out / "render_report.json", report)
    return report


def cli(argv: list[str] | None = None) -> int:
    """The ``render`` command: parse ``argv`` (default: the process's), run, summarise."""
    return run_cli(RenderConfig, main, argv, summary=lambda r: (
        f"render {r['mode']} ({r['model']}): "
        + (f"{r['expression_from']}; " if "expression_from" in r else "")
        + f"wrote {', '.join(r['outputs'])}"
    ))  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli())
