#!/usr/bin/env python
"""Shim: ``python scripts/export.py ARGS`` runs ``gphm-export ARGS`` (gphm/cli/export.py)."""

import sys

from gphm.cli import export as _command

# The command's names, for code that loads this file as a module (older tests, notebooks).
globals().update({k: v for k, v in vars(_command).items() if not k.startswith("__")})

if __name__ == "__main__":
    sys.exit(_command.cli())
