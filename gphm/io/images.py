"""Image I/O and tiling. Images are float [..., H, W, C] in [0, 1] (docs/architecture.md §4).

Reading (:func:`read_image`, :func:`decode_image`) turns any file PIL opens into the
same thing: float32 RGB in [0, 1], upright, plus an alpha matte when the file carries a
real cutout. The rules:

* **Orientation**: the EXIF orientation tag is applied (``ImageOps.exif_transpose``), so
  phone photos come out the way viewers show them.
* **Bit depth**: 16-bit grayscale (``I;16*``) is divided by 65535; 32-bit integer
  (``I``) and float (``F``) images by 65535 when a value exceeds 255, else by 255 (``F``
  already in [0, 1] is kept). 16-bit RGB(A) PNGs are reduced to 8 bits by PIL itself.
* **Colour**: grayscale (``1``, ``L``, ``LA``, 16-bit) is replicated to three channels;
  palette (``P``, ``PA``, including tRNS transparency), ``CMYK`` (PIL's conversion, no
  ICC profile), ``YCbCr`` etc. go through PIL's ``convert("RGB"/"RGBA")``.
* **Alpha**: an alpha channel (``RGBA``, ``LA``, ``PA``, or a palette/tRNS transparency)
  is a *real cutout* when at least 1 % of the pixels are below 0.5 and at least 1 % are
  at or above it. Then the RGB is composited on white, ``rgb · a + (1 − a)`` (the
  dataset convention, docs/architecture.md §4), and the alpha is returned as a mask hint. Any
  other alpha (all opaque, all transparent, a faint overall fade) is ignored: RGB as
  stored, no alpha.

Unreadable files (not an image, truncated, a decompression bomb, or one whose decoded
float pixels would not fit in the memory budget of :mod:`gphm.io.limits`) raise
``ValueError`` with one line naming the file.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from gphm.io.atomic import atomic_write_bytes
from gphm.io.limits import MemoryBudgetError, check_image_size

__all__ = [
    "DecodedImage",
    "decode_image",
    "draw_points",
    "image_grid",
    "load_image",
    "read_image",
    "save_png",
    "to_uint8",
]

#: A matte is a real cutout when at least this fraction of pixels is on each side of 0.5.
CUTOUT_FRACTION = 0.01


@dataclass(frozen=True)
class DecodedImage:
    """An image file as the pipeline sees it (module docstring)."""

    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1], composited on white when `alpha` is set
    alpha: np.ndarray | None  # [H, W] float32 in [0, 1], only for a real cutout


def _scale_wide(arr: np.ndarray) -> np.ndarray:  # 32-bit int / float gray -> [0, 1]
    arr = arr.astype(np.float32)
    top = float(np.nanmax(arr)) if arr.size else 0.0
    if top > 255.0:
        arr = arr / 65535.0
    elif top > 1.0:
        arr = arr / 255.0
    return np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)


def decode_image(im: Image.Image) -> DecodedImage:
    """RGB (and a cutout alpha) from an open PIL image, by the rules of the module docstring."""
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    alpha = None
    if mode.startswith("I;16"):
        gray = np.asarray(im, dtype=np.float32) / 65535.0
        rgb = np.repeat(gray[..., None], 3, axis=-1)
    elif mode in ("I", "F"):
        rgb = np.repeat(_scale_wide(np.asarray(im))[..., None], 3, axis=-1)
    else:
        has_alpha = "A" in mode or "a" in mode or "transparency" in im.info
        arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
        rgb = arr[..., :3]
        if has_alpha:
            a = arr[..., 3]
            inside = float((a >= 0.5).mean())
            if min(inside, 1.0 - inside) >= CUTOUT_FRACTION:
                alpha = a
                rgb = rgb * a[..., None] + (1.0 - a[..., None])
    return DecodedImage(rgb=np.ascontiguousarray(rgb, dtype=np.float32), alpha=alpha)


def read_image(path: str | Path) -> DecodedImage:
    """Decode an image file (module docstring); errors are one line naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            W, H = im.size  # from the header: refuse before decoding what cannot fit
            check_image_size(f"{path}", H, W, channels=3 + ("A" in im.mode))
            im.load()  # decode now: a truncated file fails here, not later
            return decode_image(im)
    except MemoryBudgetError:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: not a readable image ({reason})") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path}: image too large to read safely ({err})") from None


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
    """float32 [H, W, C] in [0, 1] from an image file, decoded by :func:`read_image`.

    ``mode``: ``RGB`` (C = 3, a cutout composited on white), ``L`` (C = 1, Rec. 601 luma
    of that RGB) or ``RGBA`` (C = 4: that RGB and the cutout's alpha, 1 without a cutout).
    """
    if mode not in ("RGB", "L", "RGBA"):
        raise ValueError(f"mode must be RGB, L or RGBA, got {mode!r}")
    img = read_image(path)
    rgb = img.rgb
    if mode == "L":
        arr = (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    elif mode == "RGBA":
        a = np.ones(rgb.shape[:2], np.float32) if img.alpha is None else img.alpha
        arr = np.concatenate([rgb, a[..., None]], axis=-1)
    else:
        arr = rgb
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


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


def box_downsample(
    x: Tensor,  # [H, W, C] float
    size: tuple[int, int],  # (h, w)
) -> Tensor:  # [h, w, C]
    """Area (box) downsampling, channel-last. Exact box average when H/h and W/w are
    integers, adaptive average pooling (still antialiased) otherwise; a copy when the
    size is already ``size``."""
    if tuple(x.shape[:2]) == tuple(size):
        return x.clone()
    y = torch.nn.functional.interpolate(x.permute(2, 0, 1)[None], size=size, mode="area")
    return y[0].permute(1, 2, 0).contiguous()
