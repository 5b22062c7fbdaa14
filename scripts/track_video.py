#!/usr/bin/env python
"""Shim: ``python scripts/track_video.py ARGS`` runs ``gphm-track ARGS`` (gphm/cli/track.py)."""

import sys

from gphm.cli import track as _command

# The command's names, for code that loads this file as a module (older tests, notebooks).
globals().update({k: v for k, v in vars(_command).items() if not k.startswith("__")})

if __name__ == "__main__":
    sys.exit(_command.cli())
