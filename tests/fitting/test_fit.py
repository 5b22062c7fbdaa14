"""Single-image fitting, avatars, evaluation split=fit, and the fit/edit CLIs."""

import dataclasses
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gphm.data.loaders import HeadDataset
from gphm.evaluation import metrics
from gphm.evaluation.fit import (
    SeenDatasetError,
    evaluate_fit,
    fit_landmarks,
    gauge_scale,
    render_fit_view,
    rig_targets,
    target_from_item,
)
from gphm.fitting.avatar import Avatar
from gphm.fitting.fit import FitConfig, fit_image, fit_images, render_avatar
from gphm.geometry.cameras import invert_viewmat, project_points, rig_center
from gphm.geometry.pose import scale_from_centers
from tests.training.test_train import ROOT, _env

FAST_FIT = FitConfig(phase1_steps=60, phase2_steps=20)


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
    # Two phase-2 steps may not improve the input yet: keep them (the round trip is tested).
    cfg = FitConfig(phase1_steps=2, phase2_steps=2, phase2_max_drop_db=100.0, offset_min_images=1,
                    trusted_prior_views=0.0,  # position offsets from one image too
                    upsampler_layers="all")  # every layer of Ψ fine-tuned and stored  # fmt: skip
    result = fit_image(trained.model, target_from_item(ds[0]), cfg, str(trained.path))
    result.avatar.save(tmp_path / "av")
    loaded = Avatar.load(tmp_path / "av")
    assert set(loaded.upsampler) == set(trained.model.upsampler.state_dict())
    psi = loaded.personalised(trained.model).upsampler.state_dict()
    assert all(torch.equal(psi[k], v) for k, v in loaded.upsampler.items())
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


def test_prior_trust_ramps_with_phase1_psnr_and_gates_offsets_and_prior_views():
    from gphm.fitting.fit import prior_trust, trusted_config

    cfg = FitConfig(trust_low_db=14.0, trust_high_db=22.0, trusted_prior_views=2.0,
                    prior_views=0.5, offset_lr=1e-3)  # fmt: skip
    assert [prior_trust(cfg, db, 1) for db in (8.0, 14.0, 18.0, 22.0, 30.0)] == [0, 0, 0.5, 1, 1]
    assert prior_trust(cfg, 30.0, 2) == 0  # several images: never gated
    assert prior_trust(cfg, float("nan"), 1) == 0
    assert prior_trust(dataclasses.replace(cfg, trusted_prior_views=0.0), 30.0, 1) == 0
    half = trusted_config(cfg, 0.5)
    assert half.prior_views == pytest.approx(1.5) and half.offset_lr == pytest.approx(5e-4)
    assert trusted_config(cfg, 1.0).offset_lr == 0 and trusted_config(cfg, 0.0) is cfg
    with pytest.raises(ValueError, match="trust_low_db"):
        FitConfig(trust_low_db=22.0, trust_high_db=22.0)


def test_a_trusted_prior_fits_one_image_without_position_offsets(trained, tiny_head_dataset):
    ds = HeadDataset(tiny_head_dataset, split="train", lr_size=16)
    target = target_from_item(ds[0])
    cfg = FitConfig(phase1_steps=30, phase2_steps=2, phase2_max_drop_db=100.0,
                    trust_low_db=-2.0, trust_high_db=-1.0)  # any phase 1 is trusted  # fmt: skip
    trusted = fit_image(trained.model, target, cfg, str(trained.path))
    assert trusted.prior_trust == 1 and trusted.avatar.point_offsets is None
    assert "prior_views" in trusted.phase_losses["phase2"]
    free = fit_image(trained.model, target, dataclasses.replace(cfg, trusted_prior_views=0.0),
                     str(trained.path))  # fmt: skip
    assert free.prior_trust == 0 and free.avatar.point_offsets is not None


