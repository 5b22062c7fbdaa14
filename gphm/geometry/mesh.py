"""Triangle mesh operations: normals, Laplacians, subdivision, topology checks.

Conventions:

* ``verts`` are ``[..., V, 3]`` (leading batch dimensions share one ``faces`` [F, 3]
  int64 tensor); ``features`` are ``[..., V, D]``.
* Faces are counter-clockwise seen from outside, so ``(v1 - v0) × (v2 - v0)`` is the
  outward normal and a closed mesh has positive :func:`mesh_volume`.
* Undirected edges are ``(a, b)`` with ``a < b``, sorted lexicographically.

Functions never modify their inputs. Everything differentiable in ``verts`` stays so
(topology is integer work on ``faces``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

__all__ = [
    "uv_sphere",
    "face_normals",
    "vertex_normals",
    "edge_list",
    "laplacian_vectors",
    "laplacian_uniform",
    "laplacian_cotangent",
    "subdivide_midpoint",
    "subdivide_to_count",
    "midpoints_near",
    "midpoints_within",
    "knn_mean_distance",
    "knn_weights",
    "knn_indices",
    "anchored_offsets",
    "mesh_volume",
    "euler_characteristic",
    "is_watertight",
]


def _check_verts(verts: Tensor, name: str = "verts") -> None:
    if verts.dim() < 2 or verts.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [..., V, 3], got {list(verts.shape)}")


def _check_faces(faces: Tensor) -> None:
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must have shape [F, 3], got {list(faces.shape)}")
    if faces.is_floating_point() or faces.dtype == torch.bool:
        raise TypeError(f"faces must be an integer tensor, got dtype {faces.dtype}")


def _check_mesh(verts: Tensor, faces: Tensor) -> None:
    _check_verts(verts)
    _check_faces(faces)


def face_normals(
    verts: Tensor,  # [..., V, 3]
    faces: Tensor,  # [F, 3]
    normalize: bool = True,
) -> Tensor:  # [..., F, 3]
    """Outward face normals; unnormalised they are ``2·area·n``. Degenerate faces give 0."""
    _check_mesh(verts, faces)
    v0, v1, v2 = (verts[..., faces[:, i], :] for i in range(3))
    n = torch.linalg.cross(v1 - v0, v2 - v0)
    return _safe_normalize(n) if normalize else n


def vertex_normals(
    verts: Tensor,  # [..., V, 3]
    faces: Tensor,  # [F, 3]
) -> Tensor:  # [..., V, 3] unit (0 for vertices without faces)
    """Area-weighted unit vertex normals (sum of the incident faces' area vectors)."""
    n = face_normals(verts, faces, normalize=False)  # [..., F, 3]
    out = torch.zeros_like(verts, dtype=n.dtype)
    for i in range(3):
        out = out.index_add(-2, faces[:, i], n)
    return _safe_normalize(out)


def _safe_normalize(x: Tensor, eps: float = 1e-20) -> Tensor:
    # Normalise by sqrt(max(|x|², eps)) so zero vectors stay 0 with finite gradients.
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True).clamp_min(eps))


def edge_list(faces: Tensor) -> Tensor:  # faces [F, 3] -> [E, 2] int64
    """Unique undirected edges ``(a, b)``, ``a < b``, lexicographically sorted."""
    return _edges_with_inverse(faces)[0]


