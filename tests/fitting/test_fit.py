"""Single-image fitting, avatars, evaluation split=fit, and the fit/edit CLIs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gphm import metrics
from gphm.data.loaders import HeadDataset
from gphm.fitting.avatar import Avatar
from gphm.fitting.evaluate import (
    evaluate_fit,
    fit_landmarks,
    gauge_scale,
    render_fit_view,
    target_from_item,
)
from gphm.fitting.fit import FitConfig, fit_image, render_avatar
from gphm.geometry.cameras import invert_viewmat
from gphm.models.runs import load_run
from gphm.training.trainer import GaussianTrainer, GuidanceTrainer
from tests.training.test_train import ROOT, _cfg, _env

FAST_FIT = FitConfig(phase1_steps=60, phase2_steps=20)


@pytest.fixture(scope="module")
def trained(tiny_head_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("fit") / "run"
    extra = ["stage=all", "train.guidance_steps=40", "train.gaussian_steps=40",
             "train.batch_size=2", "train.code_lr=2e-2", "train.gaussian_code_lr=1e-2"]  # fmt: skip
    cfg = _cfg(tiny_head_dataset, run, *extra)
    g = GuidanceTrainer(cfg)
    g.train()
    GaussianTrainer(cfg, guidance=g.acc.unwrap_model(g.model)).train()
    return load_run(run)


def _frame_items(ds, subject, frame):
    return [ds[i] for i in range(len(ds)) if ds.subjects[i] == subject and ds.frames[i] == frame]


def _novel_view_psnr(model, z_id, z_exp, R, T, source, others, offsets=None):
    to_input = invert_viewmat(source.viewmat[None])[0]
    out = []
    for it in others:
        with torch.no_grad():
            r = render_avatar(model, z_id[None], z_exp[None], R[None], T[None], torch.ones(1),
                              (it.viewmat @ to_input)[None], it.K[None], 32, offsets)  # fmt: skip
        out.append(float(metrics.psnr(r.rgb.clamp(0, 1), it.image[None])[0]))
    return float(np.mean(out))


def test_fitting_recovers_a_training_subject(trained, tiny_head_dataset):
    ds = HeadDataset(tiny_head_dataset, split=["train", "heldout_view"], lr_size=16)
    items = _frame_items(ds, subject=1, frame=2)
    source, others = items[1], [items[0], items[2]]
    model = trained.model
    # The trained model with the true codes and the ground-truth pose in the input camera.
    R_gt = source.viewmat[:3, :3] @ source.head_R
    T_gt = source.viewmat[:3, :3] @ source.head_T + source.viewmat[:3, 3]
    codes = model.identity_codes.codes.weight[1].detach(), model.expression_codes.codes.weight[2]
    reference = _novel_view_psnr(model, *codes, R_gt, T_gt, source, others)
    mean_codes = model.identity_codes.mean().detach(), model.expression_codes.mean().detach()
    result = fit_image(model, target_from_item(source), FAST_FIT, str(trained.path))
    av = result.avatar
    fitted = _novel_view_psnr(av.personalised(model), av.z_id, av.z_exp, av.head_R, av.head_T,
                              source, others, av.point_offsets)  # fmt: skip
    assert fitted > reference - 2.0, (fitted, reference)
    assert result.landmark_error_px < 1.5  # 32 px images
    assert torch.allclose(av.head_T, T_gt, atol=0.15) and (av.head_R - R_gt).abs().max() < 0.15
    # The fit improved on the starting point (mean codes at the PnP pose).
    start = _novel_view_psnr(model, *mean_codes, av.head_R, av.head_T, source, others)
    assert fitted > start, (fitted, start)
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was


def test_avatar_round_trip_and_mismatch(trained, tiny_head_dataset, tmp_path):
    ds = HeadDataset(tiny_head_dataset, split="train", lr_size=16)
    result = fit_image(trained.model, target_from_item(ds[0]),
                       FitConfig(phase1_steps=2, phase2_steps=2), str(trained.path))  # fmt: skip
    result.avatar.save(tmp_path / "av")
    loaded = Avatar.load(tmp_path / "av")
    assert torch.equal(loaded.z_id, result.avatar.z_id)
    assert torch.equal(loaded.point_offsets, result.avatar.point_offsets)
    assert loaded.f_col.keys() == result.avatar.f_col.keys()
    assert loaded.checkpoint == str(trained.path.resolve())
    (tmp_path / "av/avatar.json").write_text('{"class": "Model"}')
    with pytest.raises(ValueError, match="not an avatar of format 1"):
        Avatar.load(tmp_path / "av")
    loaded.point_offsets = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="fitted with another checkpoint"):
        loaded.personalised(trained.model)


def test_evaluate_fit_split(trained, tiny_head_dataset, tmp_path):
    report = evaluate_fit(trained, tiny_head_dataset, view="c1", max_subjects=1,
                          config=FitConfig(phase1_steps=20, phase2_steps=5),
                          save_dir=tmp_path)  # fmt: skip
    assert report["split"] == "fit" and report["subjects"] == 1 and report["n"] == 2
    assert report["per_subject"][0]["input_view"] == "c1" and report["lpips"] is None
    assert 5 < report["psnr"] < 60 and (tmp_path / "side_by_side.png").is_file()
    assert 5 < report["psnr_unaligned"] < 60 and 0.5 < report["per_subject"][0]["gauge_scale"] < 2
    with pytest.raises(ValueError, match="no camera 'c9'"):
        evaluate_fit(trained, tiny_head_dataset, view="c9", max_subjects=1)


def test_gauge_scale_recovers_a_scale_about_the_camera():
    fitted = torch.randn(68, 3) + torch.tensor([0.0, 0.0, 4.0])
    truth = 1.07 * fitted
    truth[3] = float("nan")  # rows with a NaN on either side are ignored
    assert gauge_scale(fitted, truth) == pytest.approx(1.07, rel=1e-6)
    with pytest.raises(ValueError, match=r"both be \[L, 3\]"):
        gauge_scale(fitted, truth[:10])
    with pytest.raises(ValueError, match="non-zero landmark"):
        gauge_scale(torch.zeros(5, 3), torch.ones(5, 3))


def test_scaling_a_fit_about_its_camera_changes_novel_views_only(trained, tiny_head_dataset):
    """The one thing a single image cannot tell (split=fit aligns it with the truth)."""
    ds = HeadDataset(tiny_head_dataset, split="train", lr_size=16)
    items = _frame_items(ds, subject=0, frame=0)
    source = items[0]
    result = fit_image(trained.model, target_from_item(source),
                       FitConfig(phase1_steps=2, phase2_steps=2))  # fmt: skip
    av = result.avatar
    net = av.personalised(trained.model)
    eye = torch.eye(4)
    same = render_fit_view(net, av, eye, source.K, gauge=1.1)
    assert torch.allclose(same, render_fit_view(net, av, eye, source.K), atol=2e-3)
    side = items[1].viewmat @ invert_viewmat(source.viewmat[None])[0]
    near, far = (
        render_fit_view(net, av, side, items[1].K),
        render_fit_view(net, av, side, items[1].K, 1.1),
    )
    assert (near - far).abs().max() > 0.1
    # fit_landmarks are camera-frame points that project onto the fitted 2D landmarks.
    uv = fit_landmarks(trained.model, av) @ source.K.T
    assert torch.allclose(uv[:, :2] / uv[:, 2:], result.landmarks, atol=1e-3)


def _run(args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=600)  # fmt: skip


def test_fit_image_cli_with_pts_and_edit_cli(trained, tiny_head_dataset, tmp_path):
    ds = HeadDataset(tiny_head_dataset, split="train", lr_size=16)
    item = ds[3]
    target = target_from_item(item)
    photo = tmp_path / "photo.png"
    Image.fromarray((item.image.numpy() * 255).round().astype(np.uint8)).save(photo)
    pts = tmp_path / "photo.pts"
    rows = "\n".join(f"{u:.3f} {v:.3f}" for u, v in target.landmarks.tolist())
    pts.write_text(f"version: 1\nn_points: 68\n{{\n{rows}\n}}\n")
    out = tmp_path / "fit"
    fit = _run([ROOT / "scripts/fit_image.py", f"checkpoint={trained.path}", f"image={photo}",
                f"out={out}", f"landmarks={pts}", "fit.phase1_steps=5", "fit.phase2_steps=2",
                "frames=3", "views=2", "size=32"])  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    for k in ("landmark_error_px", "psnr_input", "seconds"):
        assert isinstance(rep[k], float), k
    assert np.array(rep["detected_landmarks"]).shape == (68, 2)
    assert rep["landmark_source"] == "file"
    for name in ("overlay.png", "novel_views.png", "orbit.mp4", "avatar/avatar.json"):
        assert (out / name).is_file(), name

    edit = _run([ROOT / "scripts/edit_expression.py", f"checkpoint={trained.path}",
                 f"source={out / 'avatar'}", "target=a:open", f"out={tmp_path / 'edit'}",
                 "steps_between=2", "size=32"])  # fmt: skip
    assert edit.returncode == 0, edit.stderr[-3000:]
    rep = json.loads((tmp_path / "edit/edit_report.json").read_text())
    assert rep["source"]["kind"] == "avatar" and rep["target"]["label"] == "a:open"
    assert rep["drive"] == ["neutral", "open", "target"]
    for name in ("transfer.png", "transfer_views.png", "drive.mp4"):
        assert (tmp_path / "edit" / name).is_file(), name
    bad = _run([ROOT / "scripts/edit_expression.py", f"checkpoint={trained.path}",
                "source=zz", "target=a", f"out={tmp_path / 'e2'}"])  # fmt: skip
    assert bad.returncode == 2 and "neither an avatar directory, an image file" in bad.stderr


def test_fit_image_refuses_a_non_face(trained, tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    res = _run([ROOT / "scripts/fit_image.py", f"checkpoint={trained.path}",
                f"image={tmp_path / 'noise.png'}", f"out={tmp_path / 'o'}"])  # fmt: skip
    assert res.returncode == 2 and "no face found" in res.stderr and "noise.png" in res.stderr
    assert not (tmp_path / "o/avatar").exists()


def test_code_prior_is_one_for_typical_codes_and_grows_outside():
    from gphm.fitting.fit import code_prior
    from gphm.models.embeddings import Codebook, CodebookConfig

    book = Codebook(4000, CodebookConfig(dim=8, init_std=0.3))
    mean, std = book.mean().detach(), book.std().detach()
    assert torch.allclose(std, torch.full((8,), 0.3), atol=0.02)
    typical = float(code_prior(book.codes.weight.detach(), mean, std))
    assert typical == pytest.approx(1.0, abs=1e-4)  # the codebook's own codes
    far = float(code_prior(mean[None] + 3 * std, mean, std))
    assert far == pytest.approx(9.0, rel=1e-5)
    assert float(code_prior(mean[None], mean, std)) == 0.0


def test_render_codes_shares_the_mesh_of_a_guidance_model_and_offsets_need_gaussians(trained):
    from gphm.fitting.views import orbit_rig, render_codes
    from gphm.training.trainer import load_guidance

    guidance = load_guidance(trained.path.parent)  # path: RUN/model
    model = trained.model
    z_id, z_exp = model.identity_codes.codes.weight[:2], model.expression_codes.codes.weight[:2]
    rig = orbit_rig(3, 32, model.upsampler.config.factor)
    with torch.no_grad():
        mesh_views = render_codes(guidance, z_id, z_exp, rig, chunk=4)
        splat_views = render_codes(model, z_id, z_exp, rig, chunk=4)
    assert mesh_views.shape == splat_views.shape == (2, 3, 32, 32, 3)
    # Chunks of 4 + 2 rows render what one chunk of 6 does (one mesh serves every chunk).
    with torch.no_grad():
        whole = render_codes(guidance, z_id, z_exp, rig, chunk=6)
    torch.testing.assert_close(mesh_views, whole, atol=1e-5, rtol=0)
    offsets = torch.zeros(model.num_points, 3)
    with pytest.raises(ValueError, match="per-Gaussian; got a GuidanceModel"):
        render_codes(guidance, z_id, z_exp, rig, point_offsets=offsets)
