#!/usr/bin/env python
"""Shim: ``python scripts/train.py ARGS`` runs ``gphm-train ARGS`` (gphm/cli/train.py);
``accelerate launch scripts/train.py ARGS`` = ``accelerate launch -m gphm.cli.train ARGS``."""

import sys

from gphm.cli import train as _command

# The command's names, for code that loads this file as a module (older tests, notebooks).
globals().update({k: v for k, v in vars(_command).items() if not k.startswith("__")})

if __name__ == "__main__":
    sys.exit(_command.cli())
