"""MP4 writing through imageio-ffmpeg (its bundled ffmpeg binary works offline)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from torch import Tensor

from gphm.io.atomic import atomic_output
from gphm.io.images import to_uint8

__all__ = ["save_mp4"]


def save_mp4(path: str | Path, frames: Sequence[Tensor | np.ndarray], fps: int = 24) -> Path:
    """Write frames ([H, W, 3] float in [0, 1] or uint8; H and W even) as H.264 MP4.

    Written to a temporary sibling and renamed, so a failed encode leaves no file.
    """
    path = Path(path)
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    with atomic_output(path) as tmp:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8,
                                macro_block_size=1, ffmpeg_log_level="error") as w:  # fmt: skip
            for f in frames:
                w.append_data(to_uint8(f))
    return path
