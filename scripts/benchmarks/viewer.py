"""Web viewer timings: server-side renders per second and time to the first picture.

``python scripts/bench.py viewer`` calls :func:`run`. Threads: ``torch.set_num_threads``
from ``GPHM_BENCH_THREADS`` or ``OMP_NUM_THREADS`` when set (else torch's default).

Model: the run named by ``GPHM_BENCH_VIEWER_RUN`` (e.g. ``outputs/demo/run``) when set;
otherwise the ``tiny`` preset, untrained but well defined: a guidance model whose SDF is
pre-fitted to a sphere (as in the stage2 suite, 8 subjects / 64 frames, codes drawn from
N(0, 0.5²)), turned into a :class:`GaussianHead` with ``create_from`` and saved as a run
directory (config.json + safetensors) in a temporary folder. ``model`` records which.

The server is :class:`gphm.viewer.ViewerServer` on 127.0.0.1 (a free port, in a thread
of this process); every request goes through HTTP and PNG encoding, like the page's.

* ``orbit_fps_256``: ``GET /render.png`` per second at 256², sequential, the yaw moving
  5° per request (camera-only changes: the conditioned Gaussians come from the cache;
  only splatting, Ψ and the PNG run). Target (issue 20): >= 10 on 2 CPU cores.
* ``blend_fps_256``: the same while the identity blend moves every request (cache
  misses: the identity / expression networks run too).
* ``render_ms_256`` / ``png_ms_256``: median ``Scene.render`` and PNG encoding alone,
  run in a worker thread as the server does. (Under CPU contention torch's OpenMP pool
  in the *main* thread can be 10-30× slower than in a fresh thread unless
  ``OMP_WAIT_POLICY=PASSIVE`` is set, as ``scripts/test.sh`` does: seen here, 2.0 s vs
  63 ms per 256² render of the demo model at load average 6.)
* ``first_picture_s``: wall time from launching headless chromium on the page to the
  server finishing the page's first render (chromium start-up, page, script,
  ``/api/options``, the first ``/render.png``); a cold page, model already loaded.
  Target: < 5 s. ``null`` with ``first_picture_skipped`` when no chromium is installed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

from benchmarks._timing import bench_threads, median_time
from benchmarks.stage2 import NUM_FRAMES, NUM_SUBJECTS, prefit_guidance
from gphm.models.gaussian_head import GaussianHead
from gphm.models.runs import load_run
from gphm.training.config import tiny_model
from gphm.viewer import Scene, ViewerServer, ViewRequest
from gphm.viewer.server import encode_png

SIZE = 256
BROWSER_TIMEOUT_S = 60


def _tiny_run(directory: Path, prefit_steps: int) -> Path:
    cfg = tiny_model()
    guidance, _ = prefit_guidance(cfg, torch.device("cpu"), prefit_steps)
    head = GaussianHead.create_from(guidance, cfg.gaussian).eval()
    labels = [f"expr_{e:02d}" for e in range(NUM_FRAMES // NUM_SUBJECTS)]
    per = NUM_FRAMES // NUM_SUBJECTS
    frames = [{"subject": s, "expression": labels[f]} for s in range(NUM_SUBJECTS)
              for f in range(per)]  # fmt: skip
    extra = {"subjects": [f"bench_{s:02d}" for s in range(NUM_SUBJECTS)], "frames": frames,
             "train_frames": list(range(NUM_FRAMES)), "expressions": labels,
             "lr_size": cfg.lr_size, "hr_size": cfg.hr_size}  # fmt: skip
    head.save_pretrained(directory / "model", extra=extra)
    return directory


def _in_thread(fn):
    """``fn()`` in a fresh thread (where the server renders), its result."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def _fps(url: str, queries: list[str]) -> float:
    urllib.request.urlopen(url + "render.png?" + queries[0], timeout=60).read()  # warm-up
    t0 = time.perf_counter()
    for q in queries:
        with urllib.request.urlopen(url + "render.png?" + q, timeout=60) as r:
            r.read()
    return len(queries) / (time.perf_counter() - t0)


def _first_picture(server: ViewerServer, scene: Scene, query: str, tmp: Path) -> float | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None
    done = threading.Event()
    render = scene.render

    def timed(req):  # the server's render call: note when the first one finished
        out = render(req)
        done.set()
        return out

    scene.render = timed
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
            server.url + "?" + query]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ok = done.wait(BROWSER_TIMEOUT_S)
        seconds = time.perf_counter() - t0
        proc.wait(BROWSER_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        scene.render = render
    return seconds if ok else float("inf")


def run(quick: bool = False) -> dict:
    threads = bench_threads()
    n = 10 if quick else 40
    with tempfile.TemporaryDirectory(prefix="gphm_bench_viewer_") as tmp:
        tmp = Path(tmp)
        run_dir = os.environ.get("GPHM_BENCH_VIEWER_RUN")
        model = run_dir or "tiny preset (sphere-prefit guidance -> create_from, untrained)"
        if run_dir is None:
            run_dir = _tiny_run(tmp / "run", 30 if quick else 100)
        scene = Scene(load_run(run_dir))
        a, b = scene.identities[0], scene.identities[min(1, len(scene.identities) - 1)]
        base = f"identity={a}&size={SIZE}"
        req = ViewRequest(a, scene.default_request().expression, size=SIZE)
        image = scene.render(req)
        with ViewerServer(scene, "127.0.0.1", 0) as server:
            orbit = _fps(server.url, [f"{base}&yaw={5 * i % 360 - 180}" for i in range(n)])
            blend = _fps(server.url, [f"{base}&identity_b={b}&identity_mix={(i + 1) / (n + 1):.4f}"
                                      for i in range(n)])  # fmt: skip
            first = [_first_picture(server, scene, f"identity={b}&yaw={7 * i}&size={SIZE}", tmp)
                     for i in range(1 if quick else 3)]  # fmt: skip
        repeats = 3 if quick else 10

        def render():
            return scene.render(req)

        def encode():
            return encode_png(image)

        return {
            "model": str(model),
            "num_gaussians": int(getattr(scene.model, "num_points", 0)),
            "threads": threads,
            "size": SIZE,
            "orbit_fps_256": orbit,
            "blend_fps_256": blend,
            "render_ms_256": 1000 * _in_thread(lambda: median_time(render, repeats)),
            "png_ms_256": 1000 * _in_thread(lambda: median_time(encode, repeats)),
            "first_picture_s": None if first[0] is None else statistics.median(first),
            **({"first_picture_skipped": "no chromium"} if first[0] is None else {}),
        }
