"""``up=-y`` exports: the head turned half a turn about x, PLYs and basis alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gphm.cli.export import ExportConfig
from gphm.export import export_run, load_expression_basis
from gphm.export.axes import check_up, turn_means, turn_quats
from gphm.geometry.rotations import quat_normalize, quat_to_matrix
from gphm.io.ply import load_gaussian_ply

TURN = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))


@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_turn_is_half_a_turn_about_x(batch):
    g = torch.Generator().manual_seed(0)
    q = quat_normalize(torch.randn(*batch, 4, generator=g, dtype=torch.float64))
    m = torch.randn(*batch, 3, generator=g, dtype=torch.float64)
    turned = quat_to_matrix(turn_quats(q, "-y"))
    np.testing.assert_allclose(turned, TURN @ quat_to_matrix(q), atol=1e-12)
    np.testing.assert_allclose(turn_means(m, "-y"), m @ TURN.T, atol=0)
    assert torch.linalg.det(TURN) == 1  # a rotation, not a mirror: handedness is kept
    for f, x in ((turn_means, m), (turn_quats, q)):
        same = f(x, "+y")
        assert torch.equal(same, x) and same is not x  # "+y" copies, never aliases
    with pytest.raises(ValueError, match=r"up: expected one of \['\+y', '-y'\], got 'z'"):
        check_up("z")


def test_minus_y_export_turns_plys_and_basis_consistently(run, tmp_path):
    plain = export_run(run, "a", tmp_path / "plain", fidelity=False)
    turned = export_run(run, "a", tmp_path / "turned", fidelity=False, up="-y")
    assert (plain.up, turned.up) == ("+y", "-y")
    for rel in ["neutral.ply", *turned.files["expressions"].values()]:
        p, t = (load_gaussian_ply(tmp_path / d / rel) for d in ("plain", "turned"))
        np.testing.assert_allclose(t.means, p.means.numpy() * [1, -1, -1], atol=1e-6)
        rp, rt = (quat_to_matrix(x.quats.double()) for x in (p, t))
        np.testing.assert_allclose(rt, TURN @ rp, atol=1e-5)
        for name in ("log_scales", "opacity_logits", "rgb"):
            np.testing.assert_array_equal(getattr(t, name), getattr(p, name))
    # the turned basis blends to the turned PLYs: weights[label] reproduces each file
    basis = load_expression_basis(tmp_path / "turned")
    for i, label in enumerate(basis.labels):
        blend = basis.blend(basis.weights[i])
        ply = load_gaussian_ply(tmp_path / "turned" / turned.files["expressions"][label])
        np.testing.assert_allclose(blend.means, ply.means, atol=1e-5)
        same_side = torch.sign((blend.quats * ply.quats).sum(-1, keepdim=True))
        np.testing.assert_allclose(blend.quats * same_side, ply.quats, atol=1e-5)
    meta = json.loads((tmp_path / "turned" / "blendshapes.json").read_text())
    assert meta["conventions"]["up"] == "-y" and "+y DOWN" in meta["conventions"]["space"]
    report = json.loads((tmp_path / "turned" / "export_report.json").read_text())
    assert report["up"] == "-y"
    with pytest.raises(ValueError, match="up: expected one of"):
        export_run(run, "a", tmp_path / "bad", fidelity=False, up="+z")
    assert not (tmp_path / "bad").exists()


def test_export_config_refuses_an_unknown_up():
    with pytest.raises(ValueError, match=r"up: expected one of \['\+y', '-y'\], got 'down'"):
        ExportConfig(checkpoint="r", subject="a", out="o", up="down")


def test_export_cli_up_option(tiny_export_run, tmp_path, capsys):
    from gphm.cli.export import cli

    out = tmp_path / "cli"
    assert cli([f"checkpoint={tiny_export_run}", "subject=a", f"out={out}", "up=-y",
                "fidelity=false"]) == 0  # fmt: skip
    assert json.loads((out / "export_report.json").read_text())["up"] == "-y"
    assert json.loads((out / "blendshapes.json").read_text())["conventions"]["up"] == "-y"
    capsys.readouterr()
    assert cli([f"checkpoint={tiny_export_run}", "subject=a", f"out={tmp_path / 'x'}",
                "up=z"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "up: expected one of ['+y', '-y'], got 'z'" in err