def test_evaluate_fit_split(trained, tiny_head_dataset, tmp_path):
    # The fixture's model was trained on this dataset: refused unless allowed.
    with pytest.raises(SeenDatasetError, match=r"trained on \(fingerprint .*fit.allow_seen=true"):
        evaluate_fit(trained, tiny_head_dataset, view="c1", max_subjects=1)
    report = evaluate_fit(trained, tiny_head_dataset, view="c1", max_subjects=1,
                          config=FitConfig(phase1_steps=20, phase2_steps=5),
                          save_dir=tmp_path, allow_seen=True)  # fmt: skip
    assert report["split"] == "fit" and report["subjects"] == 1 and report["n"] == 2
    assert report["n_empty"] == 0 and "trained on" in report["seen"]
    # One view of a rig: the cameras' aim point settles the head's size (rig_targets).
    assert report["inputs"] == {"landmarks": "ground truth projected", "mask": "ground truth",
                                "K": "ground truth", "head_center": "rig centre"}  # fmt: skip
    sub = report["per_subject"][0]
    assert sub["input_view"] == "c1" and 0.5 < sub["gauge_scale"] < 2
    assert sub["head_scale"] != 1.0 and sub["true_head_scale"] > 0
    for k in ("psnr", "ssim", "psnr_masked", "ssim_masked"):  # both ways, explicit names
        assert report[k] is not None and report[k + "_scale_aligned"] is not None, k
    assert 5 < report["psnr"] < 60 and 5 < report["psnr_scale_aligned"] < 60
    assert report["psnr"] == sub["psnr"] and "psnr_unaligned" not in report
    # LPIPS is null with the reason (no backbone weights offline), never 0.
    assert report["lpips"] is None and report["lpips_scale_aligned"] is None
    assert "lpips_unavailable" in report or report["lpips"] is not None
    # Fitting a training subject from its own view: the pose is close to the truth.
    assert 0 <= report["rotation_error_deg"] < 15 and 0 <= report["translation_error"] < 0.5
    assert sub["rotation_error_deg"] == report["rotation_error_deg"]
    assert (tmp_path / "side_by_side.png").is_file()
    with pytest.raises(ValueError, match="no camera 'c9'"):
        evaluate_fit(trained, tiny_head_dataset, view="c9", max_subjects=1, allow_seen=True)
    with pytest.raises(ValueError, match="fit.inputs must be one of gt|photo"):
        evaluate_fit(trained, tiny_head_dataset, inputs="selfie", allow_seen=True)


class _TruthDetector:
    """Stands in for mediapipe: returns the dataset's projected landmarks of the view."""

    name = "truth"

    def __init__(self, uv):
        self.uv = np.asarray(uv, dtype=np.float64)

    def detect(self, image, source=None):
        from gphm.data.preprocess.detectors import Detection

        H, W = image.shape[:2]
        return Detection(self.uv, np.array([0.0, 0.0, W, H]), None, (H, W))


class _TruthSegmenter:
    name = "truth"

    def __init__(self, mask):
        self.mask = np.asarray(mask, dtype=np.float32)

    def segment(self, image):
        return self.mask


def test_evaluate_fit_photo_inputs_score_the_user_pipeline_in_the_true_cameras(
    trained, tiny_head_dataset
):
    """fit.inputs=photo goes through prepare_image (crop, estimated K) and its fit is
    placed back in the input camera's true frame: with perfect landmarks and mask the
    pose is as good as the ground-truth path's, only the estimated K differs."""
    ds = HeadDataset(tiny_head_dataset, split=["train", "heldout_view"], lr_size=16)
    item = _frame_items(ds, subject=0, frame=0)[1]  # camera c1
    uv = target_from_item(item).landmarks
    cfg = FitConfig(phase1_steps=20, phase2_steps=0)
    kwargs = dict(view="c1", max_subjects=1, config=cfg, allow_seen=True)
    photo = evaluate_fit(trained, tiny_head_dataset, inputs="photo", **kwargs,
                         detector=_TruthDetector(uv), lpips=_l1_metric,
                         segmenter=_TruthSegmenter(item.mask[..., 0].numpy()))  # fmt: skip
    gt = evaluate_fit(trained, tiny_head_dataset, inputs="gt", **kwargs)
    assert photo["inputs"] == {"landmarks": "detector", "mask": "segmentation", "K": "estimated"}
    sub = photo["per_subject"][0]
    assert sub["detector_error_px"] < 1e-3  # the stand-in detector is exact
    assert sub["focal_ratio"] != pytest.approx(1.0, abs=1e-3)  # the framing's K is a guess
    assert photo["rotation_error_deg"] < gt["rotation_error_deg"] + 10
    assert 5 < photo["psnr"] < 60 and 5 < photo["psnr_scale_aligned"] < 60
    # A metric given is used both ways (stands in for LPIPS, whose weights are offline).
    assert 0 < photo["lpips"] < 1 and 0 < photo["lpips_scale_aligned"] < 1
    assert "lpips_unavailable" not in photo
    # A photo the detector finds no face in counts as a failed fit, not a crash.
    blind = evaluate_fit(trained, tiny_head_dataset, inputs="photo", **kwargs,
                         detector=_BlindDetector())  # fmt: skip
    assert blind["failed_fits"] == 1 and blind["n"] == 0 and blind["psnr"] is None
    assert "no face found" in blind["per_subject"][0]["failed"]
    assert blind["inputs"]["landmarks"] == "detector" and blind["rotation_error_deg"] is None
    assert "1 fits failed" in _script("evaluate")._summary(blind)
    # A fit the collapse guard refuses is a failed fit too, not the end of the evaluation.
    from gphm.inversion.guard import FitCollapseError

    def collapse(*args, **kwargs):
        raise FitCollapseError("the render covers 3% of the input mask after phase 1")

    import gphm.evaluation.fit as evaluation_fit

    real = evaluation_fit.fit_images
    evaluation_fit.fit_images = collapse
    try:
        collapsed = evaluate_fit(trained, tiny_head_dataset, inputs="gt", **kwargs)
    finally:
        evaluation_fit.fit_images = real
    assert collapsed["failed_fits"] == 1 and collapsed["n"] == 0
    assert "covers 3%" in collapsed["per_subject"][0]["failed"]


