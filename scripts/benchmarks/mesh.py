"""Mesh renderer timings and memory: ``render_mesh`` on UV spheres.

``python scripts/bench.py render`` calls :func:`run`. Threads: ``torch.set_num_threads``
from ``GPHM_BENCH_THREADS`` or ``OMP_NUM_THREADS`` when set (else torch's default).

Scenes: a unit UV sphere of ~5k / ~50k triangles seen from 2.6 units with a 50° field
of view (it covers ~60% of the image), 32-channel vertex features, one view (B = 1), at
128² and 256². Method:

* ``forward_s``: median wall time of ``render_mesh`` under ``torch.no_grad`` after one
  warm-up call; ``forward_backward_s``: the same for a forward with gradients on vertex
  positions and features plus ``backward`` of a loss on features, mask and depth.
* ``peak_mem_mb`` (CPU): growth of the process's peak resident set size during one
  forward+backward — glibc's free lists are trimmed (``malloc_trim``), the kernel's peak
  RSS counter is reset (``/proc/self/clear_refs``) and ``VmHWM`` minus the RSS before the
  call is reported. It counts every allocation of the call (outputs, autograd buffers,
  allocator overhead), measured by the OS, not by torch; None where /proc is not
  writable. On CUDA: ``torch.cuda.max_memory_allocated`` growth.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable

import torch

from benchmarks._timing import bench_threads, median_time
from gphm.geometry.cameras import focal_from_fov, intrinsics, look_at
from gphm.geometry.mesh import uv_sphere
from gphm.render import _mesh_nvdiffrast
from gphm.render.mesh import render_mesh

TARGETS_S = {"faces_50000_res_256_forward_backward": 0.5}
CHANNELS = 32


SPHERES = {5000: (50, 51), 50000: (200, 126)}  # faces -> (segments, rings)


def _proc_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise KeyError(field)


def _peak_mem_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _proc_kb("VmRSS")
        fn()
        return (_proc_kb("VmHWM") - base) / 1024
    except (OSError, KeyError, AttributeError):
        return None


def _bench_case(faces_n: int, res: int, device: torch.device, backend: str, repeats: int) -> dict:
    verts, faces = uv_sphere(*SPHERES[faces_n])
    verts, faces = verts[None].to(device), faces.to(device)
    viewmat = look_at(torch.tensor([0.0, 0.0, 2.6]), torch.zeros(3))[None].to(device)
    f = focal_from_fov(50.0, res)
    K = intrinsics(f, f, res / 2, res / 2, device=device)[None]
    feats = torch.rand(1, verts.shape[1], CHANNELS, device=device)

    def forward() -> None:
        with torch.no_grad():
            render_mesh(verts, faces, viewmat, K, res, res, feats, backend=backend)

    def forward_backward() -> None:
        v = verts.clone().requires_grad_(True)
        x = feats.clone().requires_grad_(True)
        out = render_mesh(v, faces, viewmat, K, res, res, x, backend=backend)
        (out.features.mean() + out.mask.mean() + out.depth.mean()).backward()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        out = render_mesh(verts, faces, viewmat, K, res, res, feats, backend=backend)
    return {
        "faces": int(faces.shape[0]),
        "resolution": res,
        "channels": CHANNELS,
        "coverage": float((out.face_ids >= 0).float().mean()),
        "forward_s": median_time(forward, repeats, sync=sync),
        "forward_backward_s": median_time(forward_backward, repeats, sync=sync),
        "peak_mem_mb": _peak_mem_mb(forward_backward, device),
    }


def run(quick: bool = False) -> dict:
    """Time ``render_mesh``; returns a JSON-able dict (seconds, MiB)."""
    threads = bench_threads()
    repeats = 3 if quick else 7
    runs = [("cpu", "torch")]
    if torch.cuda.is_available():
        runs.append(("cuda", "torch"))
        if _mesh_nvdiffrast.is_available():
            runs.append(("cuda", "nvdiffrast"))
    out: dict = {
        "suite": "mesh",
        "torch": torch.__version__,
        "threads": threads,
        "machine": platform.machine(),
        "quick": quick,
        "method": "median of repeats after a warm-up; memory: see module docstring",
        "targets_s": TARGETS_S,
    }
    for device_name, backend in runs:
        cases = {}
        for faces_n in SPHERES:
            for res in (128, 256):
                case = _bench_case(faces_n, res, torch.device(device_name), backend, repeats)
                cases[f"faces_{faces_n}_res_{res}"] = case
        out[f"{device_name}_{backend}"] = cases
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
