#!/usr/bin/env python
"""Evaluate a trained run on a dataset split (DESIGN.md §5, §6).

    python scripts/evaluate.py run_dir=RUN data.path=DIR split=heldout_view|heldout_combo|fit

* ``heldout_view``: training frames from cameras never used in training.
* ``heldout_combo``: (subject, expression) pairs never trained, rendered by expression
  code swapping from another subject's training frame with the same label.
* ``fit``: every subject of DIR (a dataset the model never saw) is fitted from one
  camera view (``fit.view``, with the dataset's own landmarks projected into it) and
  scored on the other views of that frame, after scaling the fit about the input camera
  to the true head size, which one image cannot tell (``psnr_unaligned``: without).

Writes ``RUN/eval/<split>.json`` (``psnr``, ``psnr_masked``, ``ssim``, ``ssim_masked``,
``lpips`` — null when unavailable — and ``n``) and ``RUN/eval/<split>/side_by_side.png``
(prediction | ground truth).
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

import torch
from omegaconf import MISSING

from gphm.cli import UserError, run_cli, write_report
from gphm.models.runs import load_run
from gphm.perceptual import lpips_available
from gphm.training.config import DataConfig
from gphm.training.evaluate import SPLITS, evaluate_model

ALL_SPLITS = (*SPLITS, "fit")


@dataclass
class EvalFitConfig:
    view: str | None = None
    """Camera the single input image comes from (default: the dataset's first camera)."""
    frame: str | None = None
    """Expression label of the frame fitted per subject (default: the subject's first)."""
    max_subjects: int = 0
    """Fit at most this many subjects (0 = all)."""


@dataclass
class EvaluateConfig:
    run_dir: str = MISSING
    """Trained run directory (RUN/model is evaluated)."""
    data: DataConfig = field(default_factory=DataConfig)
    split: str = "heldout_view"
    """heldout_view | heldout_combo | fit."""
    batch_size: int = 8
    out: str | None = None
    """Report directory (default RUN/eval)."""
    fit: EvalFitConfig = field(default_factory=EvalFitConfig)

    def __post_init__(self) -> None:
        if self.split not in ALL_SPLITS:
            raise ValueError(f"split must be one of {'|'.join(ALL_SPLITS)}, got {self.split!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        run = load_run(cfg.run_dir, device=device)
        out = Path(cfg.out) if cfg.out else Path(cfg.run_dir) / "eval"
        if cfg.split == "fit":
            from gphm.fitting.evaluate import evaluate_fit

            result = evaluate_fit(run, cfg.data.path, view=cfg.fit.view, frame=cfg.fit.frame,
                                  max_subjects=cfg.fit.max_subjects, save_dir=out / "fit",
                                  progress=sys.stderr.isatty())  # fmt: skip
        else:
            result = evaluate_model(
                run.model, cfg.data.path, cfg.split, lr_size=run.extra.get("lr_size"),
                batch_size=cfg.batch_size, device=device, save_dir=out / cfg.split,
                progress=sys.stderr.isatty(),
            )  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    available, reason = lpips_available()
    if not available:
        result["lpips_unavailable"] = reason
    result["run_dir"] = str(cfg.run_dir)
    result["data"] = str(cfg.data.path)
    write_report(out / f"{cfg.split}.json", result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(EvaluateConfig, main, summary=lambda r: (
        f"evaluate {r['split']}: n={r['n']} PSNR {r['psnr']} dB (head {r['psnr_masked']}"
        + (f", scale not aligned {r['psnr_unaligned']}" if "psnr_unaligned" in r else "")
        + f"), SSIM {r['ssim']} (head {r['ssim_masked']}), LPIPS {r['lpips']}"
    )))  # fmt: skip
