"""nvdiffrast backend of :func:`gphm.render.render_mesh` (CUDA only, optional).

nvdiffrast is imported lazily: this module imports without it, ``is_available`` tells
whether it can be used. The outputs match the torch backend's conventions:

* Clip space from OpenCV ``K``/``viewmat``: with camera coordinates ``(x, y, z)`` and
  pixel coordinates ``(u, v)`` (centres at ``i + 0.5``), ``x_ndc = 2u/W - 1`` and
  ``y_ndc = 2v/H - 1``, ``w = z``. nvdiffrast stores NDC ``y = -1`` in row 0 (the
  reason its OpenGL samples flip images vertically), so with this mapping row ``j`` of
  its output is pixel row ``j`` of ours: no flip. It samples at pixel centres too.
* Depth is interpolated camera z (perspective-correct, so it equals the torch
  backend's ``1 / sum(b_i / z_i)``); the soft mask is ``antialias`` of the hard mask.
* Differences: nvdiffrast clips triangles at the near plane where the torch backend
  drops them, and its tie rule and antialiasing differ in detail (it antialiases with
  the triangle at the pixel, so silhouettes made of sub-pixel triangles are softened
  less). Computation is float32; outputs are cast back to the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gphm.geometry.cameras import world_to_camera

_CONTEXTS: dict[torch.device, object] = {}
_IMPORT_ERROR: list[str] = []


def _dr():
    import nvdiffrast.torch as dr  # lazy: optional dependency, CUDA only

    return dr


def is_available() -> bool:
    """Whether ``nvdiffrast.torch`` can be imported (cached)."""
    if _IMPORT_ERROR:
        return False
    try:
        _dr()
    except ImportError as e:  # also covers a broken build whose extension fails to load
        _IMPORT_ERROR.append(f"{type(e).__name__}: {e}")
        return False
    return True


def import_error() -> str:
    return _IMPORT_ERROR[0] if _IMPORT_ERROR else "no error"


def _context(device: torch.device):
    # A CUDA rasterizer context is costly to create; keep one per device.
    if device not in _CONTEXTS:
        _CONTEXTS[device] = _dr().RasterizeCudaContext(device=device)
    return _CONTEXTS[device]


def clip_positions(
    verts: Tensor,  # [B, V, 3] world
    viewmats: Tensor,  # [B, 4, 4]
    Ks: Tensor,  # [B, 3, 3]
    width: int,
    height: int,
    near: float,
) -> Tensor:  # [B, V, 4] homogeneous clip coordinates
    """OpenCV camera → nvdiffrast clip space (see the module docstring)."""
    cam = world_to_camera(viewmats, verts)
    x, y, z = cam.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy, skew = Ks[:, 0, 2, None], Ks[:, 1, 2, None], Ks[:, 0, 1, None]
    # x_ndc * w with w = z: (2 u / W - 1) z, u z = fx x + skew y + cx z
    clip_x = 2.0 * (fx * x + skew * y + cx * z) / width - z
    clip_y = 2.0 * (fy * y + cy * z) / height - z
    # z_ndc = a + b / z maps [near, far] to [-1, 1]; far only needs to enclose the mesh.
    far = float(z.detach().max().clamp_min(near)) * 2.0 + 1.0
    a, b = (far + near) / (far - near), -2.0 * far * near / (far - near)
    clip_z = a * z + b
    return torch.stack([clip_x, clip_y, clip_z, z], -1)


def render(
    verts: Tensor,  # [B, V, 3] world
    faces: Tensor,  # [F, 3] int64
    viewmats: Tensor,  # [B, 4, 4]
    Ks: Tensor,  # [B, 3, 3]
    width: int,
    height: int,
    vertex_features: Tensor | None,  # [B, V, D]
    near: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # features, mask, depth, face_ids
    """Same outputs as ``_mesh_torch.render``; inputs are assumed validated."""
    if faces.shape[0] == 0:
        from gphm.render import _mesh_torch

        return _mesh_torch.render(verts, faces, viewmats, Ks, width, height, vertex_features, near)
    dr = _dr()
    dtype = verts.dtype
    pos = clip_positions(verts, viewmats, Ks, width, height, near).float().contiguous()
    tri = faces.to(torch.int32).contiguous()
    rast, _ = dr.rasterize(_context(verts.device), pos, tri, resolution=[height, width])
    face_ids = rast[..., 3].to(torch.int64) - 1  # nvdiffrast stores triangle id + 1
    covered = (face_ids >= 0)[..., None].float()
    attrs = [pos[..., 3:]]  # camera z
    if vertex_features is not None:
        attrs.append(vertex_features.float())
    interp, _ = dr.interpolate(torch.cat(attrs, -1).contiguous(), rast, tri)
    interp = interp * covered
    depth, features = interp[..., :1], interp[..., 1:]  # features [B, H, W, 0] if None
    mask = dr.antialias(covered.contiguous(), rast, pos, tri)
    return features.to(dtype), mask.clamp(0, 1).to(dtype), depth.to(dtype), face_ids
