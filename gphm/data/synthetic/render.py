"""Cameras, head poses, lighting and anti-aliased rendering of the synthetic heads.

* **Cameras** (:func:`camera_rig`): ``V`` cameras on a sphere cap around the head,
  looking at the origin, the same for every frame. Azimuths are evenly spread over
  ±70°, elevations follow a golden-ratio sequence inside ±25°. The focal length frames
  the whole head (crown to neck, ~1.75 units) at ~65 % of the image height.
* **Head pose** (:func:`sample_head_pose`): per frame, ``x_w = s·R·x_c + T``
  (docs/architecture.md §4) with yaw/pitch/roll up to 15°/10°/6°, |T| ≤ 0.04 per axis and
  s in [0.96, 1.04].
* **Lighting** (:class:`LightRig`): Lambertian + ambient with two directional lights
  fixed in *canonical head space* (they turn with the head). The shaded colour of a
  point then depends only on (identity, expression, canonical position), never on the
  pose or the camera, which is exactly what a canonical colour field such as GPHM's
  ``f_col(H, z_exp)`` can represent; held-out views and combos are thus measurable
  without a lighting mismatch.
* **Anti-aliasing**: each view is rendered at ``supersample × resolution`` through
  :func:`gphm.render.mesh.render_mesh` (cameras batched, back-facing triangles culled
  per batch), shaded per pixel from interpolated albedo and normals, composited on
  white with the soft coverage mask, and box-downsampled (image and mask alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gphm.geometry import (
    axis_angle_to_matrix,
    camera_centers,
    intrinsics,
    look_at,
    rescale_K,
)
from gphm.render.mesh import render_mesh

__all__ = [
    "rig_from_angles",
    "CameraRig",
    "HeadPose",
    "LightRig",
    "RenderedViews",
    "camera_rig",
    "sample_head_pose",
    "render_views",
    "front_faces",
]

#: Distance of the cameras from the origin (canonical units, head ≈ 1.75 tall).
CAMERA_DISTANCE = 4.0
#: Fraction of the image height covered by the head's full height (crown to neck).
FRAMING = 0.66
HEAD_EXTENT = 1.75
LOOK_AT = (0.0, -0.02, 0.0)
MAX_AZIMUTH = 70.0
MAX_ELEVATION = 25.0


@dataclass(frozen=True)
class CameraRig:
    """Cameras shared by all frames."""

    names: list[str]  # cam_00, cam_01, ...
    azimuth: np.ndarray  # [C] degrees, + towards the head's left (+x)
    elevation: np.ndarray  # [C] degrees, + above the head
    viewmats: np.ndarray  # [C, 4, 4] world -> camera (OpenCV)
    Ks: np.ndarray  # [C, 3, 3] pixels of a resolution × resolution image
    resolution: int

    def most_frontal(self, among: list[int] | None = None) -> int:
        """Index of the camera closest to straight in front of the face."""
        ids = list(range(len(self.names))) if among is None else among
        angle = np.hypot(self.azimuth[ids], self.elevation[ids])
        return ids[int(np.argmin(angle))]


def camera_rig(num_views: int, resolution: int) -> CameraRig:
    """Deterministic camera layout (depends only on ``num_views`` and ``resolution``)."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if num_views == 1:
        azimuth = np.zeros(1)
    else:
        azimuth = np.linspace(-MAX_AZIMUTH, MAX_AZIMUTH, num_views)
    golden = (np.arange(num_views) * 0.6180339887498949 + 0.6) % 1.0
    elevation = MAX_ELEVATION * (2.0 * golden - 1.0)
    return rig_from_angles(azimuth, elevation, resolution)


