"""PyTorch access to a gphm dataset directory (see :mod:`gphm.data.format`).

* :class:`HeadDataset` — one item per stored row, i.e. one camera view of one frame,
  decoded to float tensors (channel-last, docs/architecture.md §4) with a high-resolution (stored
  size) and a low-resolution copy of image and mask and the matching intrinsics.
* :func:`collate_views` — stacks items into a :class:`HeadBatch`; a batch is a set of
  (frame, camera) rows, possibly of different frames and subjects.
* :class:`DistributedFrameSampler` — deterministic shuffling shared by all processes so
  that the global batch at each step does not depend on how it is split across them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from gphm.data.format import SPLITS, load_dataset_dir
from gphm.geometry.cameras import rescale_K
from gphm.io.images import box_downsample

__all__ = ["HeadItem", "HeadBatch", "HeadDataset", "collate_views", "DistributedFrameSampler"]

_AUTO_CACHE_BYTES = 512 * 2**20  # cache decoded items when the split fits in this budget


@dataclass
class HeadItem:
    """One (frame, camera) row. Float tensors are float32; images are channel-last."""

    image: Tensor  # [H, W, 3] in [0, 1], composited on white with `mask`
    mask: Tensor  # [H, W, 1] in [0, 1]
    image_lr: Tensor  # [h, w, 3] box-downsampled `image`
    mask_lr: Tensor  # [h, w, 1] box-downsampled `mask`
    K: Tensor  # [3, 3] intrinsics in pixels of `image` (pixel centres at i + 0.5)
    K_lr: Tensor  # [3, 3] intrinsics in pixels of `image_lr`
    viewmat: Tensor  # [4, 4] world -> camera (OpenCV)
    head_R: Tensor  # [3, 3] head pose: x_world = head_scale · head_R · x_canonical + head_T
    head_T: Tensor  # [3]
    head_scale: Tensor  # [] scalar
    landmarks_3d: Tensor  # [L, 3] world coordinates
    subject: Tensor  # [] int64 subject id (identity-code index)
    frame: Tensor  # [] int64 global frame index (expression-code index)
    row: Tensor  # [] int64 row index in the saved dataset
    camera: str
    expression: str


@dataclass
class HeadBatch:
    """B stacked :class:`HeadItem` rows (each one camera of one frame)."""

    image: Tensor  # [B, H, W, 3]
    mask: Tensor  # [B, H, W, 1]
    image_lr: Tensor  # [B, h, w, 3]
    mask_lr: Tensor  # [B, h, w, 1]
    K: Tensor  # [B, 3, 3]
    K_lr: Tensor  # [B, 3, 3]
    viewmat: Tensor  # [B, 4, 4]
    head_R: Tensor  # [B, 3, 3]
    head_T: Tensor  # [B, 3]
    head_scale: Tensor  # [B]
    landmarks_3d: Tensor  # [B, L, 3]
    subject: Tensor  # [B] int64
    frame: Tensor  # [B] int64
    row: Tensor  # [B] int64
    camera: list[str]  # [B]
    expression: list[str]  # [B]

    def __len__(self) -> int:
        return self.image.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> HeadBatch:
        """A copy with every tensor on ``device`` (accelerate calls this to place batches)."""
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )


def collate_views(items: Sequence[HeadItem]) -> HeadBatch:
    """Stack items on a new leading batch dim; string fields become lists.

    All items must share image and lr sizes and the number of landmarks (true within a
    :class:`HeadDataset`). Works for any batch size >= 1.
    """
    if len(items) == 0:
        raise ValueError("collate_views: empty list of items")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(HeadBatch):
        values = [getattr(it, f.name) for it in items]
        if isinstance(values[0], Tensor):
            try:
                out[f.name] = torch.stack(values)
            except RuntimeError as err:
                shapes = sorted({tuple(v.shape) for v in values})
                raise ValueError(f"collate_views: field '{f.name}' has shapes {shapes}") from err
        else:
            out[f.name] = list(values)
    return HeadBatch(**out)


class HeadDataset(Dataset):
    """Rows of a gphm dataset directory as :class:`HeadItem`.

    Args:
        path: a directory written by :func:`gphm.data.format.write_dataset`.
        split: one split name or a list of them (:data:`gphm.data.format.SPLITS`:
            ``"train"``, ``"val_view"``, ``"val_combo"``, ``"heldout_view"``,
            ``"heldout_combo"``); rows keep their order in the saved dataset. Choose
            defaults on the ``val_*`` splits, report ``heldout_*``.
        lr_size: height ``h`` of the low-resolution copy; its width is
            ``round(W · h / H)`` (``h`` for square images). ``None`` uses
            ``meta["lr_size"]`` when the dataset records one, else the stored size (then
            lr == hr). ``K_lr`` is ``rescale_K(K, (w / W, h / H))``.
        cache: keep decoded items in memory after the first access. ``None`` (default)
            caches when the selected rows' decoded tensors fit in ``cache_bytes``. With
            ``num_workers > 0`` each DataLoader worker holds its own cache.
        cache_bytes: the memory budget of ``cache=None`` (default 512 MiB).

    Streaming: the arrow files are memory-mapped (``datasets.load_from_disk``) and images
    are decoded lazily in ``__getitem__`` (the hr image is the stored one); up front only
    columns without images are read (the row checks of ``load_dataset_dir``). A split over the cache
    budget keeps nothing decoded, so resident memory does not grow with the dataset.
    """

    def __init__(
        self,
        path: str | Path,
        split: str | Sequence[str] = "train",
        lr_size: int | None = None,
        cache: bool | None = None,
        cache_bytes: int = _AUTO_CACHE_BYTES,
    ):
        self.path = Path(path)
        self.ds, self.meta = load_dataset_dir(self.path)
        splits = [split] if isinstance(split, str) else list(split)
        unknown = [s for s in splits if s not in SPLITS]
        if unknown or not splits:
            raise ValueError(f"split must be one or more of {list(SPLITS)}, got {split!r}")
        self.splits = splits
        # Read the small columns straight from arrow: no image decoding, no cache files.
        row_split = self.ds.data.column("split").to_pylist()
        self.indices = np.asarray([i for i, s in enumerate(row_split) if s in splits], np.int64)
        if len(self.indices) == 0:
            sizes = {s: row_split.count(s) for s in SPLITS}
            hint = ""
            if any(s.startswith("val_") for s in splits):
                hint = (
                    " (datasets written before the validation splits have none: regenerate "
                    "with make_synthetic.py, or pass val_cameras= to the importers)"
                )
            raise ValueError(
                f"{self.path}: no rows in split(s) {splits}; rows per split: {sizes}{hint}"
            )
        self.frames = np.asarray(self.ds.data.column("frame").to_pylist(), np.int64)[self.indices]
        self.subjects = np.asarray(self.ds.data.column("subject").to_pylist(), np.int64)[
            self.indices
        ]

        H, W = self.meta["image_size"]
        self.hr_size = (H, W)
        if lr_size is None:
            lr_size = self.meta.get("lr_size") or H
        if not isinstance(lr_size, int) or not 1 <= lr_size <= H:
            raise ValueError(f"lr_size must be an int in [1, {H}] (stored height), got {lr_size}")
        self.lr_size = (lr_size, max(1, round(W * lr_size / H)))

        if cache is None:
            h, w = self.lr_size
            per_item = 4 * 4 * (H * W + h * w)
            cache = per_item * len(self.indices) <= cache_bytes
        self._cache: dict[int, HeadItem] | None = {} if cache else None

    @property
    def num_subjects(self) -> int:
        return len(self.meta["subjects"])

    @property
    def num_frames(self) -> int:
        """Frames in the whole dataset (all splits): the expression-code count."""
        return int(self.meta["num_frames"])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> HeadItem:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} rows")
        i = i % len(self)
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        item = self._decode(int(self.indices[i]))
        if self._cache is not None:
            self._cache[i] = item
        return item

    def viewmats(self, indices: Sequence[int]) -> Tensor:  # [n, 4, 4] float32
        """The world -> camera matrices of the rows at ``indices`` (as ``self[i]``), read
        from the ``viewmat`` column without decoding any image."""
        column = self.ds.data.column("viewmat")
        return torch.stack([
            torch.tensor(column[int(self.indices[i])].as_py(), dtype=torch.float32).reshape(4, 4)
            for i in indices
        ])  # fmt: skip

    def _decode(self, row: int) -> HeadItem:
        r = self.ds[row]
        rgb = torch.from_numpy(np.asarray(r["image"].convert("RGB"), np.float32) / 255.0)
        mask = torch.from_numpy(np.asarray(r["mask"].convert("L"), np.float32) / 255.0)[..., None]
        if tuple(rgb.shape[:2]) != self.hr_size or tuple(mask.shape[:2]) != self.hr_size:
            raise ValueError(
                f"{self.path}: row {row} image/mask are {tuple(rgb.shape[:2])}/"
                f"{tuple(mask.shape[:2])}, meta image_size is {list(self.hr_size)}"
            )
        image = rgb * mask + (1.0 - mask)  # white background
        K = torch.tensor(r["K"], dtype=torch.float32)
        (H, W), (h, w) = self.hr_size, self.lr_size

        def f32(v: Any) -> Tensor:
            return torch.tensor(v, dtype=torch.float32)

        return HeadItem(
            image=image,
            mask=mask,
            image_lr=box_downsample(image, (h, w)),
            mask_lr=box_downsample(mask, (h, w)),
            K=K,
            K_lr=rescale_K(K, (w / W, h / H)),
            viewmat=f32(r["viewmat"]),
            head_R=f32(r["head_R"]),
            head_T=f32(r["head_T"]),
            head_scale=f32(r["head_scale"]),
            landmarks_3d=f32(r["landmarks_3d"]).reshape(-1, 3),
            subject=torch.tensor(r["subject"], dtype=torch.int64),
            frame=torch.tensor(r["frame"], dtype=torch.int64),
            row=torch.tensor(row, dtype=torch.int64),
            camera=r["camera"],
            expression=r["expression"],
        )


class DistributedFrameSampler(Sampler[int]):
    """Deterministic, process-split sampling of dataset indices.

    Every process builds the same order for an epoch: a permutation of ``range(n)`` from
    ``torch.Generator().manual_seed(seed + epoch)`` (identity order if not ``shuffle``),
    padded by repeating its head to a multiple of ``num_replicas`` (or truncated with
    ``drop_last``). Process ``rank`` takes ``order[rank::num_replicas]`` — the
    ``torch.utils.data.DistributedSampler`` rule, but usable without an initialised
    process group.

    Global-batch invariance: with a per-process batch size ``b`` and ``W`` processes,
    step ``k`` of rank ``r`` yields ``order[k·b·W + r + j·W]`` for ``j < b``; across
    ranks that is exactly ``order[k·G:(k+1)·G]`` with ``G = b·W``. So "2 processes ×
    batch 1" sees the same rows at every step as "1 process × batch 2" (only the
    assignment to ranks differs; a final partial batch may differ through padding).

    Note: accelerate's ``prepare(dataloader)`` shards batches across processes itself
    (contiguously, which preserves the same global batches). Either give it a sampler
    with ``num_replicas=1`` and let it shard, or pass ``num_replicas``/``rank`` here and
    do not let accelerate shard the loader — not both.
    """

    def __init__(
        self,
        data_source: Sized | int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        n = data_source if isinstance(data_source, int) else len(data_source)
        if n < 1:
            raise ValueError(f"DistributedFrameSampler: need at least one sample, got {n}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        if drop_last and n < num_replicas:
            raise ValueError(f"drop_last with {n} samples < num_replicas={num_replicas}")
        self.n = n
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.num_samples = n // num_replicas if drop_last else math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (call before iterating, on every process)."""
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """The global (all-process) order of this epoch, length ``total_size``."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.total_size <= self.n:
            return order[: self.total_size]
        pad = self.total_size - self.n
        return order + (order * math.ceil(pad / self.n))[:pad]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
