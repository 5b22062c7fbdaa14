import pytest
import torch

from gphm.geometry.tets import TET_EDGES, grid_edges, tet_edges, tet_grid


def _signed_volumes(verts, tets):
    p = verts.double()[tets]
    return torch.linalg.det(p[:, 1:] - p[:, :1]) / 6.0


@pytest.mark.parametrize("resolution, bound", [(1, 1.0), (3, 1.0), (5, 0.5)])
def test_shapes_dtypes_and_corners(resolution, bound):
    verts, tets = tet_grid(resolution, bound)
    n = resolution + 1
    assert verts.shape == (n**3, 3) and verts.dtype == torch.float32
    assert tets.shape == (6 * resolution**3, 4) and tets.dtype == torch.int64
    assert tets.min() == 0 and tets.max() == n**3 - 1
    assert torch.allclose(verts.min(0).values, torch.full((3,), -bound))
    assert torch.allclose(verts.max(0).values, torch.full((3,), bound))
    # Vertex (i, j, k) has index (i·n + j)·n + k.
    i, j, k = 1, 0, resolution
    expected = torch.tensor([i, j, k], dtype=torch.float32) * (2 * bound / resolution) - bound
    assert torch.allclose(verts[(i * n + j) * n + k], expected)


@pytest.mark.parametrize("resolution, bound", [(1, 1.0), (4, 0.7)])
def test_tets_positive_and_fill_the_cube(resolution, bound):
    verts, tets = tet_grid(resolution, bound)
    vol = _signed_volumes(verts, tets)
    cell_volume = (2 * bound / resolution) ** 3
    assert torch.allclose(vol, torch.full_like(vol, cell_volume / 6))
    assert torch.isclose(vol.sum(), torch.tensor((2 * bound) ** 3, dtype=torch.float64))


def test_conforming_every_interior_triangle_shared_by_two_tets():
    R = 3
    verts, tets = tet_grid(R)
    tri = torch.cat(
        [tets[:, [1, 2, 3]], tets[:, [0, 2, 3]], tets[:, [0, 1, 3]], tets[:, [0, 1, 2]]]
    )
    tri = torch.sort(tri, dim=1).values
    _, counts = torch.unique(tri, dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    # Boundary triangles: each of the 6 cube faces has R² squares split in 2.
    assert int((counts == 1).sum()) == 6 * 2 * R * R


def test_cache_cannot_be_corrupted_by_callers():
    verts, tets = tet_grid(2)
    verts.mul_(0)
    tets.fill_(0)
    verts2, tets2 = tet_grid(2)
    assert verts2.abs().max() == 1.0
    assert tets2.max() == 26


def test_grid_edges_match_the_edges_of_the_tets():
    R = 3
    _, tets = tet_grid(R)
    analytic = torch.unique(grid_edges(R), dim=0)
    assert torch.equal(analytic, tet_edges(tets))
    assert grid_edges(R).shape[0] == analytic.shape[0]  # no duplicates
    assert (analytic[:, 0] < analytic[:, 1]).all()


def test_tet_edges_table_lists_all_six_pairs():
    assert sorted(TET_EDGES) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_resolution_is_rejected(bad):
    with pytest.raises(ValueError, match="resolution"):
        tet_grid(bad)


def test_bad_bound_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="bound"):
        tet_grid(2, bound=0.0)
    with pytest.raises(ValueError, match=r"tets must have shape \[T, 4\]"):
        tet_edges(torch.zeros(5, 3, dtype=torch.int64))


def test_device_argument():
    verts, tets = tet_grid(2, device="cpu")
    assert verts.device.type == "cpu" and tets.device.type == "cpu"
