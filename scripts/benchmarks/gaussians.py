"""Benchmark of the torch Gaussian rasterizer (``rasterize_gaussians(backend="torch")``).

Scene (the project's target case): N Gaussians on the unit sphere, scale 0.02, opacity
uniform in [0.2, 0.9], random rotations, 32 feature channels, one camera at distance 3
looking at the origin with f = 1.2·width. Grid: N ∈ {1k, 10k, 50k} × {64², 128², 256²}.

Method, per case, in a fresh subprocess (so cases cannot share allocator state):

* time: one warm-up, then the median of ``reps`` runs of the forward alone and of
  forward + backward (inputs require grad in both, as in training);
* memory, in a second subprocess: the growth of the peak resident set during one
  forward + backward over the resident set just before it. glibc is told to serve every
  block of 64 KiB or more with mmap (``MALLOC_MMAP_THRESHOLD_``), so freed buffers go
  back to the OS and the resident set follows the live memory; the peak is reset through
  ``/proc/self/clear_refs`` (Linux; elsewhere ``ru_maxrss``, which can only over-report).
  It counts everything allocated: projection, tile plan, per-chunk scratch buffers and
  the autograd graph, not the scene's inputs;
* work: the number of (8×8 work tile, Gaussian) pairs the rasterizer evaluates, the
  (16×16 tile, Gaussian) overlaps gsplat would sort, and the padded element count
  Σ tiles·64·K, which is what time and scratch memory grow with.

``run(quick=True)`` runs a smaller grid with fewer repetitions. Threads: torch's default,
or ``GPHM_BENCH_THREADS`` when set (as the mesh benchmark).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from gphm.geometry import intrinsics, look_at
from gphm.render import rasterize_gaussians
from gphm.render._gaussians_torch import (
    conics_and_radii,
    gsplat_tile_bounds,
    plan_tiles,
    project_gaussians,
)

TARGET = {"num_gaussians": 10_000, "size": 128, "limit_s": 1.0, "aim_s": 0.3}
CHANNELS = 32


def make_scene(num_gaussians: int, size: int, channels: int = CHANNELS, seed: int = 0):
    """The benchmark scene: Gaussians on the unit sphere seen from distance 3."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(num_gaussians, 3, generator=g)
    means = d / d.norm(dim=-1, keepdim=True)
    quats = torch.randn(num_gaussians, 4, generator=g)
    scales = torch.full((num_gaussians, 3), 0.02)
    opacities = 0.2 + 0.7 * torch.rand(num_gaussians, generator=g)
    features = torch.rand(num_gaussians, channels, generator=g)
    viewmats = look_at(torch.tensor([[0.0, 0.0, 3.0]]), torch.zeros(3))
    Ks = intrinsics(1.2 * size, 1.2 * size, size / 2, size / 2)[None]
    return (means, quats, scales, opacities, features), viewmats, Ks


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def _work_counts(inputs, viewmats, Ks, size) -> dict:
    means, quats, scales, opacities, _ = inputs
    with torch.no_grad():
        proj = project_gaussians(means, quats, scales, viewmats, Ks, size, size)
        _, radii = conics_and_radii(proj, opacities[None], size, size)
        plan = plan_tiles(proj.means2d, proj.cov2d, proj.depths, radii, opacities[None], size, size)
        lo, hi = gsplat_tile_bounds(proj.means2d, radii, size, size)
        overlaps_16 = int(((hi - lo).clamp(min=0).prod(-1) * (radii > 0).all(-1)).sum())
    return {
        "work_tile_pairs": plan.num_pairs,
        "tile_overlaps_16px": overlaps_16,
        "padded_elements": plan.padded_elements,
        "chunks": len(plan.chunks),
    }


def _run_case(num_gaussians: int, size: int, reps: int) -> dict:
    """One case, measured in this process (called in subprocesses by :func:`run`):
    times when ``reps > 0``, memory when ``reps == 0``."""
    if os.environ.get("GPHM_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["GPHM_BENCH_THREADS"]))
    inputs, viewmats, Ks = make_scene(num_gaussians, size)
    inputs = [t.requires_grad_(True) for t in inputs]

    def forward():
        return rasterize_gaussians(*inputs, viewmats, Ks, size, size, backend="torch")

    def forward_backward():
        render, alpha = forward()
        (render.sum() + alpha.sum()).backward()
        for t in inputs:
            t.grad = None

    forward_backward()  # warm-up
    if reps == 0:
        return _measure_memory(forward_backward)
    fwd, fwd_bwd = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = forward()
        fwd.append(time.perf_counter() - t0)
        del out
        t0 = time.perf_counter()
        forward_backward()
        fwd_bwd.append(time.perf_counter() - t0)
    return {
        "num_gaussians": num_gaussians,
        "width": size,
        "height": size,
        "channels": CHANNELS,
        "torch_threads": torch.get_num_threads(),
        "forward_ms": 1e3 * statistics.median(fwd),
        "forward_backward_ms": 1e3 * statistics.median(fwd_bwd),
        **_work_counts(inputs, viewmats, Ks, size),
    }


def _measure_memory(step) -> dict:
    base_kb = _status_kb("VmRSS")
    reset = _reset_peak_rss()
    step()
    if reset and base_kb is not None:
        peak_kb, how = _status_kb("VmHWM"), "VmHWM after clear_refs, mmap threshold 64 KiB"
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        how = "ru_maxrss (lifetime peak, may over-report)"
    peak_mb = None if peak_kb is None or base_kb is None else (peak_kb - base_kb) / 1024
    return {"peak_extra_rss_mb": peak_mb, "memory_method": how}


def _subprocess(num_gaussians: int, size: int, reps: int, env: dict | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--case"]
    cmd += [str(num_gaussians), str(size), str(reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure_case(num_gaussians: int, size: int, reps: int) -> dict:
    timing = _subprocess(num_gaussians, size, reps)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    memory = _subprocess(num_gaussians, size, 0, env)
    return {"num_gaussians": num_gaussians, "width": size, **timing, **memory}


def run(quick: bool = False) -> dict:
    """Time and memory of the torch rasterizer over the grid; a JSON-able dict."""
    sizes = (64, 128) if quick else (64, 128, 256)
    counts = (1_000, 10_000) if quick else (1_000, 10_000, 50_000)
    reps = 3 if quick else 7
    cases = [_measure_case(n, s, reps) for n in counts for s in sizes]
    target = next(
        c
        for c in cases
        if c["num_gaussians"] == TARGET["num_gaussians"] and c["width"] == TARGET["size"]
    )
    seconds = target.get("forward_backward_ms", float("nan")) / 1e3
    return {
        "benchmark": "gaussians",
        "backend": "torch",
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__},
        "method": "median of reps after a warm-up, each case in a fresh subprocess; "
        "memory = peak RSS growth during one forward+backward",
        "reps": reps,
        "cases": cases,
        "target": {
            **TARGET,
            "forward_backward_s": seconds,
            "meets_limit": seconds <= TARGET["limit_s"],
            "meets_aim": seconds <= TARGET["aim_s"],
        },
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--case":
        n, s, r = (int(v) for v in sys.argv[2:])
        print(json.dumps(_run_case(n, s, r)))
    else:
        print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