def _edges_with_inverse(faces: Tensor) -> tuple[Tensor, Tensor]:
    """Unique edges [E, 2] and, for every face, the index of its edges [F, 3].

    Face ``(v0, v1, v2)`` has edges ordered ``(v0v1, v1v2, v2v0)``.
    """
    _check_faces(faces)
    faces = faces.long()
    half = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1)  # [F, 3, 2]
    half = torch.sort(half, dim=-1).values
    n = int(faces.max()) + 1 if faces.numel() else 1
    keys = half[..., 0] * n + half[..., 1]
    unique_keys, inverse = torch.unique(keys, return_inverse=True)
    edges = torch.stack([unique_keys // n, unique_keys % n], dim=-1)
    return edges, inverse.view(-1, 3)


def laplacian_vectors(
    verts: Tensor,  # [..., V, 3]
    faces: Tensor,  # [F, 3]
    kind: str = "uniform",
) -> Tensor:  # [..., V, 3]
    """Per-vertex Laplacian ``L(v_i) = Σ_j w_ij (v_j - v_i) / Σ_j w_ij``.

    ``kind="uniform"``: ``w_ij = 1`` for every edge (umbrella operator).
    ``kind="cotangent"``: ``w_ij = (cot α_ij + cot β_ij) / 2``, the angles opposite the
    edge (pytorch3d's "cot" normalisation: divided by the sum of weights, so the result
    is a length, comparable with the uniform operator). Vertices whose weights sum to
    ≤ 0, and vertices without edges, get 0.
    """
    _check_mesh(verts, faces)
    if kind not in ("uniform", "cotangent"):
        raise ValueError(f"kind must be 'uniform' or 'cotangent', got {kind!r}")
    edges, face_edges = _edges_with_inverse(faces)
    a, b = edges[:, 0], edges[:, 1]
    if kind == "uniform":
        w = torch.ones(edges.shape[0], dtype=verts.dtype, device=verts.device)
    else:
        w = _cotangent_weights(verts, faces, face_edges, edges.shape[0])  # [..., E]
    w = w.expand(verts.shape[:-2] + (edges.shape[0],))
    diff = verts[..., b, :] - verts[..., a, :]  # [..., E, 3]
    num = torch.zeros_like(verts)
    num = num.index_add(-2, a, w[..., None] * diff).index_add(-2, b, -w[..., None] * diff)
    den = torch.zeros_like(verts[..., 0]).index_add(-1, a, w).index_add(-1, b, w)
    ok = den > 0
    return torch.where(ok[..., None], num / torch.where(ok, den, 1.0)[..., None], 0.0)


def _cotangent_weights(verts: Tensor, faces: Tensor, face_edges: Tensor, E: int) -> Tensor:
    """``(cot α + cot β)/2`` per edge [..., E]; boundary edges have one angle."""
    v = [verts[..., faces[:, i], :] for i in range(3)]  # corners, each [..., F, 3]
    w = torch.zeros(verts.shape[:-2] + (E,), dtype=verts.dtype, device=verts.device)
    for i in range(3):
        # Corner i is opposite face edge (i+1, i+2), which is face_edges[:, (i + 1) % 3].
        u, t = v[(i + 1) % 3] - v[i], v[(i + 2) % 3] - v[i]
        cross = torch.linalg.cross(u, t).norm(dim=-1).clamp_min(1e-12)
        cot = (u * t).sum(-1) / cross
        w = w.index_add(-1, face_edges[:, (i + 1) % 3], 0.5 * cot)
    return w


def laplacian_uniform(verts: Tensor, faces: Tensor) -> Tensor:  # [..., V, 3], [F, 3] -> []
    """Mean over vertices (and batch) of ``|L(v_i)|²`` with the uniform Laplacian."""
    return laplacian_vectors(verts, faces, "uniform").square().sum(-1).mean()


def laplacian_cotangent(verts: Tensor, faces: Tensor) -> Tensor:  # [..., V, 3], [F, 3] -> []
    """Mean over vertices (and batch) of ``|L(v_i)|²`` with the cotangent Laplacian."""
    return laplacian_vectors(verts, faces, "cotangent").square().sum(-1).mean()


def subdivide_midpoint(
    verts: Tensor,  # [..., V, 3]
    faces: Tensor,  # [F, 3]
    features: Tensor | None = None,  # [..., V, D]
) -> tuple[Tensor, Tensor, Tensor | None]:  # [..., V + E, 3], [4F, 3], [..., V + E, D]
    """Split every triangle into four at its edge midpoints (shared midpoints merged).

    New vertices are appended after the old ones in :func:`edge_list` order; features
    are averaged at midpoints. Face ``(a, b, c)`` with midpoints ``ab, bc, ca`` becomes
    ``(a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)`` (orientation kept).
    """
    _check_mesh(verts, faces)
    V = verts.shape[-2]
    if features is not None and features.shape[:-1] != verts.shape[:-1]:
        raise ValueError(
            f"features must have shape [..., V, D] = {list(verts.shape[:-1])} + [D], "
            f"got {list(features.shape)}"
        )
    edges, face_edges = _edges_with_inverse(faces)
    mids = 0.5 * (verts[..., edges[:, 0], :] + verts[..., edges[:, 1], :])
    new_verts = torch.cat([verts, mids], dim=-2)
    new_features = None
    if features is not None:
        fmids = 0.5 * (features[..., edges[:, 0], :] + features[..., edges[:, 1], :])
        new_features = torch.cat([features, fmids], dim=-2)
    faces = faces.long()
    a, b, c = faces.unbind(-1)
    ab, bc, ca = (face_edges + V).unbind(-1)
    new_faces = torch.stack(
        [
            torch.stack([a, ab, ca], -1),
            torch.stack([ab, b, bc], -1),
            torch.stack([ca, bc, c], -1),
            torch.stack([ab, bc, ca], -1),
        ],
        dim=1,
    ).reshape(-1, 3)
    return new_verts, new_faces, new_features


def subdivide_to_count(
    verts: Tensor,  # [..., V, 3]
    faces: Tensor,  # [F, 3]
    min_vertices: int,
    features: Tensor | None = None,  # [..., V, D]
    max_levels: int = 8,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Subdivide with :func:`subdivide_midpoint` until there are ≥ ``min_vertices``.

    Each level roughly quadruples the face count; returns the first level reaching the
    count (no down-sampling). Raises if ``max_levels`` levels do not suffice.
    """
    for _ in range(max_levels + 1):
        if verts.shape[-2] >= min_vertices:
            return verts, faces, features
        if faces.shape[0] == 0:
            break
        verts, faces, features = subdivide_midpoint(verts, faces, features)
    raise ValueError(
        f"cannot reach min_vertices={min_vertices} within max_levels={max_levels} "
        f"subdivisions (reached {verts.shape[-2]} vertices, {faces.shape[0]} faces)"
    )


def _midpoint_distances(
    verts: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3]
    targets: Tensor,  # [T, 3]
    count: int,
) -> tuple[Tensor, Tensor]:  # edges [E, 2], distance of each midpoint to its nearest target [E]
    """Checked inputs of :func:`midpoints_near` / :func:`midpoints_within`: the mesh's
    edges and how far each midpoint lies from the nearest target (no gradient)."""
    _check_mesh(verts, faces)
    if targets.dim() != 2 or targets.shape[-1] != 3 or targets.shape[0] == 0:
        raise ValueError(f"targets must be [T, 3] with T >= 1, got {list(targets.shape)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    edges = edge_list(faces)
    with torch.no_grad():
        mids = 0.5 * (verts[edges[:, 0]] + verts[edges[:, 1]]).detach()
        return edges, torch.cdist(mids, targets.detach().to(mids)).amin(1)


def midpoints_near(
    verts: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3]
    targets: Tensor,  # [T, 3]
    count: int,
) -> Tensor:  # [K, 2] int64 edges (vertex pairs), K = min(count, E)
    """The ``count`` edges of :func:`edge_list` whose midpoints lie nearest the
    ``targets`` (by the distance to the nearest target; ties broken by edge order),
    nearest first: the midpoints a local subdivision towards a region of interest adds
    (the Gaussian head's ``face_points``). Fewer when the mesh has fewer edges."""
    edges, near = _midpoint_distances(verts, faces, targets, count)
    order = torch.sort(near, stable=True).indices
    return edges[order[: min(count, edges.shape[0])]]


def midpoints_within(
    verts: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3]
    targets: Tensor,  # [T, 3]
    radius: float,
    count: int,
    seed: int = 0,
) -> Tensor:  # [K, 2] int64 edges (vertex pairs), K = min(count, edges within radius)
    """``count`` edges of :func:`edge_list` drawn uniformly at random (seeded, without
    replacement) among those whose midpoints lie within ``radius`` of a target, in edge
    order: an even subdivision of the region around the targets, where
    :func:`midpoints_near` packs the midpoints against them. All the region's edges
    when it has fewer than ``count``."""
    edges, near = _midpoint_distances(verts, faces, targets, count)
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    region = (near < radius).nonzero()[:, 0]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(region.shape[0], generator=g)[: min(count, region.shape[0])]
    return edges[region[pick.to(region.device)].sort().values]


def knn_weights(
    queries: Tensor,  # [Q, 3]
    points: Tensor,  # [N, 3]
    k: int,
) -> tuple[Tensor, Tensor]:  # indices [Q, k'] int64, weights [Q, k'] (rows sum to 1)
    """Each query's ``k' = min(k, N)`` nearest ``points`` and inverse-distance weights.

    Integer/weight work only: no gradient flows through either output (the weights are
    computed under ``no_grad``), so callers interpolate differentiable per-point values
    with them (:func:`anchored_offsets`). A query on a point gets (almost) all the weight.
    """
    if queries.dim() != 2 or queries.shape[-1] != 3 or points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(
            f"queries and points must be [Q, 3] and [N, 3], got {list(queries.shape)} "
            f"and {list(points.shape)}"
        )
    if k < 1 or points.shape[0] == 0:
        raise ValueError(f"need k >= 1 and at least one point, got k={k}, N={points.shape[0]}")
    with torch.no_grad():
        d = torch.cdist(queries.detach(), points.detach())  # [Q, N]
        dist, idx = d.topk(min(k, d.shape[1]), dim=1, largest=False)
        w = 1.0 / dist.clamp_min(1e-6)
        return idx, w / w.sum(1, keepdim=True)


@torch.no_grad()
def knn_indices(points: Tensor, k: int, chunk: int = 2048) -> Tensor:  # [N, 3] -> [N, k]
    """The ``k`` nearest other points of every point (Euclidean), in chunks of rows
    (memory ``chunk × N``); ``k`` is capped at ``N − 1``."""
    N = points.shape[0]
    k = min(k, N - 1)
    if k < 1:
        return torch.zeros(N, 0, dtype=torch.long, device=points.device)
    out = []
    for s in range(0, N, chunk):
        d = torch.cdist(points[s : s + chunk], points)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = math.inf
        out.append(d.topk(k, largest=False).indices)
    return torch.cat(out)


def anchored_offsets(
    offsets: Tensor,  # [..., N, D] per-point values (e.g. canonical offsets)
    idx: Tensor,  # [Q, k] from knn_weights
    weights: Tensor,  # [Q, k]
) -> Tensor:  # [..., Q, D]
    """The weighted mean of each query's anchors' ``offsets``: how a point that moves with
    its nearest mesh vertices / Gaussians moves (differentiable in ``offsets``)."""
    return (weights[..., None] * offsets[..., idx, :]).sum(-2)


def knn_mean_distance(points: Tensor, k: int = 3) -> Tensor:  # [N, 3] -> [N]
    """Mean Euclidean distance from each point to its ``k`` nearest other points.

    Uses a KD-tree on the CPU (scipy, all cores) in float64; not differentiable. The
    result has the dtype and device of ``points``. Needs ``N > k``.
    """
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {list(points.shape)}")
    if k < 1 or points.shape[0] <= k:
        raise ValueError(f"need k >= 1 and more than k={k} points, got N={points.shape[0]}")
    xyz = points.detach().cpu().double().numpy()
    # k + 1 because each point is its own nearest neighbour (distance 0, dropped; with
    # duplicate points any one of the zeros is dropped, which is equivalent).
    dist, _ = cKDTree(xyz).query(xyz, k=k + 1, workers=-1)
    mean = np.sort(dist, axis=1)[:, 1:].mean(axis=1)
    return torch.from_numpy(mean).to(dtype=points.dtype, device=points.device)


def mesh_volume(verts: Tensor, faces: Tensor) -> Tensor:  # [..., V, 3], [F, 3] -> [...]
    """Signed volume enclosed by a closed mesh (positive for outward faces)."""
    _check_mesh(verts, faces)
    v0, v1, v2 = (verts[..., faces[:, i], :] for i in range(3))
    return (v0 * torch.linalg.cross(v1, v2)).sum(dim=(-1, -2)) / 6.0


def euler_characteristic(verts: Tensor, faces: Tensor) -> int:  # [..., V, 3], [F, 3]
    """``V - E + F``; V counts every row of ``verts`` (2 for a sphere, 0 for a torus)."""
    _check_mesh(verts, faces)
    return verts.shape[-2] - edge_list(faces).shape[0] + faces.shape[0]


def is_watertight(faces: Tensor) -> bool:  # [F, 3]
    """True when every edge is shared by exactly two faces with opposite directions.

    That is a closed, consistently oriented, edge-manifold mesh: each directed edge
    ``a → b`` occurs once and its reverse ``b → a`` occurs once. An empty mesh is not.
    """
    _check_faces(faces)
    if faces.shape[0] == 0:
        return False
    faces = faces.long()
    if bool((faces == faces.roll(1, dims=1)).any()):
        return False  # a face repeating a vertex has a degenerate edge
    n = int(faces.max()) + 1
    a, b = faces.reshape(-1), faces.roll(-1, dims=1).reshape(-1)
    fwd = torch.sort(a * n + b).values
    rev = torch.sort(b * n + a).values
    no_repeat = bool((fwd[1:] != fwd[:-1]).all())
    return no_repeat and torch.equal(fwd, rev)


def uv_sphere(
    n_seg: int, n_ring: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:  # verts [V, 3], faces [F, 3]
    """Unit UV sphere (poles on ±y): ``2·n_seg·(n_ring − 1)`` triangles, CCW seen from
    outside, watertight; vertices lie exactly on the sphere."""
    th = torch.linspace(0, math.pi, n_ring + 1, dtype=dtype)[1:-1]
    ph = torch.arange(n_seg, dtype=dtype) * 2 * math.pi / n_seg
    st, ct = th.sin()[:, None], th.cos()[:, None]
    ring = torch.stack([st * ph.sin(), ct.expand(-1, n_seg), st * ph.cos()], -1)
    top, bottom = torch.tensor([[0, 1, 0]], dtype=dtype), torch.tensor([[0, -1, 0]], dtype=dtype)
    verts = torch.cat([top, ring.reshape(-1, 3), bottom])
    s = torch.arange(n_seg)

    def idx(r, k):
        return 1 + r * n_seg + k % n_seg

    faces = [torch.stack([torch.zeros_like(s), idx(0, s), idx(0, s + 1)], -1)]
    for r in range(n_ring - 2):
        a, b, c, d = idx(r, s), idx(r, s + 1), idx(r + 1, s), idx(r + 1, s + 1)
        faces += [torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)]
    last = torch.full_like(s, len(verts) - 1)
    faces.append(torch.stack([idx(n_ring - 2, s), last, idx(n_ring - 2, s + 1)], -1))
    return verts, torch.cat(faces)
