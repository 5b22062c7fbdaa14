"""CPU tests of the mesh renderer (torch backend) against analytic results and the naive
ray-casting oracle ``_rasterize_naive``."""

from __future__ import annotations

import math

import pytest
import torch

from gphm.geometry.cameras import focal_from_fov, intrinsics, look_at, world_to_camera
from gphm.geometry.mesh import uv_sphere
from gphm.render._mesh_torch import _rasterize_naive
from gphm.render.mesh import MeshRender, render_mesh

# ----------------------------------------------------------------------------------------
# helpers


def cube(dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Cube [-0.5, 0.5]^3, 12 triangles, CCW seen from outside."""
    verts = torch.tensor(
        [[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=dtype
    )
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [[a, b, c] for a, b, c, d in quads] + [[a, c, d] for a, b, c, d in quads]
    return verts, torch.tensor(faces)


def camera(eye, size: int, fov: float = 40.0, target=(0.0, 0.0, 0.0), dtype=torch.float64):
    """viewmat [4, 4] and K [3, 3] of a look-at camera (+y up) with square pixels."""
    eye_t = torch.tensor(eye, dtype=dtype)
    viewmat = look_at(eye_t, torch.tensor(target, dtype=dtype))
    f = focal_from_fov(fov, size)
    return viewmat, intrinsics(f, f, size / 2, size / 2, dtype=dtype)


def pixel_rays(K: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Camera-frame rays [H, W, 3] with z = 1 through the pixel centres."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=K.dtype) + 0.5,
        torch.arange(width, dtype=K.dtype) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1)
    return pix @ torch.linalg.inv(K).T


def tilted_plane(dtype=torch.float64):
    """A 3x3-vertex grid (8 triangles) in the plane z = 0.3 x - 0.4 y, seen from +z."""
    g = torch.linspace(-0.8, 0.8, 3, dtype=dtype)
    y, x = torch.meshgrid(g, g, indexing="ij")
    verts = torch.stack([x, y, 0.3 * x - 0.4 * y], -1).reshape(-1, 3)
    faces = []
    for r in range(2):
        for c in range(2):
            a, b, d, e = 3 * r + c, 3 * r + c + 1, 3 * r + c + 3, 3 * r + c + 4
            faces += [[a, b, e], [a, e, d]]
    return verts, torch.tensor(faces)


def render1(verts, faces, viewmat, K, size, features=None, **kw) -> MeshRender:
    """Render one view (adds and keeps the batch dimension)."""
    feats = None if features is None else features[None]
    return render_mesh(verts[None], faces, viewmat[None], K[None], size, size, feats, **kw)


# ----------------------------------------------------------------------------------------
# interpolation and depth against analytic results


def test_linear_field_is_interpolated_exactly_with_perspective():
    verts, faces = tilted_plane()
    viewmat, K = camera((0.4, 0.3, 2.0), 40, fov=60.0)
    a, b = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64), 0.25
    field = torch.stack([verts @ a + b, 2 * verts[:, 0]], -1)  # [V, 2]
    out = render1(verts, faces, viewmat, K, 40, field)
    covered = out.face_ids[0] >= 0
    assert covered.sum() > 300
    # Analytic: intersect each pixel ray with the plane n.x = 0 in the world frame.
    rays_cam = pixel_rays(K, 40, 40)
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    origin = -R.T @ t
    dirs = rays_cam @ R  # camera -> world directions (R^T d)
    n = torch.tensor([0.3, -0.4, -1.0], dtype=torch.float64)
    s = -(origin @ n) / (dirs @ n)  # ray parameter = camera z since rays_cam has z = 1
    hit = origin + s[..., None] * dirs
    expected = torch.stack([hit @ a + b, 2 * hit[..., 0]], -1)
    torch.testing.assert_close(out.features[0][covered], expected[covered], atol=1e-9, rtol=0)
    torch.testing.assert_close(out.depth[0, ..., 0][covered], s[covered], atol=1e-9, rtol=0)
    assert (out.features[0][~covered] == 0).all() and (out.depth[0][~covered] == 0).all()


def test_linear_field_float32():
    verts, faces = tilted_plane(torch.float32)
    viewmat, K = camera((0.4, 0.3, 2.0), 40, fov=60.0, dtype=torch.float32)
    field = (verts @ torch.tensor([0.7, -1.3, 2.0]))[:, None]
    out64 = render1(verts.double(), faces, viewmat.double(), K.double(), 40, field.double())
    out32 = render1(verts, faces, viewmat, K, 40, field)
    assert out32.features.dtype == torch.float32 and out32.mask.dtype == torch.float32
    torch.testing.assert_close(out32.features.double(), out64.features, atol=1e-4, rtol=0)


def test_sphere_depth_matches_ray_sphere_intersection():
    verts, faces = uv_sphere(48, 24, torch.float64)
    viewmat, K = camera((0.3, 0.5, 3.0), 64)
    out = render1(verts, faces, viewmat, K, 64)
    rays = pixel_rays(K, 64, 64)  # camera frame, z = 1
    centre = viewmat[:3, 3]  # sphere centre (world origin) in the camera frame
    dd, dc = (rays * rays).sum(-1), rays @ centre
    disc = dc**2 - dd * (centre @ centre - 1.0)
    s = (dc - disc.clamp_min(0).sqrt()) / dd  # nearest hit; its camera z is s
    # The tessellation lies inside the sphere: a triangle with circumradius rho is at most
    # 1 - sqrt(1 - rho^2) below it. Along a ray that hits at incidence cos(theta) the
    # depth gap is at most that over cos(theta); compare where cos(theta) > 0.5.
    tri = verts[faces]
    a, b = (tri[:, 1] - tri[:, 2]).norm(dim=-1), (tri[:, 0] - tri[:, 2]).norm(dim=-1)
    e = (tri[:, 0] - tri[:, 1]).norm(dim=-1)
    area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    rho = (a * b * e / (4 * area)).max()
    sagitta = 1 - math.sqrt(1 - rho**2)
    hit = s[..., None] * rays
    normal = hit - centre
    cos_inc = -(normal * rays).sum(-1) / rays.norm(dim=-1)
    good = (disc > 0) & (cos_inc > 0.5)
    depth = out.depth[0, ..., 0]
    assert (out.face_ids[0][good] >= 0).all()
    gap = depth[good] - s[good]
    assert gap.min() >= -1e-9, "the inscribed mesh cannot be in front of the sphere"
    assert gap.max() <= 2 * sagitta + 1e-9
    assert good.sum() > 600


# ----------------------------------------------------------------------------------------
# visibility against the naive oracle, watertightness


def layered_triangles(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random triangles at well-separated depths (no intersections), both windings."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 3, generator=g, dtype=torch.float64) * 1.2 - 0.6
    centres[:, 2] = torch.linspace(-0.8, 0.8, n, dtype=torch.float64)[
        torch.randperm(n, generator=g)
    ]
    offsets = torch.randn(n, 3, 3, generator=g, dtype=torch.float64) * 0.45
    offsets[..., 2] *= 0.05
    return (centres[:, None] + offsets).reshape(-1, 3), torch.arange(3 * n).view(n, 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_face_ids_and_depth_match_naive_ray_casting(seed):
    verts, faces = layered_triangles(12, seed)
    for eye in [(0.0, 0.0, 3.0), (0.5, -0.4, -2.5)]:  # front and back: no culling
        viewmat, K = camera(eye, 48)
        out = render1(verts, faces, viewmat, K, 48)
        ids, depth, margin = _rasterize_naive(verts, faces, viewmat, K, 48, 48)
        clear = margin > 1e-6  # centres on an edge depend on the tie rule
        assert clear.float().mean() > 0.95
        assert torch.equal(out.face_ids[0][clear], ids[clear])
        torch.testing.assert_close(out.depth[0, ..., 0][clear], depth[clear], atol=1e-9, rtol=0)
        assert (ids >= 0).sum() > 300


def convex_hull_inside(points: torch.Tensor, query: torch.Tensor, margin: float) -> torch.Tensor:
    """Whether query points [N, 2] are inside the convex hull of points [M, 2] by more
    than ``margin`` (1) / outside by more than margin (0) / near its boundary (-1)."""
    pts = sorted(set(map(tuple, points.tolist())))

    def half(seq):
        h = []
        for p in seq:
            while (
                len(h) >= 2
                and (h[-1][0] - h[-2][0]) * (p[1] - h[-2][1])
                - (h[-1][1] - h[-2][1]) * (p[0] - h[-2][0])
                <= 0
            ):
                h.pop()
            h.append(p)
        return h

    hull = torch.tensor(half(pts)[:-1] + half(pts[::-1])[:-1], dtype=query.dtype)
    a, b = hull, hull.roll(-1, 0)
    edge = b - a
    rel = query[:, None] - a[None]
    dist = (edge[None, :, 0] * rel[..., 1] - edge[None, :, 1] * rel[..., 0]) / edge.norm(dim=-1)
    signed = dist.amin(1)  # > 0 inside for a counter-clockwise hull (x right, y up frame)
    return torch.where(signed > margin, 1, torch.where(signed < -margin, 0, -1))


@pytest.mark.parametrize("mesh", ["sphere", "cube"])
def test_closed_convex_mesh_has_no_holes(mesh):
    verts, faces = uv_sphere(40, 20, torch.float64) if mesh == "sphere" else cube()
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        eye = torch.randn(3, generator=g, dtype=torch.float64)
        viewmat, K = camera((2.6 * eye / eye.norm()).tolist(), 48)
        out = render1(verts, faces, viewmat, K, 48)
        # A convex mesh's silhouette is the convex hull of its projected vertices.
        cam = world_to_camera(viewmat, verts)
        uv = (cam / cam[:, 2:]) @ K.T
        ys, xs = torch.meshgrid(
            torch.arange(48.0, dtype=torch.float64) + 0.5,
            torch.arange(48.0, dtype=torch.float64) + 0.5,
            indexing="ij",
        )
        # flip y so that the hull routine's counter-clockwise test holds
        flip = torch.tensor([1.0, -1.0], dtype=torch.float64)
        inside = convex_hull_inside(
            uv[:, :2] * flip, torch.stack([xs, ys], -1).view(-1, 2) * flip, 1e-6
        )
        inside = inside.view(48, 48)
        covered = out.face_ids[0] >= 0
        assert covered[inside == 1].all(), "hole inside a closed mesh"
        assert not covered[inside == 0].any()
        assert (out.mask[0, ..., 0][inside == 1] > 0).all()


def test_shared_edges_through_pixel_centres_are_owned_exactly_once():
    # A planar grid whose vertices and diagonals pass exactly through pixel centres:
    # every covered centre must be claimed by exactly one triangle.
    n, size = 4, 16
    viewmat = torch.eye(4, dtype=torch.float64)
    K = intrinsics(1.0, 1.0, 0.0, 0.0, dtype=torch.float64)
    g = torch.arange(n + 1, dtype=torch.float64) * 3 + 2.5  # pixel centres at z = 1
    y, x = torch.meshgrid(g, g, indexing="ij")
    verts = torch.stack([x, y, torch.ones_like(x)], -1).reshape(-1, 3)
    faces = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = (
                r * (n + 1) + c,
                r * (n + 1) + c + 1,
                (r + 1) * (n + 1) + c,
                (r + 1) * (n + 1) + c + 1,
            )
            faces += [[a, b, e], [a, e, d]] if (r + c) % 2 else [[a, b, d], [b, e, d]]
    faces = torch.tensor(faces)
    counts = torch.zeros(size, size, dtype=torch.long)
    for f in range(len(faces)):
        counts += (render1(verts, faces[f : f + 1], viewmat, K, size).face_ids[0] >= 0).long()
    assert counts.max() == 1
    whole = render1(verts, faces, viewmat, K, size).face_ids[0] >= 0
    assert torch.equal(whole, counts == 1)
    # the grid spans centres 2.5 .. 14.5: exactly one of its two boundary lines per axis
    # owns its centres (top-left-like rule), the interior has no cracks
    assert counts[3:14, 3:14].eq(1).all()
    assert 11 * 11 <= int(counts.sum()) <= 13 * 13


def test_open_mesh_renders_from_both_sides():
    verts = torch.tensor(
        [[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64
    )
    faces = torch.tensor([[0, 1, 2]])
    front = render1(verts, faces, *camera((0.0, 0.0, 2.0), 32), 32)
    back = render1(verts, faces, *camera((0.0, 0.0, -2.0), 32), 32)
    assert torch.equal(front.face_ids[0] >= 0, (back.face_ids[0] >= 0).flip(1))
    assert (front.face_ids >= 0).sum() > 50


def test_near_plane_drops_triangles():
    verts = torch.tensor(
        [[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, 2.5]], dtype=torch.float64
    )
    out = render1(verts, torch.tensor([[0, 1, 2]]), *camera((0.0, 0.0, 2.0), 16), 16)
    assert (out.face_ids == -1).all() and (out.mask == 0).all()


def test_chunked_rasterization_matches_single_chunk():
    from gphm.render import _mesh_torch

    verts, faces = uv_sphere(24, 12, torch.float64)
    viewmat, K = camera((0.5, 0.4, 2.5), 40)
    uv, z = _mesh_torch.project_vertices(verts[None], viewmat[None], K[None])
    setup = _mesh_torch.setup_faces(uv, z, faces, 1e-2)
    whole = _mesh_torch.rasterize_face_ids(setup, 1, 40, 40)
    chunked = _mesh_torch.rasterize_face_ids(setup, 1, 40, 40, chunk_candidates=37)
    assert torch.equal(whole, chunked) and (whole >= 0).sum() > 400


def test_degenerate_triangles_are_ignored():
    verts, faces = cube()
    viewmat, K = camera((1.0, 1.5, 3.0), 24)
    extra = torch.tensor([[0, 0, 1], [2, 3, 3], [4, 4, 4]])  # repeated vertex ids
    ref = render1(verts, faces, viewmat, K, 24)
    out = render1(verts, torch.cat([faces, extra]), viewmat, K, 24)
    assert torch.equal(out.face_ids, ref.face_ids) and torch.equal(out.mask, ref.mask)


def test_near_keyword():
    verts, faces = cube()
    viewmat, K = camera((0.0, 0.0, 2.0), 16)  # cube vertices at camera z 1.5 and 2.5
    full = render1(verts, faces, viewmat, K, 16)
    back = render1(verts, faces, viewmat, K, 16, near=2.0)  # only the far face is left
    none = render1(verts, faces, viewmat, K, 16, near=3.0)
    assert set(full.face_ids.unique().tolist()) == {-1, 5, 11}  # the near face (z = +0.5)
    assert set(back.face_ids.unique().tolist()) == {-1, 4, 10}
    assert (none.face_ids == -1).all()
    with pytest.raises(ValueError, match="near must be > 0"):
        render1(verts, faces, viewmat, K, 16, near=0.0)


# ----------------------------------------------------------------------------------------
# conventions, batching, empty input


def test_camera_convention_right_is_right_and_up_is_up():
    # Small triangles at world +x and +y, default look-at camera on +z looking at the origin.
    d = 0.05
    tri = torch.tensor([[-d, -d, 0.0], [d, -d, 0.0], [0.0, d, 0.0]], dtype=torch.float64)
    verts = torch.cat([tri + torch.tensor([0.6, 0.0, 0.0]), tri + torch.tensor([0.0, 0.6, 0.0])])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    out = render1(verts, faces, *camera((0.0, 0.0, 3.0), 64), 64)
    ys0, xs0 = (out.face_ids[0] == 0).nonzero(as_tuple=True)
    ys1, xs1 = (out.face_ids[0] == 1).nonzero(as_tuple=True)
    assert len(xs0) and len(xs1)
    assert xs0.float().mean() > 40 and abs(ys0.float().mean() - 32) < 3  # +x: right
    assert ys1.float().mean() < 24 and abs(xs1.float().mean() - 32) < 3  # +y: top


@pytest.mark.parametrize("B", [1, 2, 3])
def test_batch_matches_single_views(B):
    verts, faces = uv_sphere(16, 8, torch.float64)
    g = torch.Generator().manual_seed(B)
    verts_b = verts[None] * (1 + 0.2 * torch.rand(B, 1, 3, generator=g, dtype=torch.float64))
    feats = torch.rand(B, len(verts), 4, generator=g, dtype=torch.float64)
    cams = [camera((0.3 * i, 0.2, 3.0 - 0.2 * i), 24) for i in range(B)]
    viewmats = torch.stack([c[0] for c in cams])
    Ks = torch.stack([c[1] for c in cams])
    out = render_mesh(verts_b, faces, viewmats, Ks, 24, 20, feats)
    assert out.features.shape == (B, 20, 24, 4) and out.mask.shape == (B, 20, 24, 1)
    assert out.depth.shape == (B, 20, 24, 1) and out.face_ids.shape == (B, 20, 24)
    assert out.face_ids.dtype == torch.int64
    for i in range(B):
        single = render_mesh(
            verts_b[i : i + 1], faces, viewmats[i : i + 1], Ks[i : i + 1], 24, 20, feats[i : i + 1]
        )
        for name in ("features", "mask", "depth", "face_ids"):
            assert torch.equal(getattr(out, name)[i], getattr(single, name)[0]), name


def test_no_features_and_empty_mesh():
    verts, faces = cube()
    viewmat, K = camera((0.0, 0.0, 3.0), 8)
    out = render1(verts, faces, viewmat, K, 8)
    assert out.features.shape == (1, 8, 8, 0)
    empty = render1(
        verts,
        torch.zeros(0, 3, dtype=torch.long),
        viewmat,
        K,
        8,
        torch.ones(8, 2, dtype=torch.float64),
    )
    assert (empty.face_ids == -1).all() and (empty.mask == 0).all() and (empty.depth == 0).all()
    assert empty.features.shape == (1, 8, 8, 2) and (empty.features == 0).all()
    # nothing in view
    away = render1(verts + 10.0, faces, viewmat, K, 8)
    assert (away.face_ids == -1).all()
    # no views
    none = render_mesh(verts[None][:0], faces, viewmat[None][:0], K[None][:0], 8, 6)
    assert none.mask.shape == (0, 6, 8, 1) and none.face_ids.shape == (0, 6, 8)


def test_nvdiffrast_clip_space_maps_to_our_pixels():
    # The CUDA backend cannot run here; its camera mapping is plain torch and is checked
    # against project_points: NDC (x, y) = 2 (u, v) / (W, H) - 1, row 0 at NDC y = -1.
    from gphm.geometry.cameras import project_points
    from gphm.render import _mesh_nvdiffrast

    verts, _ = uv_sphere(8, 5, torch.float64)
    viewmat, K = camera((0.3, 0.2, 3.0), 40)
    K = K.clone()
    K[0, 1], K[1, 1], K[0, 2] = 0.7, K[1, 1] * 1.2, 17.0  # skew, fx != fy, off-centre
    clip = _mesh_nvdiffrast.clip_positions(verts[None], viewmat[None], K[None], 40, 30, 0.5)
    ndc = clip[..., :3] / clip[..., 3:]
    uv, z = project_points(verts[None], viewmat[None], K[None])
    torch.testing.assert_close((ndc[..., 0] + 1) * 40 / 2, uv[..., 0])
    torch.testing.assert_close((ndc[..., 1] + 1) * 30 / 2, uv[..., 1])
    torch.testing.assert_close(clip[..., 3], z)
    assert (ndc[..., 2] > -1).all() and (ndc[..., 2] < 1).all()  # inside [near, far]


def test_nvdiffrast_backend_reports_missing_package(monkeypatch):
    from gphm.render import _mesh_nvdiffrast, mesh

    monkeypatch.setattr(_mesh_nvdiffrast, "is_available", lambda: False)
    with pytest.raises(ImportError, match="nvdiffrast cannot be imported"):
        mesh.select_mesh_backend("nvdiffrast", torch.device("cuda"))
    assert mesh.select_mesh_backend("auto", torch.device("cuda")) == "torch"
    assert mesh.select_mesh_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setattr(_mesh_nvdiffrast, "is_available", lambda: True)
    assert mesh.select_mesh_backend("auto", torch.device("cuda")) == "nvdiffrast"
    assert mesh.select_mesh_backend("auto", torch.device("cpu")) == "torch"


# ----------------------------------------------------------------------------------------
# gradients


def _quad_scene():
    verts = torch.tensor(
        [[-0.61, -0.53, 0.1], [0.57, -0.49, -0.2], [0.63, 0.55, 0.05], [-0.52, 0.6, 0.15]],
        dtype=torch.float64,
    )
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    viewmat, K = camera((0.1, 0.2, 2.5), 10, fov=45.0)
    return verts, faces, viewmat, K


def test_gradcheck_features_and_depth():
    verts, faces, viewmat, K = _quad_scene()
    feats = torch.rand(4, 3, dtype=torch.float64)
    v = verts.clone().requires_grad_(True)
    f = feats.clone().requires_grad_(True)

    def fn(v, f):
        out = render1(v, faces, viewmat, K, 10, f)
        return out.features, out.depth

    # fast mode (random projections of the Jacobian): the full check runs one backward
    # per output pixel channel
    assert torch.autograd.gradcheck(fn, (v, f), eps=1e-6, atol=1e-6, fast_mode=True)


def test_gradcheck_soft_mask_wrt_vertices():
    verts, faces, viewmat, K = _quad_scene()
    v = verts.clone().requires_grad_(True)
    mask = render1(v, faces, viewmat, K, 10).mask
    assert ((mask > 0) & (mask < 1)).sum() > 10  # there is an antialiased silhouette
    assert torch.autograd.gradcheck(
        lambda v: render1(v, faces, viewmat, K, 10).mask, (v,), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("start", ["grow", "shrink"])
def test_soft_silhouette_pulls_triangle_onto_target(start):
    size = 32
    viewmat, K = camera((0.0, 0.0, 3.0), size, fov=40.0)
    target_v = torch.tensor([[-0.6, -0.5, 0.0], [0.7, -0.4, 0.0], [-0.1, 0.6, 0.0]])
    faces = torch.tensor([[0, 1, 2]])
    viewmat, K = viewmat.float(), K.float()
    target = render1(target_v, faces, viewmat, K, size).mask.detach()
    centre = target_v.mean(0)
    scale, shift = (0.6, 0.1) if start == "grow" else (1.5, -0.1)
    v = ((target_v - centre) * scale + centre + shift).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=0.01)

    def iou(m):
        a, b = m > 0.5, target > 0.5
        return (a & b).sum().item() / (a | b).sum().item()

    start_iou = iou(render1(v.detach(), faces, viewmat, K, size).mask)
    for _ in range(120):  # converges in ~75 steps
        mask = render1(v, faces, viewmat, K, size).mask
        loss = ((mask - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = iou(render1(v.detach(), faces, viewmat, K, size).mask)
    assert start_iou < 0.8 and final > 0.95, (start_iou, final)


# ----------------------------------------------------------------------------------------
# validation


def test_errors_are_clear():
    verts, faces = cube()
    viewmat, K = camera((0.0, 0.0, 3.0), 8)
    V, vm, Ks = verts[None], viewmat[None], K[None]
    with pytest.raises(ValueError, match=r"verts must have shape \[B, V, 3\]"):
        render_mesh(verts, faces, vm, Ks, 8, 8)
    with pytest.raises(TypeError, match="faces must be int64"):
        render_mesh(V, faces.int(), vm, Ks, 8, 8)
    with pytest.raises(ValueError, match=r"faces must have shape \[F, 3\]"):
        render_mesh(V, faces[:, :2], vm, Ks, 8, 8)
    with pytest.raises(ValueError, match="faces index vertices in .* V=8"):
        render_mesh(V, faces + 1, vm, Ks, 8, 8)
    with pytest.raises(ValueError, match="faces index vertices in"):
        render_mesh(V, faces - 1, vm, Ks, 8, 8)
    with pytest.raises(ValueError, match="dimension B disagrees"):
        render_mesh(V, faces, vm.expand(2, -1, -1), Ks, 8, 8)
    with pytest.raises(ValueError, match="dimension V disagrees"):
        render_mesh(V, faces, vm, Ks, 8, 8, torch.ones(1, 7, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="Ks has dtype torch.float32 but verts has torch.float64"):
        render_mesh(V, faces, vm, Ks.float(), 8, 8)
    with pytest.raises(ValueError, match=r"Ks must have shape \[B, 3, 3\]"):
        render_mesh(V, faces, vm, K, 8, 8)
    with pytest.raises(ValueError, match="width must be a positive int"):
        render_mesh(V, faces, vm, Ks, 0, 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        render_mesh(V, faces, vm, Ks, 8, 8, backend="pytorch3d")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        render_mesh(V, faces, vm, Ks, 8, 8, backend="nvdiffrast")
    with pytest.raises(ValueError, match="is on meta but the other inputs are on cpu"):
        render_mesh(V, faces.to("meta"), vm, Ks, 8, 8)
    with pytest.raises(TypeError, match="verts must be a torch.Tensor"):
        render_mesh(verts.tolist(), faces, vm, Ks, 8, 8)
