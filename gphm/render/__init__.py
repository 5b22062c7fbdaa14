"""Differentiable renderers (docs/architecture.md §5.1, §5.2).

* :func:`rasterize_gaussians` — 3D Gaussian splatting with gsplat ≥ 1.5's "classic"
  semantics (``semantics="gsplat15"``; ``"legacy"`` for models trained before it); the
  same function on every device: pure-torch tiled path anywhere, gsplat on CUDA.
* :func:`render_mesh` — z-buffer triangle rasterizer with perspective-correct feature
  interpolation and a soft (antialiased) silhouette; pure torch, nvdiffrast on CUDA
  when it is installed.

Both dispatch to backends registered by name in :mod:`gphm.render.backends`
(:func:`register_backend`, the contracts :class:`GaussianRasterizer` and
:class:`MeshRasterizer`).
"""

from gphm.render.backends import (
    GaussianRasterizer,
    MeshRasterizer,
    RasterizerBackend,
    register_backend,
    registry,
)
from gphm.render.gaussians import rasterize_gaussians
from gphm.render.mesh import MeshRender, render_mesh

__all__ = ["GaussianRasterizer", "MeshRasterizer", "MeshRender", "RasterizerBackend",
           "rasterize_gaussians", "register_backend", "registry", "render_mesh"]  # fmt: skip
