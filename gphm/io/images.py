"""Image I/O and tiling. Images are float [..., H, W, C] in [0, 1] (DESIGN.md §3)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gphm.io.atomic import atomic_write_bytes

__all__ = ["to_uint8", "save_png", "load_image", "image_grid", "draw_points"]


def to_uint8(image: Tensor | np.ndarray) -> np.ndarray:
    """uint8 [H, W, C] (C in {1, 3, 4}; C = 1 is squeezed) from float [H, W, C] in [0, 1].

    Only the first 3 channels of wider feature images are kept.
    """
    if isinstance(image, Tensor):
        image = image.detach().float().cpu().numpy()
    if image.ndim != 3:
        raise ValueError(f"image must have shape [H, W, C], got {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255)
        image = image.astype(np.uint8)
    if image.shape[-1] > 4:
        image = image[..., :3]
    return image[..., 0] if image.shape[-1] == 1 else image


def save_png(path: str | Path, image: Tensor | np.ndarray) -> Path:
    """Write ``image`` [H, W, C] (float in [0, 1] or uint8) as a PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG", optimize=False)
    return atomic_write_bytes(path, buf.getvalue())


def load_image(path: str | Path, mode: str = "RGB") -> Tensor:
    """float32 [H, W, C] in [0, 1] from an image file (``mode`` as in PIL: RGB, L, RGBA)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    except OSError as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None
    return torch.from_numpy(arr if arr.ndim == 3 else arr[..., None])


def image_grid(
    images: Sequence[Tensor] | Tensor,  # each [H, W, C] (all the same shape), or [N, H, W, C]
    ncols: int,
    pad: int = 2,
    pad_value: float = 1.0,
) -> Tensor:  # [rows·(H+pad)+pad, ncols·(W+pad)+pad, C]
    """Tile images row-major into one image with ``pad`` pixels between them."""
    images = list(images)
    if not images:
        raise ValueError("image_grid needs at least one image")
    H, W, C = images[0].shape
    nrows = (len(images) + ncols - 1) // ncols
    out = torch.full(
        (nrows * (H + pad) + pad, ncols * (W + pad) + pad, C),
        pad_value,
        dtype=images[0].dtype,
        device=images[0].device,
    )
    for i, im in enumerate(images):
        if im.shape != (H, W, C):
            raise ValueError(f"image {i} has shape {list(im.shape)}, expected {[H, W, C]}")
        r, c = divmod(i, ncols)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        out[y : y + H, x : x + W] = im
    return out


def draw_points(
    image: Tensor,  # [H, W, 3] float in [0, 1]
    points: Tensor,  # [N, 2] pixel coordinates (x, y), pixel centres at i + 0.5
    color: tuple[float, float, float] = (0.0, 1.0, 0.0),
    radius: int = 1,
) -> Tensor:  # [H, W, 3] a copy with square dots at the points (NaN rows skipped)
    """Mark 2D points (e.g. landmarks) on a copy of ``image``."""
    out = image.clone()
    H, W = out.shape[:2]
    col = torch.tensor(color, dtype=out.dtype, device=out.device)
    for x, y in points.detach().cpu().tolist():
        if x != x or y != y:  # NaN
            continue
        cx, cy = int(x), int(y)
        out[max(0, cy - radius) : min(H, cy + radius + 1),
            max(0, cx - radius) : min(W, cx + radius + 1)] = col  # fmt: skip
    return out
