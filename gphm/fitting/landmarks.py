"""Landmark accuracy against hand labels: the normalised mean error (NME) of 300-W.

``nme = mean_i ||pred_i - truth_i|| / ||truth_36 - truth_45||``: the mean point-to-point
distance over the 68 iBUG landmarks divided by the distance between the outer eye
corners (36: the subject's right eye's outer corner, 45: the left eye's), the
"inter-ocular" normalisation of the 300-W benchmark. Rows that are not finite in either
array are left out (a partial annotation). Pixels in any convention, as long as both
arrays share it (:func:`~gphm.data.preprocess.single_image.read_pts` converts iBUG
files to ours).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gphm.data.preprocess.single_image import read_pts

__all__ = ["inter_ocular", "nme", "nme_against_pts"]


def inter_ocular(truth: np.ndarray) -> float:  # [68, 2] -> distance in pixels
    """Distance between the outer eye corners 36 and 45 of iBUG-68 landmarks."""
    truth = np.asarray(truth, np.float64)
    if truth.shape != (68, 2):
        raise ValueError(f"expected iBUG-68 landmarks [68, 2], got {truth.shape}")
    d = float(np.linalg.norm(truth[45] - truth[36]))
    if not (np.isfinite(d) and d > 0):
        raise ValueError("the outer eye corners (36, 45) coincide or are missing")
    return d


def nme(pred: np.ndarray, truth: np.ndarray) -> float:  # [68, 2] x2 -> []
    """Normalised mean error (module docstring)."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape:
        raise ValueError(
            f"pred and truth must have the same shape, got {pred.shape}, {truth.shape}"
        )
    ok = np.isfinite(pred).all(-1) & np.isfinite(truth).all(-1)
    if not ok.any():
        raise ValueError("no landmark is finite in both arrays")
    return float(np.linalg.norm(pred[ok] - truth[ok], axis=-1).mean() / inter_ocular(truth))


def nme_against_pts(pred: np.ndarray, pts: str | Path) -> float:
    """:func:`nme` of ``pred`` [68, 2] (our pixel convention, input-image pixels)
    against an iBUG ``.pts`` file of the same image."""
    return nme(pred, read_pts(pts))
