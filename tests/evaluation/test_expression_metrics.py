"""Expression metrics (gphm.evaluation.expression): exact constructed cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gphm.evaluation.expression import (
    IBUG68_REGIONS,
    capture,
    expression_stats,
    expression_support,
    landmark_displacement_capture,
    pool_expression_stats,
    pool_landmark_capture,
    support_gain_db,
    support_psnr,
)

H = W = 16
DELTA, NOISE = 0.2, 0.01


def truth(batch: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Neutral: grey 0.5; expression: +DELTA on a 4×6 block (24 of 256 pixels)."""
    neutral = torch.full((*batch, H, W, 3), 0.5, dtype=torch.float64)
    expr = neutral.clone()
    expr[..., 4:8, 2:8, :] += DELTA
    return expr, neutral


@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
def test_perfect_renderer_captures_one_with_known_gain(batch):
    gt_e, gt_n = truth(batch)
    # The model reproduces the truth up to a constant offset NOISE on every pixel.
    pr_e, pr_n = gt_e + NOISE, gt_n + NOISE
    support = expression_support(gt_e, gt_n)
    assert support.shape == (*batch, H, W)
    assert int(support.flatten(-2).sum(-1).reshape(-1)[0]) == 24
    # expression code: error NOISE; neutral code: error DELTA - NOISE on the support.
    expected = 20 * math.log10((DELTA - NOISE) / NOISE)
    gain = support_gain_db(pr_e, pr_n, gt_e, gt_n)
    assert gain.shape == batch
    torch.testing.assert_close(gain, torch.full(batch, expected, dtype=torch.float64))
    torch.testing.assert_close(
        support_psnr(pr_e, gt_e, support), torch.full(batch, 40.0, dtype=torch.float64)
    )
    torch.testing.assert_close(
        capture(pr_e, pr_n, gt_e, gt_n), torch.ones(batch, dtype=torch.float64)
    )
    stats = expression_stats(pr_e, pr_n, gt_e, gt_n)
    torch.testing.assert_close(stats.capture, torch.ones(batch, dtype=torch.float64))
    torch.testing.assert_close(stats.support_gain_db, gain)


def test_code_ignoring_renderer_gives_zero():
    gt_e, gt_n = truth((3,))
    pr = gt_n + NOISE  # the same image whatever the code
    torch.testing.assert_close(
        support_gain_db(pr, pr, gt_e, gt_n), torch.zeros(3, dtype=torch.float64)
    )
    torch.testing.assert_close(capture(pr, pr, gt_e, gt_n), torch.zeros(3, dtype=torch.float64))


def test_overshoot_and_wrong_direction():
    gt_e, gt_n = truth()
    twice = gt_n + 2 * (gt_e - gt_n)
    assert float(capture(twice, gt_n, gt_e, gt_n)) == pytest.approx(2.0)
    # Overshooting by DELTA is as wrong as not moving: gain 0 on the support.
    assert float(support_gain_db(twice, gt_n, gt_e, gt_n)) == pytest.approx(0.0, abs=1e-9)
    backwards = gt_n - (gt_e - gt_n)
    assert float(capture(backwards, gt_n, gt_e, gt_n)) == pytest.approx(-1.0)
    assert float(support_gain_db(backwards, gt_n, gt_e, gt_n)) < 0  # a sign flip is caught
    # Half the change: capture 0.5, gain 20·log10(DELTA / (DELTA / 2)) = 6.02 dB.
    half = gt_n + 0.5 * (gt_e - gt_n)
    assert float(capture(half, gt_n, gt_e, gt_n)) == pytest.approx(0.5)
    assert float(support_gain_db(half, gt_n, gt_e, gt_n)) == pytest.approx(20 * math.log10(2))


def test_support_threshold_and_capture_restricted_to_support():
    gt_n = torch.full((H, W, 3), 0.5)
    gt_e = gt_n.clone()
    gt_e[0, 0, 1] += 3.0 / 255  # below the default threshold
    gt_e[1, 1, 2] += 5.0 / 255
    support = expression_support(gt_e, gt_n)
    assert support.sum() == 1 and bool(support[1, 1])
    assert expression_support(gt_e, gt_n, threshold=2.0 / 255).sum() == 2
    # A model that changes pixels outside the support: no effect on support capture.
    pr_e = gt_e.clone()
    pr_e[10, 10] = 0.0
    assert float(capture(pr_e, gt_n, gt_e, gt_n, support)) == pytest.approx(1.0)