class _BlindDetector:
    name = "blind"

    def detect(self, image, source=None):
        from gphm.data.preprocess.detectors import NoFaceError

        raise NoFaceError(source, "blind")


def _l1_metric(pred, target):  # [B, H, W, 3] x2 -> [B]
    return (pred - target).abs().mean((1, 2, 3))


def test_evaluate_cli_split_fit_refuses_seen_data_and_reports_both_ways(
    trained, tiny_head_dataset, tmp_path
):
    from gphm.cli import UserError
    from gphm.training.config import DataConfig

    evaluate = _script("evaluate")
    fit = evaluate.EvalFitConfig(max_subjects=1, config=FitConfig(phase1_steps=5, phase2_steps=0))
    cfg = evaluate.EvaluateConfig(run_dir=str(trained.path.parent), split="fit", fit=fit,
                                  data=DataConfig(path=str(tiny_head_dataset)),
                                  out=str(tmp_path))  # fmt: skip
    with pytest.raises(UserError, match="trained on.*pass fit.allow_seen=true"):
        evaluate.main(cfg)
    assert not (tmp_path / "fit.json").exists()
    cfg.fit.allow_seen = True
    report = evaluate.main(cfg)
    assert json.loads((tmp_path / "fit.json").read_text())["psnr"] == report["psnr"]
    line = evaluate._summary(report)
    assert (
        f"PSNR {report['psnr']} dB unaligned / {report['psnr_scale_aligned']} scale-aligned" in line
    )
    assert "pose error" in line
    assert report["inputs"]["head_center"] == "rig centre"
    # fit.rig_prior=false: the canonical size, the same input-view fit.
    cfg.fit.rig_prior, cfg.overwrite = False, True
    plain = evaluate.main(cfg)
    assert "head_center" not in plain["inputs"] and plain["per_subject"][0]["head_scale"] == 1.0
    assert plain["psnr_scale_aligned"] == pytest.approx(report["psnr_scale_aligned"], abs=0.05)
    with pytest.raises(ValueError, match="fit.inputs must be one of gt|photo"):
        evaluate.EvalFitConfig(inputs="selfie")
    with pytest.raises(ValueError, match="split must be one of val_view|val_combo"):
        evaluate.EvaluateConfig(run_dir="x", split="train")


def test_crop_camera_reproduces_the_similarity_warp():
    """Points projected by the input camera and warped into the crop land where the crop
    camera (R_crop, K_crop) projects them."""
    from gphm.evaluation.fit import crop_camera

    K = torch.tensor([[300.0, 0, 130], [0, 300.0, 120], [0, 0, 1]])
    theta, s, b = 0.3, 1.7, torch.tensor([12.0, -7.0])
    rot = torch.tensor([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    to_input = torch.cat([s * rot, b[:, None]], 1).float()  # crop px -> input px
    x_in = torch.randn(20, 3) * 0.3 + torch.tensor([0.1, -0.2, 4.0])
    u_in = (x_in @ K.T)[:, :2] / x_in[:, 2:]
    u_crop = torch.linalg.solve(to_input[:, :2], (u_in - to_input[:, 2]).T).T
    R_crop, K_crop = crop_camera(to_input, K)
    x_crop = x_in @ R_crop.T
    proj = (x_crop @ K_crop.T)[:, :2] / x_crop[:, 2:]
    torch.testing.assert_close(proj, u_crop, atol=1e-3, rtol=0)
    torch.testing.assert_close(x_crop[:, 2], x_in[:, 2])  # a turn about the optical axis
    assert K_crop[0, 0] == pytest.approx(300 / s)


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
                f"landmarks_gt={pts}", "frames=3", "views=2", "size=32"])  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    for k in ("landmark_error_px", "psnr_input", "seconds"):
        assert isinstance(rep[k], float), k
    assert np.array(rep["detected_landmarks"]).shape == (68, 2)
    assert rep["landmark_source"] == "file"
    # Issue 18: the fit's landmarks in input pixels, head-masked PSNR/SSIM, phase losses.
    fitted = np.array(rep["fitted_landmarks"])
    assert fitted.shape == (68, 2) and np.isfinite(fitted).all()
    err = np.linalg.norm(fitted - np.array(rep["detected_landmarks"]), axis=-1).mean()
    assert err == pytest.approx(rep["landmark_error_px"], abs=0.01)
    assert isinstance(rep["psnr_input_masked"], float) and 0 < rep["ssim_input"] <= 1
    assert rep["faces_found"] is None  # landmarks were given: nothing was detected
    assert set(rep["phase_losses"]) == {"phase1", "phase2"}
    assert {"rgb", "mask", "landmark", "smooth", "symmetry"} <= set(rep["phase_losses"]["phase2"])
    assert rep["nme_detected"] == 0.0 and rep["nme_fitted"] > 0  # landmarks_gt = the input
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
    from gphm.rendering import orbit_rig, render_codes
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


