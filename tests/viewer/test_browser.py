"""The viewer page in a real (headless) chromium: it loads, shows the model output that
``/render.png`` returns for the URL's view, and follows the URL's identity.

Skipped where no chromium is installed (``.ci/run`` installs Debian's). Every request
goes to the viewer on 127.0.0.1; chromium runs with networking extras off, its own
profile folder and a hard timeout.
"""

import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.viewer.test_server import get, png

pytestmark = pytest.mark.browser

BROWSER = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
# The page's stage (viewer.css): 512 × 512 CSS pixels at (16, 56).
STAGE = (16, 56, 512)
WINDOW = (900, 600)


def chromium(tmp_path, url: str, *mode: str) -> subprocess.CompletedProcess:
    if BROWSER is None:
        pytest.skip("no chromium installed (.ci/run installs Debian's chromium)")
    args = [
        BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--disable-default-apps", "--mute-audio",
        f"--user-data-dir={tmp_path / 'profile'}", "--force-device-scale-factor=1",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        # virtual time runs the page's script until it is idle (its fetches answered)
        "--virtual-time-budget=10000", *mode, url,
    ]  # fmt: skip
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within 60 s on {url}")
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def screenshot_stage(tmp_path, url: str) -> np.ndarray:  # [512, 512, 3] in [0, 1]
    out = tmp_path / "shot.png"
    out.unlink(missing_ok=True)
    chromium(tmp_path, url, f"--screenshot={out}")
    shot = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32) / 255
    x, y, s = STAGE
    return shot[y : y + s, x : x + s]


def body_attributes(tmp_path, url: str) -> dict[str, str]:
    dom = chromium(tmp_path, url, "--dump-dom").stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:2000]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))


def test_page_shows_the_model_output_of_the_url_view(server, tmp_path):
    # size 512 fills the 512-pixel stage one to one: the screenshot is the PNG itself
    view = "identity=b&expression=open&yaw=30&pitch=10&size=512"
    stage = screenshot_stage(tmp_path, server.url + "?" + view)
    status, body, _ = get(server.url + "render.png?" + view)
    assert status == 200
    assert np.abs(stage - png(body)).mean() < 2 / 255
    # ... and the picture is a head, not an empty stage.
    assert (stage.min(-1) < 0.8).mean() > 0.05


def test_changing_the_identity_in_the_url_changes_the_picture(server, tmp_path):
    shown = {n: screenshot_stage(tmp_path, f"{server.url}?identity={n}&size=512") for n in "ab"}
    truth = {n: png(get(f"{server.url}render.png?identity={n}&size=512")[1]) for n in "ab"}
    assert np.abs(truth["a"] - truth["b"]).mean() > 1e-3
    # each page shows its own identity: nearer to its picture than to the other one
    for n, other in ("ab", "ba"):
        assert np.abs(shown[n] - truth[n]).mean() < 0.2 * np.abs(shown[n] - truth[other]).mean()


def test_page_state_follows_the_url_and_reports_bad_names(server, tmp_path):
    attrs = body_attributes(tmp_path, server.url + "?identity=b&expression=open&yaw=30")
    assert attrs["data-state"] == "ready" and attrs["data-renders"] == "1"
    assert attrs["data-query"] == "identity=b&amp;expression=open&amp;yaw=30"
    assert 0 < float(attrs["data-first-picture-ms"]) < 10000
    dom = chromium(tmp_path, server.url + "?identity=nobody", "--dump-dom").stdout
    assert 'data-state="error"' in dom
    assert "identity: unknown name 'nobody'; valid: ['a', 'b']" in dom.replace("&#39;", "'")
    # the server still serves after the page's bad request
    assert Image.open(io.BytesIO(get(server.url + "render.png?size=32")[1])).size == (32, 32)


