"""Pinhole cameras in the OpenCV convention (docs/architecture.md §4).

* Camera frame: x right, y down, z forward (the viewing direction).
* ``viewmats`` [..., 4, 4] map world → camera: ``x_cam = R_wc @ x_world + t_wc``.
* ``Ks`` [..., 3, 3] are in pixels of the image they are used with; the centre of pixel
  ``(i, j)`` (column ``i``, row ``j``) is at ``(i + 0.5, j + 0.5)``. Resizing an image by
  a factor ``f`` therefore multiplies the first two rows of K by ``f``.
* Canonical head space (used by look-at defaults): +y up, +z out of the face (the nose
  points to +z), +x to the head's left, i.e. the viewer's right when facing it.

Same conventions as gsplat, so cameras pass to either renderer unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "look_at",
    "intrinsics",
    "focal_from_fov",
    "rescale_K",
    "transform_points",
    "world_to_camera",
    "project_points",
    "camera_centers",
    "invert_viewmat",
    "orbit_cameras",
    "rig_center",
]


def look_at(
    eye: Tensor,  # [..., 3] camera centre in world coordinates
    target: Tensor,  # [..., 3] point the camera looks at
    up: Tensor | None = None,  # [..., 3] world up direction; default +y
) -> Tensor:  # [..., 4, 4] world -> camera
    """OpenCV world→camera matrices for cameras at ``eye`` looking at ``target``.

    The image's "up" (−y in camera coordinates) is aligned with the world ``up`` vector
    as far as possible. ``eye`` must not lie on the line through ``target`` along ``up``.
    """
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device)
    eye, target, up = torch.broadcast_tensors(eye, target, up)
    z = target - eye
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x = torch.linalg.cross(-up, z)  # x = y × z with camera y along -up (image down)
    x_norm = x.norm(dim=-1, keepdim=True)
    if bool((x_norm < 1e-8).any()):
        raise ValueError("look_at: viewing direction is parallel to `up`; pick another up")
    x = x / x_norm
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z], dim=-2)  # rows are the camera axes in world coordinates
    t = -(R @ eye.unsqueeze(-1)).squeeze(-1)
    viewmat = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    viewmat[..., :3, :3] = R
    viewmat[..., :3, 3] = t
    viewmat[..., 3, 3] = 1.0
    return viewmat


def focal_from_fov(fov_degrees: float, size: int) -> float:
    """Focal length in pixels for a full field of view ``fov_degrees`` across ``size`` px."""
    return 0.5 * size / math.tan(0.5 * math.radians(fov_degrees))


def intrinsics(
    fx: float | Tensor,
    fy: float | Tensor,
    cx: float | Tensor,
    cy: float | Tensor,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:  # [..., 3, 3]
    """Build K matrices from focal lengths and principal points (pixels, broadcasting)."""
    fx, fy, cx, cy = (torch.as_tensor(v, dtype=dtype, device=device) for v in (fx, fy, cx, cy))
    fx, fy, cx, cy = torch.broadcast_tensors(fx, fy, cx, cy)
    K = torch.zeros(fx.shape + (3, 3), dtype=dtype, device=device)
    K[..., 0, 0] = fx
    K[..., 1, 1] = fy
    K[..., 0, 2] = cx
    K[..., 1, 2] = cy
    K[..., 2, 2] = 1.0
    return K


def rescale_K(Ks: Tensor, factor: float | tuple[float, float]) -> Tensor:
    """K [..., 3, 3] for an image resized by ``factor`` (or ``(fx, fy)`` per axis).

    With pixel centres at ``i + 0.5`` a resize maps continuous image coordinates
    ``u → f·u`` exactly, so only the first two rows scale. Returns a new tensor.
    """
    if Ks.shape[-2:] != (3, 3):
        raise ValueError(f"Ks must have shape [..., 3, 3], got {tuple(Ks.shape)}")
    fu, fv = (factor, factor) if isinstance(factor, (int, float)) else factor
    scale = torch.tensor([fu, fv, 1.0], dtype=Ks.dtype, device=Ks.device)
    return Ks * scale[:, None]


def transform_points(
    mats: Tensor,  # [..., 4, 4] or [..., 3, 4]
    points: Tensor,  # [..., N, 3]
) -> Tensor:  # [..., N, 3]
    """Apply affine transforms to points (broadcasting over leading dimensions)."""
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape [..., N, 3], got {tuple(points.shape)}")
    R = mats[..., :3, :3]
    t = mats[..., :3, 3]
    return points @ R.transpose(-1, -2) + t.unsqueeze(-2)


def world_to_camera(viewmats: Tensor, points: Tensor) -> Tensor:
    """Camera-frame coordinates [..., N, 3] of world ``points`` [..., N, 3]."""
    return transform_points(viewmats, points)


def project_points(
    points: Tensor,  # [..., N, 3] world coordinates
    viewmats: Tensor,  # [..., 4, 4]
    Ks: Tensor,  # [..., 3, 3]
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor]:  # uv [..., N, 2] pixels, depth [..., N] camera z
    """Project world points to pixel coordinates (pixel centres at ``i + 0.5``).

    Points behind the camera are still divided by their (clamped) depth; check
    ``depth > 0`` where it matters.
    """
    cam = world_to_camera(viewmats, points)
    z = cam[..., 2]
    z_safe = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    xy = cam[..., :2] / z_safe.unsqueeze(-1)
    fx, fy = Ks[..., 0, 0, None], Ks[..., 1, 1, None]
    cx, cy = Ks[..., 0, 2, None], Ks[..., 1, 2, None]
    skew = Ks[..., 0, 1, None]
    u = fx * xy[..., 0] + skew * xy[..., 1] + cx
    v = fy * xy[..., 1] + cy
    return torch.stack([u, v], dim=-1), z


def invert_viewmat(viewmats: Tensor) -> Tensor:
    """camera→world [..., 4, 4] from rigid world→camera matrices [..., 4, 4]."""
    R = viewmats[..., :3, :3]
    t = viewmats[..., :3, 3:]
    out = torch.zeros_like(viewmats)
    out[..., :3, :3] = R.transpose(-1, -2)
    out[..., :3, 3:] = -R.transpose(-1, -2) @ t
    out[..., 3, 3] = 1.0
    return out


def camera_centers(viewmats: Tensor) -> Tensor:
    """Camera centres [..., 3] in world coordinates from world→camera [..., 4, 4]."""
    return invert_viewmat(viewmats)[..., :3, 3]


def rig_center(viewmats: Tensor, min_angle_degrees: float = 5.0) -> Tensor | None:
    """Where a calibrated rig is aimed: the world point [3] nearest to every camera's
    optical axis in the least-squares sense, from world→camera ``viewmats`` [V, 4, 4].

    With centres ``C_i`` and unit axes ``d_i`` it solves ``Σ (I − d_i d_iᵀ)(x − C_i) = 0``.
    None when that point is not defined: fewer than two cameras, axes within
    ``min_angle_degrees`` of parallel (the system is then ill-conditioned), or a point
    behind any camera (a rig facing outwards is not aimed at a subject).
    """
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be [V, 4, 4], got {list(viewmats.shape)}")
    if viewmats.shape[0] < 2:
        return None
    vm = viewmats.double()
    C = camera_centers(vm)  # [V, 3]
    d = vm[:, 2, :3]  # [V, 3] the optical axis (camera +z) in world: the third row of R
    P = torch.eye(3, dtype=vm.dtype) - d[:, :, None] * d[:, None, :]  # [V, 3, 3]
    A, b = P.sum(0), (P @ C[..., None]).sum(0)[:, 0]
    # The smallest eigenvalue of A is ~ sin² of the widest angle between the axes.
    if float(torch.linalg.eigvalsh(A)[0]) < math.sin(math.radians(min_angle_degrees)) ** 2 / 2:
        return None
    x = torch.linalg.solve(A, b)
    if bool((((x - C) * d).sum(-1) <= 0).any()):
        return None
    return x.to(viewmats.dtype)


def orbit_cameras(
    num: int,
    radius: float = 3.0,
    elevation_degrees: float = 10.0,
    azimuth_range: tuple[float, float] = (0.0, 360.0),
    target: tuple[float, float, float] = (0.0, 0.0, 0.0),
    endpoint: bool = False,
) -> Tensor:  # [num, 4, 4] world -> camera
    """Cameras on a circle around ``target`` (canonical +y up), azimuth 0 on the +z axis
    (in front of the face), positive azimuth towards +x (the head's left)."""
    az = torch.linspace(*azimuth_range, num + (0 if endpoint else 1))[:num]
    az, el = torch.deg2rad(az), torch.deg2rad(torch.tensor(elevation_degrees))
    t = torch.tensor(target)
    eye = torch.stack(
        [radius * el.cos() * az.sin(), radius * el.sin().expand(num), radius * el.cos() * az.cos()],
        dim=-1,
    )
    return look_at(eye + t, t.expand(num, 3))
