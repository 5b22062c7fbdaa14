"""Showcase of gphm's differentiable renderers and DMTet (part of README's demo).

:func:`render_samples` does the work; ``scripts/render_samples.py`` parses and calls it.

    python scripts/render_samples.py out=outputs/demo [data=data/synthetic] [resolution=64]

1. DMTet: a head-like SDF (cranium, jaw, nose, ears) on a tetrahedral grid →
   ``marching_tets`` → a watertight mesh.
2. ``render_mesh``: that mesh from four cameras (normals as colour, depth, soft mask).
3. ``rasterize_gaussians``: one Gaussian per mesh vertex (scale from neighbour
   distances), the same cameras.
4. Soft-silhouette fit: the vertices of a sphere mesh are optimised so its silhouette
   matches the mask of a synthetic-dataset image (when ``data`` exists), showing that
   gradients reach vertex positions through the soft mask.

Writes PNGs, ``samples.json`` (timings, mesh statistics, IoU before/after) and
``samples.md`` into ``out``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING

from gphm import losses
from gphm.geometry import intrinsics, look_at
from gphm.geometry.marching_tets import marching_tets
from gphm.geometry.mesh import euler_characteristic, knn_mean_distance, uv_sphere, vertex_normals
from gphm.geometry.pose import apply_head_pose
from gphm.geometry.tets import tet_grid
from gphm.io.atomic import atomic_write_text
from gphm.io.images import image_grid, save_png
from gphm.io.jsonfile import write_report
from gphm.render import rasterize_gaussians, render_mesh


@dataclass
class SamplesConfig:
    out: str = MISSING
    """Output directory."""
    data: str = "data/synthetic"
    """Synthetic dataset used for the silhouette fit (skipped when absent)."""
    resolution: int = 64
    """Tetrahedral grid resolution for the DMTet mesh."""
    image_size: int = 192
    """Render size in pixels."""
    fit_steps: int = 150
    """Adam steps of the silhouette fit."""

    def __post_init__(self) -> None:
        if not 8 <= self.resolution <= 128:
            raise ValueError(f"resolution must be in [8, 128], got {self.resolution}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")


def _ellipsoid(x: torch.Tensor, center, radii) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipsoid."""
    c = torch.tensor(center, dtype=x.dtype)
    r = torch.tensor(radii, dtype=x.dtype)
    k = ((x - c) / r).norm(dim=-1)
    return (k - 1.0) * r.min()


def _smooth_union(a: torch.Tensor, b: torch.Tensor, k: float = 0.08) -> torch.Tensor:
    h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
    return b * (1 - h) + a * h - k * h * (1 - h)


def head_sdf(x: torch.Tensor) -> torch.Tensor:  # x [N, 3] -> [N]
    """A rough head in canonical space (+y up, +z face): cranium, jaw, nose, ears."""
    d = _ellipsoid(x, (0.0, 0.12, -0.02), (0.62, 0.7, 0.72))
    d = _smooth_union(d, _ellipsoid(x, (0.0, -0.3, 0.12), (0.45, 0.42, 0.5)))
    d = _smooth_union(d, _ellipsoid(x, (0.0, -0.02, 0.72), (0.08, 0.16, 0.14)), 0.05)
    for side in (-1.0, 1.0):
        d = _smooth_union(d, _ellipsoid(x, (side * 0.61, 0.02, -0.05), (0.06, 0.17, 0.1)), 0.04)
    return d