# Appended to a copy of the page: once the first picture is shown, drag the camera 40 px
# to the right and 20 px down in small steps, release, press the left arrow twice, then
# choose identity b.
DRAG_SCRIPT = """
<script>
(function drag() {
  if (document.body.dataset.state !== "ready") return setTimeout(drag, 20);
  const stage = document.getElementById("stage");
  const ev = (type, x, y) => stage.dispatchEvent(new PointerEvent(type,
    { pointerId: 1, clientX: x, clientY: y, bubbles: true, isPrimary: true }));
  stage.setPointerCapture = () => {};  // synthetic pointers cannot be captured
  document.getElementById("splat").checked = false;  // server pictures while dragging
  ev("pointerdown", 200, 200);
  let i = 0;
  const step = () => {
    i += 1;
    ev("pointermove", 200 + 4 * i, 200 + 2 * i);
    if (i < 10) return setTimeout(step, 30);
    ev("pointerup", 240, 220);
    // then two arrow-key presses: 5° of yaw each, back towards the front
    for (const k of ["ArrowLeft", "ArrowLeft"]) {
      stage.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));
    }
    // and pick identity b in its list (the controls are read back into the view)
    const pick = document.getElementById("identity");
    pick.value = "b";
    pick.dispatchEvent(new Event("change"));
  };
  step();
})();
</script>
"""


def test_dragging_and_arrow_keys_orbit_at_half_size_then_full_size(scene, tmp_path):
    from gphm.viewer import ViewerServer
    from gphm.viewer.server import STATIC_DIR

    static = tmp_path / "static"
    shutil.copytree(STATIC_DIR, static)
    page = (static / "index.html").read_text()
    (static / "drag.html").write_text(page.replace("</body>", DRAG_SCRIPT + "</body>"))
    sizes = []

    class Recording:  # the scene, noting the size of every render
        def __getattr__(self, name):
            return getattr(scene, name)

        def render(self, req):
            sizes.append(req.size)
            return scene.render(req)

    with ViewerServer(Recording(), "127.0.0.1", 0, static_dir=static) as server:
        attrs = body_attributes(tmp_path, server.url + "drag.html?identity=a&size=64")
    assert attrs["data-state"] == "ready"
    # (size 64 is not in the page's list of sizes: the URL's size joins it and stays)
    # 40 px right and 20 px down at half a degree per pixel: yaw -20, pitch 10; two
    # arrow-key presses: yaw -10
    query = "identity=b&amp;expression=neutral&amp;yaw=-10&amp;pitch=10&amp;size=64"
    assert attrs["data-query"] == query
    assert sizes[0] == 64 and sizes[-1] == 64 and 32 in sizes[1:-1]
    assert len(sizes) <= 15  # the first picture, one per move at most, release, keys, pick


# Appended to a copy of the page: once the Gaussians are loaded, press and drag 60 px to
# the right without releasing (the preview stays on screen).
PREVIEW_SCRIPT = """
<script>
(function drag() {
  if (document.body.dataset.preview !== "ready") return setTimeout(drag, 20);
  const stage = document.getElementById("stage");
  const ev = (type, x) => stage.dispatchEvent(new PointerEvent(type,
    { pointerId: 1, clientX: x, clientY: 200, bubbles: true, isPrimary: true }));
  stage.setPointerCapture = () => {};
  ev("pointerdown", 200);
  for (let x = 210; x <= 260; x += 10) ev("pointermove", x);
})();
</script>
"""


def test_splat_preview_draws_the_gaussians_while_dragging(server, tmp_path):
    from gphm.viewer.server import STATIC_DIR

    static = tmp_path / "static"
    shutil.copytree(STATIC_DIR, static)
    page = (static / "index.html").read_text()
    (static / "preview.html").write_text(page.replace("</body>", PREVIEW_SCRIPT + "</body>"))
    from gphm.viewer import ViewerServer

    with ViewerServer(server.httpd.scene, "127.0.0.1", 0, static_dir=static) as s:
        stage = screenshot_stage(tmp_path, s.url + "preview.html?identity=b&size=512")
        # 60 px to the right at half a degree per pixel: the camera is at yaw -30
        truth = png(get(s.url + "render.png?identity=b&yaw=-30&size=512")[1])
        before = png(get(s.url + "render.png?identity=b&size=512")[1])

    def head(img):  # silhouette: clearly not the white background
        return img.min(-1) < 0.9

    def iou(a, b):
        return (a & b).sum() / max(1, (a | b).sum())

    assert head(stage).mean() > 0.05  # the preview drew something
    # ... where the model's own picture at the dragged camera is (colours differ: no Ψ)
    assert iou(head(stage), head(truth)) > 0.6
    assert not np.array_equal(stage, before)  # it is not the first (server) picture
