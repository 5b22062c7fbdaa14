"""evaluate_model on every split: honest keys, trained transfer sources, LPIPS, n_empty."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gphm import losses
from gphm.data.format import write_dataset
from gphm.evaluation import views as ev
from gphm.evaluation.perceptual import AlexNetFeatures, LPIPSAlex, LPIPSMetric
from gphm.evaluation.views import SPLITS, evaluate_model, transfer_frames
from gphm.models.guidance import GuidanceConfig, GuidanceModel
from gphm.models.mlp import MLPConfig
from gphm.models.upsampler import UpsamplerConfig
from tests.training.conftest import _rows

SUBJECT_B_OPEN = ("b", "open")  # frame 3; its only same-label source is a/open = frame 1


@pytest.fixture(scope="module")
def val_dataset(tmp_path_factory, tiny_combo_dataset):
    """tiny_combo_dataset with its held-out rows relabelled as validation rows."""
    import json

    meta = json.loads((tiny_combo_dataset / "meta.json").read_text())
    meta = {k: meta[k] for k in ("subjects", "expressions", "cameras", "num_frames", "frames",
                                 "landmark_convention", "image_size", "canonical_transform",
                                 "generator")}  # fmt: skip
    rows = ({**r, "split": r["split"].replace("heldout", "val")} for r in _rows(SUBJECT_B_OPEN))
    return write_dataset(tmp_path_factory.mktemp("data") / "tiny_val", rows, meta)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    small = MLPConfig(width=16, depth=2)
    cfg = GuidanceConfig(
        tet_resolution=10,
        f_mean=MLPConfig(width=16, depth=2, activation="softplus"),
        mean_feature_dim=8, injected_dim=8, f_inj=small, f_col=small,
        f_id=MLPConfig(width=16, depth=2, zero_init_last=True),
        f_exp=MLPConfig(width=16, depth=2, zero_init_last=True),
        color_channels=8, upsampler=UpsamplerConfig(factor=2, width=8, blocks=1),
    )  # fmt: skip
    m = GuidanceModel(cfg, num_subjects=2, num_frames=4)
    opt = torch.optim.Adam(m.f_mean.parameters(), lr=1e-2)
    for _ in range(60):  # a sphere, so the rendered silhouette is not empty
        x = torch.rand(1024, 3) * 2 - 1
        loss = losses.sdf_sphere(m.mean_field(x).sdf, x, 0.6)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def lpips_twin():
    """The LPIPS twin on random weights: real computation, no weight files needed."""
    g = torch.Generator().manual_seed(0)
    backbone = {k: torch.randn(v.shape, generator=g) * 0.05
                for k, v in AlexNetFeatures().state_dict().items()}  # fmt: skip
    heads = {f"lin{k}.weight": torch.rand(1, c, 1, 1, generator=g)
             for k, c in enumerate((64, 192, 384, 256, 256))}  # fmt: skip
    return LPIPSMetric(LPIPSAlex.from_weights(backbone, heads), "alex", "random", "random", "twin")


def _data(split, tiny_combo_dataset, val_dataset):
    return val_dataset if split.startswith("val_") else tiny_combo_dataset


@pytest.mark.parametrize("split", SPLITS)
def test_evaluate_model_scores_every_split(split, model, lpips_twin, tiny_combo_dataset,
                                           val_dataset, tmp_path):  # fmt: skip
    data = _data(split, tiny_combo_dataset, val_dataset)
    r = evaluate_model(model, data, split, lr_size=16, batch_size=2, lpips=lpips_twin,
                       save_dir=tmp_path)  # fmt: skip
    assert r["split"] == split and r["n"] == 3 and r["n_empty"] == 0
    for k, hi in (("psnr", 121), ("psnr_masked", 121), ("ssim", 1), ("ssim_masked", 1),
                  ("silhouette_iou_lr", 1), ("lpips", 10)):  # fmt: skip
        assert isinstance(r[k], float) and -1 <= r[k] <= hi, (k, r[k])
    assert r["lpips"] > 0 and r["lpips_backend"] == "twin" and "lpips_unavailable" not in r
    assert "silhouette_iou" not in r
    if split.endswith("_view"):
        # Same frames as training, other cameras: landmarks are not a held-out number.
        assert "landmark_error" not in r and r["landmark_error_training_frames"] >= 0
        assert "donor_frames" not in r
    else:
        assert "landmark_error_training_frames" not in r and r["landmark_error"] >= 0
        assert r["donor_frames"] == [1]  # a/open, the only trained frame labelled "open"
    assert (tmp_path / "side_by_side.png").is_file()


def test_unknown_split_names_the_valid_ones(model, tiny_combo_dataset):
    with pytest.raises(ValueError, match="val_view|val_combo|heldout_view|heldout_combo"):
        evaluate_model(model, tiny_combo_dataset, "train")
    with pytest.raises(ValueError, match=r"val_view\|val_combo\|heldout_view\|heldout_combo"):
        evaluate_model(model, tiny_combo_dataset, "heldout")


def test_transfer_sources_are_trained_frames(model, tiny_combo_dataset):
    # Without frame 1 (a/open) among the trained frames nothing can lend "open".
    with pytest.raises(ValueError, match="no trained frame of another subject.*'open'"):
        evaluate_model(model, tiny_combo_dataset, "heldout_combo", lr_size=16,
                       train_frames=[0, 2], lpips=False)  # fmt: skip
    # *_view rows are rendered with their own codes, which must have been trained.
    with pytest.raises(ValueError, match=r"not trained \(e\.g\. \[1\]\)"):
        evaluate_model(model, tiny_combo_dataset, "heldout_view", lr_size=16,
                       train_frames=[0, 2], lpips=False)  # fmt: skip


def test_transfer_frames_table():
    frames = [{"subject": s, "expression": e} for s in ("a", "b", "c") for e in ("n", "o")]
    # frames: a/n 0, a/o 1, b/n 2, b/o 3, c/n 4, c/o 5; b/o (3) and c/o (5) untrained.
    table = transfer_frames(frames, [0, 1, 2, 4], ["a", "b", "c"])
    assert table[(0, "n")] == 2 and table[(1, "n")] == 4 and table[(2, "n")] == 0
    assert table[(1, "o")] == 1 and table[(2, "o")] == 1  # the only trained "o": a's
    assert (0, "o") not in table  # a's own frame is never its source
    assert set(table.values()) <= {0, 1, 2, 4}
    with pytest.raises(ValueError, match="train frame 9"):
        transfer_frames(frames, [9], ["a", "b", "c"])


def test_lpips_null_with_reason(model, tiny_combo_dataset, tmp_path, monkeypatch):
    r = evaluate_model(model, tiny_combo_dataset, "heldout_view", lr_size=16, lpips=False)
    assert r["lpips"] is None and "disabled" in r["lpips_unavailable"]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("GPHM_LPIPS_BACKBONE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = evaluate_model(model, tiny_combo_dataset, "heldout_view", lr_size=16)
    assert r["lpips"] is None and r["lpips_unavailable"]


def test_empty_mask_rows_are_counted_and_left_out(model, tiny_combo_dataset, monkeypatch):
    base = evaluate_model(model, tiny_combo_dataset, "heldout_view", lr_size=16, lpips=False)

    class OneEmpty(ev.HeadDataset):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            if self.splits == ["heldout_view"] and i % len(self) == 0:
                item = dataclasses.replace(item, mask=torch.zeros_like(item.mask))
            return item

    monkeypatch.setattr(ev, "HeadDataset", OneEmpty)
    r = evaluate_model(model, tiny_combo_dataset, "heldout_view", lr_size=16, lpips=False)
    assert r["n"] == 3 and r["n_empty"] == 1
    assert r["psnr"] == base["psnr"]  # full-image metrics keep every row
    assert isinstance(r["psnr_masked"], float) and isinstance(r["ssim_masked"], float)
    assert r["psnr_masked"] != base["psnr_masked"]  # the mean of the other two rows


def test_expression_gain_accounting(model, tiny_combo_dataset, monkeypatch):
    # A fake renderer: off by 0.01 everywhere with a row's own codes, by 0.1 with another
    # frame's expression code; so a non-neutral row gains 10·log10(0.1²/0.01²) = 20 dB
    # and a neutral row (its own code is the neutral code) exactly 0.
    def fake(m, b, z_id, z_exp, context):
        own = torch.isclose(z_exp, m.expression_codes(b.frame)).all(-1)  # [B]
        off = torch.where(own, 0.01, 0.1)[:, None, None, None]
        rgb = b.image + off * torch.where(b.image < 0.5, 1.0, -1.0)  # stays in [0, 1]
        return dataclasses.replace(m.render(z_id, z_exp, b.head_R, b.head_T, b.head_scale,
                                            b.viewmat, b.K_lr, 8, 8), rgb=rgb)  # fmt: skip

    monkeypatch.setattr(ev, "render_rows", fake)
    labels = ev.HeadDataset(tiny_combo_dataset, split="train").meta["expressions"]
    r = ev.evaluate_expression_gain(model, tiny_combo_dataset, neutral=labels[0], lr_size=8)
    assert r["split"] == "expression_gain" and r["neutral"] == labels[0]
    assert r["per_label"][labels[0]]["gain_db"] == pytest.approx(0.0, abs=1e-3)
    assert r["per_label"][labels[1]]["gain_db"] == pytest.approx(20.0, abs=1e-2)
    assert r["gain_db"] == pytest.approx(20.0, abs=1e-2)
    assert r["psnr"] == pytest.approx(40.0, abs=1e-2)  # MSE 1e-4
    assert r["n"] == r["per_label"][labels[0]]["n"] + r["n_expressive"] and r["n_skipped"] == 0
    # Trained frames without the neutral label of subject b: its rows are skipped.
    r = ev.evaluate_expression_gain(model, tiny_combo_dataset, neutral=labels[0], lr_size=8,
                                    train_frames=[0, 1, 3])  # fmt: skip
    assert r["n_skipped"] > 0  # subject b: its neutral frame (2) was not trained
    assert r["n"] + r["n_skipped"] == len(ev.HeadDataset(tiny_combo_dataset, split="train"))
    with pytest.raises(ValueError, match="no subject has a trained frame labelled 'smirk'"):
        ev.evaluate_expression_gain(model, tiny_combo_dataset, neutral="smirk", lr_size=8)
