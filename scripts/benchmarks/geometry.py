"""Geometry kernel timings (issue 3): tet grid, marching tets, subdivision, kNN.

``python scripts/bench.py geometry`` calls :func:`run`. Threads: ``torch.set_num_threads``
from ``GPHM_BENCH_THREADS`` or ``OMP_NUM_THREADS`` when set (else torch's default).
Each figure is the median of a few runs after one warm-up run, in seconds.
"""

from __future__ import annotations

import platform

import torch

from benchmarks._timing import bench_threads, median_time
from gphm.geometry.marching_tets import marching_tets
from gphm.geometry.mesh import knn_mean_distance, subdivide_midpoint
from gphm.geometry.tets import _cached_grid, tet_grid

TARGETS_S = {"marching_tets_64": 0.5, "marching_tets_128": 4.0}
SPHERE_RADIUS = 0.8


def _bench_marching_tets(res: int, repeats: int) -> tuple[dict, tuple]:
    """Forward, and forward + backward (as in stage-1 training), on a sphere SDF."""
    verts, tets = tet_grid(res)
    sdf = verts.norm(dim=-1) - SPHERE_RADIUS
    sdf_grad = sdf.clone().requires_grad_()

    def fwd_bwd() -> None:
        mv, _, _ = marching_tets(verts, sdf_grad, tets)
        mv.square().sum().backward()

    mv, faces, _ = marching_tets(verts, sdf, tets)
    timings = {
        f"marching_tets_{res}": median_time(lambda: marching_tets(verts, sdf, tets), repeats),
        f"marching_tets_fwd_bwd_{res}": median_time(fwd_bwd, repeats),
        f"marching_tets_{res}_mesh": {"verts": mv.shape[0], "faces": faces.shape[0]},
    }
    return timings, (mv, faces)


def run(quick: bool = False) -> dict:
    """Time the geometry kernels; returns a JSON-able dict (seconds unless named)."""
    threads = bench_threads()
    repeats = 2 if quick else 5
    grid_res = (32, 64) if quick else (32, 64, 128)
    mt_res = (64,) if quick else (64, 128)
    out: dict = {
        "suite": "geometry",
        "torch": torch.__version__,
        "threads": threads,
        "machine": platform.machine(),
        "quick": quick,
        "targets_s": TARGETS_S,
    }

    for res in grid_res:

        def cold_build(res: int = res) -> None:
            _cached_grid.cache_clear()
            tet_grid(res)

        out[f"tet_grid_build_{res}"] = median_time(cold_build, repeats=max(1, repeats - 2))
        out[f"tet_grid_cached_{res}"] = median_time(lambda res=res: tet_grid(res), repeats)

    mesh = None
    for res in mt_res:
        timings, mesh = _bench_marching_tets(res, repeats)
        out.update(timings)
    for key, target in TARGETS_S.items():
        if key in out:
            out[f"{key}_within_target"] = out[key] <= target

    mv, faces = mesh
    out["subdivide_midpoint"] = median_time(lambda: subdivide_midpoint(mv, faces), repeats)
    out["subdivide_midpoint_mesh"] = {"verts": mv.shape[0], "faces": faces.shape[0]}

    n_points = 20_000 if quick else 200_000
    points = torch.rand(n_points, 3)
    out["knn_mean_distance"] = median_time(lambda: knn_mean_distance(points, 3), repeats)
    out["knn_mean_distance_points"] = n_points
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