def test_codebook_statistics_over_trained_rows_ignore_wild_untrained_rows():
    from gphm.models.embeddings import Codebook, CodebookConfig

    book = Codebook(10, CodebookConfig(dim=4, init_std=0.1)).requires_grad_(False)
    with torch.no_grad():
        book.codes.weight[7:] = 1e3  # never optimised: whatever the init left there
    trained = [0, 1, 2, 3, 4, 5, 6]
    w = book.codes.weight.detach()
    torch.testing.assert_close(book.mean(trained), w[:7].mean(0))
    torch.testing.assert_close(book.std(trained), w[:7].std(0, unbiased=False).clamp_min(1e-3))
    assert float(book.mean().abs().max()) > 100 and float(book.mean(trained).abs().max()) < 1
    assert float(book.std(trained).max()) < 1 < float(book.std().min())
    with pytest.raises(IndexError, match=r"out of range \[0, 10\)"):
        book.mean([3, 10])
    with pytest.raises(ValueError, match="at least one row"):
        book.std([])


def test_fitting_starts_from_and_is_held_to_the_trained_rows(trained, tiny_head_dataset):
    """A held-out frame's expression row (and an untrained subject's identity row) must not
    bend the fitting prior: the run's train_frames decide which rows count."""
    import copy

    from gphm.fitting.fit import TrainedRows
    from gphm.models.runs import TrainedRun

    model = copy.deepcopy(trained.model)
    with torch.no_grad():
        model.expression_codes.codes.weight[1] = 50.0  # frame 1 (a:open): "untrained"
    extra = dict(trained.extra, train_frames=[0, 2, 3])
    run = TrainedRun(model=model, extra=extra, path=trained.path)
    rows = TrainedRows.of_run(run)
    assert rows == TrainedRows(identity=(0, 1), expression=(0, 2, 3))
    ds = HeadDataset(tiny_head_dataset, split="train", lr_size=16)
    cfg = FitConfig(phase1_steps=1, phase2_steps=0)
    good = fit_image(model, target_from_item(ds[0]), cfg, rows=rows)
    # Every row: the old prior. Its mean code is far off, so the head may leave the
    # image: the collapse guard is not what this test is about.
    bad = fit_image(model, target_from_item(ds[0]), FitConfig(phase1_steps=1, phase2_steps=0,
                                                              min_coverage=0.0))  # fmt: skip
    trained_mean = model.expression_codes.codes.weight[[0, 2, 3]].detach().mean(0)
    assert float((good.avatar.z_exp - trained_mean).abs().max()) < 0.1
    assert float((bad.avatar.z_exp - trained_mean).abs().max()) > 5
    assert good.history[0]["code"] < 10


def _avatar(trained, tiny_head_dataset, tmp_path):
    ds = HeadDataset(tiny_head_dataset, split="train", lr_size=16)
    result = fit_image(trained.model, target_from_item(ds[0]),
                       FitConfig(phase1_steps=1, phase2_steps=1, offset_min_images=1,
                                 trusted_prior_views=0.0),
                       str(trained.path))  # fmt: skip
    return result.avatar.save(tmp_path / "av"), result.avatar


def test_avatar_load_names_the_file_and_field_of_a_damaged_avatar(
    trained, tiny_head_dataset, tmp_path
):
    from safetensors.torch import load_file, save_file

    path, avatar = _avatar(trained, tiny_head_dataset, tmp_path)
    weights, meta = path / "avatar.safetensors", path / "avatar.json"
    Avatar.load(path, trained.model)  # intact
    tensors = load_file(str(weights))

    def tampered(**changes):
        save_file({**tensors, **changes}, str(weights))

    tampered(z_id=torch.full_like(tensors["z_id"], float("nan")))
    with pytest.raises(ValueError, match=r"avatar.safetensors: field 'z_id' holds non-finite"):
        Avatar.load(path)
    tampered(point_offsets=tensors["point_offsets"][:-5])
    with pytest.raises(ValueError, match=r"per-Gaussian fields disagree on the Gaussian count"):
        Avatar.load(path)  # colour/opacity offsets still have every Gaussian
    per_gaussian = ("point_offsets", "color_offsets", "opacity_offsets")
    tampered(**{k: tensors[k][:-5] for k in per_gaussian})
    Avatar.load(path)  # a consistent file on its own ...
    shape = r"field '(point|color)_offsets' has shape \[\d+, \d+\], expected"
    with pytest.raises(ValueError, match=shape):
        Avatar.load(path, trained.model)  # ... but not for this model
    tampered(z_exp=torch.zeros(3))
    with pytest.raises(ValueError, match=r"field 'z_exp' has shape \[3\], expected \[\d+\]"):
        Avatar.load(path, trained.model)
    tampered(head_R=torch.eye(4))
    with pytest.raises(ValueError, match=r"field 'head_R' has shape \[4, 4\], expected \[3, 3\]"):
        Avatar.load(path)
    save_file(tensors, str(weights))
    weights.write_bytes(weights.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match=r"avatar.safetensors: unreadable safetensors file"):
        Avatar.load(path)
    save_file(tensors, str(weights))
    good = json.loads(meta.read_text())
    meta.write_text(json.dumps(good | {"head_scale": "big"}))
    with pytest.raises(ValueError, match=r"avatar.json: field 'head_scale' must be a finite"):
        Avatar.load(path)
    meta.write_text(json.dumps(good)[:-10])
    with pytest.raises(ValueError, match=r"avatar.json: invalid JSON"):
        Avatar.load(path)


