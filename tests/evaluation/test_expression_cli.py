"""gphm-evaluate split=expression / split=expression_probe on a trained tiny run."""

import json
import math

import pytest

from tests.training.conftest import TINY_OVERRIDES


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A two-step stage-1 run on the generated set with neutral twins and mixtures."""
    from gphm.config import parse_config
    from gphm.training.config import TrainRunConfig
    from gphm.training.trainer import GuidanceTrainer

    data = tiny_dataset
    run = tmp_path_factory.mktemp("expr_cli") / "run"
    cfg = parse_config(TrainRunConfig, [
        f"data.path={data}", f"run_dir={run}", "stage=guidance", *TINY_OVERRIDES,
        "train.guidance_steps=2", "train.batch_size=2",
    ])  # fmt: skip
    GuidanceTrainer(cfg).train()
    return data, run


def _check_report(report: dict) -> None:
    assert report["per_label"], report
    assert "neutral" not in report["per_label"]
    for entry in report["per_label"].values():
        assert {"support_gain_db", "capture", "support_fraction", "landmark_capture"} <= set(entry)
    pooled = report["all"]
    assert pooled["capture"] is None or math.isfinite(pooled["capture"])


@pytest.mark.parametrize(
    ("args", "name", "codes"),
    [
        (["split=expression"], "expression_train", "own"),
        (["split=expression", "expression_rows=heldout_combo"], "expression_heldout_combo",
         "transferred"),
        (["split=expression_probe"], "expression_probe", None),
        (["split=expression_transfer"], "expression_transfer", None),
    ],
)
def test_evaluate_expression_splits(trained, args, name, codes, capsys):
    from gphm.cli.evaluate import cli

    data, run = trained
    assert cli([f"run_dir={run}", f"data.path={data}", "device=cpu", *args]) == 0
    line = capsys.readouterr().out
    assert "support gain" in line and "capture" in line
    report = json.loads((run / "eval" / f"{name}.json").read_text())
    _check_report(report)
    if codes is not None:
        assert report["codes"] == codes
    else:  # the probe's picture: 4 tiles per trained label
        from gphm.io.images import load_image

        picture = load_image(run / "eval" / name / "difference.png")
        rows = len(report["difference_picture_labels"])
        assert rows == len(report["per_label"])
        assert picture.shape[0] == rows * (32 + 2) + 2 and picture.shape[1] == 4 * (32 + 2) + 2


def test_expression_rows_must_be_a_known_split(trained, capsys):
    from gphm.cli.evaluate import cli

    data, run = trained
    assert cli([f"run_dir={run}", f"data.path={data}", "split=expression",
                "expression_rows=bogus"]) == 2  # fmt: skip
    assert "expression_rows must be one of" in capsys.readouterr().err


def test_probe_parts_needs_a_probe_split_and_a_gaussian_head(trained, capsys):
    from gphm.cli.evaluate import cli

    data, run = trained
    assert cli([f"run_dir={run}", f"data.path={data}", "split=heldout_view",
                "probe_parts=true"]) == 2  # fmt: skip
    assert "probe_parts=true is for split=expression_probe" in capsys.readouterr().err
    assert cli([f"run_dir={run}", f"data.path={data}", "split=expression_probe",
                "probe_parts=true", "device=cpu"]) == 2  # fmt: skip
    assert "need a Gaussian head (stage 2), not a GuidanceModel" in capsys.readouterr().err


def test_difference_picture_columns():
    import torch

    from gphm.evaluation.expression import difference_picture

    gt_n = torch.full((4, 5, 3), 0.5)
    gt_e = gt_n.clone()
    gt_e[1, 2] = 0.6  # the truth changes one pixel by +0.1
    picture = difference_picture([(gt_e, gt_n, gt_n, gt_n)], gain=4.0)
    assert picture.shape == (4 + 4, 4 * (5 + 2) + 2, 3)
    tile = lambda c: picture[2:6, 2 + c * 7 : 7 + c * 7]  # noqa: E731
    assert torch.allclose(tile(0), gt_e) and torch.allclose(tile(2), gt_n)
    assert tile(1)[1, 2, 0].item() == pytest.approx(0.5 + 4 * 0.1, abs=1e-6)  # brighter
    assert torch.all(tile(3) == 0.5)  # a model that ignores its code: flat grey