def rig_from_angles(azimuth: np.ndarray, elevation: np.ndarray, resolution: int) -> CameraRig:
    """Cameras at ``azimuth`` / ``elevation`` [C] degrees on the rig's sphere about the head,
    looking at it, with the framing's intrinsics at ``resolution``."""
    num_views = len(azimuth)
    az, el = np.radians(azimuth), np.radians(elevation)
    target = np.asarray(LOOK_AT)
    eye = target + CAMERA_DISTANCE * np.stack(
        [np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], axis=-1
    )
    viewmats = look_at(
        torch.from_numpy(eye), torch.from_numpy(np.broadcast_to(target, eye.shape).copy())
    ).numpy()
    focal = FRAMING * resolution * CAMERA_DISTANCE / HEAD_EXTENT
    K = intrinsics(focal, focal, resolution / 2.0, resolution / 2.0, dtype=torch.float64)
    Ks = np.broadcast_to(K.numpy(), (num_views, 3, 3)).copy()
    names = [f"cam_{i:02d}" for i in range(num_views)]
    return CameraRig(names, azimuth, elevation, viewmats, Ks, resolution)


@dataclass(frozen=True)
class HeadPose:
    """Canonical → world: ``x_w = scale · R @ x_c + T``."""

    R: np.ndarray  # [3, 3]
    T: np.ndarray  # [3]
    scale: float

    def apply(self, points: np.ndarray) -> np.ndarray:  # [N, 3] -> [N, 3]
        return self.scale * points @ self.R.T + self.T


def sample_head_pose(rng: np.random.Generator) -> HeadPose:
    """Random pose: yaw ±15°, pitch ±10°, roll ±6°, translation ±0.04, scale 0.96–1.04."""
    yaw, pitch, roll = np.radians(rng.uniform(-1.0, 1.0, 3) * np.array([15.0, 10.0, 6.0]))
    axes = torch.eye(3, dtype=torch.float64)  # rows: x, y, z
    Rx, Ry, Rz = (
        axis_angle_to_matrix(axes[i] * a).numpy() for i, a in enumerate((pitch, yaw, roll))
    )
    T = rng.uniform(-0.04, 0.04, 3)
    scale = float(rng.uniform(0.96, 1.04))
    return HeadPose(R=Ry @ Rx @ Rz, T=T, scale=scale)


