"""gphm-render checks every option before it writes anything: a refusal is exit status 2
with one line naming the option, and ``out`` is left as it was (finding #10: ``size=63``,
``distance=-3``, ``elevation=1e9`` used to be refused after ``gaussians.ply`` was written,
and ``distance=0`` silently meant 3)."""

from __future__ import annotations

import json

import pytest
import torch

import gphm
from gphm.cli import run_cli
from gphm.cli.render import RenderConfig, main
from tests.export.conftest import HR, save_run, tiny_head


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return save_run(tiny_head(), tmp_path_factory.mktemp("render_cmd") / "run")


def _render(run_dir, out, *options):
    argv = [f"checkpoint={run_dir}", f"out={out}", "frames=2", f"size={HR}", "device=cpu",
            *options]  # fmt: skip
    return run_cli(RenderConfig, main, argv=argv)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["size=63"], "size 63 must be a multiple of the model's upsampling factor 2 "
                      "(e.g. 62 or 64)"),
        (["size=17", "mode=grid"], "size 17 must be a multiple of the model's upsampling"),
        (["size=17", "mode=export"], "size 17 must be a multiple"),
        (["distance=-3"], "distance must be finite and > 0 and <= 1000"),
        (["distance=0"], "distance must be finite and > 0 and <= 1000 (canonical units), "
                         "got 0.0"),
        (["distance=nan"], "option distance: must be a finite number"),  # config parsing
        (["distance=1e30"], "distance must be finite and > 0 and <= 1000"),
        (["elevation=1e9"], "elevation must be finite and strictly between -90 and 90"),
        (["elevation=90"], "elevation must be finite and strictly between -90 and 90"),
        (["elevation=-inf"], "option elevation: must be a finite number"),
        (["sway=-1", "mode=grid"], "sway must be finite and between 0 and 180 degrees"),
        (["sway=1e9", "mode=interpolate"], "sway must be finite and between 0 and 180"),
        (["frame=-1"], "frame must be a trained global frame index >= 0, got -1"),
        (["sh_degree=4", "mode=export"], "sh_degree must be in 0..3, got 4"),
        (["num_components=-1", "mode=export"], "num_components must be >= 0, got -1"),
        (["subject=zed"], "zed"),
        (["expression=frown"], "no trained frame shows expression 'frown'"),
        (["mode=grid", "expressions=[smile,frown]"], "no trained frame shows expression"),
        (["mode=interpolate", "subject_b=7"], "7"),
    ],
)
def test_refusals_write_nothing(run_dir, tmp_path, capsys, options, message):
    out = tmp_path / "out"
    assert _render(run_dir, out, *options) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_refusal_into_an_existing_out_leaves_it_as_it_was(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    assert _render(run_dir, out, "overwrite=true", "elevation=1e9") == 2
    assert _render(run_dir, out, "overwrite=true", "size=63") == 2
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert "size 63" in capsys.readouterr().err


def test_a_valid_render_writes_its_outputs_and_distance_is_used(run_dir, tmp_path):
    assert _render(run_dir, tmp_path / "near", "distance=2.5", "elevation=-30") == 0
    report = json.loads((tmp_path / "near/render_report.json").read_text())
    assert report["outputs"] == ["gaussians.ply", "turntable.mp4", "turntable_strip.png"]
    assert all((tmp_path / "near" / name).is_file() for name in report["outputs"])


def test_api_distance_zero_is_an_error_not_the_default(run_dir):
    head = gphm.load(run_dir, "cpu")
    with pytest.raises(ValueError, match="distance must be > 0, got 0"):
        head.render("a", distance=0)
    with pytest.raises(ValueError, match="distance must be > 0, got -3"):
        head.camera(distance=-3)
    default = head.render("a", yaw=20.0)
    assert torch.equal(default, head.render("a", yaw=20.0, distance=3.0))
    # the framing follows the distance (focal length ∝ distance), the perspective does not
    assert not torch.equal(default, head.render("a", yaw=20.0, distance=6.0))
