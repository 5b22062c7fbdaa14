import pytest
import torch

from gphm.geometry.marching_tets import marching_tets
from gphm.geometry.mesh import (
    euler_characteristic,
    face_normals,
    is_watertight,
    mesh_volume,
    vertex_normals,
)
from gphm.geometry.tets import TET_EDGES, tet_grid

SPHERE_R = 0.8
TORUS_R, TORUS_r = 0.55, 0.25


def sphere_sdf(p):
    return p.norm(dim=-1) - SPHERE_R


def torus_sdf(p):  # ring in the xz-plane around the y axis
    ring = torch.stack([torch.hypot(p[..., 0], p[..., 2]) - TORUS_R, p[..., 1]], dim=-1)
    return ring.norm(dim=-1) - TORUS_r


def _positive_tet(dtype=torch.float64):
    """A random, positively oriented tetrahedron [4, 3]."""
    while True:
        v = torch.randn(4, 3, dtype=dtype)
        if torch.linalg.det(v[1:] - v[:1]) > 0.2:
            return v


@pytest.mark.parametrize("code", range(16))
def test_case_table_orientation_and_counts(code):
    """Every case: the triangles follow the linear SDF's zero plane, normals along +∇sdf."""
    tets = torch.tensor([[0, 1, 2, 3]])
    for _ in range(5):
        verts = _positive_tet()
        inside = torch.tensor([(code >> i) & 1 for i in range(4)], dtype=torch.bool)
        magnitude = torch.rand(4, dtype=torch.float64) + 0.1
        sdf = torch.where(inside, -magnitude, magnitude)
        mv, faces, _ = marching_tets(verts, sdf, tets)
        n_in = int(inside.sum())
        assert faces.shape[0] == {0: 0, 1: 1, 2: 2, 3: 1, 4: 0}[n_in]
        assert mv.shape[0] == n_in * (4 - n_in)  # one vertex per crossing edge
        if faces.shape[0] == 0:
            continue
        # The SDF interpolated linearly over the tet: sdf(x) = g·x + c.
        A = torch.cat([verts, torch.ones(4, 1, dtype=verts.dtype)], dim=1)
        g, c = torch.linalg.solve(A, sdf).split([3, 1])
        assert torch.allclose(mv @ g + c, torch.zeros(1, dtype=mv.dtype), atol=1e-10)
        n = face_normals(mv, faces)
        assert ((n @ g) > 0).all()


@pytest.fixture(scope="module")
def grids():
    return {r: tet_grid(r) for r in (32, 64)}


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("shape", ["sphere", "torus"])
def test_closed_surfaces(grids, resolution, shape):
    verts, tets = grids[resolution]
    sdf_fn, euler = (sphere_sdf, 2) if shape == "sphere" else (torus_sdf, 0)
    mv, faces, feats = marching_tets(verts, sdf_fn(verts), tets)
    assert feats is None
    assert faces.dtype == torch.int64 and mv.dtype == torch.float32
    assert is_watertight(faces)
    assert euler_characteristic(mv, faces) == euler
    assert int(torch.unique(faces).numel()) == mv.shape[0]  # no unused vertices
    cell = 2.0 / resolution
    assert sdf_fn(mv).abs().max() < 0.25 * cell
    volume = mesh_volume(mv.double(), faces)
    true_volume = (
        4 / 3 * torch.pi * SPHERE_R**3
        if shape == "sphere"
        else 2 * torch.pi**2 * TORUS_R * TORUS_r**2
    )
    assert volume > 0
    assert abs(volume - true_volume) / true_volume < 0.02
    if shape == "sphere":
        centroids = mv[faces].mean(1)
        assert ((face_normals(mv, faces) * centroids).sum(-1) > 0).all()
        assert ((vertex_normals(mv, faces) * mv).sum(-1) > 0.9 * SPHERE_R).all()


def test_deformed_grid_stays_watertight():
    verts, tets = tet_grid(12)
    verts = verts + torch.empty_like(verts).uniform_(-0.03, 0.03)  # 0.18 cell
    p = verts[tets].double()
    assert (torch.linalg.det(p[:, 1:] - p[:, :1]) > 0).all()
    mv, faces, _ = marching_tets(verts, sphere_sdf(verts), tets)
    assert is_watertight(faces) and euler_characteristic(mv, faces) == 2
    assert mesh_volume(mv, faces) > 0


