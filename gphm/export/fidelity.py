"""How well an engine-side blend reproduces the model: PSNR curves over K components.

Three kinds of picture of each trained expression, at the same orbit views around the
canonical head (:func:`gphm.rendering.orbit_rig`, white background):

* **model**: the model's own output, 32-channel splat at low resolution + Ψ upsampler;
* **label splat**: the exported per-label PLY rendered as an engine does, RGB Gaussians
  splatted directly at the output size (:func:`splat_rgb`);
* **blend K**: the same for the K-component blend of the expression basis.

``psnr(blend K, label splat)`` measures the basis alone; ``psnr(label splat, model)`` is
what leaving Ψ behind costs; ``psnr(blend K, model)`` is what a user of the export sees,
and ``drop = psnr(label splat, model) - psnr(blend K, model)`` is the part of the loss
that the basis (not Ψ) is to blame for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from gphm.evaluation.metrics import psnr
from gphm.export.blendshapes import ExpressionBasis, SplatAttributes
from gphm.models.gaussian_head import GaussianHead
from gphm.render import rasterize_gaussians
from gphm.rendering import orbit_rig, render_codes

__all__ = [
    "FidelityOptions",
    "CurvePoint",
    "FidelityReport",
    "splat_rgb",
    "measure_fidelity",
    "set_target",
]

ENGINE_EPS2D = 0.3
"""Screen-space blur (pixels²) of the reference 3DGS rasterizer and most engines."""


@dataclass
class FidelityOptions:
    """Where and how the fidelity curve is measured."""

    size: int = 256
    """Output size in pixels (a multiple of the model's upsampling factor)."""
    views: int = 4
    """Orbit cameras, spread evenly over azimuth ±``azimuth`` (one view: the front)."""
    azimuth: float = 45.0
    elevation: float = 10.0
    distance: float = 3.0
    components: tuple[int, ...] = (0, 1, 2, 4, 8)
    """K values of the curve (those above the basis rank are dropped; the rank is always
    added: the exact blend). K = 0 is the neutral expression for every label."""
    eps2d: float = ENGINE_EPS2D
    """Screen-space blur of the engine-side splats, in output pixels²."""

    def __post_init__(self) -> None:
        if self.size < 8 or self.views < 1 or self.distance <= 0 or self.eps2d < 0:
            raise ValueError("fidelity: expected size >= 8, views >= 1, distance > 0, eps2d >= 0")
        if any(k < 0 for k in self.components):
            raise ValueError(f"fidelity.components must be >= 0, got {list(self.components)}")

    def azimuths(self) -> list[float]:
        if self.views == 1:
            return [0.0]
        step = 2 * self.azimuth / (self.views - 1)
        return [-self.azimuth + i * step for i in range(self.views)]


@dataclass
class CurvePoint:
    """PSNR (dB, mean over views) of the K-component blend over the scored labels."""

    components: int
    psnr_vs_label_splat_mean: float
    psnr_vs_label_splat_min: float
    psnr_vs_model_mean: float
    psnr_vs_model_min: float
    max_drop_db: float
    """Largest ``psnr(label splat, model) - psnr(blend, model)`` over the labels."""


@dataclass
class FidelityReport:
    size: int
    azimuths: list[float]
    renderer: str
    labels: list[str]
    """Scored labels: every trained label but the neutral one (exact at any K)."""
    label_splat_vs_model: dict[str, float]
    """PSNR of each label's PLY splat against the model's own render (what Ψ adds)."""
    curve: list[CurvePoint]
    per_label: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """label -> {"blend_vs_label_splat": [...], "blend_vs_model": [...]} along ``curve``."""
    target: dict | None = None
    """The issue's target at the exported K: every label within 1 dB of its exact splat."""

    def to_dict(self) -> dict:
        return asdict(self)


def splat_rgb(
    attributes: SplatAttributes,
    viewmats: Tensor,  # [C, 4, 4] world (canonical) -> camera
    Ks: Tensor,  # [C, 3, 3] at ``size`` pixels
    size: int,
    eps2d: float = ENGINE_EPS2D,
) -> Tensor:  # [C, size, size, 3] on white
    """Render the Gaussians as a 3DGS engine does: RGB from the SH DC term (clamped to
    [0, 1]), alpha = sigmoid(opacity), scale = exp(log-scale), composited on white."""
    a = attributes
    rgb, _ = rasterize_gaussians(
        a.means, a.quats, a.log_scales.exp(), torch.sigmoid(a.opacity_logits),
        a.rgb.clamp(0, 1), viewmats, Ks, size, size,
        backgrounds=torch.ones(viewmats.shape[0], 3, device=a.means.device, dtype=a.means.dtype),
        eps2d=eps2d,
    )  # fmt: skip
    return rgb.clamp(0, 1)


def _mean_psnr(a: Tensor, b: Tensor) -> float:  # [C, H, W, 3] x2
    return float(psnr(a, b).mean())


@torch.no_grad()
def measure_fidelity(
    model: GaussianHead,
    z_id: Tensor,  # [Did]
    codes: dict[str, Tensor],  # label -> [Dexp], the labels of `basis`
    basis: ExpressionBasis,
    labels: dict[str, SplatAttributes],
    neutral: str,
    options: FidelityOptions,
    point_offsets: Tensor | None = None,  # [N, 3]
    preview_components: int | None = None,
) -> tuple[FidelityReport, list[Tensor]]:
    """The curve of the module docstring for ``basis`` (of full rank: it is truncated to
    each K) against the model with identity ``z_id`` (and ``point_offsets``).

    Also returns previews from the view nearest the front: per scored label the model's
    render, the label splat and the blend with ``preview_components`` (each [H, W, 3];
    none when ``preview_components`` is None)."""
    factor = model.upsampler.config.factor
    device = z_id.device
    scored = [lbl for lbl in basis.labels if lbl != neutral]
    az = options.azimuths()
    rig = orbit_rig(len(az), options.size, factor, options.distance, options.elevation,
                    azimuth_range=(az[0], az[-1]), endpoint=True)  # fmt: skip
    viewmats = rig.viewmats.to(device)
    Ks = rig.K_lr.clone()
    Ks[:2] *= factor  # the lr intrinsics at the output size
    Ks = Ks.to(device).expand(len(az), 3, 3)
    ks = sorted({k for k in options.components if k <= basis.rank} | {basis.rank})
    renderer = (
        f"model: splat at {options.size // factor} px + Ψ; PLYs and blends: RGB splats at "
        f"{options.size} px, eps2d {options.eps2d}, rasterize_gaussians "
        f"({'gsplat' if viewmats.is_cuda else 'torch'} backend), white background"
    )
    report = FidelityReport(options.size, az, renderer, scored, {}, [])
    previews: list[Tensor] = []
    front = min(range(len(az)), key=lambda i: abs(az[i]))
    if not scored:
        return report, previews
    z_exp = torch.stack([codes[lbl] for lbl in scored]).to(device)
    own = render_codes(model, z_id[None].expand(len(scored), -1).to(device), z_exp, rig,
                       point_offsets=point_offsets)  # fmt: skip  # [E, V, H, W, 3] cpu
    table: dict[str, dict[str, list[float]]] = {}
    for i, lbl in enumerate(scored):
        exact = splat_rgb(labels[lbl].to(device), viewmats, Ks, options.size, options.eps2d)
        exact = exact.cpu()
        report.label_splat_vs_model[lbl] = _mean_psnr(exact, own[i])
        row = {"blend_vs_label_splat": [], "blend_vs_model": []}
        weights = basis.weights[basis.labels.index(lbl)]
        for k in ks:
            blend = basis.truncated(k).blend(weights[:k]).to(device)
            img = splat_rgb(blend, viewmats, Ks, options.size, options.eps2d).cpu()
            row["blend_vs_label_splat"].append(_mean_psnr(img, exact))
            row["blend_vs_model"].append(_mean_psnr(img, own[i]))
            if k == preview_components:
                previews += [own[i, front], exact[front], img[front]]
        table[lbl] = row
    report.per_label = table
    for j, k in enumerate(ks):
        vs_exact = [table[lbl]["blend_vs_label_splat"][j] for lbl in scored]
        vs_model = [table[lbl]["blend_vs_model"][j] for lbl in scored]
        drops = [report.label_splat_vs_model[lbl] - v for lbl, v in zip(scored, vs_model)]
        report.curve.append(CurvePoint(
            k, sum(vs_exact) / len(vs_exact), min(vs_exact), sum(vs_model) / len(vs_model),
            min(vs_model), max(drops),
        ))  # fmt: skip
    return report, previews


def set_target(report: FidelityReport, components: int, threshold_db: float = 1.0) -> None:
    """Record whether the blend at ``components`` stays within ``threshold_db`` of each
    label's exact splat (against the model's render)."""
    point = next((p for p in report.curve if p.components == components), None)
    if point is None:
        return
    report.target = {
        "components": components,
        "threshold_db": threshold_db,
        "max_drop_db": point.max_drop_db,
        "met": bool(point.max_drop_db <= threshold_db),
        "meaning": (
            "psnr(label splat, model) - psnr(blend, model) <= threshold for every scored "
            "label; the label splat itself differs from the model's render by what Ψ adds "
            "(label_splat_vs_model)"
        ),
    }
