#!/usr/bin/env python
"""Shim: ``python scripts/render.py ARGS`` runs ``gphm-render ARGS`` (gphm/cli/render.py)."""

import sys

from gphm.cli import render as _command

# The command's names, for code that loads this file as a module (older tests, notebooks).
globals().update({k: v for k, v in vars(_command).items() if not k.startswith("__")})

if __name__ == "__main__":
    sys.exit(_command.cli())
