#!/usr/bin/env python
"""Fit a new person from a single photo (DESIGN.md §2, §5).

    python scripts/fit_image.py checkpoint=RUN image=PHOTO out=OUT \
        [landmarks=FILE.pts] [detector=mediapipe] [fit.phase1_steps=150] [overwrite=true] ...

Landmarks come from the detector (MediaPipe by default) or a 68-point ``.pts`` file.
The head mask is MediaPipe's segmentation refined with the face hull, the photo's alpha
when it is a transparent cutout, or, with a ``.pts`` file and no MediaPipe installed,
the landmarks' head hull (``gphm.data.preprocess.masks.head_hull_mask``); the report's
``mask_source`` says which. A non-empty ``OUT`` is refused unless ``overwrite=true``.
Writes ``OUT/avatar/`` (the fitted avatar: ``avatar.json`` + ``avatar.safetensors``,
accepted by ``scripts/edit_expression.py``), ``OUT/overlay.png`` (aligned input | fit |
blend, detected landmarks green, fitted landmarks red), ``OUT/novel_views.png``,
``OUT/orbit.mp4`` and ``OUT/report.json`` (``landmark_error_px`` and
``detected_landmarks`` [68, 2] in input-image pixels, ``psnr_input``, ``seconds``).
A photo without a detectable face is refused with a clear message (exit status 2).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import torch
from omegaconf import MISSING

from gphm.cli import UserError, run_cli, write_report
from gphm.data.preprocess.detectors import BackendUnavailableError, NoFaceError
from gphm.fitting.fit import FitConfig
from gphm.fitting.sources import fit_photo
from gphm.fitting.views import orbit_rig, render_codes
from gphm.io.atomic import check_output_dir
from gphm.io.images import draw_points, image_grid, save_png
from gphm.io.limits import check_render_size
from gphm.io.video import save_mp4
from gphm.models.runs import load_run


@dataclass
class FitImageConfig:
    checkpoint: str = MISSING
    """Trained run directory (RUN/model is used)."""
    image: str = MISSING
    """The photo (.png/.jpg)."""
    out: str = MISSING
    landmarks: str | None = None
    """Optional 68-point iBUG .pts file in input-image pixels (skips detection)."""
    detector: str = "mediapipe"
    fit: FitConfig = field(default_factory=FitConfig)
    views: int = 8
    """Novel views in novel_views.png."""
    frames: int = 48
    """Orbit video length."""
    size: int = 256
    """Height/width of the novel views and orbit frames."""
    fps: int = 24
    overwrite: bool = False
    """Write into a non-empty ``out`` (its avatar and files with the same names are
    replaced)."""

    def __post_init__(self) -> None:
        if self.views < 1 or self.frames < 2 or self.size < 16 or self.fps < 1:
            raise ValueError("views >= 1, frames >= 2, size >= 16 and fps >= 1 are required")
        check_render_size(self.size, max(self.frames, self.views))


def main(cfg: FitImageConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    try:
        check_output_dir(out, cfg.overwrite)  # before the fit: refuse in a second, not minutes
        run = load_run(cfg.checkpoint, device="cuda" if torch.cuda.is_available() else "cpu")
        prepared, result = fit_photo(run, cfg.image, cfg.detector, cfg.landmarks, cfg.fit,
                                     progress=sys.stderr.isatty())  # fmt: skip
    except NoFaceError as err:
        raise UserError(f"{err} — fitting needs a photo with one visible face") from None
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError,
            BackendUnavailableError) as err:  # fmt: skip
        raise UserError(str(err)) from None
    avatar = result.avatar
    avatar.report = {"image": str(cfg.image), "psnr_input": round(result.psnr, 3)}
    avatar.save(out / "avatar", overwrite=cfg.overwrite)

    # Overlay on the aligned input view.
    aligned = torch.from_numpy(prepared.rgb).float()
    detected = torch.from_numpy(prepared.landmarks).float()
    fitted = result.landmarks
    blend = draw_points(draw_points(0.5 * aligned + 0.5 * result.render, detected),
                        fitted, (1.0, 0.0, 0.0))  # fmt: skip
    save_png(out / "overlay.png", image_grid([aligned, result.render, blend], ncols=3))

    # Novel views and orbit at the canonical pose with the personalised model.
    net = avatar.personalised(run.model)
    device = next(net.parameters()).device
    offsets = None if avatar.point_offsets is None else avatar.point_offsets.to(device)
    z_id, z_exp = avatar.z_id[None], avatar.z_exp[None]
    factor = net.upsampler.config.factor
    rig = orbit_rig(cfg.views, cfg.size, factor, azimuth_range=(-60, 60), endpoint=True)
    views = render_codes(net, z_id, z_exp, rig, point_offsets=offsets)[0]
    save_png(out / "novel_views.png", image_grid(list(views), ncols=cfg.views))
    orbit = render_codes(net, z_id, z_exp, orbit_rig(cfg.frames, cfg.size, factor),
                         point_offsets=offsets)[0]  # fmt: skip
    save_mp4(out / "orbit.mp4", list(orbit), fps=cfg.fps)

    # Errors in input-image pixels: the alignment is a similarity, scale = sqrt|det A|.
    scale = float(np.sqrt(abs(np.linalg.det(prepared.to_input[:, :2]))))
    report = {
        "image": str(cfg.image),
        "checkpoint": str(cfg.checkpoint),
        "model": avatar.model_class,
        "landmark_source": "file" if cfg.landmarks else cfg.detector,
        "mask_source": prepared.mask_source,
        "landmark_error_px": round(result.landmark_error_px * scale, 3),
        "landmark_error_px_aligned": round(result.landmark_error_px, 3),
        "psnr_input": round(result.psnr, 3),
        "seconds": round(result.seconds, 2),
        "input_size": list(prepared.input_size),
        "aligned_size": avatar.image_size,
        "detected_landmarks": np.round(prepared.map_to_input(prepared.landmarks), 2).tolist(),
        "fit": {"phase1_steps": cfg.fit.phase1_steps, "phase2_steps": cfg.fit.phase2_steps},
        "history": result.history,
        "outputs": ["avatar/", "overlay.png", "novel_views.png", "orbit.mp4"],
    }
    write_report(out / "report.json", report)
    return report


if __name__ == "__main__":
    sys.exit(run_cli(FitImageConfig, main, summary=lambda r: (
        f"fit_image: {r['image']} fitted in {r['seconds']} s; landmark error "
        f"{r['landmark_error_px']} px, input-view PSNR {r['psnr_input']} dB"
    )))  # fmt: skip
