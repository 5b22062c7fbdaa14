"""Public Gaussian-splatting entry point: validation and backend dispatch
(docs/architecture.md §5.1).

Backends:

* ``"torch"`` — tiled pure-torch rasterizer (:mod:`gphm.render._gaussians_torch`), any
  device, float32 or float64;
* ``"gsplat"`` — ``gsplat.rasterization(rasterize_mode="classic")`` on CUDA float32
  tensors (optional dependency: ``pip install gphm[gpu]``);
* ``"auto"`` — gsplat for CUDA float32 inputs when it imports (otherwise torch, with a
  warning logged once), torch for everything else.

They are registered in :mod:`gphm.render.backends` (``registry("gaussians")``), where
:func:`~gphm.render.backends.register_backend` adds others and states the contract
(:class:`~gphm.render.backends.GaussianRasterizer`).

Both follow gsplat's "classic" semantics, so a model renders the same on every device:
``semantics="gsplat15"`` (the default) is gsplat ≥ 1.5's rule exactly (α clamp 0.999,
opacity-aware tile boxes that never cut off an ``α >= 1/255`` pixel). ``"legacy"`` (α
clamp 0.99, tile boxes of 3σ of λ_max) is what this package did before, kept so that old
models render as they were trained; gsplat cannot do it (its clamp is compiled in), so
``"auto"`` then uses the torch backend and ``backend="gsplat"`` is refused. See
:mod:`gphm.render._gaussians_torch` for the precise rules.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from gphm.render._checks import (
    check_eps2d,
    check_image_size,
    check_named_dims,
    check_same_dtype,
    check_semantics,
    check_tensor,
)
from gphm.render._gaussians_gsplat import INSTALL_HINT, load_gsplat, rasterize_gsplat
from gphm.render._gaussians_torch import DEFAULT_SEMANTICS, EPS2D, SEMANTICS, rasterize_torch
from gphm.render.backends import RasterizerBackend, registry

__all__ = ["BACKENDS", "SEMANTICS", "backend_names", "rasterize_gaussians", "select_backend"]

_log = logging.getLogger(__name__)
_warned_fallback = False
_warned_legacy = False
#: The semantics gsplat's kernels implement; the others need the torch backend.
GSPLAT_SEMANTICS = "gsplat15"
BACKENDS = ("auto", "torch", "gsplat")
"""The built-in ``backend=`` values (:func:`backend_names` lists registered ones too)."""
_REGISTRY = registry("gaussians")


def _gsplat_can_run(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cuda" and dtype == torch.float32


def _require_gsplat(device: torch.device, dtype: torch.dtype, semantics: str | None) -> None:
    """``backend="gsplat"`` asked for by name: raise saying why it cannot run, if so."""
    if semantics != GSPLAT_SEMANTICS:
        raise ValueError(
            f"backend='gsplat' cannot render semantics={semantics!r}: gsplat's α clamp "
            f"(0.999) and tile boxes are compiled in; use backend='torch' or 'auto', "
            f"or semantics={GSPLAT_SEMANTICS!r}"
        )
    if device.type != "cuda":
        raise RuntimeError(
            f"backend='gsplat' needs CUDA tensors and the gsplat package ({INSTALL_HINT}); "
            f"got tensors on {device}. Use backend='torch' or 'auto' on this device."
        )
    if dtype != torch.float32:
        raise TypeError(f"backend='gsplat' supports float32 only, got {dtype}; use 'torch'")
    module, reason = load_gsplat()
    if module is None:
        raise ImportError(f"backend='gsplat' needs the gsplat package ({INSTALL_HINT}); {reason}")


def _auto_gsplat(device: torch.device, dtype: torch.dtype, semantics: str | None) -> bool:
    """``backend="auto"`` uses gsplat for CUDA float32 inputs of its semantics when it
    imports; a warning (once) when CUDA inputs fall back to the slower torch backend."""
    global _warned_fallback, _warned_legacy
    can_run = _gsplat_can_run(device, dtype)
    if semantics != GSPLAT_SEMANTICS:
        if can_run and not _warned_legacy:
            # Correct over fast: a legacy model must render as it was trained.
            _log.warning(
                "semantics=%r is rendered by the torch backend on CUDA too (gsplat only "
                "does %r); this is slower than gsplat.",
                semantics,
                GSPLAT_SEMANTICS,
            )
            _warned_legacy = True
        return False
    if not can_run:
        return False
    module, reason = load_gsplat()
    if module is None:
        if not _warned_fallback:
            _log.warning(
                "gsplat is unavailable (%s); rasterizing CUDA tensors with the slower "
                "torch backend. Install it with `%s`.",
                reason,
                INSTALL_HINT,
            )
            _warned_fallback = True
        return False
    return True


def _torch_backend(*args, eps2d: float, antialiased: bool, semantics: str):
    return rasterize_torch(*args, eps2d=eps2d, antialiased=antialiased, semantics=semantics)


def _gsplat_backend(*args, eps2d: float, antialiased: bool, semantics: str):
    # _require_gsplat / _auto_gsplat admit GSPLAT_SEMANTICS only: the rule gsplat compiles in
    return rasterize_gsplat(*args, eps2d=eps2d, antialiased=antialiased)


_REGISTRY.register(RasterizerBackend(
    "torch", _torch_backend, auto=lambda device, dtype, semantics: True, priority=0,
    description="tiled pure-torch rasterizer: any device, float32/float64, every semantics",
))  # fmt: skip
_REGISTRY.register(RasterizerBackend(
    "gsplat", _gsplat_backend, require=_require_gsplat, auto=_auto_gsplat, priority=10,
    description=f"gsplat.rasterization(classic): CUDA float32, {GSPLAT_SEMANTICS} only",
))  # fmt: skip


def backend_names() -> tuple[str, ...]:
    """Every valid ``backend=`` value: ``"auto"`` and the registered backends."""
    return _REGISTRY.names()


def select_backend(
    backend: str, device: torch.device, dtype: torch.dtype, semantics: str = DEFAULT_SEMANTICS
) -> str:
    """Resolve ``backend`` to a registered backend's name for inputs on ``device``/``dtype``
    rendered with ``semantics`` (``"auto"``: gsplat for CUDA float32 inputs when it
    imports, else torch; :mod:`gphm.render.backends`).

    Raises with an actionable message when a named backend cannot run, and a one-line
    ``ValueError`` listing the known backends for an unknown name.
    """
    return _REGISTRY.select(backend, device, dtype, semantics).name


def rasterize_gaussians(
    means: Tensor,  # [N, 3] world coordinates
    quats: Tensor,  # [N, 4] wxyz rotations, need not be normalised
    scales: Tensor,  # [N, 3] linear (not log) standard deviations along the local axes
    opacities: Tensor,  # [N] in [0, 1]
    features: Tensor,  # [N, D] or [C, N, D] (per camera) features/colours
    viewmats: Tensor,  # [C, 4, 4] world -> camera, OpenCV (x right, y down, z forward)
    Ks: Tensor,  # [C, 3, 3] intrinsics in pixels of this image (zero skew)
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [C, D]; None = zeros
    backend: str = "auto",
    eps2d: float = EPS2D,
    antialiased: bool = False,
    semantics: str = DEFAULT_SEMANTICS,
) -> tuple[Tensor, Tensor]:  # render [C, H, W, D], alpha [C, H, W, 1]
    """Render 3D Gaussians to ``C`` images of ``D`` channels (gsplat "classic" semantics).

    ``render = Σ wᵢ fᵢ + T·background`` and ``alpha = 1 - T`` with front-to-back weights
    ``wᵢ = αᵢ Π_{j<i}(1 - αⱼ)``; pixel centres are at ``(i + 0.5, j + 0.5)``. Differentiable
    in means, quats, scales, opacities, features and backgrounds. The output follows the
    inputs' device and dtype.

    ``eps2d`` (pixels², gsplat's argument of the same name) is added to every projected
    covariance's diagonal: a screen-space blur that keeps sub-pixel Gaussians from
    aliasing, and also the softest edge any silhouette can have. 0.3 is gsplat's and
    3DGS's default; a box filter over one pixel has variance 1/12 ≈ 0.083.
    ``antialiased=True`` is gsplat's ``rasterize_mode="antialiased"``: opacities are
    multiplied by ``sqrt(det Σ₂D / det(Σ₂D + eps2d·I))`` so that the blur spreads a
    Gaussian without adding weight (a sub-pixel Gaussian then covers about its area).

    ``semantics`` names the rule for the α clamp and the tile boxes (:data:`SEMANTICS`):
    ``"gsplat15"`` (default) is gsplat ≥ 1.5's exactly — ``α = min(0.999, o·exp(-σ))``,
    opacities below 1/255 culled, and per-axis tile boxes of
    ``ceil(sqrt(2·ln(255·o)·Σ₂D,ii))`` pixels that contain every pixel with
    ``α >= 1/255``; ``"legacy"`` — ``min(0.99, ...)`` and square boxes of
    ``ceil(3·sqrt(λ_max))`` pixels, which cut off the tips of opaque Gaussians — is the
    rule of models trained before gsplat15 became the default (only the torch backend
    renders it).
    """
    width, height = check_image_size(width, height)
    eps2d = check_eps2d(eps2d)
    semantics = check_semantics(semantics)
    dtype = _validate(means, quats, scales, opacities, features, viewmats, Ks, backgrounds)
    chosen = _REGISTRY.get(select_backend(backend, means.device, dtype, semantics))
    if means.shape[0] == 0:
        return _empty_render(features, viewmats.shape[0], width, height, backgrounds)
    args = (means, quats, scales, opacities, features, viewmats, Ks, width, height, backgrounds)
    return chosen.rasterize(*args, eps2d=eps2d, antialiased=bool(antialiased), semantics=semantics)


def _validate(means, quats, scales, opacities, features, viewmats, Ks, backgrounds) -> torch.dtype:
    """Check shapes, symbolic sizes (N, C, D), dtypes and devices; returns the dtype."""
    device = means.device if isinstance(means, Tensor) else None
    check_tensor("means", means, ("N", 3))
    check_tensor("quats", quats, ("N", 4), device=device)
    check_tensor("scales", scales, ("N", 3), device=device)
    check_tensor("opacities", opacities, ("N",), device=device)
    if not isinstance(features, Tensor) or features.dim() not in (2, 3):
        got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must have shape [N, D] or [C, N, D], got {got}")
    check_tensor("features", features, (None,) * features.dim(), device=device)
    check_tensor("viewmats", viewmats, ("C", 4, 4), device=device)
    check_tensor("Ks", Ks, ("C", 3, 3), device=device)
    per_camera = features.dim() == 3
    named = {"means": means, "quats": quats, "scales": scales, "opacities": opacities}
    named |= {"features": features, "viewmats": viewmats, "Ks": Ks}
    if backgrounds is not None:
        check_tensor("backgrounds", backgrounds, ("C", "D"), device=device)
        named["backgrounds"] = backgrounds
    # Symbolic sizes: the axis each argument carries them on.
    axes = {
        "N": {"means": 0, "quats": 0, "scales": 0, "opacities": 0, "features": int(per_camera)},
        "C": {"viewmats": 0, "Ks": 0, "features": 0 if per_camera else None, "backgrounds": 0},
        "D": {"features": features.dim() - 1, "backgrounds": 1},
    }
    for dim, where in axes.items():
        where = {k: a for k, a in where.items() if k in named and a is not None}
        check_named_dims({k: named[k] for k in where}, {dim: tuple(where.values())})
    dtype = check_same_dtype(named)
    if features.shape[-1] == 0:
        raise ValueError("features must have at least one channel (D >= 1), got D = 0")
    if bool((Ks[:, 0, 1] != 0).any()):
        raise ValueError("Ks must have zero skew (Ks[:, 0, 1] == 0); gsplat ignores it")
    return dtype


def _empty_render(
    features: Tensor, C: int, width: int, height: int, backgrounds: Tensor | None
) -> tuple[Tensor, Tensor]:
    """No Gaussians: the background everywhere, without calling a backend."""
    D = features.shape[-1]
    bg = backgrounds if backgrounds is not None else features.new_zeros(C, D)
    # `+ 0·Σfeatures` keeps the output connected to features so backward() still works.
    render = bg[:, None, None, :].expand(C, height, width, D) + 0.0 * features.sum()
    alpha = features.new_zeros(C, height, width, 1)
    return render, alpha
