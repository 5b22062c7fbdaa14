"""Thin, lazily imported wrapper around ``gsplat.rasterization`` (CUDA only).

gsplat is an optional dependency (``pip install gphm[gpu]``); nothing here imports it at
module import time. It JIT-compiles its CUDA kernels on first use and only supports
float32.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

from torch import Tensor

from gphm.render._gaussians_torch import EPS2D, NEAR_PLANE, TILE_SIZE

INSTALL_HINT = "pip install gphm[gpu]"


@functools.lru_cache(maxsize=1)
def load_gsplat() -> tuple[ModuleType | None, str]:
    """``(module, "")`` when gsplat imports, else ``(None, reason)``; imported once."""
    try:
        return importlib.import_module("gsplat"), ""
    except ImportError as err:  # a broken install counts as absent, with its reason
        return None, f"{type(err).__name__}: {err}"


def rasterize_gsplat(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    features: Tensor,  # [N, D] or [C, N, D]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [C, D]
    eps2d: float = EPS2D,
    antialiased: bool = False,
) -> tuple[Tensor, Tensor]:  # render [C, H, W, D], alpha [C, H, W, 1]
    """gsplat's "classic" rasterization with our defaults; features are its ``colors``.

    gsplat pads unsupported channel counts itself and renders more than 32 channels in
    chunks of 32 (``channel_chunk``). ``packed=False``: we render few cameras at a time, so
    the dense [C, N] intermediates are small and the unpacked kernels are faster.
    """
    gsplat, reason = load_gsplat()
    if gsplat is None:
        raise ImportError(f"backend='gsplat' needs the gsplat package ({INSTALL_HINT}); {reason}")
    render, alpha, _meta = gsplat.rasterization(
        means,
        quats,
        scales,
        opacities,
        features,
        viewmats,
        Ks,
        width,
        height,
        near_plane=NEAR_PLANE,
        eps2d=eps2d,
        radius_clip=0.0,
        sh_degree=None,
        packed=False,
        tile_size=TILE_SIZE,
        backgrounds=backgrounds,
        render_mode="RGB",
        rasterize_mode="antialiased" if antialiased else "classic",
    )
    return render, alpha
