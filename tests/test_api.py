"""The public Python API (gphm.api): load, render, mixes, cameras, Gaussians, fit."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

import gphm
from gphm.geometry.cameras import camera_centers, project_points
from gphm.render import rasterize_gaussians
from gphm.rendering import orbit_rig, orbit_view, orbit_yaws, render_codes
from gphm.training.trainer import GaussianTrainer, GuidanceTrainer
from tests.training.conftest import tiny_head_dataset  # noqa: F401
from tests.training.test_train import ROOT, _cfg


@pytest.fixture(scope="module")
def run_dir(tiny_head_dataset, tmp_path_factory):  # noqa: F811
    """A tiny two-stage run (a few steps: the API is tested, not the model's quality)."""
    run = tmp_path_factory.mktemp("api") / "run"
    cfg = _cfg(tiny_head_dataset, run, "stage=all", "train.guidance_steps=4",
               "train.gaussian_steps=4", "train.batch_size=2")  # fmt: skip
    g = GuidanceTrainer(cfg)
    g.train()
    GaussianTrainer(cfg, guidance=g.acc.unwrap_model(g.model)).train()
    return run


@pytest.fixture(scope="module")
def head(run_dir):
    """The run's head with its codes spread apart (a few training steps barely move them
    from their near-zero start, and the tests need identities that render differently)."""
    head = gphm.load(run_dir, device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for book in (head.model.identity_codes, head.model.expression_codes):
            w = book.codes.weight
            w.copy_(torch.randn(w.shape, generator=g))
    return head


def test_import_gphm_is_light_and_exports_the_api():
    code = "import gphm, sys; assert 'torch' not in sys.modules; print(gphm.load.__module__)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gphm.api"


def test_head_properties(head, run_dir):
    assert head.identities == ["a", "b"]
    assert head.expressions == ["neutral", "open"]
    assert head.size == 32 and head.factor == 2
    assert head.device == torch.device("cpu") and head.to("cpu") is head
    assert head.run.path == run_dir / "model"
    assert isinstance(head.model, gphm.api.GaussianHead)
    assert "2 identities" in repr(head)


def test_render_shape_range_and_identity_specs_agree(head):
    img = head.render("a", "open", yaw=20.0)
    assert img.shape == (32, 32, 3) and img.dtype == torch.float32 and img.device.type == "cpu"
    assert float(img.min()) >= 0 and float(img.max()) <= 1
    by_index = head.render(0, "open", yaw=20.0)
    by_code = head.render(head.identity_code("a"), head.expression_code("open", "a"), yaw=20.0)
    assert torch.equal(img, by_index) and torch.allclose(img, by_code, atol=1e-6)
    # The subject's own trained frame: a's "open" is global frame 1.
    frame1 = head.model.expression_codes.codes.weight[1]
    assert torch.equal(head.expression_code("open", "a"), frame1)
    assert torch.equal(head.expression_code("b@3"), head.model.expression_codes.codes.weight[3])
    assert torch.equal(head.render("a"), head.render("a", "neutral"))  # the default label
    assert head.render("a", size=64).shape == (64, 64, 3)


def test_a_half_mix_is_the_render_of_the_averaged_code(head):
    mix = head.render({"a": 1.0, 1: 1.0}, "neutral")  # weights normalised to sum 1
    mean = 0.5 * (head.identity_code("a") + head.identity_code("b"))
    assert torch.allclose(head.identity_code({"a": 2, "b": 2}), mean)
    # A mixed identity takes the lowest-index subject's frame of the label: a's.
    neutral = head.expression_code("neutral", "a")
    assert torch.equal(head.expression_code("neutral"), neutral)
    averaged = head.render(mean, neutral)
    a, b = head.render("a", neutral), head.render("b", neutral)
    assert torch.allclose(mix, averaged, atol=1e-6)
    # Between the ends (the tiny model's images depend on the identity only slightly).
    ends = (a - b).abs().max()
    assert ends > 1e-5
    assert (mix - a).abs().max() > 0.2 * ends and (mix - b).abs().max() > 0.2 * ends
    e = head.expression_code({"neutral": 0.25, "open": 0.75}, "a")
    w = head.model.expression_codes.codes.weight
    assert torch.allclose(e, 0.25 * w[0] + 0.75 * w[1])


def test_orbit_signs_yaw_positive_sees_the_heads_left_side():
    # yaw=+90: the camera sits on +x, the head's left (the face looks along +z).
    vm, K = orbit_view(90.0, 0.0, 32, 2)
    assert torch.allclose(camera_centers(vm[None])[0], torch.tensor([3.0, 0, 0]), atol=1e-5)
    vm, _ = orbit_view(0.0, 30.0, 32, 2)
    c = camera_centers(vm[None])[0]
    assert c[1] > 1.4 and c[2] > 2.5 and abs(float(c[0])) < 1e-5  # pitch > 0: from above
    # A red Gaussian on +x hides a blue one on -x at yaw=+90 (and the reverse at -90).
    means = torch.tensor([[0.5, 0, 0], [-0.5, 0, 0]])
    feats = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    quats = torch.tensor([[1.0, 0, 0, 0]]).expand(2, 4)
    for yaw, colour in ((90.0, 0), (-90.0, 2)):
        vm, K = orbit_view(yaw, 0.0, 32, 1)
        img, _ = rasterize_gaussians(means, quats, torch.full((2, 3), 0.3), torch.ones(2),
                                     feats, vm[None], K[None], 32, 32)  # fmt: skip
        centre = img[0, 16, 16]
        assert int(centre.argmax()) == colour, (yaw, centre)
    # Frontal: the head's left (+x) is on the image's right, as a person facing the viewer.
    vm, K = orbit_view(0.0, 0.0, 32, 1)
    uv, _ = project_points(torch.tensor([[0.5, 0, 0], [-0.5, 0, 0]]), vm, K)
    assert uv[0, 0] > 16 > uv[1, 0]


def test_default_camera_matches_the_orbit_rig_and_explicit_cameras(head):
    img = head.render("b", "open", yaw=90.0, pitch=10.0)
    rig = orbit_rig(1, 32, head.factor, 3.0, 10.0, azimuth_range=(90.0, 90.0), endpoint=True)
    z_id, z_exp = head.identity_code("b")[None], head.expression_code("open", "b")[None]
    assert torch.allclose(img, render_codes(head.model, z_id, z_exp, rig)[0, 0], atol=1e-6)
    vm, K = head.camera(yaw=90.0, pitch=10.0, size=32)
    assert K[0, 2] == 16.0  # output pixels, not the low-res render's
    assert torch.allclose(head.render("b", "open", viewmat=vm, K=K), img, atol=1e-6)
    vm64, K64 = head.camera(yaw=90.0, pitch=10.0, size=64)
    assert torch.equal(vm64, vm) and torch.allclose(K64, 2 * K * torch.tensor([[1], [1], [0.5]]))
    assert not torch.allclose(head.render("b", "open", yaw=-90.0, pitch=10.0), img, atol=1e-3)


def test_render_batch_matches_single_renders(head):
    batch = head.render_batch(["a", "b", {"a": 0.5, "b": 0.5}], "open", [0.0, 45.0, -30.0])
    assert batch.shape == (3, 32, 32, 3)
    for i, (ident, yaw) in enumerate((("a", 0.0), ("b", 45.0), ({"a": 0.5, "b": 0.5}, -30.0))):
        assert torch.allclose(batch[i], head.render(ident, "open", yaw=yaw), atol=1e-6)
    codes = torch.stack([head.identity_code("a"), head.identity_code("b")])  # [B, Did]
    neutral_a = head.expression_code("neutral", "a")
    by_tensors = head.render_batch(codes, neutral_a, torch.tensor([0.0, 45.0]))
    assert torch.allclose(by_tensors[1], head.render("b", neutral_a, yaw=45.0), atol=1e-6)
    assert torch.allclose(by_tensors[0], head.render("a", neutral_a), atol=1e-6)
    with pytest.raises(ValueError, match="yaws: expected 3 entries"):
        head.render_batch(["a", "b", "a"], "open", [0.0, 1.0])


def test_background_colour_replaces_white_outside_the_head(head):
    white = head.render("a")
    black = head.render("a", background=(0, 0, 0))
    assert float(white[0, 0].min()) > 0.9 and float(black[0, 0].max()) < 0.1


def test_bad_specs_are_clear_errors(head):
    with pytest.raises(ValueError, match=re.escape("unknown identity 'zz'; trained identities: "
                                                   "['a', 'b']")):  # fmt: skip
        head.render("zz")
    bad_label = "unknown expression 'smile'; trained expressions: ['neutral', 'open']"
    with pytest.raises(ValueError, match=re.escape(bad_label)):
        head.render("a", "smile")
    with pytest.raises(ValueError, match="index 5 out of range"):
        head.render(5)
    with pytest.raises(ValueError, match="multiple of the model's upsampling factor 2"):
        head.render("a", size=33)
    with pytest.raises(ValueError, match=r"identity code must have shape \[\d+\]"):
        head.render(torch.zeros(3))
    with pytest.raises(ValueError, match="weights must sum to > 0"):
        head.render({"a": 1.0, "b": -1.0})
    with pytest.raises(ValueError, match="pitch must lie strictly between"):
        head.render("a", pitch=90)
    with pytest.raises(ValueError, match=r"viewmat must be a finite \[4, 4\]"):
        head.render("a", viewmat=torch.eye(3))


def test_gaussians_and_ply_export(head, tmp_path):
    from gphm.io.ply import load_gaussian_ply

    g = head.gaussians("a", "open")
    n = head.model.num_points
    assert g.means.shape == (n, 3) and g.quats.shape == (n, 4) and g.scales.shape == (n, 3)
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(n), atol=1e-5)
    assert bool(((g.opacities > 0) & (g.opacities < 1)).all()) and g.rgb.shape == (n, 3)
    path = head.export_ply(tmp_path / "a.ply", "a", "open")
    ply = load_gaussian_ply(path)
    assert ply.sh_degree == 3 and np.allclose(np.asarray(ply.means), g.means.numpy(), atol=1e-6)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        head.export_ply(path, "a", "open")


def test_fit_a_rendered_image_and_round_trip_the_avatar(head, tmp_path):
    vm, K = head.camera(size=32)
    z_id, z_exp = head.identity_code("b")[None], head.expression_code("open", "b")[None]
    lmk = head.model.canonical_landmarks(z_id, z_exp)[0].detach()
    uv, _ = project_points(lmk, vm, K)
    image = head.render("b", "open").numpy()  # float [H, W, 3] in [0, 1]
    avatar = gphm.fit(head, image, landmarks=uv.numpy(), phase1_steps=3, phase2_steps=1)
    assert isinstance(avatar, gphm.Avatar) and avatar.result is not None
    own = avatar.render()
    assert own.shape == (32, 32, 3) and float(own.min()) >= 0 and float(own.max()) <= 1
    assert avatar.render("neutral", yaw=30.0, size=64).shape == (64, 64, 3)
    assert torch.equal(head.render(avatar), own)
    avatar.save(tmp_path / "av")
    back = gphm.load_avatar(tmp_path / "av", head)
    assert torch.allclose(back.render(), own, atol=1e-6)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        avatar.save(tmp_path / "av")
    with pytest.raises(ValueError, match="unknown fit option"):
        gphm.fit(head, image, landmarks=uv.numpy(), phase_steps=3)
    with pytest.raises(ValueError, match="landmarks must be a list of as many entries"):
        gphm.fit(head, [image, image], landmarks=uv.numpy())
    # Two photos of one person (two views): one identity, the first photo's expression.
    vm2, K2 = head.camera(yaw=30.0, size=32)
    uv2, _ = project_points(lmk, vm2, K2)
    image2 = head.render("b", "open", yaw=30.0).numpy()
    both = gphm.fit(head, [image, image2], landmarks=[uv.numpy(), uv2], phase1_steps=3,
                    phase2_steps=1)  # fmt: skip
    assert len(both.result.images) == 2 and len(both.prepared) == 2
    assert both.render().shape == (32, 32, 3)


def test_device_resolution():
    assert gphm.resolve_device("cpu") == torch.device("cpu")
    assert gphm.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        gphm.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            gphm.resolve_device("cuda")


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_runs_on_a_tiny_run(head, run_dir, tmp_path, monkeypatch):
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 15
    # The one substitution: the tiny run has no face a detector finds, so the photo's
    # landmarks are passed (projected model landmarks) and the fit is kept short.
    vm, K = head.camera()
    z = head.identity_code("a")[None], head.expression_code("open", "a")[None]
    uv, _ = project_points(head.model.canonical_landmarks(*z)[0].detach(), vm, K)
    from gphm.io.images import save_png

    save_png(tmp_path / "photo.png", head.render("a", "open"))
    fit_call = 'gphm.fit(head, "photo.jpg")'
    assert fit_call in code and '"runs/demo"' in code
    code = code.replace('"runs/demo"', repr(str(run_dir))).replace(
        fit_call, 'gphm.fit(head, "photo.png", landmarks=_uv, phase1_steps=2, phase2_steps=1)'
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"_uv": uv.numpy()})
    for name in ("front.png", "left.png", "morph.png", "head.ply", "avatar.png",
                 "my_avatar/avatar.json"):  # fmt: skip
        assert (tmp_path / name).is_file(), name


def test_a_stage_1_model_renders_and_has_no_gaussians(run_dir):
    head = gphm.load(run_dir / "guidance_model")
    assert type(head.model).__name__ == "GuidanceModel"
    img = head.render("a", "open", yaw=45.0)
    assert img.shape == (32, 32, 3) and float(img.min()) < 0.99  # the head is in view
    batch = head.render_batch(["a", "b"], "open", [45.0, 0.0])
    assert torch.allclose(batch[0], img, atol=1e-6)
    with pytest.raises(ValueError, match=r"GuidanceModel \(stage 1\) has no Gaussians"):
        head.gaussians("a")


def test_orbit_yaws():
    assert orbit_yaws(4) == [0.0, 90.0, 180.0, 270.0]  # a loop: 360 is not repeated
    assert orbit_yaws(3, sway=30.0) == [-30.0, 0.0, 30.0]
    with pytest.raises(ValueError, match="num must be >= 1"):
        orbit_yaws(0)
