"""gphm.rendering: the HeadModel protocol, orbit cameras, views and compositions agree with
the public API (same pixels) and with each other."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gphm
from gphm.models.guidance import GuidanceModel
from gphm.rendering import (
    HeadModel,
    Orbit,
    compose,
    lerp_codes,
    orbit_rig,
    orbit_view,
    orbit_views,
    render_codes,
    render_views,
)
from gphm.rendering.rigs import check_size, lr_intrinsics
from tests.export.conftest import HR, tiny_head


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    from tests.export.conftest import save_run

    return gphm.load(save_run(tiny_head(), tmp_path_factory.mktemp("rendering") / "run"), "cpu")


def _tiny_guidance() -> GuidanceModel:
    """A stage-1 model with the tiny head's architecture (untrained)."""
    return GuidanceModel(tiny_head().guidance_config, 2, 6).eval()


def test_both_stages_and_the_fitting_wrapper_are_head_models(head):
    from gphm.fitting.avatar import PersonalisedGaussianHead

    assert isinstance(_tiny_guidance(), HeadModel)
    assert isinstance(head.model, HeadModel)
    assert isinstance(PersonalisedGaussianHead.wrap(head.model), HeadModel)
    assert not isinstance(nn.Linear(2, 2), HeadModel)
    from gphm.fitting import fit

    assert fit.Model is HeadModel  # the alias fitting and tracking annotate with


def test_orbit_view_is_the_rig_camera_and_yaw_moves_the_camera_to_plus_x():
    vm, K = orbit_view(90.0, 10.0, 64, 2, 3.0)
    rig = orbit_rig(1, 64, 2, 3.0, 10.0, azimuth_range=(90.0, 90.0), endpoint=True)
    torch.testing.assert_close(vm, rig.viewmats[0])
    torch.testing.assert_close(lr_intrinsics(K, 2), rig.K_lr)
    assert K[0, 2] == 32 and rig.lr_size == 32
    # camera centre: -R^T t; yaw +90 is on +x, positive pitch above (+y)
    centre = -vm[:3, :3].T @ vm[:3, 3]
    assert centre[0] > 2.9 and centre[1] > 0.5 and abs(float(centre[2])) < 1e-5
    vms, Ks = orbit_views([0.0, 90.0], 10.0, 64, 2, 3.0)
    torch.testing.assert_close(vms[1], vm)
    torch.testing.assert_close(Ks[1], lr_intrinsics(K, 2))
    assert (-vms[0][:3, :3].T @ vms[0][:3, 3])[2] > 2.9  # yaw 0: in front of the face (+z)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: orbit_view(0, 90, 32, 2), "pitch must lie strictly between -90 and 90"),
        (lambda: orbit_view(float("nan"), 0, 32, 2), "yaw must be finite"),
        (lambda: orbit_view(0, 0, 32, 2, 0.0), "distance must be > 0, got 0.0"),
        (lambda: check_size(33, 2), r"size 33 must be a multiple of .* factor 2 \(e.g. 32 or 34\)"),
        (lambda: Orbit(size=32, distance=-3.0).check(), "distance must be finite and > 0"),
        (lambda: Orbit(size=32, elevation=1e9).check(), "elevation must be finite and strictly"),
        (lambda: Orbit(size=32, sway=float("inf")).check(), "sway must be finite and between"),
        (lambda: Orbit(size=32, frames=1).check(), "frames must be an integer >= 2"),
    ],
)
def test_camera_option_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_render_views_and_render_codes_agree_with_head_render(head):
    z_id = head.identity_code("b")[None]
    z_exp = head.expression_code("smile", "b")[None]
    vm, K = head.camera(30.0, -15.0, HR)
    rows = render_views(head.model, z_id, z_exp, vm[None], lr_intrinsics(K, 2)[None], HR // 2)
    api = head.render("b", "smile", yaw=30.0, pitch=-15.0, size=HR)
    assert torch.equal(rows.rgb[0], api)
    assert rows.alpha.shape == (1, HR, HR, 1) and float(rows.alpha.max()) > 0.5
    rig = orbit_rig(3, HR, 2, elevation=-15.0, azimuth_range=(30.0, 90.0), endpoint=True)
    every = render_codes(head.model, z_id.expand(2, -1), z_exp.expand(2, -1), rig, chunk=4)
    assert every.shape == (2, 3, HR, HR, 3)
    torch.testing.assert_close(every[1, 0], api, atol=1e-5, rtol=0)
    assert not torch.allclose(every[0, 0], every[0, 2], atol=1e-3)  # 30° vs 90°
    with pytest.raises(ValueError, match="point_offsets are per-Gaussian; got a GuidanceModel"):
        render_codes(_tiny_guidance(), z_id, z_exp, rig, point_offsets=torch.zeros(3, 3))


def test_turntable_is_head_render_at_its_yaws(head):
    orbit = Orbit(size=HR, frames=4, elevation=-20.0, distance=4.0)
    t = compose.turntable(head.run, "b", orbit, expression="open")
    assert t.frame.frame == 2 and t.frame.borrowed  # (b, open) was never trained: a's
    assert t.frames.shape == (4, HR, HR, 3)
    want = head.render_batch(["b"] * 4, t.z_exp, [0.0, 90.0, 180.0, 270.0], -20.0, HR,
                             distance=4.0)  # fmt: skip
    assert torch.equal(t.frames, want)
    assert t.strip.shape == (HR + 4, 8 * (HR + 2) + 2, 3)  # a row of 8 cells (4 used)


def test_grid_and_morph_cells_are_the_named_codes(head):
    orbit = Orbit(size=HR, frames=3, sway=20.0)
    g = compose.grid(head.run, orbit, ["b", "a"], ["smile", "neutral"])
    assert g.subjects == [1, 0] and g.labels == ["smile", "neutral"]
    assert [(s, r.frame) for s, r in g.cells] == [(1, 4), (1, 3), (0, 1), (0, 0)]
    assert len(g.video) == 3 + 1  # forth and back: 0 1 2 1
    assert torch.equal(g.video[1], g.video[3])
    cell = head.render("a", "smile", yaw=0.0, pitch=orbit.elevation, size=HR)
    # row 1 (a), column 0 (smile) of the front grid, after 2-pixel padding
    y, x = 2 + (HR + 2), 2
    # The grid renders its cells as one batch, the cell alone is a batch of one: the same
    # codes, pose and camera agree to float rounding (a few pixels 1 ulp apart), not bit
    # for bit; another code would differ by far more.
    torch.testing.assert_close(g.image[y : y + HR, x : x + HR], cell, atol=1e-6, rtol=0)
    m = compose.morph(head.run, "a", "b", Orbit(size=HR, frames=3, sway=10.0))
    ends = head.render_batch(["a", "b"], head.expression_code("neutral", "a"), [-10.0, 10.0],
                             orbit.elevation, HR)  # fmt: skip
    assert torch.equal(m.frames[0], ends[0]) and torch.equal(m.frames[-1], ends[1])
    mid = lerp_codes(head.identity_code("a"), head.identity_code("b"), 3)[1]
    torch.testing.assert_close(mid, (head.identity_code("a") + head.identity_code("b")) / 2)
    with pytest.raises(ValueError, match="no trained frame shows expression 'frown'"):
        compose.grid(head.run, orbit, labels=["frown"])
