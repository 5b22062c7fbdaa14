"""What ``gphm-fit`` (``scripts/fit_image.py``) reports about a photo fit.

Every figure is computed for each input photo (:func:`image_report`); the aligned crop
(``PreparedImage``) is where the fit was made, input-image pixels are where a user's
annotations live, so landmarks are reported in the latter (the alignment is a 2D
similarity, its inverse ``PreparedImage.to_input`` is exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gphm.data.preprocess.single_image import PreparedImage
from gphm.fitting.fit import FitResult, ImageFit
from gphm.fitting.landmarks import nme_against_pts
from gphm.io.images import draw_points, image_grid

__all__ = ["image_report", "overlay"]


def _finite(x: float, digits: int) -> float | None:
    return round(float(x), digits) if np.isfinite(x) else None


def image_report(
    prepared: PreparedImage,
    fit: ImageFit,
    landmarks_gt: str | Path | None = None,
) -> dict[str, Any]:
    """The report of one fitted photo:

    * ``fitted_landmarks`` / ``detected_landmarks`` [68, 2]: the fit's projected and the
      detector's (or given) landmarks in input-image pixels (pixel centres at i + 0.5);
    * ``landmark_error_px``: their mean distance in input pixels
      (``landmark_error_px_aligned``: in pixels of the aligned crop);
    * ``psnr_input`` (the whole aligned crop, background white), ``psnr_input_masked``
      and ``ssim_input`` (inside the photo's head mask, in the aligned crop);
    * ``coverage``: the fraction of the head mask that the fitted render covers
      (:func:`~gphm.inversion.guard.coverage`; a collapsed fit is near 0 and refused);
    * ``faces_found`` / ``face``: how many faces the detector found and which was fitted
      (None with given landmarks);
    * with ``landmarks_gt`` (an iBUG ``.pts`` of the input photo): ``nme_fitted`` and
      ``nme_detected`` (:func:`~gphm.fitting.landmarks.nme`, inter-ocular normalised).
    """
    scale = float(np.sqrt(abs(np.linalg.det(prepared.to_input[:, :2]))))
    fitted = prepared.map_to_input(fit.landmarks.double().numpy())
    detected = prepared.map_to_input(prepared.landmarks)
    out: dict[str, Any] = {
        "image": prepared.source,
        "input_size": list(prepared.input_size),
        "faces_found": prepared.faces_found,
        "face": prepared.face if prepared.faces_found is not None else None,
        "mask_source": prepared.mask_source,
        "landmark_error_px": round(fit.landmark_error_px * scale, 3),
        "landmark_error_px_aligned": round(fit.landmark_error_px, 3),
        "psnr_input": _finite(fit.psnr, 3),
        "psnr_input_masked": _finite(fit.psnr_masked, 3),
        "ssim_input": _finite(fit.ssim_masked, 4),
        "coverage": _finite(fit.coverage, 4),
        "fitted_landmarks": np.round(fitted, 2).tolist(),
        "detected_landmarks": np.round(detected, 2).tolist(),
    }
    if landmarks_gt is not None:
        out["landmarks_gt"] = str(landmarks_gt)
        out["nme_fitted"] = round(nme_against_pts(fitted, landmarks_gt), 4)
        out["nme_detected"] = round(nme_against_pts(detected, landmarks_gt), 4)
    return out


def overlay(prepared: list[PreparedImage], result: FitResult) -> Tensor:  # [H, W, 3]
    """One row per photo: aligned input | fit | blend, detected landmarks green and
    fitted landmarks red on the blend."""
    tiles = []
    for p, fit in zip(prepared, result.images):
        aligned = torch.from_numpy(p.rgb).float()
        detected = torch.from_numpy(p.landmarks).float()
        blend = draw_points(draw_points(0.5 * aligned + 0.5 * fit.render, detected),
                            fit.landmarks, (1.0, 0.0, 0.0))  # fmt: skip
        tiles += [aligned, fit.render, blend]
    return image_grid(tiles, ncols=3)