def test_empty_support_is_nan_and_left_out_of_pooling():
    gt_e, gt_n = truth((2,))
    gt_e[1] = gt_n[1]  # the second item's truth changes nothing
    pr_e, pr_n = gt_e + NOISE, gt_n + NOISE
    gain = support_gain_db(pr_e, pr_n, gt_e, gt_n)
    cap = capture(pr_e, pr_n, gt_e, gt_n)
    assert not math.isnan(float(gain[0])) and math.isnan(float(gain[1]))
    assert math.isnan(float(cap[1]))
    stats = expression_stats(pr_e, pr_n, gt_e, gt_n)
    pooled = pool_expression_stats([stats], ["smile"])  # one stats object of 2 items
    assert pooled["smile"]["items"] == 1 and pooled["smile"]["items_empty"] == 1
    assert pooled["all"]["capture"] == pytest.approx(1.0)
    assert pooled["all"]["support_gain_db"] == pytest.approx(float(gain[0]))
    assert pooled["all"]["support_fraction"] == pytest.approx(24 / (2 * H * W))
    only_empty = pool_expression_stats(
        [expression_stats(pr_e[1], pr_n[1], gt_e[1], gt_n[1])], ["x"]
    )
    assert math.isnan(only_empty["x"]["capture"]) and math.isnan(only_empty["x"]["support_gain_db"])


def test_pooling_is_pixel_weighted_per_label():
    gt_e, gt_n = truth()
    small_e = gt_n.clone()
    small_e[0, 0, :] += DELTA  # 1 support pixel
    perfect = expression_stats(gt_e + NOISE, gt_n + NOISE, gt_e, gt_n)  # 24 px, capture 1
    ignore = expression_stats(gt_n, gt_n, small_e, gt_n)  # 1 px, capture 0
    pooled = pool_expression_stats([perfect, ignore], ["jaw_open", "blink_l"])
    assert list(pooled) == ["blink_l", "jaw_open", "all"]
    assert pooled["jaw_open"]["capture"] == pytest.approx(1.0)
    assert pooled["blink_l"]["capture"] == pytest.approx(0.0)
    # Energy-weighted: 24 pixels of capture 1 and 1 pixel of capture 0.
    assert pooled["all"]["capture"] == pytest.approx(24 / 25)
    # PSNR of the union: errors NOISE on 24 px and DELTA on 1 px vs DELTA - NOISE / DELTA.
    mse_e = (24 * NOISE**2 + DELTA**2) / 25
    mse_n = (24 * (DELTA - NOISE) ** 2 + DELTA**2) / 25
    assert pooled["all"]["support_gain_db"] == pytest.approx(10 * math.log10(mse_n / mse_e))


def test_shape_errors_name_the_problem():
    gt_e, gt_n = truth()
    with pytest.raises(ValueError, match="same shape"):
        capture(gt_e, gt_n[:8], gt_e, gt_n)
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, 3\]"):
        expression_support(gt_e[..., :2], gt_n[..., :2])
    with pytest.raises(ValueError, match="labels"):
        pool_expression_stats([expression_stats(gt_e, gt_n, gt_e, gt_n)], [])


