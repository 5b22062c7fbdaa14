"""Stage 2 and stage=all: training, resume, NaN guard, CLIs for evaluation and rendering."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from gphm.data.loaders import collate_views
from gphm.errors import UserError
from gphm.io.ply import load_gaussian_ply
from gphm.models.gaussian_head import GaussianHead
from gphm.training.checkpoint import latest_checkpoint
from gphm.training.trainer import GaussianTrainer, GuidanceTrainer, TrainingDiverged

from .test_train import ROOT, _cfg, _env, nan_term

STAGE2 = ["train.guidance_steps=6", "train.batch_size=2", "train.checkpoint_every=3"]


@pytest.fixture(scope="module")
def stage1_run(tiny_head_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("stage1") / "run"
    GuidanceTrainer(_cfg(tiny_head_dataset, run, *STAGE2)).train()
    return run


def test_stage_gaussian_from_a_stage1_run(tiny_head_dataset, stage1_run, tmp_path):
    cfg = _cfg(tiny_head_dataset, tmp_path / "run", *STAGE2, "stage=gaussian",
               f"guidance_run={stage1_run}", "train.gaussian_steps=8",
               "loss.gaussian.rgb_hr_mse=10", "loss.gaussian.basis_smooth=2",
               "model.gaussian.color_basis_channels=3")  # fmt: skip
    summary = GaussianTrainer(cfg).train()
    log = [json.loads(x) for x in (tmp_path / "run/logs/metrics.jsonl").read_text().splitlines()]
    assert all(r["stage"] == "gaussian" for r in log)
    assert log[-1]["rgb_hr"] < log[0]["rgb_hr"]
    weights = cfg.loss.gaussian
    weighted = sum(getattr(weights, k) * v for k, v in log[-1].items()
                   if k not in ("step", "stage", "lr", "total"))  # fmt: skip
    assert log[-1]["total"] == pytest.approx(weighted, rel=1e-5)
    assert weights.rgb_hr_mse == 10 and 0 < log[-1]["rgb_hr_mse"] < log[-1]["rgb_hr"]
    desc = json.loads((tmp_path / "run/model/config.json").read_text())
    assert desc["class"] == "GaussianHead"
    assert desc["extra"]["perceptual"] == {"perceptual": "dssim", "weights": None}
    assert desc["extra"]["stage"] == "gaussian"
    model = GaussianHead.from_pretrained(tmp_path / "run/model")
    assert model.num_points == desc["extra"]["num_points"]
    assert log[-1]["basis_smooth"] > 0 and model.color_bases()[1].abs().sum() > 0  # trained
    assert (tmp_path / "run/guidance_model/config.json").is_file()  # copied for resume
    assert latest_checkpoint(tmp_path / "run/checkpoints/gaussian").name == "step_00000008"
    assert not (tmp_path / "run/eval").exists() and summary["eval"] == {}  # no val rows


def test_stage2_resume_is_bit_exact_and_nan_guard(tiny_head_dataset, stage1_run, tmp_path):
    extra = [*STAGE2, "stage=gaussian", f"guidance_run={stage1_run}", "train.gaussian_steps=6"]
    GaussianTrainer(_cfg(tiny_head_dataset, tmp_path / "full", *extra)).train()
    GaussianTrainer(_cfg(tiny_head_dataset, tmp_path / "resumed", *extra)).train(stop_after=3)
    summary = GaussianTrainer(_cfg(tiny_head_dataset, tmp_path / "resumed", *extra)).train()
    assert summary["resumed_from"] == 3
    a = load_file(str(tmp_path / "full/model/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/model/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    cfg = _cfg(tiny_head_dataset, tmp_path / "nan", *extra)
    GaussianTrainer(cfg).train(stop_after=3)
    good = latest_checkpoint(tmp_path / "nan/checkpoints/gaussian")
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at gaussian step 3"):
        nan_term(GaussianTrainer(cfg), "rgb_hr").train()
    assert latest_checkpoint(tmp_path / "nan/checkpoints/gaussian") == good


def test_stage2_learning_rates_per_parameter_group(tiny_head_dataset, stage1_run, tmp_path):
    """Every trainable tensor is in exactly one Adam group, at its option's rate (the
    per-Gaussian bases with the other per-point parameters), and the schedule scales
    every group alike."""
    cfg = _cfg(tiny_head_dataset, tmp_path / "run", *STAGE2, "stage=gaussian",
               f"guidance_run={stage1_run}", "model.gaussian.color_basis_channels=2",
               "train.point_lr=3e-3", "train.gaussian_lr=1e-3",
               "train.gaussian_code_lr=2e-2", "train.point_position_lr=5e-4")  # fmt: skip
    trainer = GaussianTrainer(cfg)
    m = trainer.model
    lr_of = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    grouped = [id(p) for g in trainer.optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in m.parameters())  # each exactly once
    assert [lr_of[id(b)] for b in m.learned_bases()] == [3e-3] * 4  # E_id, E_exp, C_id, C_exp
    assert lr_of[id(m.log_scales)] == 3e-3 and lr_of[id(m.points)] == 5e-4
    assert lr_of[id(m.expression_codes.codes.weight)] == 2e-2
    assert lr_of[id(next(m.f_col.parameters()))] == 1e-3
    trainer._set_lr(trainer.total_steps)
    decay = cfg.train.lr_decay
    got = [g["lr"] for g in trainer.optimizer.param_groups]
    assert got == pytest.approx([lr * decay for lr in trainer.base_lrs])
    with pytest.raises(UserError, match="train.point_lr must be in"):
        _cfg(tiny_head_dataset, tmp_path / "bad", "train.point_lr=-1")


@torch.no_grad()
def test_basis_smoothness_is_the_bases_knn_laplacian(tiny_head_dataset, stage1_run, tmp_path):
    from gphm import losses
    from gphm.geometry.mesh import knn_indices

    cfg = _cfg(tiny_head_dataset, tmp_path / "run", *STAGE2, "stage=gaussian",
               f"guidance_run={stage1_run}", "loss.gaussian.basis_smooth=1",
               "model.gaussian.color_basis_channels=2")  # fmt: skip
    trainer = GaussianTrainer(cfg)
    model = trainer.model
    bases = [*model.bases(), *model.color_bases()]
    assert trainer._basis_smoothness(model) == 0  # zero at creation
    for e in bases:  # the same basis everywhere: smooth
        e.copy_(torch.randn(e.shape[1:]).expand_as(e))
    assert trainer._basis_smoothness(model) == pytest.approx(0, abs=1e-10)
    g = torch.Generator().manual_seed(0)
    for e in bases:
        e.copy_(torch.randn(e.shape, generator=g))
    nbrs = knn_indices(model.points, 8)  # X0 as created
    assert torch.equal(trainer.basis_nbrs, nbrs)
    want = sum(losses.knn_laplacian(e.flatten(1), nbrs) / e[0].numel() for e in bases)
    assert float(trainer._basis_smoothness(model)) == pytest.approx(float(want), rel=1e-5)
    assert float(want) == pytest.approx(4 * (1 + 1 / 8), rel=0.1)  # 4 white-noise bases


@torch.no_grad()
def test_face_regions_term_is_the_mse_inside_the_true_landmarks_boxes(
    tiny_head_dataset, stage1_run, tmp_path
):
    from gphm import losses
    from gphm.geometry.cameras import project_points
    from gphm.geometry.landmarks import EXPRESSIVE_REGIONS, region_box_mask
    from gphm.training.config import FACE_REGION_PAD

    data = _with_landmark_convention(tiny_head_dataset, tmp_path / "data", "ibug68")
    cfg = _cfg(data, tmp_path / "run", *STAGE2, "stage=gaussian",
               f"guidance_run={stage1_run}", "loss.gaussian.face_regions=3")  # fmt: skip
    trainer = GaussianTrainer(cfg)
    batch = collate_views([trainer.dataset[0], trainer.dataset[1]])
    out = trainer._forward(batch)
    uv = project_points(batch.landmarks_3d, batch.viewmat, batch.K)[0]
    boxes = region_box_mask(uv, EXPRESSIVE_REGIONS, *batch.image.shape[1:3], FACE_REGION_PAD)
    assert 0 < boxes.mean() < 1
    term = trainer.compute_losses(out, batch)["face_regions"]
    assert float(term) == pytest.approx(float(losses.masked_mse(out.rgb, batch.image, boxes)))
    err = (out.rgb - batch.image).square().mean(-1)
    assert float(term) == pytest.approx(float((err * boxes).sum() / boxes.sum()), rel=1e-5)


def test_both_stages_at_factor_1_render_at_the_data_size(tiny_head_dataset, tmp_path):
    """model=tiny's layout: splats (and stage 1's mesh) rendered at the full image size,
    Ψ a refiner at factor 1 (the RGB is the render's first three channels plus Ψ's
    correction, at the same size)."""
    full = ["model.lr_size=32", "model.guidance.upsampler.factor=1"]
    stage1 = tmp_path / "s1"
    GuidanceTrainer(_cfg(tiny_head_dataset, stage1, *STAGE2, *full)).train()
    cfg = _cfg(tiny_head_dataset, tmp_path / "run", *STAGE2, *full, "stage=gaussian",
               f"guidance_run={stage1}", "train.gaussian_steps=8")  # fmt: skip
    trainer = GaussianTrainer(cfg)
    trainer.train()
    log = [json.loads(x) for x in (tmp_path / "run/logs/metrics.jsonl").read_text().splitlines()]
    assert log[-1]["rgb_hr"] < log[0]["rgb_hr"] and log[-1]["rgb_lr"] < log[0]["rgb_lr"]
    extra = json.loads((tmp_path / "run/model/config.json").read_text())["extra"]
    assert extra["lr_size"] == extra["hr_size"] == 32
    batch = collate_views([trainer.dataset[0]])
    out = trainer._forward(batch)
    assert out.rgb.shape[1:3] == batch.image.shape[1:3] == out.features.shape[1:3]


def _with_landmark_convention(data, to, convention: str):
    """A copy of the dataset ``data`` whose meta.json names another landmark convention."""
    import shutil

    shutil.copytree(data, to)
    meta = json.loads((to / "meta.json").read_text())
    (to / "meta.json").write_text(json.dumps(meta | {"landmark_convention": convention}))
    return to


def test_face_regions_are_off_without_ibug68_landmarks(tiny_head_dataset, stage1_run, tmp_path,
                                                       capsys):  # fmt: skip
    data = _with_landmark_convention(tiny_head_dataset, tmp_path / "data", "mediapipe")
    cfg = _cfg(data, tmp_path / "run", *STAGE2, "stage=gaussian",
               f"guidance_run={stage1_run}", "loss.gaussian.face_regions=1")  # fmt: skip
    trainer = GaussianTrainer(cfg)
    assert "face_regions needs iBUG-68 landmarks" in capsys.readouterr().out
    batch = collate_views([trainer.dataset[0]])
    assert trainer.compute_losses(trainer._forward(batch), batch)["face_regions"] == 0


def test_stage_gaussian_without_stage1_is_refused(tiny_head_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained stage-1 model"):
        GaussianTrainer(_cfg(tiny_head_dataset, tmp_path / "run", "stage=gaussian"))


def _run(args, **kw):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=600, **kw)  # fmt: skip


def test_cli_stage_all_then_evaluate_and_render(tiny_combo_dataset, tmp_path):
    from .conftest import TINY_OVERRIDES

    tiny_head_dataset = tiny_combo_dataset
    run = tmp_path / "run"
    train = _run([ROOT / "scripts/train.py", f"data.path={tiny_head_dataset}", f"run_dir={run}",
                  *TINY_OVERRIDES, "stage=all", "train.guidance_steps=3",
                  "train.gaussian_steps=2", "train.batch_size=2"])  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    assert "train: stage all 5 steps" in train.stdout
    report = json.loads((run / "train_report.json").read_text())
    assert set(report["stages"]) == {"guidance", "gaussian"}
    assert json.loads((run / "model/config.json").read_text())["class"] == "GaussianHead"
    assert json.loads((run / "guidance_model/config.json").read_text())["class"] == "GuidanceModel"

    for split in ("heldout_view", "heldout_combo"):
        ev = _run([ROOT / "scripts/evaluate.py", f"run_dir={run}",
                   f"data.path={tiny_head_dataset}", f"split={split}"])  # fmt: skip
        assert ev.returncode == 0, ev.stderr[-3000:]
        res = json.loads((run / "eval" / f"{split}.json").read_text())
        assert res["lpips"] is None and res["n"] == 3 and "lpips_unavailable" in res
        for k in ("psnr", "psnr_masked", "ssim", "ssim_masked"):
            assert 0 < res[k] < 100, (k, res[k])
        assert (run / "eval" / split / "side_by_side.png").is_file()
    combo = json.loads((run / "eval/heldout_combo.json").read_text())
    assert combo["donor_frames"] and combo["transfer"].startswith("z_exp")

    out = tmp_path / "render"
    tt = _run([ROOT / "scripts/render.py", f"checkpoint={run}", f"out={out}/tt", "subject=a",
               "frames=4", "size=32"])  # fmt: skip
    assert tt.returncode == 0, tt.stderr[-3000:]
    ply = load_gaussian_ply(out / "tt/gaussians.ply")
    model = GaussianHead.from_pretrained(run / "model")
    assert len(ply) == model.num_points
    assert (out / "tt/turntable.mp4").stat().st_size > 0
    grid = _run([ROOT / "scripts/render.py", f"checkpoint={run}", f"out={out}/grid", "mode=grid",
                 "frames=3", "size=32"])  # fmt: skip
    assert grid.returncode == 0, grid.stderr[-3000:]
    rep = json.loads((out / "grid/render_report.json").read_text())
    assert rep["subjects"] == ["a", "b"] and len(rep["cells"]) == 2 * len(rep["expressions"])
    morph = _run([ROOT / "scripts/render.py", f"checkpoint={run}", f"out={out}/morph",
                  "mode=interpolate", "subject_b=b", "frames=3", "size=32"])  # fmt: skip
    assert morph.returncode == 0, morph.stderr[-3000:]
    assert (out / "morph/interpolation.mp4").is_file()
    assert (out / "morph/interpolation_strip.png").is_file()
    bad = _run([ROOT / "scripts/evaluate.py", f"run_dir={tmp_path / 'nope'}",
                f"data.path={tiny_head_dataset}"])  # fmt: skip
    assert bad.returncode == 2 and "no trained model" in bad.stderr
