#!/usr/bin/env python
"""``python scripts/demo_report.py out=DIR run=RUN``: the demo's index.md
(gphm/evaluation/report.py)."""

import sys

from gphm.cli import run_cli
from gphm.evaluation.report import DemoReportConfig, demo_report

if __name__ == "__main__":
    sys.exit(run_cli(DemoReportConfig, demo_report, summary=lambda r: f"demo report: {r['index']}"))