@dataclass(frozen=True)
class LightRig:
    """Lambertian lighting in canonical head space: ``albedo · (ambient + Σ kᵢ·max(0, n·lᵢ))``."""

    ambient: float = 0.42
    key_direction: tuple[float, float, float] = (0.45, 0.5, 0.75)  # upper front, head's left
    key_intensity: float = 0.62
    fill_direction: tuple[float, float, float] = (-0.7, 0.1, 0.5)  # from the head's right
    fill_intensity: float = 0.22

    def shade(self, albedo: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """albedo [..., 3], unit normals [..., 3] (canonical) -> shaded RGB [..., 3]."""
        light = torch.full_like(albedo[..., :1], self.ambient)
        for direction, k in (
            (self.key_direction, self.key_intensity),
            (self.fill_direction, self.fill_intensity),
        ):
            l_dir = torch.tensor(direction, dtype=normals.dtype)
            l_dir = l_dir / l_dir.norm()
            light = light + k * (normals @ l_dir).clamp_min(0.0)[..., None]
        return albedo * light


def _extend_colors(
    rgb: torch.Tensor,  # [B, H, W, 3], meaningless where not covered
    covered: torch.Tensor,  # [B, H, W] bool, a triangle covers the pixel centre
    mask: torch.Tensor,  # [B, H, W] soft coverage
) -> torch.Tensor:  # [B, H, W, 3]
    """Give the partly covered empty pixels the mean colour of their covered 3×3
    neighbours.

    The soft mask grants partial coverage to empty pixels just outside the silhouette;
    they need the surface's colour there, not the zeros ``render_mesh`` leaves. Only
    those (few) pixels are touched.
    """
    B, H, W, _ = rgb.shape
    b, y, x = ((mask > 0) & ~covered).nonzero(as_tuple=True)
    if b.numel() == 0:
        return rgb
    total = rgb.new_zeros(b.shape[0], 3)
    count = rgb.new_zeros(b.shape[0], 1)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy, xx = (y + dy).clamp(0, H - 1), (x + dx).clamp(0, W - 1)
            hit = covered[b, yy, xx][:, None].to(rgb.dtype)
            total += rgb[b, yy, xx] * hit
            count += hit
    out = rgb.clone()
    out[b, y, x] = total / count.clamp_min(1.0)
    return out


def _box_downsample(x: torch.Tensor, s: int) -> torch.Tensor:  # [B, H, W, C] -> [B, H/s, W/s, C]
    if s == 1:
        return x
    # Sum of s² strided views: cheaper than a reduction over interleaved axes.
    total = sum(x[:, dy::s, dx::s] for dy in range(s) for dx in range(s))
    return total / (s * s)


def front_faces(
    verts: torch.Tensor,  # [V, 3] world
    faces: torch.Tensor,  # [F, 3]
    centers: torch.Tensor,  # [C, 3] camera centres, world
) -> torch.Tensor:  # [F] bool
    """Faces whose front side some camera sees. On a closed mesh the others are hidden
    (back faces never win the z-test), so dropping them changes no pixel."""
    v0, v1, v2 = (verts[faces[:, k]] for k in range(3))
    normal = torch.linalg.cross(v1 - v0, v2 - v0)  # [F, 3] outward, unnormalised
    centroid = (v0 + v1 + v2) / 3.0
    facing = torch.einsum("fk,cfk->cf", normal, centers[:, None] - centroid[None])
    return (facing > 0).any(0)


@dataclass(frozen=True)
class RenderedViews:
    """All cameras of one frame, at the output resolution."""

    images: np.ndarray  # [C, H, W, 3] uint8, composited on white
    masks: np.ndarray  # [C, H, W] uint8, 255 = head


def render_views(
    verts: np.ndarray,  # [V, 3] canonical
    faces: np.ndarray,  # [F, 3]
    normals: np.ndarray,  # [V, 3] canonical unit normals
    albedo: np.ndarray,  # [V, 3] in [0, 1]
    pose: HeadPose,
    rig: CameraRig,
    supersample: int = 2,
    lights: LightRig | None = None,
    cameras_per_call: int = 4,
) -> RenderedViews:
    """Render one posed head from every camera of ``rig``.

    Cameras go through :func:`render_mesh` in batches of ``cameras_per_call``
    neighbouring cameras, each batch with only the faces its cameras can see
    (about half the head for neighbouring cameras): the same pixels, less work.
    """
    lights = lights or LightRig()
    C, R, s = len(rig.names), rig.resolution, supersample
    world = torch.from_numpy(pose.apply(verts)).float()
    faces_t = torch.from_numpy(np.array(faces, dtype=np.int64))  # a writable copy
    feats = torch.from_numpy(np.concatenate([albedo, normals], axis=1)).float()
    viewmats = torch.from_numpy(rig.viewmats).float()
    Ks = rescale_K(torch.from_numpy(rig.Ks).float(), float(s))
    centers = camera_centers(viewmats)
    images, masks = [], []
    with torch.no_grad():
        for c0 in range(0, C, cameras_per_call):
            cams = slice(c0, min(C, c0 + cameras_per_call))
            n = cams.stop - cams.start
            out = render_mesh(
                world[None].expand(n, -1, -1),
                faces_t[front_faces(world, faces_t, centers[cams])],
                viewmats[cams],
                Ks[cams],
                R * s,
                R * s,
                feats[None].expand(n, -1, -1),
            )
            albedo_px, normal_px = out.features[..., :3], out.features[..., 3:]
            normal_px = normal_px / normal_px.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            rgb = lights.shade(albedo_px, normal_px).clamp(0.0, 1.0)
            mask = out.mask  # [n, H, W, 1] soft coverage, antialiased at the silhouette
            rgb = _extend_colors(rgb, out.face_ids >= 0, mask[..., 0])
            image = rgb * mask + (1.0 - mask)  # composited on white
            images.append(_box_downsample(image, s))
            masks.append(_box_downsample(mask, s)[..., 0])
    image, mask = torch.cat(images), torch.cat(masks)
    return RenderedViews(
        images=(image.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy(),
        masks=(mask.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy(),
    )