def lmk_truth(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    neutral = torch.randn(n, 68, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expr = neutral.clone()
    expr[:, 48:68, 1] += 0.05  # the mouth moves down
    expr[:, 8, 1] += 0.02  # the chin too
    return expr, neutral


def test_landmark_capture_per_region():
    gt_e, gt_n = lmk_truth()
    out = landmark_displacement_capture(gt_e, gt_n, gt_e, gt_n)
    assert set(out) == set(IBUG68_REGIONS)
    torch.testing.assert_close(out["mouth"], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(out["jaw"], torch.ones(2, dtype=torch.float64))
    assert torch.isnan(out["eyes"]).all() and torch.isnan(out["brows"]).all()  # nothing moves
    ignore = landmark_displacement_capture(gt_n, gt_n, gt_e, gt_n)
    torch.testing.assert_close(ignore["mouth"], torch.zeros(2, dtype=torch.float64))
    # Rigid head pose shared by both renders: capture is unchanged under a rotation.
    R = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)).double())[0]
    twice = gt_n + 2 * (gt_e - gt_n)
    rotated = landmark_displacement_capture(twice @ R.T, gt_n @ R.T, gt_e @ R.T, gt_n @ R.T)
    torch.testing.assert_close(rotated["mouth"], torch.full((2,), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="region 'x'"):
        landmark_displacement_capture(gt_e, gt_n, gt_e, gt_n, {"x": range(60, 70)})


def test_landmark_capture_pooling():
    gt_e, gt_n = lmk_truth(3)
    pred_e = gt_n.clone()
    pred_e[0] = gt_e[0]  # item 0 perfect, items 1 and 2 ignore the code
    pooled = pool_landmark_capture(pred_e, gt_n, gt_e, gt_n, ["jaw_open", "smile_l", "smile_l"])
    assert pooled["jaw_open"]["mouth"] == pytest.approx(1.0)
    assert pooled["smile_l"]["mouth"] == pytest.approx(0.0)
    assert pooled["all"]["mouth"] == pytest.approx(1 / 3)
    assert math.isnan(pooled["all"]["eyes"])


# ----------------------------------------------------------------------------- a whole split


class TruthModel(torch.nn.Module):
    """A "model" that renders the generator's truth: ``z_id`` = subject index, ``z_exp`` =
    frame index. ``ignore_code``: always the neutral expression."""

    def __init__(self, meta, ignore_code: bool = False):
        super().__init__()
        from gphm.data.synthetic.truth import DatasetTruth

        self.truth = DatasetTruth(meta)
        self.ignore_code = ignore_code
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def identity_codes(self, subjects):
        return subjects[:, None].double()

    def expression_codes(self, frames):
        return frames[:, None].double()

    def render_context(self):
        return {}

    def render(self, z_id, z_exp, head_R, head_T, head_scale, viewmats, Ks, width, height):
        from types import SimpleNamespace

        from gphm.data.synthetic import EXPRESSIONS
        from gphm.data.synthetic.render import HeadPose
        from gphm.data.synthetic.truth import rig_of

        assert width == height
        images, landmarks = [], []
        for b in range(z_id.shape[0]):
            frame = int(z_exp[b, 0])
            expr = (
                EXPRESSIONS["neutral"] if self.ignore_code else self.truth.frame_expression(frame)
            )
            pose = HeadPose(head_R[b].double().numpy(), head_T[b].double().numpy(),
                            float(head_scale[b]))  # fmt: skip
            rig = rig_of(viewmats[b].numpy(), Ks[b].numpy(), width)
            views = self.truth.render(int(z_id[b, 0]), expr, pose, rig)
            rgb = torch.from_numpy(views.images[0] / 255.0).float()
            alpha = torch.from_numpy(views.masks[0] / 255.0).float()[..., None]
            images.append(rgb * alpha + 1 - alpha)
            landmarks.append(torch.from_numpy(views.landmarks_3d))
        return SimpleNamespace(rgb=torch.stack(images), landmarks=torch.stack(landmarks))


@pytest.mark.parametrize("split", ["heldout_view", "heldout_combo"])
def test_evaluate_expressions_with_a_truth_renderer(tiny_dataset, split):
    from gphm.data.format import load_dataset_dir
    from gphm.evaluation.expression import evaluate_expressions

    _, meta = load_dataset_dir(tiny_dataset)
    report = evaluate_expressions(TruthModel(meta), tiny_dataset, split=split, batch_size=4)
    assert report["codes"] == ("own" if split == "heldout_view" else "transferred")
    assert report["n"] > 0 and report["neutral_twins_rendered"] == 0
    everything = report["all"]
    # The truth re-rendered from the rows' float32 poses: equal up to a rounding level.
    assert everything["capture"] == pytest.approx(1.0, abs=0.02)
    assert everything["support_gain_db"] > 20
    assert "neutral" not in report["per_label"]
    if split == "heldout_view":
        assert "mix" in report["per_label"]  # mixture frames are scored like labels
    for entry in report["per_label"].values():
        moving = [v for v in entry["landmark_capture"].values() if not math.isnan(v)]
        assert moving and all(v == pytest.approx(1.0, abs=1e-3) for v in moving)
    items = report["per_item"]
    assert len(items) == report["n"] and all(it["camera"].startswith("cam_") for it in items)
    own = [it["frame"] == it["code_frame"] for it in items]
    assert all(own) if split == "heldout_view" else not any(own)  # transferred codes
    ignoring = evaluate_expressions(TruthModel(meta, ignore_code=True), tiny_dataset, split=split)
    assert ignoring["all"]["capture"] == 0.0 and ignoring["all"]["support_gain_db"] == 0.0
    assert all(v == 0.0 or math.isnan(v) for v in ignoring["all"]["landmark_capture"].values())


def test_evaluate_expressions_renders_missing_twins_and_needs_twins(tiny_dataset, tmp_path):
    import shutil

    from gphm.data.format import load_dataset_dir
    from gphm.errors import UserError
    from gphm.evaluation.expression import evaluate_expressions

    _, meta = load_dataset_dir(tiny_dataset)
    report = evaluate_expressions(TruthModel(meta), tiny_dataset, split="train", batch_size=8)
    assert report["n"] > 0 and report["neutral_twins_rendered"] == report["n"]
    assert report["all"]["capture"] == pytest.approx(1.0, abs=0.02)
    old = tmp_path / "old"
    shutil.copytree(tiny_dataset, old)
    shutil.rmtree(old / "neutral_twins")
    with pytest.raises(UserError, match="no neutral twins.*gphm-synth"):
        evaluate_expressions(TruthModel(meta), old, split="heldout_view")


def test_lr_bicubic_keeps_what_the_render_size_resolves_and_loses_the_rest():
    from gphm.evaluation.expression import lr_bicubic

    flat = torch.full((1, 8, 8, 3), 0.25)
    assert torch.allclose(lr_bicubic(flat, (4, 4)), flat)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2  # 1-px detail
    fine = checker[None, ..., None].expand(1, 8, 8, 3).float()
    assert torch.allclose(lr_bicubic(fine, (4, 4)), torch.full_like(fine, 0.5))
    assert lr_bicubic(fine, (8, 8)).equal(fine)  # at the render size: itself
    assert lr_bicubic(torch.ones(2, 8, 6, 3), (4, 3)).shape == (2, 8, 6, 3)


def test_expression_probe_at_the_canonical_pose(tiny_dataset):
    from gphm.data.format import load_dataset_dir
    from gphm.evaluation.expression import evaluate_expression_probe

    _, meta = load_dataset_dir(tiny_dataset)
    report = evaluate_expression_probe(TruthModel(meta), tiny_dataset, batch_size=5)
    assert report["camera"] == meta["generator"]["cameras"]["reference"]
    # 3 subjects; trained labels jaw_open, smile_l, smile_r (minus held-out pairs) and mix.
    assert report["n"] == sum(e["items"] + e["items_empty"] for e in report["per_label"].values())
    assert set(report["per_label"]) <= {"jaw_open", "smile_l", "smile_r", "mix"}
    assert report["per_label"]["jaw_open"]["capture"] == pytest.approx(1.0, abs=1e-6)
    assert report["all"]["support_gain_db"] > 40  # identical renders: 120 dB vs the neutral
    assert "lr_bicubic" not in report  # the truth model renders at the scored size
    # One entry per probe: who was rendered with which frame's code, and its own metrics.
    items = report["per_item"]
    assert len(items) == report["n"]
    assert {(it["subject"], it["label"]) for it in items} == {
        (meta["subjects"][int(meta["frames"][it["code_frame"]]["subject"])],
         meta["frames"][it["code_frame"]]["expression"]) for it in items
    }  # fmt: skip
    jaw = [it for it in items if it["label"] == "jaw_open"]
    assert jaw and all(it["capture"] == pytest.approx(1.0, abs=1e-6) for it in jaw)
    ignoring = evaluate_expression_probe(TruthModel(meta, ignore_code=True), tiny_dataset)
    assert ignoring["all"]["capture"] == 0.0 and ignoring["all"]["support_gain_db"] == 0.0
    assert all(it["capture"] == 0.0 or math.isnan(it["capture"]) for it in ignoring["per_item"])


def test_expression_transfer_scores_other_subjects_frames(tiny_dataset):
    from gphm.data.format import load_dataset_dir
    from gphm.data.loaders import HeadDataset
    from gphm.evaluation.expression import _transfer_probes, evaluate_expression_probe

    _, meta = load_dataset_dir(tiny_dataset)
    trained = HeadDataset(tiny_dataset, "train").frames.tolist()
    subjects = list(meta["subjects"])
    base, probes = _transfer_probes(meta["frames"], subjects, trained, "neutral")
    owner = {f: int(m["subject"]) for f, m in enumerate(meta["frames"])}
    assert probes and all(a != owner[f] and a in base for a, f, _ in probes)
    assert all(f in trained and meta["frames"][f]["expression"] == lab for _, f, lab in probes)
    mixes = {f for f in set(trained) if meta["frames"][f]["expression"] == "mix"}
    assert mixes and {f for _, f, lab in probes if lab == "mix"} == mixes  # every mixture
    report = evaluate_expression_probe(TruthModel(meta), tiny_dataset, transfer=True)
    assert report["split"] == "expression:transfer" and report["n"] == len(probes)
    assert report["per_label"]["mix"]["capture"] == pytest.approx(1.0, abs=1e-6)
    assert report["all"]["support_gain_db"] > 40
    ignoring = evaluate_expression_probe(TruthModel(meta, ignore_code=True), tiny_dataset,
                                         transfer=True)  # fmt: skip
    assert ignoring["all"]["capture"] == 0.0 and ignoring["all"]["support_gain_db"] == 0.0


def _untrained_guidance():
    """A small guidance model for the synthetic set (3 subjects, 6 frames each) whose
    mean SDF is fitted to a sphere, so that its mean mesh exists."""
    from gphm import losses
    from gphm.models.guidance import GuidanceConfig, GuidanceModel
    from gphm.models.mlp import MLPConfig
    from gphm.models.upsampler import UpsamplerConfig

    torch.manual_seed(0)
    small = MLPConfig(width=16, depth=2)
    cfg = GuidanceConfig(
        tet_resolution=10, f_mean=MLPConfig(width=16, depth=2, activation="softplus"),
        mean_feature_dim=8, injected_dim=8, f_inj=small, f_col=small, f_id=small, f_exp=small,
        color_channels=8, upsampler=UpsamplerConfig(factor=2, width=8, blocks=1),
    )  # fmt: skip
    model = GuidanceModel(cfg, num_subjects=3, num_frames=3 * (4 + 2))
    opt = torch.optim.Adam(model.f_mean.parameters(), lr=1e-2)
    for _ in range(60):  # a sphere, so the mean mesh exists
        x = torch.rand(1024, 3) * 2 - 1
        loss = losses.sdf_sphere(model.mean_field(x).sdf, x, 0.6)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_evaluate_expressions_runs_a_real_model(tiny_dataset):
    """The model interface for real: an untrained guidance model on the synthetic set."""
    from gphm.evaluation.expression import evaluate_expression_probe, evaluate_expressions

    model = _untrained_guidance()
    for run in (
        lambda: evaluate_expressions(model, tiny_dataset, "heldout_combo", lr_size=16),
        lambda: evaluate_expression_probe(model, tiny_dataset, lr_size=16),
    ):
        report = run()
        assert report["n"] > 0 and report["model"] == "GuidanceModel"
        assert set(report["all"]) >= {"support_gain_db", "capture", "landmark_capture"}
        assert math.isfinite(report["all"]["support_fraction"])
        # renders at 16 px, scored at Ψ's 32: the bicubic reference of a 16-px truth
        assert "[16, 16]" in report["lr_bicubic"]
        assert 0 < report["all"]["lr_bicubic_capture"] < 1.05
        assert all("lr_bicubic_capture" in e for e in report["per_label"].values())
        json.dumps(report)  # a report is plain JSON (NaN aside)


def test_expression_parts_say_which_path_carries_the_expression(tiny_dataset):
    """``parts=True``: the capture left with one expression path of a Gaussian head fed
    the neutral code. A path that carries nothing (a zero basis) leaves the full capture;
    the path that carries everything leaves none."""
    from gphm.evaluation.expression import evaluate_expression_probe
    from gphm.models.gaussian_head import EXPRESSION_PARTS, GaussianHead, GaussianHeadConfig

    guidance = _untrained_guidance()
    head = GaussianHead.create_from(guidance, GaussianHeadConfig(color_basis_channels=3))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        head.expression_codes.codes.weight.normal_(0, 1.0, generator=g)
        head.expression_color_basis.normal_(0, 1.0, generator=g)  # the colour basis only:
        for p in head.f_exp.parameters():  # no expression offsets (f_att starts at zero)
            p.zero_()
        head.f_col.hidden[0].weight[:, -head.expression_codes.config.dim :] = 0  # f_col blind
    with pytest.raises(ValueError, match="Gaussian head"):
        evaluate_expression_probe(guidance, tiny_dataset, lr_size=16, parts=True)
    report = evaluate_expression_probe(head, tiny_dataset, lr_size=16, parts=True)
    parts = report["parts"]
    assert set(parts) == set(EXPRESSION_PARTS) and "parts_note" in report
    assert set(parts["color_basis"]) == {*report["per_label"], "all"}
    full = report["all"]["capture"]
    assert abs(full) > 1e-3  # the colour basis changes the image where the truth does
    assert parts["position_basis"]["all"] == pytest.approx(full, abs=1e-6)  # E_exp is zero
    assert parts["networks"]["all"] == pytest.approx(full, abs=1e-6)  # blind to the code
    assert parts["color_basis"]["all"] == pytest.approx(0.0, abs=1e-6)  # it carried all
