"""Expression editing by code swapping (docs/architecture.md §3.5, §7).

    python scripts/edit_expression.py checkpoint=RUN source=SPEC target=SPEC out=OUT \
        [drive=[jaw_open,smile,...]] [overwrite=true]

A SPEC is a training subject (``synth_003``, ``synth_003:jaw_open``, ``synth_003@17``),
a fitted avatar directory (``scripts/fit_image.py``'s ``OUT/avatar``) or an image file
(fitted first). The source keeps its identity (and, for avatars, its fine-tuned colours
and offsets) and takes the target's expression code.

Writes ``OUT/transfer.png`` (source | target | source with the target's expression, front
view), ``OUT/transfer_views.png`` (the result from four views), ``OUT/drive.mp4`` (the
source driven through ``drive`` — expression labels of the trained model, default the
target subject's trained expressions — then the target expression, blending the codes
between keyframes) and ``OUT/edit_report.json``. A non-empty ``OUT`` is refused (exit
status 2) unless ``overwrite=true``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING

from gphm.cli import UserError, check_device_option, cli_device, run_cli, write_report
from gphm.data.preprocess.detectors import BackendUnavailableError, NoFaceError
from gphm.fitting.edit import blend_keyframes, drive_keyframes, render_source
from gphm.fitting.fit import FitConfig
from gphm.fitting.sources import resolve_source
from gphm.io.atomic import check_output_dir
from gphm.io.images import image_grid, save_png
from gphm.io.limits import check_frames, check_render_size, compute_device
from gphm.io.video import save_mp4
from gphm.models.runs import load_run
from gphm.rendering import orbit_rig


@dataclass
class EditConfig:
    checkpoint: str = MISSING
    source: str = MISSING
    """Identity: SUBJECT[:EXPRESSION|@FRAME], an avatar directory or an image."""
    target: str = MISSING
    """Expression: same forms as source."""
    out: str = MISSING
    drive: list[str] = field(default_factory=list)
    """Expression labels driving the video (default: the target subject's, else the
    trained labels)."""
    steps_between: int = 8
    """Video frames blending from one keyframe expression to the next."""
    size: int = 256
    fps: int = 24
    detector: str = "mediapipe"
    fit: FitConfig = field(default_factory=FitConfig)
    overwrite: bool = False
    """Write into a non-empty ``out`` (files with the same names are replaced)."""
    device: str = "auto"
    """auto (CUDA when available) | cpu | cuda | cuda:N."""

    def __post_init__(self) -> None:
        check_device_option(self.device)
        if self.steps_between < 1 or self.size < 16 or self.fps < 1:
            raise ValueError("steps_between >= 1, size >= 16 and fps >= 1 are required")
        # The drive video has at least steps_between frames per drive label (one label
        # when drive is empty: the target's); six more renders for the two pictures.
        labels = max(1, len(self.drive))
        option = f"steps_between={self.steps_between}" + (
            f" x {labels} drive labels" if labels > 1 else ""
        )
        check_frames(self.size, self.steps_between * labels + 6, option,
                     compute_device(self.device))  # fmt: skip


@torch.no_grad()
def main(cfg: EditConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    try:
        run = load_run(cfg.checkpoint, device=cli_device(cfg.device))
        source = resolve_source(cfg.source, run, cfg.fit, cfg.detector)
        target = resolve_source(cfg.target, run, cfg.fit, cfg.detector)
        labels, keys, drive_from = drive_keyframes(run, target, cfg.drive)
    except NoFaceError as err:
        raise UserError(f"{err} — an image source/target needs one visible face") from None
    except (FileNotFoundError, ValueError, BackendUnavailableError) as err:
        raise UserError(str(err)) from None
    try:
        check_output_dir(out, cfg.overwrite)
    except (FileExistsError, NotADirectoryError) as err:
        raise UserError(str(err)) from None
    model = run.model
    factor = model.upsampler.config.factor
    front = orbit_rig(1, cfg.size, factor)
    src_img = render_source(source, source.z_exp[None], front)[0, 0]
    tgt_img = render_source(target, target.z_exp[None], front)[0, 0]
    result = render_source(source, target.z_exp[None], front)[0, 0]
    save_png(out / "transfer.png", image_grid([src_img, tgt_img, result], ncols=3))
    four = orbit_rig(4, cfg.size, factor, azimuth_range=(-60, 60), endpoint=True)
    views = render_source(source, target.z_exp[None], four)[0]
    save_png(out / "transfer_views.png", image_grid(list(views), ncols=4))

    # Drive: source expression -> each keyframe in turn, codes blended linearly.
    stops = [source.z_exp] + keys
    seq = blend_keyframes(stops, cfg.steps_between)
    try:
        check_render_size(cfg.size, len(seq))
    except ValueError as err:
        raise UserError(f"{err}; fewer drive labels or steps_between help") from None
    frames = render_source(source, seq, front)[:, 0]
    save_mp4(out / "drive.mp4", list(frames), fps=cfg.fps)
    report = {
        "source": {"spec": cfg.source, "kind": source.kind, "label": source.label},
        "target": {"spec": cfg.target, "kind": target.kind, "label": target.label},
        "drive": labels,
        "drive_from": drive_from,
        "video_frames": len(frames),
        "outputs": ["transfer.png", "transfer_views.png", "drive.mp4"],
    }
    write_report(out / "edit_report.json", report)
    return report


def cli(argv: list[str] | None = None) -> int:
    """The ``edit`` command: parse ``argv`` (default: the process's), run, summarise."""
    return run_cli(EditConfig, main, argv, summary=lambda r: (
        f"edit_expression: {r['source']['label']} with the expression of "
        f"{r['target']['label']}; drive video of {r['video_frames']} frames"
    ))  # fmt: skip


if __name__ == "__main__":
    sys.exit(cli())
