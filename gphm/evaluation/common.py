"""What every evaluation shares: row iteration, rendering, image scores, rounding, the
side-by-side image, the checks on the run (its lock, its training data) and on the report
folder, and the report writer.

Image conventions as :mod:`gphm.evaluation.metrics`: ``[B, H, W, 3]`` in [0, 1], masks
``[B, H, W, 1]``; scores are per image, ``[B]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gphm.errors import UserError
from gphm.evaluation import metrics
from gphm.fitting.avatar import Avatar
from gphm.fitting.fit import render_avatar
from gphm.io.images import image_grid, save_png
from gphm.io.jsonfile import write_report
from gphm.models.runs import TrainedRun, dataset_fingerprint, fingerprint_comparable
from gphm.training.run_dir import LOCK_NAME, RunLock

__all__ = [
    "check_out_dir", "check_run_unlocked", "check_trained_dataset", "image_scores", "mean",
    "render_avatar_views", "render_rows", "rounded", "row_batches", "save_side_by_side",
    "write_split_report",
]  # fmt: skip


# ----------------------------------------------------------------------------- numbers
def rounded(value: float | None, digits: int) -> float | None:
    """``value`` rounded to ``digits``; None stays None."""
    return None if value is None else round(value, digits)


def mean(values: Tensor | Iterable[float], digits: int) -> float | None:
    """Mean of the finite ``values`` rounded to ``digits``; None when none is finite."""
    return rounded(metrics.finite_mean(values)[0], digits)


def image_scores(
    pred: Tensor,  # [B, H, W, 3] in [0, 1]
    target: Tensor,  # [B, H, W, 3]
    mask: Tensor | None = None,  # [B, H, W, 1]: adds psnr_masked / ssim_masked
    lpips: Callable[[Tensor, Tensor], Tensor] | None = None,  # adds lpips
) -> dict[str, Tensor]:  # name -> [B]
    """Per-image ``psnr`` and ``ssim`` (full image), with a ``mask`` also their head-region
    twins, with a metric also ``lpips``."""
    scores = {"psnr": metrics.psnr(pred, target), "ssim": metrics.ssim(pred, target)}
    if mask is not None:
        scores["psnr_masked"] = metrics.masked_psnr(pred, target, mask)
        scores["ssim_masked"] = metrics.masked_ssim(pred, target, mask)
    if lpips is not None:
        scores["lpips"] = lpips(pred, target)
    return scores


# ----------------------------------------------------------------------------- rows, renders
def row_batches(n: int, batch_size: int, desc: str, progress: bool = False) -> Iterator[list[int]]:
    """Row indices ``0..n-1`` in consecutive batches of at most ``batch_size``."""
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress):
        yield list(range(start, min(n, start + batch_size)))


def render_rows(model: Any, batch: Any, z_id: Tensor, z_exp: Tensor, context: dict) -> Any:
    """``model`` rendered with codes ``z_id`` [B, Did], ``z_exp`` [B, Dexp] at a dataset
    batch's true head poses and cameras, at its lr size (the model's own output type)."""
    h, w = batch.image_lr.shape[1:3]
    return model.render(z_id, z_exp, batch.head_R, batch.head_T, batch.head_scale,
                        batch.viewmat, batch.K_lr, w, h, **context)  # fmt: skip


@torch.no_grad()
def render_avatar_views(
    net: Any,  # the avatar's personalised model (Avatar.personalised)
    avatar: Avatar,
    z_exp: Tensor,  # [Dexp] one expression for every view
    R: Tensor,  # [B, 3, 3] head rotations (canonical -> the frame viewmats start from)
    T: Tensor,  # [B, 3]
    scale: Tensor,  # [B]
    viewmats: Tensor,  # [B, 4, 4]
    K: Tensor,  # [B, 3, 3] intrinsics at ``size``
    size: int,
) -> Tensor:  # [B, S, S, 3] in [0, 1], on the CPU
    """``avatar``'s identity (and point offsets) with ``z_exp`` seen by ``B`` cameras."""
    device = next(net.parameters()).device
    B = R.shape[0]
    offsets = None if avatar.point_offsets is None else avatar.point_offsets.to(device)
    out = render_avatar(
        net, avatar.z_id[None].to(device).expand(B, -1), z_exp[None].to(device).expand(B, -1),
        R.to(device), T.to(device), scale.to(device), viewmats.to(device), K.to(device), size,
        offsets,
    )  # fmt: skip
    return out.rgb.clamp(0, 1).cpu()


