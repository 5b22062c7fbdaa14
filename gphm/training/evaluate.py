"""Evaluation of a trained model (either stage) on a dataset split (DESIGN.md §5, §6).

* ``heldout_view``: training frames seen from cameras never used in training; each row
  is rendered with its own identity and expression codes.
* ``heldout_combo``: (subject, expression) pairs never trained. Expression transfer by
  code swapping: subject A is rendered with the ``z_exp`` of a training frame of another
  subject B showing the same expression label (B = the next subject after A that has
  one), at A's ground-truth head pose and camera, and compared with A's image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from gphm import metrics
from gphm.data.loaders import HeadBatch, HeadDataset, collate_views
from gphm.geometry.mesh import euler_characteristic, is_watertight
from gphm.io.images import image_grid, save_png
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel

__all__ = ["evaluate_model", "mesh_report", "transfer_frames", "SPLITS"]

SPLITS = ("heldout_view", "heldout_combo")


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


def transfer_frames(
    frames: list[dict[str, Any]], train_frames: set[int], subjects: list[str]
) -> dict[tuple[int, str], int]:
    """``(subject A, expression label) -> training frame of another subject B`` with that
    label, B being the first subject after A (cyclically) that has one."""
    by_label: dict[str, dict[int, int]] = {}
    for f in sorted(train_frames):
        info = frames[f]
        s = info["subject"]
        s = subjects.index(s) if isinstance(s, str) else int(s)
        by_label.setdefault(info.get("expression"), {}).setdefault(s, f)
    table = {}
    n = len(subjects)
    for label, donors in by_label.items():
        for a in range(n):
            for k in range(1, n):
                b = (a + k) % n
                if b in donors:
                    table[(a, label)] = donors[b]
                    break
    return table


def _render(model: GuidanceModel | GaussianHead, b: HeadBatch, z_id, z_exp, context: dict):
    h, w = b.image_lr.shape[1:3]
    return model.render(
        z_id, z_exp, b.head_R, b.head_T, b.head_scale, b.viewmat, b.K_lr, w, h, **context
    )


@torch.no_grad()
def evaluate_model(
    model: GuidanceModel | GaussianHead,
    data_path: str | Path,
    split: str = "heldout_view",
    lr_size: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    save_dir: str | Path | None = None,
    num_images: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """PSNR/SSIM (full image and head region), silhouette IoU and landmark error of
    ``model`` on ``split``; means over rows plus ``n``. LPIPS is ``null`` (see
    :func:`gphm.perceptual.lpips_available`).

    ``save_dir``: writes ``side_by_side.png`` (prediction | ground truth, the first
    ``num_images`` rows, spread over the split).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {'|'.join(SPLITS)}, got {split!r}")
    ds = HeadDataset(data_path, split=split, lr_size=lr_size)
    model = model.to(device).eval()
    swap = None
    if split == "heldout_combo":
        train = HeadDataset(data_path, split="train", lr_size=lr_size)
        swap = transfer_frames(ds.meta["frames"], {int(f) for f in train.frames},
                               list(ds.meta["subjects"]))  # fmt: skip
    keys = ("iou", "lmk", "lmk_rel", "psnr", "psnr_masked", "ssim", "ssim_masked")
    acc: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    show = set(np.linspace(0, len(ds) - 1, min(num_images, len(ds))).round().astype(int).tolist())
    tiles: list[torch.Tensor] = []
    context = model.render_context()
    donors: list[int] = []
    starts = range(0, len(ds), batch_size)
    for start in tqdm(starts, desc=f"eval {split}", disable=not progress):
        idx = list(range(start, min(len(ds), start + batch_size)))
        b = collate_views([ds[i] for i in idx]).to(device)
        frame = b.frame
        if swap is not None:
            try:
                donor = [swap[(int(s), e)] for s, e in zip(b.subject, b.expression)]
            except KeyError as err:
                raise ValueError(
                    f"{data_path}: no training frame of another subject shows expression "
                    f"{err.args[0][1]!r}, so heldout_combo cannot be evaluated by code swapping"
                ) from None
            donors += donor
            frame = torch.tensor(donor, device=device)
        out = _render(model, b, model.identity_codes(b.subject), model.expression_codes(frame),
                      context)  # fmt: skip
        rgb = out.rgb.clamp(0, 1)
        lmk, lmk_rel = metrics.landmark_error(out.landmarks, b.landmarks_3d)
        acc["iou"].append(metrics.mask_iou(out.mask, b.mask_lr))
        acc["lmk"].append(lmk)
        acc["lmk_rel"].append(lmk_rel)
        acc["psnr"].append(metrics.psnr(rgb, b.image))
        acc["psnr_masked"].append(metrics.masked_psnr(rgb, b.image, b.mask))
        acc["ssim"].append(metrics.ssim(rgb, b.image))
        acc["ssim_masked"].append(metrics.masked_ssim(rgb, b.image, b.mask))
        for j, i in enumerate(idx):
            if i in show:
                tiles += [rgb[j].cpu(), b.image[j].cpu()]
    mean = {k: float(torch.cat(v).mean()) for k, v in acc.items()}
    result: dict[str, Any] = {
        "split": split,
        "n": len(ds),
        "model": type(model).__name__,
        "psnr": round(mean["psnr"], 3),
        "psnr_masked": round(mean["psnr_masked"], 3),
        "ssim": round(mean["ssim"], 4),
        "ssim_masked": round(mean["ssim_masked"], 4),
        "lpips": None,
        "silhouette_iou": round(mean["iou"], 4),
        "landmark_error": round(mean["lmk"], 5),
        "landmark_error_relative": round(mean["lmk_rel"], 5),
    }
    if swap is not None:
        result["transfer"] = "z_exp of the same expression label from the next subject"
        result["donor_frames"] = sorted(set(donors))
    if "mean_mesh" in context:
        result["mean_mesh"] = mesh_report(context["mean_mesh"].verts, context["mean_mesh"].faces)
    if save_dir is not None and tiles:
        save_png(Path(save_dir) / "side_by_side.png", image_grid(tiles, ncols=4))
        result["images"] = ["side_by_side.png"]
    return result
