"""An exported PLY shown by a third-party web viewer: the PlayCanvas engine (npm
``playcanvas``, its ``gsplat`` component) in headless chromium, screenshotted.

The head is a marked synthetic one written by the exporter's own PLY writer
(:func:`gphm.export.save_splat_ply`): a skin-coloured shell with the head's right eye red,
its left eye green and its mouth blue, in canonical space (+x the head's left, +y up, +z
out of the face). The page (``web_viewer/page.html``) is a plain PlayCanvas scene: y-up
world, camera on +z looking down -z, as the engine sets them up. A head is upright and in
frame when, in the screenshot, both eyes are above the mouth, the green (left) eye is to
the viewer's right of the red one (we face the head), and the head's pixels stay clear of
the frame's edges.

* ``up=+y`` (the default export) is upright in the plain scene;
* ``up=-y`` is upright in the scene of a viewer made for y-down 3DGS captures, which turns
  the splat half a turn about x (``page.html?euler=180,0,0``);
* the check itself sees an upside-down head (``euler=0,0,180``: rolled, still facing us).
* a whole ``export_run`` of the tiny model (``neutral.ply``, SH degree 3) is drawn in frame.

Needs chromium (``.ci/run`` installs Debian's), node and, in ``$GPHM_NPM_TOOLS`` (default
``<venv>/npm-tools``), the npm packages ``playcanvas`` and ``playwright-core`` (the driver;
it uses the system chromium, never downloads one): ``scripts/test.sh`` installs them.
Skipped without them. Everything is served from 127.0.0.1; chromium runs with its
networking extras off and software WebGL (SwiftShader).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gphm.export import SplatAttributes, export_run, save_splat_ply

pytestmark = pytest.mark.browser

HERE = Path(__file__).parent / "web_viewer"
TOOLS = Path(os.environ.get("GPHM_NPM_TOOLS") or Path(sys.prefix) / "npm-tools")
PLAYCANVAS = TOOLS / "node_modules" / "playcanvas" / "build" / "playcanvas.mjs"
PLAYWRIGHT = TOOLS / "node_modules" / "playwright-core"
BROWSER = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
SIZE = 400  # the page's canvas, CSS pixels = screenshot pixels


def _missing() -> str | None:
    if BROWSER is None:
        return "no chromium installed (.ci/run installs Debian's chromium)"
    if shutil.which("node") is None:
        return "no node installed"
    if not PLAYCANVAS.is_file() or not PLAYWRIGHT.is_dir():
        return f"npm packages playcanvas / playwright-core not in {TOOLS} (scripts/test.sh)"
    return None


def marked_head(n_skin: int = 4000, n_mark: int = 60, seed: int = 0) -> SplatAttributes:
    """A head-sized ellipsoid shell (skin colour) with marked eyes and mouth on its front.

    Canonical space: right eye (x < 0) red, left eye (x > 0) green, mouth blue.
    """
    g = torch.Generator().manual_seed(seed)
    # Fibonacci sphere: an even shell, stretched to a head's proportions
    i = torch.arange(n_skin, dtype=torch.float64) + 0.5
    phi, theta = torch.acos(1 - 2 * i / n_skin), math.pi * (1 + 5**0.5) * i
    unit = torch.stack([phi.sin() * theta.cos(), phi.cos(), phi.sin() * theta.sin()], -1)
    radii = torch.tensor([0.62, 0.85, 0.68], dtype=torch.float64)
    means, rgb, sigma = [unit * radii], [torch.tensor([[0.85, 0.7, 0.6]]).expand(n_skin, 3)], []
    sigma.append(torch.full((n_skin,), 0.05))
    marks = {(-0.26, 0.18): (1.0, 0.0, 0.0), (0.26, 0.18): (0.0, 1.0, 0.0),
             (0.0, -0.42): (0.0, 0.0, 1.0)}  # fmt: skip
    for (x, y), colour in marks.items():
        # on the shell's front, just outside it: z = rz * sqrt(1 - (x/rx)^2 - (y/ry)^2) + 0.03
        z = 0.68 * math.sqrt(1 - (x / 0.62) ** 2 - (y / 0.85) ** 2) + 0.03
        spread = torch.randn(n_mark, 3, generator=g, dtype=torch.float64) * 0.03
        means.append(torch.tensor([x, y, z], dtype=torch.float64) + spread)
        rgb.append(torch.tensor([colour]).expand(n_mark, 3))
        sigma.append(torch.full((n_mark,), 0.03))
    m = torch.cat(means).float()
    n = len(m)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(n, 4)
    return SplatAttributes.from_rgb(
        m, torch.cat(rgb).float(), torch.cat(sigma)[:, None].log().expand(n, 3), quats,
        torch.full((n,), 4.0),
    )  # fmt: skip


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def site(tmp_path):
    """``(root, base_url)``: a folder served on 127.0.0.1 with the page and PlayCanvas."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "site"
    root.mkdir()
    shutil.copy(HERE / "page.html", root / "index.html")
    (root / "playcanvas.mjs").symlink_to(PLAYCANVAS)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def screenshots(tmp_path, urls: list[str]) -> list[np.ndarray]:
    """One [SIZE, SIZE, 3] uint8 screenshot per URL, by ``web_viewer/screenshot.cjs``."""
    shots = tmp_path / "shots"
    shots.mkdir()
    env = {**os.environ, "NODE_PATH": str(TOOLS / "node_modules")}
    cmd = ["node", str(HERE / "screenshot.cjs"), BROWSER, str(shots), *urls]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium + PlayCanvas did not finish within 300 s")
    pages = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert r.returncode == 0 and len(pages) == len(urls), (r.stdout + r.stderr)[-3000:]
    return [np.asarray(Image.open(p["png"]).convert("RGB")) for p in pages]


