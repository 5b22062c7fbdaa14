"""Thin, lazily imported wrapper around ``gsplat.rasterization`` (CUDA only).

gsplat is an optional dependency (``pip install gphm[gpu]``); nothing here imports it at
module import time. It JIT-compiles its CUDA kernels on first use and only supports
float32.

gsplat ≥ 1.5 is required: its kernels are the ``"gsplat15"`` semantics (α clamp 0.999,
opacity-aware tile boxes). gsplat 1.4 clamps at 0.999 but sizes its tile boxes by 3σ of
λ_max, which matches neither of our rules, so an older gsplat counts as unavailable.
Neither version can render ``"legacy"`` (its clamp is compiled in); the public entry point
refuses that combination.
"""

from __future__ import annotations

import functools
import importlib
import re
from types import ModuleType

from torch import Tensor

from gphm.render._gaussians_torch import EPS2D, NEAR_PLANE, TILE_SIZE

INSTALL_HINT = "pip install gphm[gpu]"
MIN_VERSION = (1, 5)  # the first gsplat with opacity-aware tile boxes


@functools.lru_cache(maxsize=1)
def load_gsplat() -> tuple[ModuleType | None, str]:
    """``(module, "")`` when a gsplat ≥ 1.5 imports, else ``(None, reason)``; imported once."""
    try:
        module = importlib.import_module("gsplat")
    except ImportError as err:  # a broken install counts as absent, with its reason
        return None, f"{type(err).__name__}: {err}"
    version = str(getattr(module, "__version__", "0"))
    if _version_tuple(version) < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        return None, f"gsplat {version} is older than {need}, whose tile boxes we follow"
    return module, ""


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"1.5.3"`` -> ``(1, 5, 3)``; a suffix such as ``"rc1"`` or ``"+cu121"`` is ignored."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


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

    Always the ``"gsplat15"`` semantics (gsplat's own): ``opacities`` are passed to the
    projection, which sizes the tile boxes by them and culls ``o < 1/255``.

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
