#!/usr/bin/env python
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gphm.cli import UserError, run_cli, write_report
from gphm.export import FidelityOptions, export_run
from gphm.fitting.views import lerp_codes, orbit_rig, render_codes
from gphm.io.atomic import check_output_dir
from gphm.io.images import image_grid, save_png
from gphm.io.limits import check_render_size
from gphm.io.mesh import save_mesh
from gphm.io.ply import save_gaussian_ply
from gphm.io.video import save_mp4
from gphm.models.gaussian_head import GaussianHead
from gphm.models.runs import TrainedRun, load_run

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
    elevation: float = 10.0
    sway: float = 30.0
    """grid / interpolate: camera azimuth range ±sway degrees."""
    overwrite: bool = False
    """Write into a non-empty ``out`` (files with the same names are replaced)."""
    num_components: int = 8
    """export: expression components stored in blendshapes.npz."""
    sh_degree: int = 3
    """export: SH degree of the PLYs (3: 45 zero f_rest_*, 0: the small file)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {'|'.join(MODES)}, got {self.mode!r}")
        if self.frames < 2 or self.size < 16 or self.fps < 1:
            raise ValueError("frames must be >= 2, fps >= 1 and size >= 16")
        check_render_size(self.size, self.frames)


def _rig(cfg: RenderConfig, run: TrainedRun, num: int, sway: bool = False):
    """``num`` orbit cameras: a full circle, or ±``cfg.sway`` degrees (endpoints included)."""
    extra = {"azimuth_range": (-cfg.sway, cfg.sway), "endpoint": True} if sway else {}
    return orbit_rig(num, cfg.size, run.model.upsampler.config.factor, cfg.distance,
                     cfg.elevation, **extra)  # fmt: skip


def _export_geometry(run: TrainedRun, z_id, z_exp, out: Path) -> list[str]:
    model = run.model
    if isinstance(model, GaussianHead):
        a = model.attributes(z_id, z_exp)
        save_gaussian_ply(out / "gaussians.ply", a.means[0], a.log_scales[0], a.quats[0],
                          a.opacity_logits[0], a.colors[0, :, :3])  # fmt: skip
        return ["gaussians.ply"]
    mm = model.mean_mesh()
    d = model.deform(mm.verts, mm.features, z_id, z_exp)
    for ext in ("ply", "obj"):
        save_mesh(out / f"mesh.{ext}", d.points[0], mm.faces, vertex_colors=d.colors[0, :, :3])
    return ["mesh.ply", "mesh.obj"]


def _frame_report(run: TrainedRun, subject: int, cfg: RenderConfig) -> tuple[int, dict]:
    """The trained frame ``cfg.frame``/``cfg.expression`` names for ``subject``
    (:meth:`TrainedRun.resolve_frame`) and what the report says of it."""
    r = run.resolve_frame(subject, cfg.frame, cfg.expression)
    info: dict[str, Any] = {"frame": r.frame, "expression": r.label}
    if r.borrowed:
        info["expression_from"] = r.describe()
    if r.note:
        info["note"] = r.note
    return r.frame, info


def turntable(cfg: RenderConfig, run: TrainedRun, out: Path) -> dict[str, Any]:
    subject = run.subject_index(cfg.subject)
    frame, frame_info = _frame_report(run, subject, cfg)
    model = run.model
    z_id = model.identity_codes(torch.tensor([subject]))
    z_exp = model.expression_codes(torch.tensor([frame]))
    outputs = _export_geometry(run, z_id, z_exp, out)
    rig = _rig(cfg, run, cfg.frames)
    images = list(render_codes(model, z_id, z_exp, rig)[0])
    save_mp4(out / "turntable.mp4", images, fps=cfg.fps)
    save_png(out / "turntable_strip.png", image_grid(images[:: max(1, len(images) // 8)][:8], 8))
    return {
        "subject": run.subjects[subject],
        **frame_info,
        "outputs": outputs + ["turntable.mp4", "turntable_strip.png"],
    }


def grid(cfg: RenderConfig, run: TrainedRun, out: Path) -> dict[str, Any]:
    subjects = [run.subject_index(s) for s in cfg.subjects] or list(range(len(run.subjects)))[:8]
    labels = list(cfg.expressions) or run.trained_labels()[:8]
    resolved = [(s, run.trained_frame(s, e)) for s in subjects for e in labels]
    cells = [(s, r.frame) for s, r in resolved]
    model = run.model
    z_id = model.identity_codes(torch.tensor([s for s, _ in cells]))
    z_exp = model.expression_codes(torch.tensor([f for _, f in cells]))
    rig = _rig(cfg, run, cfg.frames, sway=True)
    front = _rig(cfg, run, 1)
    save_png(out / "grid.png", image_grid(list(render_codes(model, z_id, z_exp, front)[:, 0]),
                                          ncols=len(labels)))  # fmt: skip
    views = render_codes(model, z_id, z_exp, rig)  # [cells, frames, H, W, 3]
    # Sway forth and back so the video loops.
    order = list(range(cfg.frames)) + list(range(cfg.frames - 2, 0, -1))
    video = [image_grid(list(views[:, t]), ncols=len(labels)) for t in order]
    save_mp4(out / "grid.mp4", video, fps=cfg.fps)
    return {
        "subjects": [run.subjects[s] for s in subjects],
        "expressions": labels,
        "cells": [
            {"subject": run.subjects[s], "frame": r.frame}
            | ({"expression_from": r.describe()} if r.borrowed else {})
            for s, r in resolved
        ],
        "outputs": ["grid.png", "grid.mp4"],
    }


def interpolate(cfg: RenderConfig, run: TrainedRun, out: Path) -> dict[str, Any]:
    a, b = run.subject_index(cfg.subject), run.subject_index(cfg.subject_b)
    frame, frame_info = _frame_report(run, a, cfg)
    model = run.model
    codes = model.identity_codes(torch.tensor([a, b]))
    z_id = lerp_codes(codes[0], codes[1], cfg.frames)
    z_exp = model.expression_codes(torch.tensor([frame])).expand(cfg.frames, -1)
    rig = _rig(cfg, run, cfg.frames, sway=True)
    images = []
    for t in range(cfg.frames):  # morph while the camera sweeps once
        sub = type(rig)(rig.viewmats[t : t + 1], rig.K_lr, rig.lr_size)
        images.append(render_codes(model, z_id[t : t + 1], z_exp[t : t + 1], sub)[0, 0])
    save_mp4(out / "interpolation.mp4", images, fps=cfg.fps)
    front = _rig(cfg, run, 1)
    steps = lerp_codes(codes[0], codes[1], 8)
    strip = render_codes(model, steps, z_exp[:1].expand(8, -1), front)[:, 0]
    save_png(out / "interpolation_strip.png", image_grid(list(strip), ncols=8))
    return {
        "from": run.subjects[a],
        "to": run.subjects[b],
        **frame_info,
        "outputs": ["interpolation.mp4", "interpolation_strip.png"],
    }


def export(cfg: RenderConfig, run: TrainedRun, out: Path) -> dict[str, Any]:
    rep = export_run(run, cfg.subject, out, num_components=cfg.num_components,
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
        run = load_run(cfg.checkpoint)
        modes = {"turntable": turntable, "grid": grid, "interpolate": interpolate, "export": export}
        report = modes[cfg.mode](cfg, run, out)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as err:
        raise UserError(str(err)) from None
    report = {"mode": cfg.mode, "model": type(run.model).__name__} | report
    write_report(out / "render_report.json", report)
    return report


if __name__ == "__main__":
    sys.exit(run_cli(RenderConfig, main, summary=lambda r: (
        f"render {r['mode']} ({r['model']}): "
        + (f"{r['expression_from']}; " if "expression_from" in r else "")
        + f"wrote {', '.join(r['outputs'])}"
    )))  # fmt: skip
