"""Evaluation of a trained stage-1 model on a dataset split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gphm import metrics
from gphm.data.loaders import HeadDataset, collate_views
from gphm.geometry.mesh import euler_characteristic, is_watertight
from gphm.models.guidance import GuidanceModel

__all__ = ["evaluate_guidance", "mesh_report"]


def mesh_report(verts: torch.Tensor, faces: torch.Tensor) -> dict[str, Any]:
    """Topology of a mesh: counts, watertightness, Euler characteristic, components."""
    F = faces.cpu().numpy()
    n = int(verts.shape[0])
    rows = np.concatenate([F[:, 0], F[:, 1], F[:, 2]])
    cols = np.concatenate([F[:, 1], F[:, 2], F[:, 0]])
    graph = coo_matrix((np.ones_like(rows), (rows, cols)), shape=(n, n))
    components = connected_components(graph, directed=False)[0] if n else 0
    return {
        "vertices": n,
        "faces": int(faces.shape[0]),
        "watertight": bool(is_watertight(faces)),
        "euler_characteristic": int(euler_characteristic(verts, faces)),
        "components": int(components),
    }


@torch.no_grad()
def evaluate_guidance(
    model: GuidanceModel,
    data_path: str | Path,
    split: str = "heldout_view",
    lr_size: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Silhouette IoU, landmark error and PSNR/SSIM of ``model`` on ``split``.

    Rows must belong to frames the model has expression codes for (``heldout_view``
    or ``train``). Returns means over rows plus ``n``.
    """
    ds = HeadDataset(data_path, split=split, lr_size=lr_size)
    model = model.to(device).eval()
    mm = model.mean_mesh()
    acc: dict[str, list[torch.Tensor]] = {k: [] for k in
        ("iou", "lmk", "lmk_rel", "psnr", "psnr_masked", "ssim")}  # fmt: skip
    for start in range(0, len(ds), batch_size):
        b = collate_views([ds[i] for i in range(start, min(len(ds), start + batch_size))])
        b = b.to(device)
        h, w = b.image_lr.shape[1:3]
        out = model.render(
            model.identity_codes(b.subject), model.expression_codes(b.frame), b.head_R,
            b.head_T, b.head_scale, b.viewmat, b.K_lr, w, h, mean_mesh=mm,
        )  # fmt: skip
        lmk, lmk_rel = metrics.landmark_error(out.landmarks, b.landmarks_3d)
        acc["iou"].append(metrics.mask_iou(out.mask, b.mask_lr))
        acc["lmk"].append(lmk)
        acc["lmk_rel"].append(lmk_rel)
        acc["psnr"].append(metrics.psnr(out.rgb, b.image))
        acc["psnr_masked"].append(metrics.masked_psnr(out.rgb, b.image, b.mask))
        acc["ssim"].append(metrics.ssim(out.rgb, b.image))
    mean = {k: float(torch.cat(v).mean()) for k, v in acc.items()}
    return {
        "split": split,
        "n": len(ds),
        "silhouette_iou": round(mean["iou"], 4),
        "landmark_error": round(mean["lmk"], 5),
        "landmark_error_relative": round(mean["lmk_rel"], 5),
        "psnr": round(mean["psnr"], 3),
        "psnr_masked": round(mean["psnr_masked"], 3),
        "ssim": round(mean["ssim"], 4),
        "mean_mesh": mesh_report(mm.verts, mm.faces),
    }
