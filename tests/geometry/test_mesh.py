import math

import pytest
import torch
import trimesh

from gphm.geometry.mesh import (
    edge_list,
    euler_characteristic,
    face_normals,
    is_watertight,
    knn_mean_distance,
    laplacian_cotangent,
    laplacian_uniform,
    laplacian_vectors,
    mesh_volume,
    midpoints_near,
    midpoints_within,
    subdivide_midpoint,
    subdivide_to_count,
    vertex_normals,
)

BATCH_SHAPES = [(), (2,), (2, 3)]

# Unit right tetrahedron, faces counter-clockwise seen from outside.
TET_VERTS = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
TET_FACES = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def _trimesh(m):
    return torch.tensor(m.vertices, dtype=torch.float64), torch.tensor(m.faces, dtype=torch.int64)


def icosphere(level=2):
    return _trimesh(trimesh.creation.icosphere(subdivisions=level))


def flat_grid(n=6, jitter=0.0):
    """Triangulated unit square in the z=0 plane, interior vertices optionally jittered."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    xy = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    interior = ((xy > 0) & (xy < 1)).all(-1)
    xy = xy + jitter / n * torch.empty_like(xy).uniform_(-1, 1) * interior[:, None]
    verts = torch.cat([xy, torch.zeros_like(xy[:, :1])], -1)
    i, j = torch.meshgrid(torch.arange(n - 1), torch.arange(n - 1), indexing="ij")
    a = (i * n + j).reshape(-1)
    faces = torch.cat(
        [torch.stack([a, a + n, a + n + 1], -1), torch.stack([a, a + n + 1, a + 1], -1)]
    )
    return verts, faces, interior


def _batched(verts, shape):
    """verts [V, 3] -> [*shape, V, 3], each batch element rotated/scaled differently."""
    out = verts.expand(shape + verts.shape).clone()
    scale = torch.rand(shape + (1, 1), dtype=verts.dtype) + 0.5
    return out * scale + torch.randn(shape + (1, 3), dtype=verts.dtype)


def test_face_normals_and_volume_of_tetrahedron():
    n = face_normals(TET_VERTS, TET_FACES)
    centroid = TET_VERTS.mean(0)
    assert ((n * (TET_VERTS[TET_FACES].mean(1) - centroid)).sum(-1) > 0).all()
    assert torch.allclose(n[0], torch.tensor([0.0, 0, -1], dtype=torch.float64))
    area2 = face_normals(TET_VERTS, TET_FACES, normalize=False).norm(dim=-1)
    assert torch.isclose(area2[-1], torch.tensor(math.sqrt(3), dtype=torch.float64))
    assert torch.isclose(
        mesh_volume(TET_VERTS, TET_FACES), torch.tensor(1 / 6, dtype=torch.float64)
    )
    assert mesh_volume(TET_VERTS, TET_FACES.flip(1)) < 0


@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_batched_normals_volume_laplacian_match_per_element(shape):
    verts, faces = icosphere(1)
    vb = _batched(verts, shape)
    flat = vb.reshape(-1, *verts.shape)
    vn, vol = vertex_normals(vb, faces), mesh_volume(vb, faces)
    lap = laplacian_vectors(vb, faces, "cotangent")
    assert vn.shape == vb.shape and vol.shape == shape and lap.shape == vb.shape
    for k in range(flat.shape[0]):
        assert torch.allclose(vn.reshape(flat.shape)[k], vertex_normals(flat[k], faces))
        assert torch.allclose(vol.reshape(-1)[k], mesh_volume(flat[k], faces))
        assert torch.allclose(
            lap.reshape(flat.shape)[k], laplacian_vectors(flat[k], faces, "cotangent")
        )
    per_element = torch.stack([laplacian_uniform(v, faces) for v in flat]).mean()
    assert torch.allclose(laplacian_uniform(vb, faces), per_element)


def test_vertex_normals_of_sphere_are_unit_and_outward():
    verts, faces = icosphere(2)
    n = vertex_normals(verts, faces)
    assert torch.allclose(n.norm(dim=-1), torch.ones(verts.shape[0], dtype=verts.dtype))
    assert ((n * verts).sum(-1) > 0.99).all()
    # An isolated vertex gets a zero normal, not NaN.
    n2 = vertex_normals(torch.cat([verts, torch.zeros(1, 3, dtype=verts.dtype)]), faces)
    assert torch.equal(n2[-1], torch.zeros(3, dtype=verts.dtype))


def test_volume_of_box_and_sphere():
    box = _trimesh(trimesh.creation.box(extents=(1.0, 2.0, 3.0)))
    assert torch.isclose(mesh_volume(*box), torch.tensor(6.0, dtype=torch.float64))
    sphere = trimesh.creation.icosphere(subdivisions=3)
    assert abs(mesh_volume(*_trimesh(sphere)).item() - sphere.volume) < 1e-12
    assert abs(sphere.volume - 4 / 3 * math.pi) < 0.05


def test_edge_list_euler_and_watertight():
    edges = edge_list(TET_FACES)
    assert edges.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert euler_characteristic(TET_VERTS, TET_FACES) == 2
    assert is_watertight(TET_FACES)
    torus = _trimesh(trimesh.creation.torus(0.6, 0.2))
    assert euler_characteristic(*torus) == 0 and is_watertight(torus[1])


def test_is_watertight_rejects_open_flipped_duplicated_and_degenerate():
    assert not is_watertight(TET_FACES[:3])  # hole
    flipped = TET_FACES.clone()
    flipped[0] = flipped[0].flip(0)
    assert not is_watertight(flipped)  # inconsistent orientation
    assert not is_watertight(torch.cat([TET_FACES, TET_FACES]))  # edges in 4 faces
    assert not is_watertight(torch.tensor([[0, 0, 1]]))
    assert not is_watertight(torch.zeros(0, 3, dtype=torch.int64))


def test_uniform_laplacian_by_hand():
    L = laplacian_vectors(TET_VERTS, TET_FACES, "uniform")
    assert torch.allclose(L[0], TET_VERTS[1:].mean(0) - TET_VERTS[0])
    expected = (L**2).sum(-1).mean()
    assert torch.isclose(laplacian_uniform(TET_VERTS, TET_FACES), expected)


def test_cotangent_laplacian_vanishes_on_a_jittered_plane():
    verts, faces, interior = flat_grid(7, jitter=0.3)
    cot = laplacian_vectors(verts, faces, "cotangent")[interior]
    uni = laplacian_vectors(verts, faces, "uniform")[interior]
    assert cot.abs().max() < 1e-10  # linear precision of the cotangent operator
    assert uni.abs().max() > 1e-3  # the umbrella operator sees the jitter


@pytest.mark.parametrize("kind", ["uniform", "cotangent"])
def test_laplacian_on_sphere_points_inward_and_is_translation_invariant(kind):
    verts, faces = icosphere(2)
    L = laplacian_vectors(verts, faces, kind)
    assert ((L * verts).sum(-1) < 0).all()
    fn = laplacian_uniform if kind == "uniform" else laplacian_cotangent
    shifted = verts + torch.tensor([0.3, -2.0, 1.0], dtype=verts.dtype)
    assert torch.isclose(fn(verts, faces), fn(shifted, faces))
    # A sphere of radius 2 has twice the Laplacian (a length), 4x the mean square.
    assert torch.isclose(fn(2 * verts, faces), 4 * fn(verts, faces))


@pytest.mark.parametrize("fn", [laplacian_uniform, laplacian_cotangent])
def test_laplacian_regulariser_gradcheck(fn):
    verts, faces = icosphere(0)
    verts = (verts + 0.05 * torch.randn_like(verts)).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: fn(v, faces), (verts,))


def test_subdivide_midpoint_topology_positions_and_features():
    feats = torch.randn(4, 2, dtype=torch.float64)
    v2, f2, ft2 = subdivide_midpoint(TET_VERTS, TET_FACES, feats)
    assert v2.shape == (4 + 6, 3) and f2.shape == (16, 3) and ft2.shape == (10, 2)
    assert torch.equal(v2[:4], TET_VERTS)
    edges = edge_list(TET_FACES)
    assert torch.allclose(v2[4:], TET_VERTS[edges].mean(1))
    assert torch.allclose(ft2[4:], feats[edges].mean(1))
    assert is_watertight(f2) and euler_characteristic(v2, f2) == 2
    assert torch.isclose(mesh_volume(v2, f2), mesh_volume(TET_VERTS, TET_FACES))
    # Each new face keeps the parent's orientation.
    parent_n = face_normals(TET_VERTS, TET_FACES).repeat_interleave(4, 0)
    assert torch.allclose(face_normals(v2, f2), parent_n)


def test_midpoints_near_orders_edges_by_their_midpoints_distance_to_the_targets():
    edges = edge_list(TET_FACES)  # 6 edges of the unit right tetrahedron
    mids = TET_VERTS[edges].mean(1)
    # One target on the midpoint of (1, 2), one near the midpoint of (0, 3).
    targets = torch.stack([mids[(edges == torch.tensor([1, 2])).all(1)][0],
                           mids[(edges == torch.tensor([0, 3])).all(1)][0] + 0.01])  # fmt: skip
    got = midpoints_near(TET_VERTS, TET_FACES, targets, 2)
    assert got.tolist() == [[1, 2], [0, 3]]
    # All edges, nearest first: the distances to the nearest target never decrease.
    every = midpoints_near(TET_VERTS, TET_FACES, targets, 100)
    assert every.shape == (6, 2) and {tuple(e) for e in every.tolist()} == {
        tuple(e) for e in edges.tolist()
    }
    d = torch.cdist(TET_VERTS[every].mean(1), targets).amin(1)
    assert torch.all(d[1:] >= d[:-1])
    assert midpoints_near(TET_VERTS, TET_FACES, targets, 0).shape == (0, 2)
    with pytest.raises(ValueError, match="targets"):
        midpoints_near(TET_VERTS, TET_FACES, torch.zeros(0, 3, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="count"):
        midpoints_near(TET_VERTS, TET_FACES, targets, -1)


def test_midpoints_within_draws_evenly_from_the_region_around_the_targets():
    verts, faces, _ = flat_grid(9)  # 64 squares, 208 edges in the unit square
    edges = edge_list(faces)
    mids = verts[edges].mean(1)
    target = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    near = torch.cdist(mids, target)[:, 0]
    region = near < 0.3
    assert 40 < region.sum() < 150  # the region is neither empty nor everything
    got = midpoints_within(verts, faces, target, 0.3, 20, seed=3)
    assert got.shape == (20, 2)
    idx = torch.cdist(verts[got].mean(1), mids).argmin(1)
    assert torch.equal(edges[idx], got)  # whole edges of the mesh ...
    assert region[idx].all() and len(set(idx.tolist())) == 20  # ... inside, each once
    assert torch.all(idx[1:] > idx[:-1])  # in edge order
    # Spread over the region, not packed against the target like midpoints_near.
    packed = midpoints_near(verts, faces, target, 20)
    assert near[idx].mean() > torch.cdist(verts[packed].mean(1), target).mean() + 0.05
    assert torch.equal(got, midpoints_within(verts, faces, target, 0.3, 20, seed=3))
    assert not torch.equal(got, midpoints_within(verts, faces, target, 0.3, 20, seed=4))
    # The whole region when it holds fewer than count; none with count 0.
    every = midpoints_within(verts, faces, target, 0.3, 10**4)
    assert every.shape[0] == int(region.sum())
    assert midpoints_within(verts, faces, target, 0.3, 0).shape == (0, 2)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="radius"):
            midpoints_within(verts, faces, target, bad, 5)
    with pytest.raises(ValueError, match="count"):
        midpoints_within(verts, faces, target, 0.3, -1)
    with pytest.raises(ValueError, match="targets"):
        midpoints_within(verts, faces, target[0], 0.3, 5)


@pytest.mark.parametrize("shape", BATCH_SHAPES)
def test_subdivide_batched_and_linear_features(shape):
    verts, faces = icosphere(1)
    vb = _batched(verts, shape)
    A = torch.randn(3, 4, dtype=torch.float64)
    v2, f2, ft2 = subdivide_midpoint(vb, faces, vb @ A)
    assert v2.shape == shape + (verts.shape[0] + edge_list(faces).shape[0], 3)
    assert torch.allclose(ft2, v2 @ A)
    assert torch.equal(f2, subdivide_midpoint(verts, faces)[1])


def test_subdivide_to_count():
    verts, faces = icosphere(0)  # 12 vertices, 30 edges, 20 faces
    v, f, _ = subdivide_to_count(verts, faces, 100)
    assert v.shape[0] == 162 and f.shape[0] == 320  # two levels: 12 -> 42 -> 162
    v0, f0, _ = subdivide_to_count(verts, faces, 5)
    assert v0 is verts and f0 is faces
    with pytest.raises(ValueError, match="max_levels"):
        subdivide_to_count(verts, faces, 10**6, max_levels=1)


def test_knn_mean_distance_matches_brute_force():
    pts = torch.rand(400, 3)
    k = 4
    d = torch.cdist(pts.double(), pts.double())
    expected = d.topk(k + 1, largest=False).values[:, 1:].mean(1)
    got = knn_mean_distance(pts, k)
    assert got.shape == (400,) and got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, atol=1e-6)


def test_knn_mean_distance_on_lattice_and_duplicates():
    t = torch.arange(5, dtype=torch.float64)
    lattice = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)
    assert torch.allclose(
        knn_mean_distance(lattice, k=6)[62], torch.tensor(1.0, dtype=torch.float64)
    )
    dup = torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 0, 0]])
    assert torch.allclose(knn_mean_distance(dup, k=1), torch.tensor([0.0, 0.0, 1.0]))


def test_inputs_are_not_modified():
    verts, faces = icosphere(1)
    before = verts.clone(), faces.clone()
    vertex_normals(verts, faces)
    laplacian_cotangent(verts, faces)
    subdivide_midpoint(verts, faces, verts)
    assert torch.equal(verts, before[0]) and torch.equal(faces, before[1])


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"verts must have shape \[\.\.\., V, 3\]"):
        vertex_normals(torch.zeros(4, 2), TET_FACES)
    with pytest.raises(ValueError, match=r"faces must have shape \[F, 3\]"):
        mesh_volume(TET_VERTS, TET_FACES[:, :2])
    with pytest.raises(TypeError, match="faces must be an integer"):
        edge_list(TET_FACES.float())
    with pytest.raises(ValueError, match="kind"):
        laplacian_vectors(TET_VERTS, TET_FACES, "mean")
    with pytest.raises(ValueError, match=r"features must have shape"):
        subdivide_midpoint(TET_VERTS, TET_FACES, torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"points must have shape \[N, 3\]"):
        knn_mean_distance(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="more than k=3 points"):
        knn_mean_distance(torch.zeros(3, 3))


def test_knn_weights_nearest_anchors_and_inverse_distance():
    from gphm.geometry.mesh import anchored_offsets, knn_weights

    points = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0], [5.0, 5, 5]])
    queries = torch.tensor([[0.25, 0, 0], [0.0, 2.0, 0]], requires_grad=True)
    idx, w = knn_weights(queries, points, k=2)
    assert idx[0].tolist() == [0, 1] and idx[1, 0].item() == 2
    # inverse distances 1/0.25 : 1/0.75 = 3 : 1
    torch.testing.assert_close(w[0], torch.tensor([0.75, 0.25]))
    assert w[1, 0] > 0.999  # a query on a point follows that point
    assert not w.requires_grad
    offsets = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [9.0, 9, 9]], requires_grad=True)
    moved = anchored_offsets(offsets[None].expand(3, -1, -1), idx, w)  # batched
    assert moved.shape == (3, 2, 3)
    torch.testing.assert_close(moved[0, 0], torch.tensor([0.75, 0.25, 0.0]))
    moved.sum().backward()  # differentiable in the offsets only
    assert offsets.grad[3].abs().sum() == 0 and offsets.grad[0].abs().sum() > 0
    with pytest.raises(ValueError, match="queries and points"):
        knn_weights(torch.zeros(2, 2), points, 2)
    assert knn_weights(queries, points, k=10)[0].shape == (2, 4)  # k capped at N


def test_knn_indices_match_brute_force_in_any_chunking():
    from gphm.geometry.mesh import knn_indices

    pts = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    d = torch.cdist(pts, pts) + torch.diag(torch.full((50,), float("inf")))
    want = d.topk(4, largest=False).indices
    for chunk in (7, 2048):
        assert torch.equal(knn_indices(pts, 4, chunk=chunk), want)  # never the point itself
    assert knn_indices(pts[:3], 8).shape == (3, 2)  # capped at N - 1
