"""Differentiable triangle-mesh renderer (docs/architecture.md §5.2): ``render_mesh``.

Conventions: OpenCV cameras (x right, y down, z forward), ``viewmats`` world→camera,
``Ks`` in pixels, pixel centres at ``(i + 0.5, j + 0.5)``; a pixel is covered when its
centre is inside a triangle. Triangles are counter-clockwise seen from outside, but no
back-face culling is done: the z-buffer resolves closed meshes and open meshes (or a
single triangle) render from both sides. Triangles with a vertex at camera
``z <= near`` are dropped by the torch backend (nvdiffrast clips them instead).

Backends: ``"torch"`` (pure torch, any device, see ``_mesh_torch``) and
``"nvdiffrast"`` (CUDA only, when the package is installed); ``"auto"`` picks
nvdiffrast for CUDA tensors when it can be imported, torch otherwise. They are registered
in :mod:`gphm.render.backends` (``registry("mesh")``, contract
:class:`~gphm.render.backends.MeshRasterizer`), where others can be added.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gphm.render import _mesh_torch
from gphm.render._checks import check_image_size, check_named_dims, check_tensor
from gphm.render.backends import RasterizerBackend, registry

__all__ = ["MeshRender", "render_mesh", "select_mesh_backend"]

_REGISTRY = registry("mesh")


@dataclass
class MeshRender:
    """Output of :func:`render_mesh` (B views of H×W pixels)."""

    features: Tensor
    """[B, H, W, D] perspective-correct interpolated vertex features, 0 where empty; hard
    (not antialiased). ``D = 0`` when no vertex features were given."""
    mask: Tensor
    """[B, H, W, 1] soft coverage in [0, 1]: the hard mask antialiased at the
    object/background silhouette, differentiable w.r.t. vertex positions there."""
    depth: Tensor
    """[B, H, W, 1] camera-space z of the visible surface, 0 where empty."""
    face_ids: Tensor
    """[B, H, W] int64 index of the visible triangle, -1 where empty."""


def render_mesh(
    verts: Tensor,  # [B, V, 3] world coordinates
    faces: Tensor,  # [F, 3] int64 vertex indices, CCW seen from outside
    viewmats: Tensor,  # [B, 4, 4] world -> camera (OpenCV)
    Ks: Tensor,  # [B, 3, 3] intrinsics in pixels
    width: int,
    height: int,
    vertex_features: Tensor | None = None,  # [B, V, D]
    backend: str = "auto",
    *,
    near: float = 1e-2,
) -> MeshRender:
    """Rasterize a batch of meshes (shared topology), one camera per mesh.

    Args:
        verts: world positions; mesh ``b`` is seen by camera ``b``.
        faces: vertex indices, shared by the batch; winding only matters for callers
            (no culling here).
        viewmats, Ks: OpenCV world→camera matrices and pixel intrinsics of an image of
            ``width`` × ``height`` pixels.
        vertex_features: interpolated perspective-correctly into ``features``; None
            gives ``features`` of shape [B, H, W, 0].
        backend: ``"auto"`` (nvdiffrast for CUDA tensors when installed, else torch),
            ``"torch"`` or ``"nvdiffrast"``.
        near: triangles with a vertex at camera ``z <= near`` are dropped (torch
            backend) or clipped (nvdiffrast).

    Differentiable w.r.t. ``verts`` (through interpolation, depth and the soft mask),
    ``vertex_features``, ``viewmats`` and ``Ks``; ``face_ids`` and which triangle covers a
    pixel are not. Outputs follow the device and dtype of ``verts`` (float32 or float64;
    all float inputs must share it).
    """
    verts = check_tensor("verts", verts, ("B", "V", 3))
    device, dtype = verts.device, verts.dtype
    faces = check_tensor("faces", faces, ("F", 3), floating=False, device=device)
    viewmats = check_tensor("viewmats", viewmats, ("B", 4, 4), device=device)
    Ks = check_tensor("Ks", Ks, ("B", 3, 3), device=device)
    named = {"verts": verts, "viewmats": viewmats, "Ks": Ks}
    if vertex_features is not None:
        check_tensor("vertex_features", vertex_features, ("B", "V", "D"), device=device)
        named["vertex_features"] = vertex_features
    check_named_dims(named, {"B": (0,) * len(named)})
    if vertex_features is not None:
        check_named_dims({"verts": verts, "vertex_features": vertex_features}, {"V": (1, 1)})
    for name, x in named.items():
        if x.dtype != dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but verts has {dtype}; use one dtype")
    if faces.dtype != torch.int64:
        raise TypeError(f"faces must be int64 (torch.long), got dtype {faces.dtype}")
    num_verts = verts.shape[1]
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= num_verts):
        raise ValueError(
            f"faces index vertices in [{int(faces.min())}, {int(faces.max())}] but verts "
            f"has V={num_verts} (valid indices are 0..{num_verts - 1})"
        )
    width, height = check_image_size(width, height)
    if not near > 0:
        raise ValueError(f"near must be > 0, got {near!r}")

    chosen = _REGISTRY.get(select_mesh_backend(backend, device))
    out = chosen.rasterize(verts, faces, viewmats, Ks, width, height, vertex_features, near)
    features, mask, depth, face_ids = out
    return MeshRender(features=features, mask=mask, depth=depth, face_ids=face_ids)


def select_mesh_backend(backend: object, device: torch.device) -> str:
    """The registered mesh backend ``backend`` (``"auto"``: nvdiffrast for CUDA tensors
    when it imports, else torch) resolves to for inputs on ``device``; a one-line
    ``ValueError`` listing the known backends for an unknown name."""
    return _REGISTRY.select(backend, device, torch.float32).name


def _torch_backend(verts, faces, viewmats, Ks, width, height, vertex_features, near):
    return _mesh_torch.render(verts, faces, viewmats, Ks, width, height, vertex_features, near)


def _nvdiffrast_backend(verts, faces, viewmats, Ks, width, height, vertex_features, near):
    from gphm.render import _mesh_nvdiffrast

    return _mesh_nvdiffrast.render(verts, faces, viewmats, Ks, width, height, vertex_features, near)


def _require_nvdiffrast(device: torch.device, dtype: torch.dtype, semantics: str | None) -> None:
    from gphm.render import _mesh_nvdiffrast

    if device.type != "cuda":
        raise ValueError(f"backend='nvdiffrast' needs CUDA tensors, got device {device}")
    if not _mesh_nvdiffrast.is_available():
        raise ImportError(
            "backend='nvdiffrast' but nvdiffrast cannot be imported "
            f"({_mesh_nvdiffrast.import_error()}); install it from "
            "https://github.com/NVlabs/nvdiffrast or use backend='torch'"
        )


def _auto_nvdiffrast(device: torch.device, dtype: torch.dtype, semantics: str | None) -> bool:
    from gphm.render import _mesh_nvdiffrast

    return device.type == "cuda" and _mesh_nvdiffrast.is_available()


_REGISTRY.register(RasterizerBackend(
    "torch", _torch_backend, auto=lambda device, dtype, semantics: True, priority=0,
    description="pure-torch z-buffer rasterizer: any device, float32/float64",
))  # fmt: skip
_REGISTRY.register(RasterizerBackend(
    "nvdiffrast", _nvdiffrast_backend, require=_require_nvdiffrast, auto=_auto_nvdiffrast,
    priority=10, description="nvdiffrast (CUDA, optional package); computes in float32",
))  # fmt: skip
