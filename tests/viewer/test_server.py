"""The viewer's scene and HTTP server, driven with an HTTP client (no browser)."""

import io
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from gphm.fitting.avatar import Avatar
from gphm.models.runs import load_run
from gphm.rendering import orbit_rig, render_codes
from gphm.viewer import BadRequest, RenderGate, Scene, ViewerServer, ViewRequest, find_avatars
from tests.training.test_train import ROOT, _env


def get(url: str, timeout: float = 30.0) -> tuple[int, bytes, dict]:
    """(status, body, headers) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def png(body: bytes) -> np.ndarray:  # [H, W, 3] float in [0, 1]
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.float32) / 255


def test_render_png_is_the_model_output_at_the_orbit_camera(server, scene, viewer_run):
    status, body, headers = get(server.url + "render.png?identity=b&expression=open&yaw=30"
                                "&pitch=10&size=64")  # fmt: skip
    assert status == 200 and headers["Content-Type"] == "image/png"
    image = png(body)
    assert image.shape == (64, 64, 3)
    # the same picture as scripts/render.py's renderer at that orbit camera
    run = load_run(viewer_run)
    model = run.model
    rig = orbit_rig(1, 64, scene.factor, 3.0, elevation=10.0, azimuth_range=(30.0, 30.0),
                    endpoint=True)  # fmt: skip
    frame = run.trained_frame(1, "open").frame
    ref = render_codes(model, model.identity_codes(torch.tensor([1])),
                       model.expression_codes(torch.tensor([frame])), rig)[0, 0]  # fmt: skip
    assert np.abs(image - ref.numpy()).max() <= 1 / 255 + 1e-6
    # a head, not an empty background: pixels well away from white
    assert (image.min(-1) < 0.8).mean() > 0.05


def test_views_are_the_python_api_renders(viewer_run, tmp_path):
    import gphm

    head = gphm.load(viewer_run, device="cpu")
    scene = Scene(load_run(viewer_run), {"me": _avatar(head.model, tmp_path / "me", 3)})
    for q, identity, expression in [
        ({"identity": "b", "expression": "open", "yaw": "-40", "pitch": "20"}, "b", "open"),
        # an identity blend blends each identity's own code of the label (exact endpoints)
        ({"identity": "a", "identity_b": "b", "identity_mix": "0.25"}, {"a": 0.75, "b": 0.25},
         0.75 * head.expression_code("neutral", "a") + 0.25 * head.expression_code("neutral", "b")),
        ({"identity": "me", "expression": "me", "yaw": "15"}, gphm.load_avatar(tmp_path / "me",
                                                                              head), None),
    ]:  # fmt: skip
        req = scene.parse(q | {"size": "64"})
        ref = head.render(identity, expression, yaw=req.yaw, pitch=req.pitch, size=64)
        assert (scene.render(req) - ref).abs().max() < 1e-5, q


def test_identity_expression_and_camera_change_the_picture(server):
    def img(q):
        status, body, _ = get(server.url + "render.png?size=32&" + q)
        assert status == 200, body
        return png(body)

    a = img("identity=a&expression=neutral")
    assert np.abs(img("identity=b&expression=neutral") - a).mean() > 1e-3
    assert np.abs(img("identity=a&expression=open") - a).mean() > 1e-3
    assert np.abs(img("identity=a&expression=neutral&yaw=60") - a).mean() > 1e-3
    # blends: mix 0 is A, mix 1 is B, in between is neither
    b = img("identity=b&expression=neutral")
    assert np.array_equal(img("identity=a&identity_b=b&identity_mix=0&expression=neutral"), a)
    assert np.abs(img("identity=a&identity_b=b&identity_mix=1") - b).max() <= 1 / 255
    mid = img("identity=a&identity_b=b&identity_mix=0.5")
    assert np.abs(mid - a).mean() > 1e-4 and np.abs(mid - b).mean() > 1e-4


def test_camera_only_changes_reuse_the_conditioned_gaussians(viewer_run, monkeypatch):
    scene = Scene(load_run(viewer_run))
    calls = []
    attributes = scene.model.attributes
    monkeypatch.setattr(scene.model, "attributes", lambda *a: calls.append(1) or attributes(*a))
    for yaw in (0.0, 10.0, 20.0):
        scene.render(ViewRequest("a", "neutral", yaw=yaw, zoom=1 + yaw / 10, size=32))
    assert len(calls) == 1
    scene.render(ViewRequest("a", "open", size=32))
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("identity=zz", "identity: unknown name 'zz'; valid: ['a', 'b']"),
        ("expression=grin", "expression: unknown name 'grin'; valid: ['neutral', 'open']"),
        ("identity_b=zz&identity_mix=1", "identity_b: unknown name 'zz'"),
        ("yaw=abc", "yaw: expected a number, got 'abc'"),
        ("pitch=95", "pitch: expected a number in [-89, 89], got '95'"),
        ("zoom=inf", "zoom: expected a number in [0.25, 8]"),
        ("identity_mix=nan&identity_b=b", "identity_mix: expected a number in [0, 1]"),
        ("size=31", "size: expected a multiple of 2 (the upsampling factor)"),
        ("size=1e9", "size: expected an integer"),
        ("size=99999", "in [16, 2048], got '99999'"),
        ("yaw=1&yaw=2", "parameter 'yaw' given more than once"),
        ("idnetity=a", "unknown parameter 'idnetity'; expected ['identity', 'expression'"),
        ("expression_mix=0.5", "expression_mix needs expression_b"),
    ],
)
def test_bad_requests_are_400_naming_the_field(server, query, message):
    status, body, headers = get(server.url + "render.png?" + query)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert message in json.loads(body)["error"]


def test_a_failing_render_costs_one_request_not_the_server(server, scene, monkeypatch):
    def boom(req):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(scene, "render", boom)
    status, body, _ = get(server.url + "render.png")
    assert status == 500 and "RuntimeError: simulated bug" in json.loads(body)["error"]
    monkeypatch.undo()
    assert get(server.url + "nope")[0] == 404
    assert get(server.url + "../../etc/passwd")[0] == 404
    assert get(server.url + "render.png?%zz=%%")[0] == 400
    status, body, _ = get(server.url + "render.png?size=32")
    assert status == 200 and png(body).shape == (32, 32, 3)


def test_page_script_and_options_are_served(server, scene):
    status, body, headers = get(server.url)
    assert status == 200 and b'<script src="/viewer.js">' in body
    assert headers["Content-Type"].startswith("text/html")
    assert get(server.url + "viewer.js")[0] == 200 and get(server.url + "viewer.css")[0] == 200
    options = json.loads(get(server.url + "api/options")[1])
    assert options["subjects"] == ["a", "b"] and options["labels"] == ["neutral", "open"]
    assert options["size"] == scene.size == 32 and options["factor"] == 2
    assert options["default"] == {"identity": "a", "expression": "neutral"}


def test_render_gate_serialises_and_drops_stale_requests_of_a_stream():
    gate = RenderGate()
    started, release = threading.Event(), threading.Event()
    results = {}

    def slow():
        started.set()
        release.wait(10)
        return "first"

    first = gate.arrive("page")
    t = threading.Thread(target=lambda: results.setdefault("1", gate.run("page", first, slow)))
    t.start()
    assert started.wait(10)
    # while the first renders, two newer requests of the stream and one script request wait
    stale, latest, script = gate.arrive("page"), gate.arrive("page"), gate.arrive(None)
    release.set()
    t.join(10)
    assert results["1"] == "first"  # a render in progress is never thrown away
    assert gate.run("page", stale, lambda: "stale") is None
    assert gate.run("page", latest, lambda: "latest") == "latest"
    assert gate.run(None, script, lambda: "script") == "script"  # no stream: never dropped
    assert (gate.rendered, gate.dropped) == (3, 1)


def _avatar(model, path, seed):
    g = torch.Generator().manual_seed(seed)
    z_id = model.identity_codes.codes.weight.shape[1]
    z_exp = model.expression_codes.codes.weight.shape[1]
    return Avatar(
        checkpoint="unused", model_class=type(model).__name__,
        z_id=torch.randn(z_id, generator=g), z_exp=torch.randn(z_exp, generator=g),
        head_R=torch.eye(3), head_T=torch.tensor([0.0, 0.0, 3.0]), head_scale=1.0,
        K=torch.eye(3), image_size=32, point_offsets=0.01 * torch.ones(model.num_points, 3),
    ).save(path)  # fmt: skip


def test_fitted_avatars_are_found_listed_and_rendered(viewer_run, tmp_path):
    run = load_run(viewer_run)
    _avatar(run.model, tmp_path / "photos" / "me" / "avatar", 0)
    _avatar(run.model, tmp_path / "photos" / "you", 1)
    _avatar(run.model, tmp_path / "more" / "you", 4)
    (tmp_path / "photos" / "notes").mkdir()
    found = find_avatars([tmp_path / "photos", tmp_path / "more"])
    # gphm-fit's OUT/avatar is named by OUT; a clash gets the folder above in front
    assert list(found) == ["me", "you", "more/you"]
    scene = Scene(run, found)
    assert scene.identities == ["a", "b", "me", "you", "more/you"]
    assert scene.expressions == ["neutral", "open", "me", "you", "more/you"]
    me = scene.render(scene.parse({"identity": "me", "expression": "open", "size": "32"}))
    own = scene.render(scene.parse({"identity": "me", "expression": "me", "size": "32"}))
    mix = scene.render(scene.parse({"identity": "a", "identity_b": "you", "identity_mix": "0.5",
                                    "expression": "you", "size": "32"}))  # fmt: skip
    assert me.shape == own.shape == mix.shape == (32, 32, 3)
    assert (me - own).abs().mean() > 1e-4
    _avatar(run.model, tmp_path / "clash" / "open", 2)
    with pytest.raises(ValueError, match=r"clash/open is named 'open' like a trained expr"):
        Scene(run, find_avatars([tmp_path / "clash"]))
    with pytest.raises(FileNotFoundError, match="avatars: .*missing is not a directory"):
        find_avatars([tmp_path / "missing"])


def test_parse_and_query_round_trip(scene):
    req = scene.parse({"identity": "b", "expression": "open", "yaw": "30", "pitch": "-5",
                       "zoom": "1.5", "size": "64"})  # fmt: skip
    assert req == ViewRequest("b", "open", yaw=30.0, pitch=-5.0, zoom=1.5, size=64)
    assert scene.parse(req.query()) == req
    assert scene.parse({}) == scene.default_request()
    with pytest.raises(BadRequest):
        scene.parse({"identity": ""} | {"yaw": ""})


@pytest.mark.slow  # two interpreters importing torch
def test_view_cli_refuses_a_missing_checkpoint_and_a_busy_port(scene, tmp_path):
    def view(*args):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "view.py"), *args],
                              capture_output=True, text=True, env=_env(), timeout=120)  # fmt: skip

    r = view(f"checkpoint={tmp_path / 'nope'}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no trained model" in r.stderr
    with ViewerServer(scene, "127.0.0.1", 0) as busy:
        r = view(f"checkpoint={scene.run.path}", f"port={busy.port}")
    assert r.returncode == 2 and f"port={busy.port}: already in use" in r.stderr


def test_concurrent_and_malformed_requests_leave_the_server_serving(server):
    import socket
    from concurrent.futures import ThreadPoolExecutor

    queries = ["size=32", "identity=b&size=32&yaw=10", "identity=zz", "yaw=x", "size=32&zoom=2"]
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda q: get(server.url + "render.png?" + q)[0], queries * 4))
    assert statuses == [200, 200, 400, 400, 200] * 4
    for junk in (b"\x00\xffGARBAGE\r\n\r\n", b"GET /render.png?" + b"a" * 70000 + b" HTTP/1.1\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(junk)
            reply = s.recv(4096)  # an error answer (400 / 414), not a hang
            assert b"400" in reply or b"414" in reply, reply[:200]
    req = urllib.request.Request(server.url + "render.png?size=32", method="HEAD")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200 and r.read() == b""
    assert get(server.url + "render.png?size=32")[0] == 200


def test_a_stage_1_run_is_viewed_through_its_mesh_renderer(viewer_run):
    import gphm

    stage1 = viewer_run / "guidance_model"
    scene = Scene(load_run(stage1))
    assert type(scene.model).__name__ == "GuidanceModel"
    req = scene.parse({"identity": "b", "expression": "open", "yaw": "20", "size": "32"})
    ref = gphm.load(stage1, device="cpu").render("b", "open", yaw=20.0, size=32)
    assert (scene.render(req) - ref).abs().max() < 1e-5


def test_gaussians_bin_holds_the_views_conditioned_gaussians(server, scene):
    status, body, headers = get(server.url + "gaussians.bin?identity=b&expression=open&yaw=40")
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    n = int(headers["X-Gaussians"])
    rows = np.frombuffer(body, dtype="<f4").reshape(n, 14)
    att = scene.conditioned(ViewRequest("b", "open"))
    assert n == att.means.shape[1]
    assert np.allclose(rows[:, :3], att.means[0].numpy(), atol=1e-6)
    assert np.allclose(np.linalg.norm(rows[:, 3:7], axis=1), 1, atol=1e-5)
    assert np.allclose(rows[:, 7:10], att.log_scales[0].exp().numpy(), rtol=1e-5)
    assert ((rows[:, 10:] >= 0) & (rows[:, 10:] <= 1)).all()
    assert get(server.url + "gaussians.bin?identity=zz")[0] == 400
