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
