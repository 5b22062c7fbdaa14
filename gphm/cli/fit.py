"""Fit a new person from a photo, or from several photos of them (DESIGN.md §2, §5).

    python scripts/fit_image.py checkpoint=RUN image=PHOTO out=OUT \
        [landmarks=FILE.pts] [detector=mediapipe] [face=0] [landmarks_gt=FILE.pts] \
        [fit.phase1_steps=150] [overwrite=true] ...
    python scripts/fit_image.py checkpoint=RUN images=[a.jpg,b.jpg] out=OUT ...

``images=[...]`` fits one identity to all of them (an expression and a head pose per
photo; the avatar keeps each photo's expression as ``image_0``, ``image_1``, ...: use
``OUT/avatar:image_1`` as a source of ``edit_expression.py``). ``face=INDEX`` picks a
face of a photo with several, by size (0, the default, is the largest); the report's
``faces_found`` says how many there were. ``landmarks_gt=FILE.pts`` (hand labels of
the photo, not used by the fit) adds ``nme_fitted`` and ``nme_detected``.

Landmarks come from the detector (MediaPipe by default) or a 68-point ``.pts`` file.
The head mask is MediaPipe's segmentation refined with the face hull, the photo's alpha
when it is a transparent cutout, or, with a ``.pts`` file and no MediaPipe installed,
the landmarks' head hull (``gphm.data.preprocess.masks.head_hull_mask``); the report's
``mask_source`` says which. A non-empty ``OUT`` is refused unless ``overwrite=true``.
Writes ``OUT/avatar/`` (the fitted avatar: ``avatar.json`` + ``avatar.safetensors``,
accepted by ``scripts/edit_expression.py``), ``OUT/overlay.png`` (aligned input | fit |
blend, detected landmarks green, fitted landmarks red), ``OUT/novel_views.png``,
``OUT/orbit.mp4`` and ``OUT/report.json`` (``landmark_error_px``,
``detected_landmarks`` and ``fitted_landmarks`` [68, 2] in input-image pixels,
``psnr_input``, ``psnr_input_masked`` and ``ssim_input`` inside the head mask of the
aligned crop, ``faces_found``, ``phase_losses``, ``seconds``; with several photos the
first photo's figures at the top and every photo's under ``images``).
A photo without a detectable face is refused with a clear message (exit status 2).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from gphm.cli import UserError, check_device_option, cli_device, run_cli, write_report
from gphm.data.preprocess.detectors import BackendUnavailableError, NoFaceError
from gphm.fitting.fit import FitConfig
from gphm.fitting.photo import image_report, overlay
from gphm.fitting.sources import fit_photos
from gphm.fitting.views import orbit_rig, render_codes
from gphm.io.atomic import check_output_dir
from gphm.io.images import image_grid, save_png
from gphm.io.limits import check_render_size
from gphm.io.video import save_mp4
from gphm.models.runs import load_run


@dataclass
class FitImageConfig:
    checkpoint: str = MISSING
    """Trained run directory (RUN/model is used)."""
    image: str | None = None
    """The photo (.png/.jpg); or give ``images``."""
    out: str = MISSING
    images: list[str] = field(default_factory=list)
    """Several photos of one person, fitted together (instead of ``image``)."""
    landmarks: str | None = None
    """Optional 68-point iBUG .pts file in input-image pixels (skips detection; one
    photo only)."""
    face: int = 0
    """Which face of a photo with several, by size: 0 = the largest."""
    landmarks_gt: str | None = None
    """Optional hand-labelled .pts of the (first) photo, for the report's NME only."""
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
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""

    def __post_init__(self) -> None:
        check_device_option(self.device)
        if (self.image is None) == (not self.images):
            raise ValueError("give image=PHOTO or images=[PHOTO,...] (one of them)")
        if self.images and self.landmarks:
            raise ValueError("landmarks= goes with a single image=")
        if self.face < 0:
            raise ValueError(f"face must be >= 0 (0 = the largest face), got {self.face}")
        if self.views < 1 or self.frames < 2 or self.size < 16 or self.fps < 1:
            raise ValueError("views >= 1, frames >= 2, size >= 16 and fps >= 1 are required")
        check_render_size(self.size, max(self.frames, self.views))


def main(cfg: FitImageConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    try:
        check_output_dir(out, cfg.overwrite)  # before the fit: refuse in a second, not minutes
        run = load_run(cfg.checkpoint, device=cli_device(cfg.device))
        images = [cfg.image] if cfg.image is not None else list(cfg.images)
        prepared, result = fit_photos(
            run,
            images,
            cfg.detector,
            None if cfg.landmarks is None else [cfg.landmarks],
            cfg.fit,
            progress=sys.stderr.isatty(),
            face=cfg.face,
        )
        reports = [image_report(p, fit, cfg.landmarks_gt if i == 0 else None)
                   for i, (p, fit) in enumerate(zip(prepared, result.images))]  # fmt: skip
    except NoFaceError as err:
        raise UserError(f"{err} — fitting needs a photo with one visible face") from None
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError,
            BackendUnavailableError) as err:  # fmt: skip
        raise UserError(str(err)) from None
    avatar = result.avatar
    avatar.report = {"images": images, "psnr_input": round(result.psnr, 3),
                     "psnr_input_masked": reports[0]["psnr_input_masked"]}  # fmt: skip
    avatar.save(out / "avatar", overwrite=cfg.overwrite)
    # Aligned input | fit | blend (detected landmarks green, fitted red), a row per photo.
    save_png(out / "overlay.png", overlay(prepared, result))

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

    report = {
        **reports[0],  # the (first) photo: landmarks, errors, PSNR/SSIM, faces_found
        "image": images[0],
        "checkpoint": str(cfg.checkpoint),
        "model": avatar.model_class,
        "landmark_source": "file" if cfg.landmarks else cfg.detector,
        "seconds": round(result.seconds, 2),
        "aligned_size": avatar.image_size,
        "psnr_input_masked_phase1": round(result.phase1_psnr_masked, 3),
        "fit": {"phase1_steps": cfg.fit.phase1_steps, "phase2_steps": cfg.fit.phase2_steps},
        "phase_losses": result.phase_losses,
        "history": result.history,
        "outputs": ["avatar/", "overlay.png", "novel_views.png", "orbit.mp4"],
    }
    if len(images) > 1:
        report["images"] = reports
        report["expressions"] = sorted(avatar.expressions)
    write_report(out / "report.json", report)
    return report


def cli(argv: list[str] | None = None) -> int:
    """The ``fit`` command: parse ``argv`` (default: the process's), run, summarise."""
    return run_cli(FitImageConfig, main, argv, summary=lambda r: (
        f"fit_image: {r['image']} fitted in {r['seconds']} s; landmark error "
        f"{r['landmark_error_px']} px, input-view PSNR {r['psnr_input']} dB"
    ))  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli())
