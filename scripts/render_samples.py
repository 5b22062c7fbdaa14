#!/usr/bin/env python
"""``python scripts/render_samples.py out=DIR ...``: the renderer showcase (gphm/showcase.py)."""

import functools
import sys

from gphm.cli import UserError, run_cli
from gphm.showcase import SamplesConfig, render_samples, summary


@functools.wraps(render_samples)  # --help prints gphm/showcase.py's docstring
def main(cfg: SamplesConfig) -> dict:
    try:
        return render_samples(cfg)
    except ValueError as err:
        raise UserError(str(err)) from None


if __name__ == "__main__":
    sys.exit(run_cli(SamplesConfig, main, summary=summary))
