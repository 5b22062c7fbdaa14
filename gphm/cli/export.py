"""Animatable export of one identity for 3D Gaussian Splatting engines (gphm.export).

    python scripts/export.py checkpoint=RUN subject=NAME|INDEX|AVATAR_DIR out=DIR
        [num_components=8] [sh_degree=3] [neutral=LABEL] [fidelity=true]
        [fidelity_size=SIZE] [fidelity_views=4] [overwrite=true] [up=+y|-y]

Writes ``DIR/neutral.ply`` and ``DIR/expressions/<label>.ply`` (standard 3DGS PLYs in
canonical head space, one per trained expression label), ``DIR/blendshapes.npz`` +
``DIR/blendshapes.json`` (a linear expression basis: per-Gaussian deltas from neutral,
K PCA components and the weights of each label, with the PSNR curve over K) and
``DIR/export_report.json``. ``subject`` may be a fitted avatar directory
(``scripts/fit_image.py``'s ``OUT/avatar``). A non-empty ``DIR`` is refused (exit status
2) unless ``overwrite=true``, and is then replaced only if it holds an earlier export.
``up=-y`` writes the head turned half a turn about x, for viewers made for y-down 3DGS
captures (the default ``+y`` is gphm's canonical space, upright in y-up engines).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from omegaconf import MISSING

from gphm.cli import UserError, run_cli
from gphm.export import FidelityOptions, export_run
from gphm.export.axes import DEFAULT_UP, check_up
from gphm.io.limits import check_frames, compute_device
from gphm.models.runs import load_run


@dataclass
class ExportConfig:
    checkpoint: str = MISSING
    """Run directory (or its model/ directory) of a Gaussian head."""
    subject: str = MISSING
    """Training subject name or index, or a fitted avatar directory."""
    out: str = MISSING
    num_components: int = 8
    """Expression components stored in blendshapes.npz (at most the rank of the deltas)."""
    sh_degree: int = 3
    """SH degree of the PLYs: 3 writes 45 zero f_rest_* (what the reference 3DGS loader
    expects), 0 the small 17-property file."""
    neutral: str | None = None
    """Label the basis starts from (default: 'neutral' if trained, else the first label)."""
    fidelity: bool = True
    """Measure the PSNR curve over K (renders every label several times per view)."""
    fidelity_size: int | None = None
    """Fidelity render size in pixels (default: the model's output size)."""
    fidelity_views: int = 4
    overwrite: bool = False
    """Replace an earlier export in ``out``."""
    up: str = DEFAULT_UP
    """Up axis of the written PLYs and basis: "+y" (gphm's canonical space: upright in
    y-up engines such as PlayCanvas) or "-y" (turned half a turn about x: the y-down
    convention of 3DGS captures, for viewers that turn every scene over)."""

    def __post_init__(self) -> None:
        if self.num_components < 0:
            raise ValueError(f"num_components must be >= 0, got {self.num_components}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {self.sh_degree}")
        if self.fidelity_views < 1 or (self.fidelity_size is not None and self.fidelity_size < 8):
            raise ValueError("fidelity_views must be >= 1 and fidelity_size >= 8")
        if self.fidelity and self.fidelity_size is not None:  # else the model's size
            check_frames(self.fidelity_size, self.fidelity_views,
                         f"fidelity_views={self.fidelity_views}", compute_device())  # fmt: skip
        check_up(self.up)


def main(cfg: ExportConfig) -> dict:
    try:
        run = load_run(cfg.checkpoint)
        fidelity: FidelityOptions | bool = cfg.fidelity
        if cfg.fidelity:
            size = cfg.fidelity_size or int(run.extra.get("hr_size") or 256)
            fidelity = FidelityOptions(size=size, views=cfg.fidelity_views)
        report = export_run(run, cfg.subject, cfg.out, neutral=cfg.neutral,
                            num_components=cfg.num_components, sh_degree=cfg.sh_degree,
                            overwrite=cfg.overwrite, fidelity=fidelity, up=cfg.up)  # fmt: skip
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as err:
        raise UserError(str(err)) from None
    return report.to_dict()


def summary(r: dict) -> str:
    line = (
        f"export: {len(r['labels'])} expressions of {r['metadata']['identity']['name']} "
        f"({r['num_gaussians']} Gaussians, SH degree {r['sh_degree']}), "
        f"{r['num_components']} components (rank {r['rank']})"
    )
    target = (r.get("fidelity") or {}).get("target")
    if target:
        line += (f"; K={target['components']} blend within {target['max_drop_db']:.2f} dB "
                 f"of the exact splats")  # fmt: skip
    return line + f" -> {r['out_dir']}"


def cli(argv: list[str] | None = None) -> int:
    """The ``export`` command: parse ``argv`` (default: the process's), run, summarise."""
    return run_cli(ExportConfig, main, argv, summary=summary)


if __name__ == "__main__":
    sys.exit(cli())