def _cameras(n: int, size: int, dist: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    az = torch.linspace(-60.0, 60.0, n) * math.pi / 180
    eyes = torch.stack([dist * az.sin(), 0.3 * torch.ones(n), dist * az.cos()], -1)
    viewmats = look_at(eyes, torch.zeros(n, 3))
    f = 1.2 * size * (3.0 / dist)
    Ks = intrinsics(f, f, size / 2, size / 2).expand(n, 3, 3)
    return viewmats, Ks


def _silhouette_fit(cfg: SamplesConfig, out: Path, report: dict) -> str | None:
    data = Path(cfg.data)
    if not (data / "meta.json").is_file():
        return None
    from gphm.data.loaders import HeadDataset

    item = HeadDataset(data, split="train", lr_size=64)[0]
    target = item.mask_lr.unsqueeze(0)  # [1, h, w, 1]
    h, w = target.shape[1:3]
    # Start from a sphere of radius 0.5 in canonical space, placed by the frame's pose.
    verts0, faces = uv_sphere(48, 24)
    verts0 = verts0 * 0.5
    offsets = torch.zeros_like(verts0, requires_grad=True)
    opt = torch.optim.Adam([offsets], lr=0.01)
    R, T, s = item.head_R, item.head_T, item.head_scale
    viewmat, K = item.viewmat[None], item.K_lr[None]
    masks = []
    for step in range(cfg.fit_steps + 1):
        world = apply_head_pose((verts0 + offsets)[None], R[None], T[None], s[None])
        r = render_mesh(world, faces, viewmat, K, w, h)
        loss = losses.silhouette_iou(r.mask, target)
        iou = 1.0 - float(loss.detach())
        if step in (0, cfg.fit_steps):
            masks.append(r.mask[0].detach())
            report.setdefault("silhouette_fit_iou", []).append(round(iou, 4))
        if step == cfg.fit_steps:
            break
        smooth = ((offsets[faces[:, 0]] - offsets[faces[:, 1]]) ** 2).sum(-1).mean()
        opt.zero_grad()
        (loss + 10.0 * smooth).backward()
        opt.step()
    grid = image_grid(
        [item.image_lr, target[0].expand(h, w, 3)] + [m.expand(h, w, 3) for m in masks], 4
    )
    save_png(out / "silhouette_fit.png", grid)
    return "silhouette_fit.png"


def render_samples(cfg: SamplesConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    report: dict = {}

    t0 = time.perf_counter()
    grid_verts, tets = tet_grid(cfg.resolution)
    verts, faces, _ = marching_tets(grid_verts, head_sdf(grid_verts), tets)
    report["dmtet_seconds"] = round(time.perf_counter() - t0, 3)
    if faces.shape[0] == 0:
        raise ValueError("the sample SDF produced an empty mesh")
    report["mesh"] = {
        "vertices": int(verts.shape[0]),
        "faces": int(faces.shape[0]),
        "euler_characteristic": int(euler_characteristic(verts, faces)),
    }

    size = cfg.image_size
    viewmats, Ks = _cameras(4, size)
    normals = vertex_normals(verts, faces)
    colours = (normals * 0.5 + 0.5).clamp(0, 1)
    B = viewmats.shape[0]
    t0 = time.perf_counter()
    r = render_mesh(
        verts.expand(B, -1, -1), faces, viewmats, Ks, size, size, colours.expand(B, -1, -1)
    )
    report["render_mesh_seconds"] = round(time.perf_counter() - t0, 3)
    white = 1 - r.mask
    depth = r.depth / r.depth.amax().clamp_min(1e-6)
    save_png(out / "mesh_normals.png", image_grid(list(r.features + white), 4))
    save_png(
        out / "mesh_depth_mask.png",
        image_grid(list(depth.expand(-1, -1, -1, 3)) + list(r.mask.expand(-1, -1, -1, 3)), 4),
    )

    scales = knn_mean_distance(verts, k=3).clamp_min(1e-4)[:, None].expand(-1, 3)
    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(verts.shape[0], 4)
    opacities = torch.full((verts.shape[0],), 0.9)
    t0 = time.perf_counter()
    splat, alpha = rasterize_gaussians(
        verts,
        quats,
        scales,
        opacities,
        colours,
        viewmats,
        Ks,
        size,
        size,
        backgrounds=torch.ones(B, 3),
    )
    report["rasterize_gaussians_seconds"] = round(time.perf_counter() - t0, 3)
    report["gaussians"] = int(verts.shape[0])
    save_png(out / "gaussian_splats.png", image_grid(list(splat), 4))

    fit_png = _silhouette_fit(cfg, out, report)
    write_report(out / "samples.json", report)
    lines = [
        "# Renderer and geometry showcase",
        "",
        "Renderer and geometry showcase (`scripts/render_samples.py`).",
        "",
        f"DMTet mesh of a head-like SDF at grid resolution {cfg.resolution}: "
        f"{report['mesh']['vertices']} vertices, {report['mesh']['faces']} faces, Euler "
        f"characteristic {report['mesh']['euler_characteristic']} ({report['dmtet_seconds']} s).",
        "",
        "![mesh normals](mesh_normals.png)",
        "",
        "Depth and soft mask:",
        "",
        "![depth and mask](mesh_depth_mask.png)",
        "",
        f"{report['gaussians']} Gaussians at the mesh vertices, splatted:",
        "",
        "![gaussians](gaussian_splats.png)",
        "",
    ]
    if (out / "contact_sheet.png").is_file():
        lines += [
            "Synthetic dataset (identities × expressions):",
            "",
            "![contact sheet](contact_sheet.png)",
            "",
        ]
    if fit_png:
        lines += [
            "Soft-silhouette fit of a sphere to a dataset mask (image | target | start | "
            f"end): IoU {report['silhouette_fit_iou'][0]} → {report['silhouette_fit_iou'][1]} "
            f"after {cfg.fit_steps} Adam steps.",
            "",
            f"![fit]({fit_png})",
            "",
        ]
    atomic_write_text(out / "samples.md", "\n".join(lines))
    return report


def summary(r: dict) -> str:
    """The one-line summary ``scripts/render_samples.py`` prints."""
    fit = r.get("silhouette_fit_iou")
    return f"render_samples: mesh {r['mesh']['faces']} faces, {r['gaussians']} Gaussians" + (
        ", silhouette fit IoU {} -> {}".format(*fit) if fit else ""
    )
