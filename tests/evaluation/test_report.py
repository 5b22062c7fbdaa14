"""The demo's index.md (gphm.evaluation.report): built from whatever reports exist, never
failing."""

from __future__ import annotations

import json

from gphm.evaluation.report import DemoReportConfig, demo_report


def test_demo_report_on_an_empty_run_and_with_reenact_figures(tmp_path):
    out, run = tmp_path / "out", tmp_path / "run"
    out.mkdir()
    (run / "eval").mkdir(parents=True)
    r = demo_report(DemoReportConfig(out=str(out), run=str(run), seconds=1.0))
    assert (out / "index.md").is_file() and r["reenact"] == {}
    assert "Video: tracking and reenactment" not in (out / "index.md").read_text()

    reenact = {"driver": "seq_000", "self_psnr": 20.1, "self_psnr_neutral": 19.9,
               "cross_psnr": 24.5, "cross_psnr_neutral": 24.25, "cross_gain_db": 0.25}  # fmt: skip
    gain = {"split": "expression_gain", "neutral": "neutral", "gain_db": 1.491,
            "per_label": {"neutral": {"gain_db": 0.0}, "jaw_open": {"gain_db": 4.21}}}  # fmt: skip
    (run / "eval" / "reenact.json").write_text(json.dumps(reenact))
    (run / "eval" / "expression_gain.json").write_text(json.dumps(gain))
    r = demo_report(DemoReportConfig(out=str(out), run=str(run), seconds=1.0))
    text = (out / "index.md").read_text()
    assert r["reenact"]["cross_gain_db"] == 0.25
    assert "| cross (other subjects, all cameras) | 24.50 | 24.25 | 0.25 |" in text
    assert "`split=expression_gain`" in text and "1.49 dB (jaw_open 4.21)" in text
    assert "per kind of target" not in text  # a report from before the target kinds
    reenact |= {"target_kinds": ["1view", "3view"], "cross_1view_support_gain_db": 3.2,
                "cross_1view_capture": 0.48, "cross_1view_gain_db": 0.25,
                "cross_3view_support_gain_db": 2.54, "cross_3view_capture": 0.385,
                "cross_3view_gain_db": -0.19}  # fmt: skip
    (run / "eval" / "reenact.json").write_text(json.dumps(reenact))
    demo_report(DemoReportConfig(out=str(out), run=str(run), seconds=1.0))
    text = (out / "index.md").read_text()
    assert "| 1view | 3.20 | 0.48 | 0.25 |" in text and "| 3view | 2.54 | 0.39 | -0.19 |" in text


def test_demo_report_expression_table(tmp_path):
    out, run = tmp_path / "out", tmp_path / "run"
    out.mkdir()
    (run / "eval").mkdir(parents=True)
    probe = {"split": "expression:probe", "per_label": {
        "jaw_open": {"support_gain_db": 7.91, "capture": 0.82},
        "smile_l": {"support_gain_db": 1.4, "capture": None},
    }, "all": {"support_gain_db": 5.0, "capture": 0.5}}  # fmt: skip
    combo = {"split": "expression:heldout_combo", "per_label": {
        "smile_l": {"support_gain_db": -0.5, "capture": 0.1}}, "all": None}  # fmt: skip
    (run / "eval" / "expression_probe.json").write_text(json.dumps(probe))
    (run / "eval" / "expression_heldout_combo.json").write_text(json.dumps(combo))
    r = demo_report(DemoReportConfig(out=str(out), run=str(run), seconds=1.0))
    text = (out / "index.md").read_text()
    assert set(r["expressions"]) == {"expression_probe", "expression_heldout_combo"}
    assert "## Expressions where they change the image" in text
    assert "| jaw_open | 7.91 / 0.82 | n/a / n/a |" in text
    assert "| smile_l | 1.40 / n/a | -0.50 / 0.10 |" in text
    assert "| **pooled** | 5.00 / 0.50 | n/a / n/a |" in text