def test_avatar_save_does_not_replace_an_existing_avatar_unless_asked(
    trained, tiny_head_dataset, tmp_path
):
    from gphm.fitting.avatar import AvatarExistsError

    path, avatar = _avatar(trained, tiny_head_dataset, tmp_path)
    before = (path / "avatar.safetensors").read_bytes()
    other = Avatar(**{**avatar.__dict__, "z_id": avatar.z_id + 1})
    with pytest.raises(AvatarExistsError, match=r"av already exists and is not empty; pass "
                                               r"overwrite=true"):  # fmt: skip
        other.save(path)
    assert (path / "avatar.safetensors").read_bytes() == before  # untouched
    other.save(path, overwrite=True)
    torch.testing.assert_close(Avatar.load(path).z_id, avatar.z_id + 1)
    (tmp_path / "empty").mkdir()
    avatar.save(tmp_path / "empty")  # an empty directory holds nothing to lose
    assert Avatar.load(tmp_path / "empty").image_size == avatar.image_size


def _script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_h4_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_render_and_edit_resolve_only_trained_frames_and_say_whose(trained, tmp_path):
    import shutil

    from gphm.cli import UserError

    run = tmp_path / "run"
    shutil.copytree(trained.path, run / "model")
    config = json.loads((run / "model/config.json").read_text())
    config["extra"]["train_frames"] = [0, 2, 3]  # a:open (frame 1) held out
    (run / "model/config.json").write_text(json.dumps(config))
    render = _script("render")
    cfg = dict(checkpoint=str(run), frames=2, size=32)
    with pytest.raises(UserError, match=r"a@1: frame 1 was not trained.*"
                                        r"a's trained labels: \['neutral'\]"):  # fmt: skip
        render.main(render.RenderConfig(**cfg, out=str(tmp_path / "r1"), subject="a", frame=1))
    with pytest.raises(UserError, match=r"no trained frame shows expression 'smile'; trained "
                                        r"labels: \['neutral', 'open'\]"):  # fmt: skip
        render.main(render.RenderConfig(**cfg, out=str(tmp_path / "r2"), expression="smile"))
    rep = render.main(render.RenderConfig(**cfg, out=str(tmp_path / "r3"), subject="a",
                                          expression="open"))  # fmt: skip
    assert rep["frame"] == 3 and rep["expression_from"] == "expression from b@3"
    edit = _script("edit_expression")
    ecfg = dict(checkpoint=str(run), source="b", target="a:open", out=str(tmp_path / "e"),
                steps_between=1, size=32)  # fmt: skip
    rep = edit.main(edit.EditConfig(**ecfg))
    assert rep["target"]["label"] == "a:open (expression from b@3)"
    assert rep["drive"] == ["neutral", "target"]  # a's trained labels only
    with pytest.raises(UserError, match="drive: no trained frame shows expression 'smile'"):
        edit.main(edit.EditConfig(**ecfg, drive=["neutral", "smile"]))


