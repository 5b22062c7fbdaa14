"""scripts/benchmarks/identity_curve.py: the identity-scaling curve command.

The pieces (options, commands, report assembly, the plot) are checked with fake numbers;
the ``--quick`` run end to end (synthesis, two trainings, six evaluations) is ``slow``.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks import identity_curve as ic  # noqa: E402


def _fake_point(n: int, base: float) -> dict:
    metrics = {k: base + i * 0.1 for i, k in enumerate(ic.METRICS)}
    return {"n_identities": n, "dataset": {}, "train": {"steps": {}}, "metrics": metrics,
            "commands": []}  # fmt: skip


def test_options_and_commands(tmp_path):
    args = ic.parse_args(["--sizes", "24,8", "--epochs-guidance", "2.5", "--out", str(tmp_path)])
    assert args.sizes == [8, 24] and args.epochs_guidance == 2.5
    assert args.epochs_gaussian == ic.EPOCHS[1] and args.seed_unseen == ic.VALIDATION_SEED
    curve = ic.Curve(args)
    train = curve.train(8)
    assert "train.guidance_epochs=2.5" in train and "model=tiny" in train
    assert Path(train[0]).name == "gphm-train"
    synth = curve.synth_train(24)
    assert "num_identities=24" in synth and "seed=0" in synth and "resolution=128" in synth
    assert all(f"{k}={v}" in synth for k, v in ic.COST.items())
    fits = [curve.evaluate(8, w) for w in curve.evals()[1:]]
    assert [c for c in fits[0] if c.startswith("fit.views")] == ["fit.views=1"]
    assert [c for c in fits[1] if c.startswith("fit.views")] == ["fit.views=3"]
    assert all("fit.score=heldout" in c and f"data.path={curve.unseen_data()}" in c for c in fits)
    assert curve.existing() == []
    quick = ic.parse_args(["--quick", "--out", str(tmp_path)])
    assert quick.sizes == list(ic.QUICK_SIZES)
    assert "model.lr_size=32" in ic.Curve(quick).train(2)
    with pytest.raises(SystemExit):
        ic.parse_args(["--sizes", "8,x"])
    with pytest.raises(SystemExit):
        ic.parse_args(["--epochs-gaussian", "0"])


def test_fixed_steps_control_trains_every_n_the_same_steps(tmp_path):
    args = ic.parse_args(["--steps", "270,1080", "--out", str(tmp_path)])
    curve = ic.Curve(args)
    for n in (8, 72):
        train = curve.train(n)
        assert {"train.guidance_steps=270", "train.gaussian_steps=1080",
                "train.schedule_reference_rows=0"} <= set(train)  # fmt: skip
        assert not any("epochs" in a for a in train)
    # its own runs and reports beside the epoch schedule's, sharing the datasets
    epochs = ic.Curve(ic.parse_args(["--out", str(tmp_path)]))
    assert curve.run_dir(8).name == "N8_128px_gs270_ss1080" != epochs.run_dir(8).name
    assert curve.train_data(8) == epochs.train_data(8)
    est = ic.estimate_minutes([8, 72], ic.EPOCHS, 6, fixed_steps=(270, 1080))
    assert est["train_N8_min"] == est["train_N72_min"]
    for bad in ("270", "270,x", "0,10"):
        with pytest.raises(SystemExit):
            ic.parse_args(["--steps", bad])


def test_report_and_plot_from_fake_numbers(tmp_path):
    pytest.importorskip("matplotlib")
    curve = ic.Curve(ic.parse_args(["--out", str(tmp_path), "--seed-unseen", "202"]))
    points = [_fake_point(n, 20.0 + i) for i, n in enumerate(curve.sizes)]
    points[1]["metrics"]["unseen_3view_psnr_unaligned"] = None  # a failed figure: no point
    report = ic.assemble(curve, {"num_identities": 6}, points, 12.0)
    assert report["unseen"]["seed_role"] == "report"
    assert set(report["metrics"]) == set(points[0]["metrics"])
    for keys in ic.PLOT_PANELS.values():
        assert set(keys) <= set(ic.METRICS)
    json.dumps(report)
    png = tmp_path / "curve.png"
    assert ic.plot_curve(report, png) is None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_existing_outputs_are_refused_without_reuse(tmp_path):
    args = ic.parse_args(["--out", str(tmp_path), "--sizes", "8"])
    ic.Curve(args).run_dir(8).mkdir(parents=True)
    with pytest.raises(FileExistsError, match="--reuse"):
        ic.curve_main(args)


def test_failed_command_names_itself_and_its_log(tmp_path, capsys):
    log = tmp_path / "logs" / "x.log"
    cmd = [sys.executable, "-c", "import sys; print('boom here'); sys.exit(3)"]
    with pytest.raises(ic.CommandFailed, match="exit 3"):
        ic.run_command(cmd, log)
    err = capsys.readouterr().err
    assert "boom here" in err and str(log) in err


def test_schedule_estimate_is_stated():
    est = ic.estimate_minutes(list(ic.SIZES), ic.EPOCHS, ic.UNSEEN["num_identities"])
    assert est["train_N72_min"] <= 90 and est["total_min"] > est["train_N72_min"]


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "curve"
    res = subprocess.run([sys.executable, str(ROOT / "scripts/benchmarks/identity_curve.py"),
                          "--quick", "--out", str(out)], capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((out / "identity_curve.json").read_text())
    assert [p["n_identities"] for p in report["points"]] == list(ic.QUICK_SIZES)
    for p in report["points"]:
        assert p["train"]["rows"] > 0 and p["train"]["steps"]["gaussian"] > 0
        for key in ic.METRICS:
            if key.endswith("failed_fits"):
                continue
            assert isinstance(p["metrics"][key], (int, float)), (key, p["metrics"][key])
            assert math.isfinite(p["metrics"][key]), key
    if report["plot"] is not None:
        assert (out / "identity_curve.png").stat().st_size > 0
    again = subprocess.run([sys.executable, str(ROOT / "scripts/benchmarks/identity_curve.py"),
                            "--quick", "--out", str(out), "--reuse"], capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ " not in again.stdout  # everything was complete: no command ran
