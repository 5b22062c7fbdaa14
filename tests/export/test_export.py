"""export_animatable / export_run on a tiny Gaussian head, and the export CLIs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gphm.export import (
    ExportExistsError,
    FidelityOptions,
    export_animatable,
    export_run,
    load_expression_basis,
    resolve_identity,
)
from gphm.fitting.avatar import Avatar
from gphm.io.images import load_image
from gphm.io.ply import load_gaussian_ply
from gphm.models.guidance import GuidanceModel
from gphm.models.runs import TrainedRun, load_run

from .conftest import HR, LABELS, save_run, tiny_head

ROOT = Path(__file__).resolve().parents[2]
FAST = FidelityOptions(size=HR, views=2, components=(0, 1))


def _attrs(model, z_id, z_exp, offsets=None):
    with torch.no_grad():
        a = model.attributes(z_id[None], z_exp[None], offsets)
    return a.means[0], a.log_scales[0], a.quats[0], a.opacity_logits[0], a.colors[0, :, :3]


def _same_side(q, ref):  # q and -q are one rotation; the export picks the neutral's side
    return torch.where((q * ref).sum(-1, keepdim=True) < 0, -q, q)


def test_export_writes_plys_basis_and_reports(run, tmp_path):
    out = tmp_path / "exp"
    rep = export_run(run, "a", out, fidelity=FAST)
    model = run.model
    assert rep.labels == LABELS and rep.neutral == "neutral" and rep.sh_degree == 3
    assert rep.rank == 2 and rep.num_components == 2 and rep.requested_components == 8
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["blendshapes.json", "blendshapes.npz", "export_report.json",
                     "expressions/neutral.ply", "expressions/open.ply", "expressions/smile.ply",
                     "fidelity.png", "neutral.ply"]  # fmt: skip
    assert rep.files["fidelity_preview"] == "fidelity.png"
    # 2 scored labels x (model | label splat | blend), 16 px each with 2 px padding.
    assert load_image(out / "fidelity.png").shape == (2 * 18 + 2, 3 * 18 + 2, 3)
    # neutral.ply is the model's Gaussians for (a, a's neutral frame 0), canonical space.
    z_id = model.identity_codes.codes.weight[0]
    weight = model.expression_codes.codes.weight
    means, log_scales, quats, opacity, rgb = _attrs(model, z_id, weight[0])
    ply = load_gaussian_ply(out / "neutral.ply")
    assert len(ply) == model.num_points and ply.sh_degree == 3
    assert torch.equal(ply.sh_rest, torch.zeros(model.num_points, 45))
    torch.testing.assert_close(ply.means, means, atol=1e-6, rtol=0)
    torch.testing.assert_close(ply.log_scales, log_scales, atol=1e-6, rtol=0)
    torch.testing.assert_close(ply.opacity_logits, opacity, atol=1e-6, rtol=0)
    torch.testing.assert_close(ply.rgb, rgb, atol=1e-6, rtol=0)
    q0 = quats / quats.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(ply.quats, q0, atol=1e-6, rtol=0)
    # smile is a's own frame 1; the exported PLY holds it.
    m1, *_, q1, _, rgb1 = _attrs(model, z_id, weight[1])
    smile = load_gaussian_ply(out / "expressions/smile.ply")
    torch.testing.assert_close(smile.means, m1, atol=1e-6, rtol=0)
    torch.testing.assert_close(smile.quats, _same_side(q1 / q1.norm(dim=-1, keepdim=True), q0),
                               atol=1e-6, rtol=0)  # fmt: skip
    # The basis with all components reproduces every label's PLY to float tolerance.
    basis = load_expression_basis(out)
    assert basis.labels == tuple(LABELS) and basis.components.shape == (2, model.num_points, 14)
    for label in LABELS:
        target = load_gaussian_ply(out / f"expressions/{label}.ply")
        blend = basis.expression(label)
        for name, got in (("means", blend.means), ("log_scales", blend.log_scales),
                          ("quats", blend.quats), ("opacity_logits", blend.opacity_logits),
                          ("rgb", blend.rgb)):  # fmt: skip
            torch.testing.assert_close(got, getattr(target, name), atol=2e-5, rtol=0,
                                       msg=f"{label} {name}")  # fmt: skip
    # The JSON describes the arrays as stored.
    meta = json.loads((out / "blendshapes.json").read_text())
    with np.load(out / "blendshapes.npz") as z:
        for key, info in meta["arrays"].items():
            assert list(z[key].shape) == info["shape"], key
    assert meta["arrays"]["basis_means"]["shape"] == [2, model.num_points, 3]
    assert "canonical head space" in meta["conventions"]["space"]
    assert "Ψ" in meta["conventions"]["colour"] and "first 3" in meta["conventions"]["colour"]
    assert meta["weights"]["neutral"] == [0.0, 0.0]
    assert meta["explained_fraction"][-1] == pytest.approx(1.0)
    report = json.loads((out / "export_report.json").read_text())
    assert report["metadata"]["identity"] == {"name": "a", "kind": "subject", "subject": "a"}
    assert report["metadata"]["expressions"]["smile"] == {"frame": 1, "subject": "a"}


def test_a_held_out_label_is_borrowed_and_said(run, tmp_path):
    rep = export_run(run, "b", tmp_path / "b", fidelity=False, sh_degree=0)
    # (b, open) = frame 5 was never trained: a's frame 2 lends its code.
    assert rep.metadata["expressions"]["open"] == {
        "frame": 2, "subject": "a", "expression_from": "expression from a@2"}  # fmt: skip
    assert rep.metadata["expressions"]["smile"] == {"frame": 4, "subject": "b"}
    ply = load_gaussian_ply(tmp_path / "b/expressions/open.ply")
    assert ply.sh_rest is None and ply.sh_degree == 0  # sh_degree=0: the small file
    weight = run.model.expression_codes.codes.weight
    means = _attrs(run.model, run.model.identity_codes.codes.weight[1], weight[2])[0]
    torch.testing.assert_close(ply.means, means, atol=1e-6, rtol=0)
    assert rep.fidelity is None


def test_fidelity_curve(run, tmp_path):
    rep = export_run(
        run,
        "a",
        tmp_path / "f",
        fidelity=FidelityOptions(size=HR, views=2, components=(0, 1, 2, 4)),
    )
    f = rep.fidelity
    assert f.labels == ["smile", "open"] and f.azimuths == [-45.0, 45.0] and f.size == HR
    assert [p.components for p in f.curve] == [0, 1, 2]  # K > rank dropped, rank kept
    exact = f.curve[-1]
    assert exact.psnr_vs_label_splat_min > 70  # the full blend is the label PLY
    assert abs(exact.max_drop_db) < 0.01
    assert f.curve[0].psnr_vs_label_splat_mean < exact.psnr_vs_label_splat_mean
    assert all(5 < v < 60 for v in f.label_splat_vs_model.values())  # Ψ is not the splat
    assert f.target["components"] == 2 and f.target["met"]
    assert set(f.per_label) == {"smile", "open"}
    assert len(f.per_label["smile"]["blend_vs_model"]) == 3
    meta = json.loads((tmp_path / "f/blendshapes.json").read_text())
    assert meta["fidelity"]["curve"][0]["components"] == 0


def test_num_components_caps_and_one_expression_dimension(tmp_path):
    """Two labels (one non-neutral): rank 1, so K=1 is exact whatever is asked."""
    head = tiny_head(num_points=60, seed=3, num_frames=2)
    frames = [{"subject": 0, "expression": "neutral"}, {"subject": 0, "expression": "smile"}]
    run_dir = save_run(head, tmp_path / "run2", frames=frames, train_frames=[0, 1],
                       labels=["neutral", "smile"])  # fmt: skip
    rep = export_run(load_run(run_dir), "a", tmp_path / "x", num_components=8, fidelity=False)
    assert rep.rank == 1 and rep.num_components == 1
    basis = load_expression_basis(tmp_path / "x")
    target = load_gaussian_ply(tmp_path / "x/expressions/smile.ply")
    torch.testing.assert_close(basis.expression("smile").means, target.means, atol=2e-5, rtol=0)
    rep = export_run(load_run(run_dir), "a", tmp_path / "y", num_components=0, fidelity=False)
    assert rep.num_components == 0 and rep.rank == 1
    with np.load(tmp_path / "y/blendshapes.npz") as z:
        assert z["basis_quats"].shape == (0, 60, 4) and z["weights"].shape == (2, 0)


def test_no_neutral_label_uses_the_first_and_says_so(tmp_path):
    head = tiny_head(num_points=40, seed=4, num_frames=2)
    frames = [{"subject": 0, "expression": "smile"}, {"subject": 0, "expression": "open"}]
    run = load_run(save_run(head, tmp_path / "r", frames=frames, train_frames=[0, 1],
                            labels=["smile", "open"]))  # fmt: skip
    rep = export_run(run, 0, tmp_path / "x", fidelity=False)
    assert rep.neutral == "smile" and "no trained 'neutral' label" in rep.metadata["neutral_note"]
    rep = export_run(run, 0, tmp_path / "y", fidelity=False, neutral="open")
    assert rep.neutral == "open" and "neutral_note" not in rep.metadata
    with pytest.raises(ValueError, match=r"neutral=frown: not a trained expression label"):
        export_run(run, 0, tmp_path / "z", fidelity=False, neutral="frown")


def test_overwrite_refusal_and_replacement(run, tmp_path):
    out = tmp_path / "exp"
    export_run(run, "a", out, fidelity=False)
    before = (out / "neutral.ply").read_bytes()
    with pytest.raises(ExportExistsError, match=r"out=.*exp is not empty; pass overwrite=true"):
        export_run(run, "b", out, fidelity=False)
    assert (out / "neutral.ply").read_bytes() == before
    (out / "expressions/stale.ply").write_bytes(b"old")
    export_run(run, "b", out, fidelity=False, overwrite=True)  # an earlier export: replaced
    assert (out / "neutral.ply").read_bytes() != before
    assert not (out / "expressions/stale.ply").exists()  # the whole directory is new
    # A directory that is not an export is never replaced, even with overwrite.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(ExportExistsError, match="holds no earlier export"):
        export_run(run, "a", mine, fidelity=False, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportExistsError, match="is a file"):
        export_run(run, "a", tmp_path / "file", fidelity=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    export_run(run, "a", empty, fidelity=False)  # an empty directory is filled
    assert (empty / "neutral.ply").is_file()


def test_fitted_avatar_identity(run, tiny_export_run, tmp_path):
    model = run.model
    g = torch.Generator().manual_seed(7)
    f_col = {k: v + 0.3 * torch.randn(v.shape, generator=g)
             for k, v in model.f_col.state_dict().items()}  # fmt: skip
    avatar = Avatar(
        checkpoint=str(tiny_export_run), model_class="GaussianHead",
        z_id=torch.randn(model.identity_codes.config.dim, generator=g),
        z_exp=torch.randn(model.expression_codes.config.dim, generator=g),
        head_R=torch.eye(3), head_T=torch.tensor([0.0, 0.0, 3.0]), head_scale=1.0,
        K=torch.eye(3), image_size=HR,
        point_offsets=0.01 * torch.randn(model.num_points, 3, generator=g), f_col=f_col,
    )  # fmt: skip
    avatar.save(tmp_path / "av")
    rep = export_run(run, str(tmp_path / "av"), tmp_path / "out", fidelity=FAST)
    assert rep.metadata["identity"]["kind"] == "avatar"
    assert rep.metadata["identity"]["fine_tuned_colour"] is True
    assert rep.metadata["expressions"]["open"] == {"frame": 2, "subject": "a"}  # lowest subject
    personal = avatar.personalised(model)
    weight = model.expression_codes.codes.weight
    means, *_, rgb = _attrs(personal, avatar.z_id, weight[0], avatar.point_offsets)
    ply = load_gaussian_ply(tmp_path / "out/neutral.ply")
    torch.testing.assert_close(ply.means, means, atol=1e-6, rtol=0)  # offsets applied
    torch.testing.assert_close(ply.rgb, rgb, atol=1e-6, rtol=0)  # fine-tuned colours
    assert (ply.rgb - _attrs(model, avatar.z_id, weight[0])[-1]).abs().max() > 1e-3
    assert rep.fidelity.target["met"]
    # A loaded Avatar works as well as its directory.
    assert resolve_identity(run, avatar).kind == "avatar"


def test_bad_inputs_name_the_problem(run, tmp_path):
    msg = r"subject=zed: neither a fitted avatar directory nor a training subject \(unknown"
    with pytest.raises(ValueError, match=msg):
        export_run(run, "zed", tmp_path / "x")
    (tmp_path / "notav").mkdir()
    with pytest.raises(FileNotFoundError, match="not a fitted avatar"):
        export_run(run, str(tmp_path / "notav"), tmp_path / "x")
    guidance = TrainedRun(model=GuidanceModel.__new__(GuidanceModel), extra=run.extra,
                          path=Path("RUN/model"))  # fmt: skip
    with pytest.raises(ValueError, match="holds a GuidanceModel; an animatable export needs a "
                                         "Gaussian head"):  # fmt: skip
        export_run(guidance, "a", tmp_path / "x")
    model = run.model
    z = model.identity_codes.codes.weight[0]
    codes = {"neutral": model.expression_codes.codes.weight[0]}
    with pytest.raises(ValueError, match=r"neutral expression 'calm' is not one of \['neutral'\]"):
        export_animatable(model, z, tmp_path / "x", codes, neutral="calm")
    with pytest.raises(ValueError, match=r"identity_code: expected \[\d+\], got \[3\]"):
        export_animatable(model, torch.zeros(3), tmp_path / "x", codes)
    with pytest.raises(ValueError, match="sh_degree must be an integer in 0..3, got 4"):
        export_animatable(model, z, tmp_path / "x", codes, sh_degree=4)
    with pytest.raises(ValueError, match="map to the same file expressions/a_b.ply"):
        export_animatable(model, z, tmp_path / "x", codes | {"a b": codes["neutral"],
                                                            "a/b": codes["neutral"]})  # fmt: skip
    assert not (tmp_path / "x").exists()
    rep = export_animatable(model, z, tmp_path / "odd", codes | {"mouth open": codes["neutral"]})
    assert rep.files["expressions"]["mouth open"] == "expressions/mouth_open.ply"


def _cli(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_export_cli_and_render_mode_export(tiny_export_run, tmp_path):
    out = tmp_path / "cli"
    r = _cli(ROOT / "scripts/export.py", f"checkpoint={tiny_export_run}", "subject=a",
             f"out={out}", "fidelity_views=1", "num_components=1")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("export: 3 expressions of a (150 Gaussians, SH degree 3), "
                           "1 components (rank 2); K=1 blend within")  # fmt: skip
    report = json.loads((out / "export_report.json").read_text())
    assert report["num_components"] == 1 and report["fidelity"]["size"] == HR
    again = _cli(ROOT / "scripts/export.py", f"checkpoint={tiny_export_run}", "subject=a",
                 f"out={out}")  # fmt: skip
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "is not empty; pass overwrite=true" in again.stderr
    r = _cli(ROOT / "scripts/render.py", f"checkpoint={tiny_export_run}", "mode=export",
             "subject=b", f"out={tmp_path / 'render'}", f"size={HR}", "sh_degree=0")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "render/render_report.json").read_text())
    assert rep["mode"] == "export" and "neutral.ply" in rep["outputs"]
    assert load_gaussian_ply(tmp_path / "render/neutral.ply").sh_degree == 0


def test_load_expression_basis_refuses_other_files(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="not an animatable export"):
        load_expression_basis(tmp_path)
    out = tmp_path / "exp"
    export_run(run, "a", out, fidelity=False)
    meta = json.loads((out / "blendshapes.json").read_text())
    (out / "blendshapes.json").write_text(json.dumps(meta | {"format_version": 9}))
    with pytest.raises(ValueError, match="format_version 9, expected 1"):
        load_expression_basis(out)
    (out / "blendshapes.json").write_text("{")
    with pytest.raises(ValueError, match=r"blendshapes.json: invalid JSON"):
        load_expression_basis(out)
    (out / "blendshapes.json").write_text(json.dumps(meta))
    with np.load(out / "blendshapes.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "basis_quats"}
    np.savez(out / "blendshapes.npz", **arrays)
    with pytest.raises(ValueError, match=r"missing arrays \['basis_quats'\]"):
        load_expression_basis(out)