@pytest.mark.skipif(not importlib.util.find_spec("mediapipe"), reason="mediapipe not installed")
def test_photo_path_crop_camera_agrees_with_mediapipe_on_a_synthetic_head(tmp_path):
    """The real user pipeline on a rendered synthetic head: mediapipe's landmarks of the
    prepared crop are where the crop camera (crop_camera: the input camera turned about
    its axis, with the crop's true K) projects the dataset's 3D landmarks."""
    from gphm.data.format import SPLITS
    from gphm.data.preprocess.single_image import prepare_image
    from gphm.data.synthetic.config import MakeSyntheticConfig
    from gphm.data.synthetic.generate import generate
    from gphm.evaluation.fit import crop_camera, frontal_row
    from gphm.geometry.cameras import world_to_camera

    out = tmp_path / "syn"
    generate(MakeSyntheticConfig(out=str(out), num_identities=1, num_expressions=1,
                                 num_views=3, resolution=128, seed=5, supersample=1),
             progress=False)  # fmt: skip
    ds = HeadDataset(out, split=list(SPLITS))
    items = [ds[i] for i in range(len(ds))]
    item = items[frontal_row(items)]
    rgb = (item.image.numpy() * 255).round().astype(np.uint8)
    prepared = prepare_image(rgb, detector="mediapipe", out_size=128)
    R_crop, K_crop = crop_camera(torch.from_numpy(prepared.to_input).float(), item.K)
    x = world_to_camera(item.viewmat, item.landmarks_3d) @ R_crop.T
    uv = (x @ K_crop.T)[:, :2] / x[:, 2:]
    err = (uv - torch.from_numpy(prepared.landmarks).float()).norm(dim=-1)
    assert float(err.mean()) < 4.0, float(err.mean())  # px of the 128 px crop


# ------------------------------------------------------------------ issue 18


def test_fit_images_shares_the_identity_and_names_every_expression(
    trained, tiny_head_dataset, tmp_path
):
    ds = HeadDataset(tiny_head_dataset, split=["train", "heldout_view"], lr_size=16)
    items = _frame_items(ds, subject=1, frame=2)
    targets = [target_from_item(it) for it in items[:2]]
    cfg = FitConfig(phase1_steps=20, phase2_steps=10)
    result = fit_images(trained.model, targets, cfg, str(trained.path))
    av = result.avatar
    assert len(result.images) == 2 and sorted(av.expressions) == ["image_0", "image_1"]
    assert torch.equal(av.expression("image_1"), result.images[1].z_exp)
    assert torch.equal(av.z_exp, av.expression("image_0"))
    with pytest.raises(KeyError, match=r"no expression 'image_7'; it has \['image_0'"):
        av.expression("image_7")
    # Each image got its own pose: the two cameras differ.
    assert (result.images[0].head_R - result.images[1].head_R).abs().max() > 0.05
    for im in result.images:
        assert im.landmark_error_px < 2.0 and np.isfinite(im.psnr_masked)
    loaded = Avatar.load(av.save(tmp_path / "av"), trained.model)
    assert sorted(loaded.expressions) == ["image_0", "image_1"]
    for name in ("color_offsets", "opacity_offsets", "point_offsets"):
        assert torch.equal(getattr(loaded, name), getattr(av, name)), name
    # Phase 2 fine-tunes Ψ's last layer by default (FitConfig.upsampler_layers), and only
    # that layer is kept.
    assert set(loaded.upsampler) == {"tail.weight", "tail.bias"}
    # An avatar's name:expression spec is a source of the edit/render tools.
    from gphm.fitting.sources import resolve_source

    src = resolve_source(f"{tmp_path / 'av'}:image_1", trained)
    assert torch.equal(src.z_exp, loaded.expression("image_1"))
    with pytest.raises(ValueError, match="no expression 'nope'"):
        resolve_source(f"{tmp_path / 'av'}:nope", trained)
    # Two targets of different sizes are refused.
    small = target_from_item(items[0])
    small.image = small.image[:16, :16]
    with pytest.raises(ValueError, match="target 1: .* same size as the first"):
        fit_images(trained.model, [targets[0], small], cfg)


def test_phase2_reproduces_the_input_view_better_and_the_avatar_applies_it(
    trained, tiny_head_dataset
):
    ds = HeadDataset(tiny_head_dataset, split="train", lr_size=16)
    target = target_from_item(ds[0])
    cfg = FitConfig(phase1_steps=30, phase2_steps=40, offset_min_images=1, trusted_prior_views=0.0)
    result = fit_image(trained.model, target, cfg)
    assert result.psnr_masked > result.phase1_psnr_masked + 0.3, (
        result.psnr_masked, result.phase1_psnr_masked)  # fmt: skip
    av = result.avatar
    assert av.color_offsets.abs().max() > 0 and av.opacity_offsets.abs().max() > 0
    net = av.personalised(trained.model)
    assert net is not trained.model and torch.equal(net.color_offsets, av.color_offsets)
    with torch.no_grad():
        out = render_avatar(net, av.z_id[None], av.z_exp[None], av.head_R[None],
                            av.head_T[None], torch.ones(1), torch.eye(4)[None], av.K[None], 32,
                            av.point_offsets)  # fmt: skip
    # Rendering the avatar through the personalised model reproduces the fit's render.
    assert torch.allclose(out.rgb[0].clamp(0, 1), result.render, atol=1e-4)
    # The landmarks move with the offsets of their nearest Gaussians, so phase 2 also
    # shapes the geometry toward the target's landmarks (here: the first ten moved 2 px
    # down, which the codes and the pose alone cannot follow), and the avatar reports them.
    moved = target_from_item(ds[0])
    moved.landmarks = moved.landmarks.clone()
    moved.landmarks[:10, 1] += 2.0
    p1 = fit_image(trained.model, moved, dataclasses.replace(cfg, phase2_steps=0))
    p2 = fit_image(trained.model, moved, cfg)
    err1, err2 = ((r.landmarks[:10] - moved.landmarks[:10]).norm(dim=-1).mean() for r in (p1, p2))
    assert err2 < err1 - 0.2, (float(err1), float(err2))
    world = fit_landmarks(trained.model, av)[None]  # [1, L, 3], input camera = world
    uv, _ = project_points(world, torch.eye(4)[None], av.K[None])
    torch.testing.assert_close(uv[0], result.landmarks, atol=1e-3, rtol=0)
    torch.testing.assert_close(out.landmarks, world, atol=1e-5, rtol=0)
    # Without phase 2's new knobs (the pre-issue-18 phase 2) nothing per-Gaussian is kept.
    old = fit_image(trained.model, target, FitConfig(phase1_steps=2, phase2_steps=2,
                    color_lr=0, opacity_lr=0, upsampler_lr=0))  # fmt: skip
    assert old.avatar.color_offsets is None and old.avatar.upsampler is None


