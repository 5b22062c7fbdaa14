#!/usr/bin/env python
"""Serve the web viewer of a trained run (see gphm/viewer/command.py).

python scripts/view.py checkpoint=RUN [port=8080] [host=127.0.0.1] [avatars=[DIR,...]]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gphm.cli import run_cli
from gphm.viewer.command import ViewConfig, main, summary

__all__ = ["ViewConfig", "main"]

if __name__ == "__main__":
    sys.exit(run_cli(ViewConfig, main, summary=summary))