def layout(shot: np.ndarray) -> dict[str, np.ndarray | float]:
    """Centroids (x right, y down, pixels) of the red, green and blue marks and of the
    whole head in a screenshot, and the head's bounding box ``(x0, y0, x1, y1)``."""
    rgb = shot.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    masks = {
        "red": (r > 150) & (g < 90) & (b < 90),
        "green": (g > 150) & (r < 90) & (b < 90),
        "blue": (b > 150) & (r < 90) & (g < 90),
        "head": rgb.sum(-1) > 60,
    }
    out: dict[str, np.ndarray | float] = {}
    for name, mask in masks.items():
        ys, xs = np.nonzero(mask)
        assert len(xs) >= 30, f"{name}: {len(xs)} pixels in the screenshot"
        out[name] = np.array([xs.mean(), ys.mean()])
        if name == "head":
            out["box"] = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
            out["coverage"] = float(mask.mean())
    return out


def is_upright_in_frame(at: dict) -> bool:
    eyes_above_mouth = max(at["red"][1], at["green"][1]) + 20 < at["blue"][1]
    left_eye_on_our_right = at["green"][0] > at["red"][0] + 20
    margin = 8
    in_frame = bool((at["box"][:2] >= margin).all() and (at["box"][2:] < SIZE - margin).all())
    centred = bool(np.abs(at["head"] - SIZE / 2).max() < 0.15 * SIZE)
    return eyes_above_mouth and left_eye_on_our_right and in_frame and centred


def test_playcanvas_shows_exports_upright_in_frame(site, run, tmp_path):
    root, base = site
    head = marked_head()
    save_splat_ply(root / "head_up_y.ply", head)  # the default export, up=+y
    save_splat_ply(root / "head_down_y.ply", head, up="-y")
    # and a whole export of a (tiny, untrained) model, as gphm-export writes it
    export_run(run, "a", root / "export", fidelity=False)
    shots = screenshots(tmp_path, [
        f"{base}index.html?ply=head_up_y.ply",
        f"{base}index.html?ply=head_down_y.ply&euler=180,0,0",  # a y-down capture viewer
        f"{base}index.html?ply=head_up_y.ply&euler=0,0,180",  # rolled upside down
        f"{base}index.html?ply=export/neutral.ply",
    ])  # fmt: skip
    for i, shot in enumerate(shots):
        Image.fromarray(shot).save(tmp_path / f"shot_{i}.png")  # kept for a failing run
    plain, capture, rolled = (layout(s) for s in shots[:3])
    lit = np.nonzero(shots[3].astype(np.int32).sum(-1) > 60)
    assert len(lit[0]) > 0.05 * SIZE**2  # the exported head is drawn ...
    assert min(lit[0].min(), lit[1].min()) >= 8 and max(lit[0].max(), lit[1].max()) < SIZE - 8
    assert is_upright_in_frame(plain), plain
    assert 0.1 < plain["coverage"] < 0.7
    assert is_upright_in_frame(capture), capture
    # the same picture: the half turn of up=-y is undone by the capture viewer's
    np.testing.assert_allclose(capture["red"], plain["red"], atol=3)
    np.testing.assert_allclose(capture["blue"], plain["blue"], atol=3)
    # ... and the check does see a head upside down
    assert not is_upright_in_frame(rolled)
    assert rolled["blue"][1] + 20 < min(rolled["red"][1], rolled["green"][1])