def test_avatar_written_before_the_new_fields_still_loads(trained, tiny_head_dataset, tmp_path):
    from safetensors.torch import load_file, save_file

    path, avatar = _avatar(trained, tiny_head_dataset, tmp_path)
    weights = path / "avatar.safetensors"
    old = {k: v for k, v in load_file(str(weights)).items()
           if k.split(".")[0] not in ("color_offsets", "opacity_offsets", "upsampler")}  # fmt: skip
    save_file(old, str(weights))
    loaded = Avatar.load(path, trained.model)
    assert loaded.color_offsets is None and loaded.upsampler is None and loaded.expressions == {}
    net = loaded.personalised(trained.model)  # f_col only: a plain copy of the model
    assert type(net).__name__ == "GaussianHead"


def test_evaluate_fit_from_several_views_scores_the_held_out_view(trained, tiny_head_dataset):
    cfg = FitConfig(phase1_steps=10, phase2_steps=0)
    kwargs = dict(max_subjects=1, config=cfg, allow_seen=True, lpips=False, score="heldout")
    one = evaluate_fit(trained, tiny_head_dataset, views=1, **kwargs)
    two = evaluate_fit(trained, tiny_head_dataset, views=2, **kwargs)
    for rep, k in ((one, 1), (two, 2)):
        sub = rep["per_subject"][0]
        assert rep["views"] == k and rep["score"] == "heldout"
        assert len(sub["input_views"]) == k and "c2" not in sub["input_views"]
        assert sub["novel_views"] == 1 and rep["n"] == 1  # c2, the heldout_view camera
    with pytest.raises(ValueError, match="fit.views=3 asks for more"):
        evaluate_fit(trained, tiny_head_dataset, views=3, **kwargs)
    with pytest.raises(ValueError, match="fit.score must be one of"):
        evaluate_fit(trained, tiny_head_dataset, score="all", max_subjects=1, allow_seen=True)


def test_fit_photos_takes_arrays_and_landmark_arrays(trained, tiny_head_dataset):
    from gphm.fitting.sources import fit_photos

    ds = HeadDataset(tiny_head_dataset, split="train", lr_size=16)
    item = ds[3]
    photo = (item.image.numpy() * 255).round().astype(np.uint8)
    uv = target_from_item(item).landmarks.double().numpy()  # [68, 2] array, not a file
    cfg = FitConfig(phase1_steps=2, phase2_steps=1)
    prepared, result = fit_photos(trained, [photo, photo], landmarks=[uv, uv], config=cfg)
    assert len(prepared) == 2 and prepared[0].faces_found is None
    assert sorted(result.avatar.expressions) == ["image_0", "image_1"]


def test_fit_from_a_calibrated_rig_has_one_head_pose_and_one_expression(trained, tiny_head_dataset):
    ds = HeadDataset(tiny_head_dataset, split="train", lr_size=16)
    items = [ds[i] for i in range(len(ds)) if int(ds[i].frame) == int(ds[0].frame)][:2]
    assert len(items) == 2 and items[0].camera != items[1].camera
    targets = [target_from_item(it) for it in items]
    for t, it in zip(targets, items):
        t.camera = it.viewmat
    res = fit_images(trained.model, targets, FitConfig(phase1_steps=15, phase2_steps=0))
    a, b = res.images
    torch.testing.assert_close(a.z_exp, b.z_exp)  # one expression for the rig's instant
    # One head pose in world, seen from each camera: G_b = V_b V_a^-1 G_a.
    V = invert_viewmat(items[0].viewmat[None])[0]
    rel = items[1].viewmat @ V  # camera a -> camera b
    torch.testing.assert_close(b.head_R, rel[:3, :3] @ a.head_R, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.head_T, rel[:3, :3] @ a.head_T + rel[:3, 3], atol=1e-5, rtol=0)
    # Without cameras every image keeps its own pose; a half-given rig is refused.
    free = fit_images(trained.model, [target_from_item(it) for it in items],
                      FitConfig(phase1_steps=15, phase2_steps=0))  # fmt: skip
    assert not torch.allclose(free.images[0].z_exp, free.images[1].z_exp)
    targets[1].camera = None
    with pytest.raises(ValueError, match="camera for every target"):
        fit_images(trained.model, targets, FitConfig(phase1_steps=1, phase2_steps=0))


