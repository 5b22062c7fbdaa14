"""Fit a new person from a photo, or from several photos of them (docs/architecture.md §3.5, §7).

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
``mask_source`` says which. A non-empty ``OUT`` is refused unless ``overwrite=true``, and
even then unless it is an earlier fit (nothing but the outputs below) holding none of the
inputs: ``OUT`` is built in a temporary sibling and replaced as a whole, so a kill leaves
the earlier fit or the new one, never a mix.
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

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from gphm.cli import UserError, check_device_option, cli_device, run_cli, write_report
from gphm.data.preprocess.detectors import BackendUnavailableError, NoFaceError
from gphm.fitting.avatar import is_avatar_dir
from gphm.fitting.fit import FitConfig
from gphm.fitting.photo import image_report, overlay
from gphm.fitting.sources import fit_photos
from gphm.io.atomic import (
    ReplaceError,
    atomic_directory,
    check_output_dir,
    check_swappable,
)
from gphm.io.images import image_grid, save_png
from gphm.io.limits import check_frames, check_steps, compute_device
from gphm.io.video import save_mp4
from gphm.models.runs import load_run
from gphm.rendering import orbit_rig, render_codes


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
    """Replace ``out`` when it is an earlier fit (never a folder of other files)."""
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
        if self.size % 2:  # the orbit video is H.264: even frame sizes only
            raise ValueError(f"size must be even (the orbit video is H.264), got {self.size}")
        device, steps = compute_device(self.device), self.fit.phase1_steps + self.fit.phase2_steps
        check_steps(steps, f"fit.phase1_steps + fit.phase2_steps = {steps}", device)
        check_frames(self.size, self.frames + self.views, f"frames={self.frames} + views="
                     f"{self.views}", device)  # fmt: skip


FIT_OUTPUTS = ("avatar", "overlay.png", "novel_views.png", "orbit.mp4", "report.json")
"""Everything a fit writes into ``out``: a folder holding only these (and a stray
temporary of them) is an earlier fit, the only non-empty folder ``overwrite`` replaces."""
_STRAY = re.compile(r"^\.(?:avatar|overlay|novel_views|orbit|report)\.")  # temporaries


def is_fit_dir(path: str | Path) -> bool:
    """Whether ``path`` is an earlier fit's output: ``report.json``, an avatar in
    ``avatar/`` (``avatar.json`` and ``avatar.safetensors`` only) and nothing but
    :data:`FIT_OUTPUTS` and stray temporaries of a killed writer beside them."""
    path = Path(path)
    if not (path / "report.json").is_file() or not is_avatar_dir(path / "avatar"):
        return False
    names = {p.name for p in path.iterdir()}
    if any(n not in FIT_OUTPUTS and not _STRAY.match(n) for n in names):
        return False
    return {p.name for p in (path / "avatar").iterdir()} <= {"avatar.json", "avatar.safetensors"}


def check_fit_out(out: Path, overwrite: bool, inputs: dict[str, str | None]) -> None:
    """Refuse, before any work, an ``out`` the fit may not replace as a whole: a file; a
    non-empty folder without ``overwrite``; with it, a folder that is not an earlier fit
    (:func:`is_fit_dir`: a folder of the user's files is never replaced) or that holds
    one of ``inputs`` (``{"image": path, ...}``: the photo, landmarks or the checkpoint
    would go with it), or one that cannot be swapped (a mount point, the current
    directory). ``FileExistsError`` / ``NotADirectoryError`` naming ``out=``."""
    check_output_dir(out, overwrite)
    check_swappable(out)  # even an empty out: it is replaced by the finished one
    if not out.is_dir() or not any(out.iterdir()):
        return
    where = out.resolve()
    for option, value in inputs.items():
        if value is not None and Path(value).resolve().is_relative_to(where):
            raise FileExistsError(
                f"out={out} holds the input {option}={value}; the fit replaces out as a "
                "whole: choose another out"
            )
    if not is_fit_dir(out):
        raise FileExistsError(
            f"out={out} is not empty and is not an earlier fit (only "
            f"{', '.join(FIT_OUTPUTS)}); the fit replaces out as a whole, so it does not "
            "even with overwrite=true: choose a new or empty out"
        )


def check_fit_size(cfg: FitImageConfig, factor: int) -> None:
    """Refuse (``ValueError``) a ``size`` the model cannot render (a multiple of its
    upsampling ``factor``), before the fit rather than after it."""
    if cfg.size % factor:
        raise ValueError(
            f"size={cfg.size} must be a multiple of the model's upsampling factor {factor}"
        )


def main(cfg: FitImageConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    images = [cfg.image] if cfg.image is not None else list(cfg.images)
    inputs = {"checkpoint": cfg.checkpoint, "landmarks": cfg.landmarks,
              "landmarks_gt": cfg.landmarks_gt,
              **{("image" if cfg.image is not None else f"images[{i}]"): p
                 for i, p in enumerate(images)}}  # fmt: skip
    try:
        check_fit_out(out, cfg.overwrite, inputs)  # before the fit: refuse in a second
        run = load_run(cfg.checkpoint, device=cli_device(cfg.device))
        check_fit_size(cfg, run.model.upsampler.config.factor)
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
            BackendUnavailableError, ReplaceError) as err:  # fmt: skip
        raise UserError(str(err)) from None
    # All outputs are built in a temporary sibling and swapped in at once: a kill leaves
    # the earlier fit or this one, never a mix (the next run sweeps the temporary).
    with atomic_directory(out, overwrite=True) as tmp:  # check_fit_out vetted out
        report = write_fit(tmp, cfg, run, images, prepared, result, reports)
    return report


def write_fit(
    out: Path,
    cfg: FitImageConfig,
    run: Any,
    images: list[str],
    prepared: Any,
    result: Any,
    reports: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write :data:`FIT_OUTPUTS` of a finished fit into the (new, empty) folder ``out``;
    returns the report."""
    avatar = result.avatar
    avatar.report = {"images": images, "psnr_input": round(result.psnr, 3),
                     "psnr_input_masked": reports[0]["psnr_input_masked"]}  # fmt: skip
    avatar.save(out / "avatar")
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
        "prior_trust": round(result.prior_trust, 3),  # fit.trusted_prior_views' τ
        "fit": {"phase1_steps": cfg.fit.phase1_steps, "phase2_steps": cfg.fit.phase2_steps},
        # The collapse guard: each image's render coverage of its mask after phase 1, and
        # what it did when one fell below fit.min_coverage (restart, phase 2 dropped).
        "coverage_phase1": [round(float(c), 4) for c in result.phase1_coverage],
        "recoveries": result.recoveries,
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
