"""Geodesic spheres: the fixed topology every synthetic head is deformed from.

A class-I geodesic sphere subdivides each face of an icosahedron into ``n²`` triangles
and projects the vertices onto the unit sphere: ``10·n² + 2`` vertices, ``20·n²`` faces,
closed and genus 0, with nearly uniform triangles. :func:`focus_warp` then slides the
vertices towards one pole so that the face of the head gets more of them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["geodesic_sphere", "focus_warp"]


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """Unit icosahedron: vertices [12, 3], faces [20, 3] counter-clockwise from outside."""
    t = (1.0 + 5.0**0.5) / 2.0
    verts = np.array(
        [
            [-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0],
            [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
            [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1],
        ],
        dtype=np.float64,
    )  # fmt: skip
    faces = np.array(
        [
            [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
            [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
            [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
            [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
        ],
        dtype=np.int64,
    )  # fmt: skip
    return verts / np.linalg.norm(verts, axis=1, keepdims=True), faces


def geodesic_sphere(frequency: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit geodesic sphere of the given subdivision ``frequency`` (≥ 1).

    Returns ``verts`` [10·n²+2, 3] (float64, unit length) and ``faces`` [20·n², 3]
    (int64, counter-clockwise seen from outside). Deterministic: vertex order depends
    only on ``frequency``.
    """
    if frequency < 1:
        raise ValueError(f"frequency must be >= 1, got {frequency}")
    n = frequency
    ico_v, ico_f = _icosahedron()
    # A point of the subdivided face (a, b, c) is n·p = i·a + j·b + (n-i-j)·c; it is
    # identified exactly by its integer weights on the icosahedron's corners, so points
    # shared by neighbouring faces (edges, corners) are merged without a tolerance.
    index: dict[tuple[tuple[int, int], ...], int] = {}
    weights: list[tuple[tuple[int, int], ...]] = []
    faces: list[tuple[int, int, int]] = []

    def vid(corners: tuple[int, int, int], i: int, j: int) -> int:
        w = {}
        for c, k in zip(corners, (i, j, n - i - j)):
            if k:
                w[c] = w.get(c, 0) + k
        key = tuple(sorted(w.items()))
        if key not in index:
            index[key] = len(weights)
            weights.append(key)
        return index[key]

    for a, b, c in ico_f.tolist():
        corners = (a, b, c)
        # Barycentric grid (i along a, j along b); two triangles per grid cell.
        for i in range(n):
            for j in range(n - i):
                p = vid(corners, i + 1, j)
                q = vid(corners, i, j + 1)
                r = vid(corners, i, j)
                faces.append((p, q, r))
                if i + j + 1 < n:
                    s = vid(corners, i + 1, j + 1)
                    faces.append((p, s, q))
    verts = np.zeros((len(weights), 3))
    for k, key in enumerate(weights):
        for corner, w in key:
            verts[k] += w * ico_v[corner]
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    faces_arr = np.asarray(faces, dtype=np.int64)
    # Orient every face outwards (the sub-triangles inherit the corner order, but make
    # it explicit rather than rely on the table above).
    v0, v1, v2 = (verts[faces_arr[:, k]] for k in range(3))
    outward = np.einsum("ij,ij->i", np.cross(v1 - v0, v2 - v0), v0 + v1 + v2) > 0
    faces_arr[~outward] = faces_arr[~outward][:, [0, 2, 1]]
    return verts, faces_arr


def focus_warp(
    dirs: np.ndarray,  # [V, 3] unit vectors
    axis: np.ndarray,  # [3] unit vector: the pole that receives more vertices
    strength: float,  # in [0, 1): 0 = no change
) -> np.ndarray:  # [V, 3] unit vectors
    """Slide unit vectors towards ``axis``: polar angle θ ↦ θ − strength·sin θ.

    The map is a smooth bijection of the sphere (its derivative 1 − strength·cos θ
    stays positive), so the mesh stays embedded. Near the pole the vertex density
    grows by 1/(1 − strength)², at the opposite pole it drops by 1/(1 + strength)².
    """
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"strength must be in [0, 1), got {strength}")
    axis = np.asarray(axis, dtype=np.float64)
    cos_t = np.clip(dirs @ axis, -1.0, 1.0)
    theta = np.arccos(cos_t)
    perp = dirs - cos_t[:, None] * axis
    perp_norm = np.linalg.norm(perp, axis=1, keepdims=True)
    perp = np.where(perp_norm > 1e-12, perp / np.maximum(perp_norm, 1e-12), 0.0)
    new_theta = theta - strength * np.sin(theta)
    return np.cos(new_theta)[:, None] * axis + np.sin(new_theta)[:, None] * perp