def test_a_head_center_sizes_a_single_image_fit_and_keeps_its_view(trained, tiny_head_dataset):
    """One image cannot tell size from distance; a rig's centre settles it post hoc."""
    ds = HeadDataset(tiny_head_dataset, split="train", lr_size=16)
    items = _frame_items(ds, subject=0, frame=0)
    source = items[0]
    cfg = FitConfig(phase1_steps=10, phase2_steps=3)
    plain = fit_image(trained.model, target_from_item(source), cfg)
    assert plain.head_scale == 1.0 and plain.avatar.head_scale == 1.0
    # The viewmat column alone gives the rows' cameras (no image decoded).
    rows = [i for i in range(len(ds)) if ds.subjects[i] == 0 and ds.frames[i] == 0]
    viewmats = ds.viewmats(rows)
    torch.testing.assert_close(viewmats, torch.stack([it.viewmat for it in items]))
    targets = rig_targets([source], rig_center(viewmats))
    center = targets[0].head_center
    assert center is not None and float(center[2]) > 0
    sized = fit_image(trained.model, targets[0], dataclasses.replace(cfg, head_center_sigma=1e-3))
    T = plain.avatar.head_T
    expected = scale_from_centers(T[None], center[None], cfg.head_size_sigma, 1e-3)
    assert sized.head_scale == pytest.approx(expected, rel=1e-4) and sized.head_scale != 1.0
    av = sized.avatar
    assert av.head_scale == sized.head_scale
    torch.testing.assert_close(av.head_T, sized.head_scale * T, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sized.images[0].head_T, av.head_T)
    # The head's origin now lies at the centre's depth along its ray (σc small).
    assert float(av.head_T.norm()) == pytest.approx(float(center @ T / T.norm()), rel=2e-3)
    # The input view is the same picture; another camera sees the new size.
    eye = torch.eye(4)
    net_p, net_s = plain.avatar.personalised(trained.model), av.personalised(trained.model)
    torch.testing.assert_close(render_fit_view(net_s, av, eye, source.K),
                               render_fit_view(net_p, plain.avatar, eye, source.K),
                               atol=2e-3, rtol=0)  # fmt: skip
    side = items[1].viewmat @ invert_viewmat(source.viewmat[None])[0]
    near = render_fit_view(net_p, plain.avatar, side, items[1].K)
    assert not torch.allclose(render_fit_view(net_s, av, side, items[1].K), near, atol=2e-3)
    # A rig of several views fixes the size itself: their centre is not used.
    rig = rig_targets(items[:2])
    rig[0].head_center = center
    assert fit_images(trained.model, rig, FitConfig(phase1_steps=2, phase2_steps=0)).head_scale == 1
    bad = target_from_item(source)
    bad.head_center = -center
    with pytest.raises(ValueError, match="head_center must be a finite"):
        fit_image(trained.model, bad, FitConfig(phase1_steps=1, phase2_steps=0))


def test_position_offsets_need_offset_min_images(trained, tiny_head_dataset):
    ds = HeadDataset(tiny_head_dataset, split=["train", "heldout_view"], lr_size=16)
    items = _frame_items(ds, subject=1, frame=2)
    cfg = FitConfig(phase1_steps=2, phase2_steps=2, phase2_max_drop_db=100.0,
                    offset_min_images=2, trusted_prior_views=0.0)  # fmt: skip
    one = fit_image(trained.model, target_from_item(items[0]), cfg).avatar
    assert one.point_offsets is None and one.color_offsets is not None  # one view: none
    two = fit_images(trained.model, [target_from_item(it) for it in items[:2]], cfg).avatar
    assert two.point_offsets is not None and two.point_offsets.shape[1] == 3
    default = fit_image(trained.model, target_from_item(items[0]),
                        dataclasses.replace(cfg, offset_min_images=1)).avatar  # fmt: skip
    assert default.point_offsets is not None and FitConfig().offset_min_images == 1
    with pytest.raises(ValueError, match="offset_min_images"):
        FitConfig(offset_min_images=0)
