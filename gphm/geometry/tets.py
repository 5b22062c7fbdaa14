"""Regular tetrahedral grids for DMTet (marching tetrahedra on a deformable grid).

The cube ``[-bound, bound]³`` is cut into ``resolution³`` cells; every cell is split into
six tetrahedra by the Kuhn (Freudenthal) split: each tetrahedron follows one monotone
path of unit steps from the cell's corner ``(0, 0, 0)`` to ``(1, 1, 1)``, one per
ordering of the three axes. The split is identical in every cell, so the triangulation
is conforming: two cells sharing a square face cut it along the same diagonal, and the
whole grid is a valid tetrahedral mesh (no T-junctions, every interior triangle shared
by exactly two tetrahedra).

Vertex ``(i, j, k)`` (along x, y, z) has index ``(i·(R+1) + j)·(R+1) + k`` and position
``-bound + 2·bound·(i, j, k)/R``. Every tetrahedron ``(a, b, c, d)`` is positively
oriented: ``det[b - a, c - a, d - a] > 0``.

Grids are cached per ``(resolution, bound)``; each call returns fresh tensors, so a
caller that edits them in place cannot corrupt the cache.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["tet_grid", "grid_edges", "tet_edges"]

# The six Kuhn tetrahedra of the unit cell as corner bit-codes (x = 1, y = 2, z = 4).
# Each row walks from corner 0 to corner 7 adding the axes in one order; rows for odd
# permutations have their last two vertices swapped so that all six are positively
# oriented (checked in the tests).
_KUHN_TETS = (
    (0, 1, 3, 7),  # x, y, z   (even)
    (0, 2, 6, 7),  # y, z, x   (even)
    (0, 4, 5, 7),  # z, x, y   (even)
    (0, 1, 7, 5),  # x, z, y   (odd: last two swapped)
    (0, 2, 7, 3),  # y, x, z   (odd)
    (0, 4, 7, 6),  # z, y, x   (odd)
)

# The six edges of a tetrahedron as pairs of local vertex indices. Marching tetrahedra
# tables (gphm.geometry.marching_tets) refer to edges by their row here.
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))

# Every edge of the Freudenthal triangulation joins grid vertices that differ by a
# non-zero 0/1 vector: the 3 axis edges, 3 face diagonals and the cell's main diagonal.
_EDGE_OFFSETS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))


def _check_resolution(resolution: int, bound: float) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if not bound > 0:
        raise ValueError(f"bound must be positive, got {bound!r}")


@lru_cache(maxsize=4)
def _cached_grid(resolution: int, bound: float) -> tuple[Tensor, Tensor]:
    """Grid vertices [V, 3] float32 and tetrahedra [T, 4] int32 (int32 halves the cache)."""
    n = resolution + 1
    coords = torch.linspace(-bound, bound, n, dtype=torch.float64).float()
    verts = torch.stack(torch.meshgrid(coords, coords, coords, indexing="ij"), dim=-1)
    verts = verts.reshape(-1, 3)

    # Index of each cell's (0, 0, 0) corner, then the offset of each Kuhn corner.
    cell = torch.arange(resolution, dtype=torch.int32)
    base = (cell[:, None, None] * n + cell[None, :, None]) * n + cell[None, None, :]
    bit = torch.arange(8, dtype=torch.int32)
    corner_offset = ((bit & 1) * n + ((bit >> 1) & 1)) * n + ((bit >> 2) & 1)
    kuhn = torch.tensor(_KUHN_TETS, dtype=torch.int64)
    offsets = corner_offset[kuhn]  # [6, 4]
    tets = base.reshape(-1, 1, 1) + offsets  # [R³, 6, 4]
    return verts, tets.reshape(-1, 4)


def tet_grid(
    resolution: int,
    bound: float = 1.0,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:  # verts [V, 3] float32, tets [T, 4] int64
    """Tetrahedral grid of the cube ``[-bound, bound]³`` (see the module docstring).

    Returns ``verts`` [(R+1)³, 3] float32 and ``tets`` [6·R³, 4] int64, positively
    oriented, on ``device`` (default CPU). Built once per ``(resolution, bound)``;
    the returned tensors are copies the caller may modify.
    """
    _check_resolution(resolution, bound)
    verts, tets = _cached_grid(int(resolution), float(bound))
    # copy=True and the int32 -> int64 cast always allocate: the cache never leaks out.
    return verts.to(device, copy=True), tets.to(device=device, dtype=torch.int64)


def grid_edges(resolution: int, device: torch.device | str | None = None) -> Tensor:
    """Unique edges [E, 2] int64 (``a < b``) of ``tet_grid(resolution)``'s tetrahedra.

    Built analytically (7 edges leave each grid vertex towards +x/+y/+z), so it costs
    no sort; the order is by offset type, then by first vertex.
    """
    _check_resolution(resolution, 1.0)
    n = resolution + 1
    idx = torch.arange(n, device=device)
    edges = []
    for dx, dy, dz in _EDGE_OFFSETS:
        i, j, k = idx[: n - dx], idx[: n - dy], idx[: n - dz]
        start = ((i[:, None, None] * n + j[None, :, None]) * n + k[None, None, :]).reshape(-1)
        edges.append(torch.stack([start, start + (dx * n + dy) * n + dz], dim=-1))
    return torch.cat(edges)


def tet_edges(tets: Tensor) -> Tensor:  # tets [T, 4] -> [E, 2] int64, sorted, a < b
    """Unique edges [E, 2] (``a < b``, lexicographically sorted) of any tetrahedral mesh."""
    if tets.dim() != 2 or tets.shape[-1] != 4:
        raise ValueError(f"tets must have shape [T, 4], got {list(tets.shape)}")
    local = torch.tensor(TET_EDGES, device=tets.device)
    edges = tets.long()[:, local].reshape(-1, 2)
    edges = torch.sort(edges, dim=-1).values
    return torch.unique(edges, dim=0)