def test_linear_features_and_planes_reproduced_exactly():
    verts, tets = tet_grid(6)
    verts = verts.double()
    A = torch.randn(3, 4, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    normal = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    sdf = verts @ normal - 0.1
    mv, faces, feats = marching_tets(verts, sdf, tets, verts @ A + b)
    assert faces.shape[0] > 0
    assert torch.allclose(feats, mv @ A + b, atol=1e-12)
    assert torch.allclose(mv @ normal - 0.1, torch.zeros(1, dtype=mv.dtype), atol=1e-12)
    assert ((face_normals(mv, faces) @ normal) > 0).all()


def test_gradcheck_wrt_verts_sdf_and_features():
    verts, tets = tet_grid(2)
    verts = (verts.double() + 0.05 * torch.randn(verts.shape, dtype=torch.float64)).requires_grad_()
    sdf = sphere_sdf(verts.detach()) + 0.35  # radius 0.45: cuts the middle cells
    sdf = torch.where(sdf.abs() < 0.05, sdf.sign() * 0.05, sdf).requires_grad_()
    feats = torch.randn(verts.shape[0], 2, dtype=torch.float64, requires_grad=True)

    def fn(v, s, f):
        mv, _, mf = marching_tets(v, s, tets, f)
        return mv, mf

    assert marching_tets(verts, sdf, tets)[1].shape[0] > 0
    assert torch.autograd.gradcheck(fn, (verts, sdf, feats), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_empty_surface(sign):
    verts, tets = tet_grid(3)
    verts = verts.double()
    sdf = torch.full((verts.shape[0],), sign, dtype=torch.float64)
    mv, faces, feats = marching_tets(verts, sdf, tets, torch.zeros(verts.shape[0], 5))
    assert mv.shape == (0, 3) and mv.dtype == torch.float64
    assert faces.shape == (0, 3) and faces.dtype == torch.int64
    assert feats.shape == (0, 5)
    assert marching_tets(verts, sdf, tets)[2] is None


def test_zero_sdf_counts_as_outside():
    verts, tets = tet_grid(4)
    # Box |x|_inf = 0.5 passes exactly through grid vertices: many sdf == 0.
    sdf = verts.abs().max(dim=-1).values - 0.5
    assert (sdf == 0).sum() > 0
    sdf = sdf.requires_grad_()
    mv, faces, _ = marching_tets(verts, sdf, tets)
    assert torch.isfinite(mv).all()
    assert is_watertight(faces) and euler_characteristic(mv, faces) == 2
    mv.sum().backward()
    assert torch.isfinite(sdf.grad).all()


def test_int32_tets_and_inputs_not_modified():
    verts, tets = tet_grid(5)
    sdf = sphere_sdf(verts) + 0.3
    before = (verts.clone(), sdf.clone(), tets.clone())
    mv, faces, _ = marching_tets(verts, sdf, tets)
    mv32, faces32, _ = marching_tets(verts, sdf, tets.int())
    assert torch.equal(mv, mv32) and torch.equal(faces, faces32)
    for x, y in zip((verts, sdf, tets), before):
        assert torch.equal(x, y)


def test_bad_shapes_raise_clear_errors():
    verts, tets = tet_grid(2)
    sdf = sphere_sdf(verts)
    with pytest.raises(ValueError, match=r"verts must have shape \[V, 3\]"):
        marching_tets(verts[:, :2], sdf, tets)
    with pytest.raises(ValueError, match=r"sdf must have shape \[V\]"):
        marching_tets(verts, sdf[:-1], tets)
    with pytest.raises(ValueError, match=r"tets must have shape \[T, 4\]"):
        marching_tets(verts, sdf, tets[:, :3])
    with pytest.raises(TypeError, match="tets must be an integer"):
        marching_tets(verts, sdf, tets.float())
    with pytest.raises(ValueError, match=r"features must have shape \[V, D\]"):
        marching_tets(verts, sdf, tets, torch.zeros(3, 2))


def test_each_crossing_edge_gives_one_shared_vertex():
    verts, tets = tet_grid(4)
    sdf = sphere_sdf(verts) + 0.3
    mv, faces, _ = marching_tets(verts, sdf, tets)
    # Distinct crossing grid edges, counted independently of the implementation.
    edges = tets[:, torch.tensor(TET_EDGES)].reshape(-1, 2)
    edges = torch.unique(torch.sort(edges, dim=1).values, dim=0)
    crossing = (sdf[edges[:, 0]] < 0) != (sdf[edges[:, 1]] < 0)
    assert mv.shape[0] == int(crossing.sum())
    assert torch.unique(mv, dim=0).shape[0] == mv.shape[0]