def save_side_by_side(
    save_dir: str | Path | None, tiles: list[Tensor], report: dict[str, Any],
    columns: list[str] | None = None,
) -> None:  # fmt: skip
    """Write ``save_dir/side_by_side.png`` (``tiles`` [H, W, 3], 4 a row) and name it (and
    its ``columns``) in ``report``; nothing without a folder or tiles."""
    if save_dir is None or not tiles:
        return
    save_png(Path(save_dir) / "side_by_side.png", image_grid(tiles, ncols=4))
    report["images"] = ["side_by_side.png"]
    if columns is not None:
        report["columns"] = columns


# ----------------------------------------------------------------------------- checks
def check_run_unlocked(run_dir: str | Path) -> None:
    """Refuse (:class:`UserError`, one line naming the lock and its pid) a run that a live
    training holds (``RUN/.lock``, :class:`~gphm.training.run_dir.RunLock`): its model is
    half-trained and may be replaced while it is read. A stale lock (its process gone) is
    no obstacle. ``run_dir`` may be the run or its ``model`` folder."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir.parent) if run_dir.name == "model" else (run_dir,):
        lock = RunLock(folder)
        try:
            owner = lock._owner()
            if lock._stale_reason(owner) is not None:
                continue
        except FileNotFoundError:
            continue
        who = (f"pid {owner['pid']} on {owner.get('host')}, since {owner.get('started')}"
               if owner else "an owner whose lock file is being written")  # fmt: skip
        raise UserError(
            f"{folder / LOCK_NAME}: a training holds this run ({who}); its model is not "
            "finished: wait for the training to end, then evaluate"
        )


def check_trained_dataset(
    run: TrainedRun, data_path: str | Path, split: str, allow_other: bool = False
) -> dict[str, Any]:
    """The report fields of a split that scores the model's *trained* subjects on
    ``data_path``: refuses (:class:`UserError` naming both fingerprints) a dataset whose
    :func:`~gphm.models.runs.dataset_fingerprint` is not the one the run recorded, since
    another dataset's people would be scored as if they were trained, unless
    ``allow_other`` (then reported). A run that recorded none is reported as unverified.
    """
    recorded = run.extra.get("dataset_fingerprint")
    if recorded is None:
        return {"dataset_unverified": "the run records no dataset fingerprint"}
    if not fingerprint_comparable(recorded):
        return {"dataset_unverified": f"the run's dataset fingerprint {recorded} is of an "
                "older formula"}  # fmt: skip
    found = dataset_fingerprint(data_path)
    if found == recorded:
        return {}
    if not allow_other:
        raise UserError(
            f"data.path={data_path}: dataset fingerprint {found} is not the one the model was "
            f"trained on ({recorded}, {run.path / 'config.json'}); split={split} scores the "
            "trained subjects, so other people would be scored as if trained (pass "
            "allow_other_dataset=true if this is the same data written again)"
        )
    return {"allow_other_dataset": True, "dataset_fingerprint": found,
            "trained_dataset_fingerprint": recorded}  # fmt: skip


def _is_report(path: Path, names: Iterable[str]) -> bool:
    """Whether ``path`` is a report file or image folder of one of the splits ``names``."""
    if path.is_dir() and not path.is_symlink():
        return path.name in names
    if path.suffix != ".json" or path.stem not in names or not path.is_file():
        return False
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "split" in report


def check_out_dir(out: str | Path, name: str, names: Iterable[str], overwrite: bool) -> Path:
    """The overwrite policy of an explicit report folder ``out=``: it may hold reports of
    other splits (``names``: ``<name>.json`` and ``<name>/``); anything else in it, or an
    earlier report of this split ``name``, is refused unless ``overwrite`` (then files
    with the same names are replaced). Raises :class:`UserError`; creates nothing."""
    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        raise UserError(f"out={out} is a file; expected a directory to write reports into")
    if overwrite or not out.is_dir():
        return out
    names = set(names)
    foreign = sorted(p.name for p in out.iterdir() if not _is_report(p, names))
    if foreign:
        raise UserError(
            f"out={out} holds files gphm-evaluate did not write ({', '.join(foreign[:3])}); "
            "pass overwrite=true to write into it (files with the same names are replaced)"
        )
    if (out / f"{name}.json").exists() or (out / name).exists():
        raise UserError(
            f"out={out} already holds a {name} report; pass overwrite=true to replace it"
        )
    return out


# ----------------------------------------------------------------------------- writing
def write_split_report(out: str | Path, name: str, report: dict[str, Any]) -> Path:
    """Write ``report`` atomically as ``out/<name>.json`` (non-finite floats as null)."""
    return write_report(Path(out) / f"{name}.json", report)
