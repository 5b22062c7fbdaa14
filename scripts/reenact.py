#!/usr/bin/env python
"""Shim: ``python scripts/reenact.py ARGS`` runs ``gphm-reenact ARGS`` (gphm/cli/reenact.py)."""

import sys

from gphm.cli import reenact as _command

# The command's names, for code that loads this file as a module (older tests, notebooks).
globals().update({k: v for k, v in vars(_command).items() if not k.startswith("__")})

if __name__ == "__main__":
    sys.exit(_command.cli())
