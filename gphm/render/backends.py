"""Rasterizer backends: the contract each one implements and a registry per primitive.

:func:`gphm.render.rasterize_gaussians` and :func:`gphm.render.render_mesh` validate
their inputs, then hand them to a backend chosen by name (``backend="torch"``, ...) or
by ``backend="auto"``. A backend is a :class:`RasterizerBackend`: a function following
the primitive's protocol (:class:`GaussianRasterizer`, :class:`MeshRasterizer`) plus
two small predicates:

* ``require(device, dtype, semantics)`` raises an actionable error when the backend was
  asked for by name but cannot render these inputs (wrong device, dtype, rule, missing
  package), and returns when it can;
* ``auto(device, dtype, semantics)`` says whether ``backend="auto"`` may pick it; among
  those that say yes, the highest ``priority`` wins (the pure-torch reference backends
  have priority 0 and always say yes, so ``"auto"`` always finds one).

New backends are added with :func:`register_backend` (``"gaussians"`` or ``"mesh"``);
the public functions then accept their names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["AUTO", "BackendRegistry", "GaussianRasterizer", "MeshRasterizer",
           "RasterizerBackend", "register_backend", "registry"]  # fmt: skip

AUTO = "auto"
"""The backend name that picks one by device, dtype and semantics."""


class GaussianRasterizer(Protocol):
    """A Gaussian-splatting backend, called with validated inputs and ``N >= 1``.

    All tensors are on one device and (floats) one dtype; ``C`` cameras, ``N`` Gaussians,
    ``D`` feature channels. Returns ``render [C, H, W, D] = Σ wᵢ fᵢ + T·background`` and
    ``alpha [C, H, W, 1] = 1 - T`` (front-to-back weights ``wᵢ = αᵢ Π_{j<i}(1 - αⱼ)``,
    pixel centres at ``(i + 0.5, j + 0.5)``), on the inputs' device and dtype, following
    ``semantics``' α clamp and tile boxes (``gphm.render._gaussians_torch.SEMANTICS``).
    Must be differentiable in means, quats, scales, opacities, features and backgrounds.
    """

    def __call__(
        self,
        means: Tensor,  # [N, 3] world
        quats: Tensor,  # [N, 4] wxyz, not necessarily normalised
        scales: Tensor,  # [N, 3] linear standard deviations
        opacities: Tensor,  # [N] in [0, 1]
        features: Tensor,  # [N, D] or [C, N, D]
        viewmats: Tensor,  # [C, 4, 4] world -> camera (OpenCV)
        Ks: Tensor,  # [C, 3, 3] pixels, zero skew
        width: int,
        height: int,
        backgrounds: Tensor | None,  # [C, D] or None (zeros)
        *,
        eps2d: float,
        antialiased: bool,
        semantics: str,
    ) -> tuple[Tensor, Tensor]: ...


class MeshRasterizer(Protocol):
    """A triangle-mesh backend, called with validated inputs (one camera per mesh).

    Returns ``(features [B, H, W, D], mask [B, H, W, 1], depth [B, H, W, 1], face_ids
    [B, H, W] int64)``: perspective-correct interpolated vertex features (0 where empty,
    ``D = 0`` without features), a soft silhouette in [0, 1], camera z of the visible
    surface (0 where empty) and the visible triangle (-1 where empty), on the device and
    dtype of ``verts``. Differentiable in verts, vertex features, viewmats and Ks (not
    ``face_ids``). Triangles with a vertex at camera ``z <= near`` are dropped or clipped.
    """

    def __call__(
        self,
        verts: Tensor,  # [B, V, 3] world
        faces: Tensor,  # [F, 3] int64
        viewmats: Tensor,  # [B, 4, 4] world -> camera (OpenCV)
        Ks: Tensor,  # [B, 3, 3] pixels
        width: int,
        height: int,
        vertex_features: Tensor | None,  # [B, V, D]
        near: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


def _always(device: torch.device, dtype: torch.dtype, semantics: str | None) -> bool:
    return True


def _never(device: torch.device, dtype: torch.dtype, semantics: str | None) -> bool:
    return False


def _no_requirement(device: torch.device, dtype: torch.dtype, semantics: str | None) -> None:
    return None


@dataclass(frozen=True)
class RasterizerBackend:
    """One backend of a primitive (module docstring)."""

    name: str
    rasterize: Callable[..., tuple[Tensor, ...]]
    """A :class:`GaussianRasterizer` or :class:`MeshRasterizer`."""
    require: Callable[[torch.device, torch.dtype, str | None], None] = _no_requirement
    """Raises (ValueError/TypeError/RuntimeError/ImportError, saying what to do) when the
    backend, asked for by name, cannot render inputs of this device/dtype/semantics."""
    auto: Callable[[torch.device, torch.dtype, str | None], bool] = _never
    """Whether ``backend="auto"`` may pick it for these inputs (may log a warning)."""
    priority: int = 0
    """``"auto"`` picks the highest-priority backend whose ``auto`` says yes."""
    description: str = ""


class BackendRegistry:
    """The backends of one primitive, by name (registration order kept)."""

    def __init__(self, primitive: str):
        self.primitive = primitive
        self._backends: dict[str, RasterizerBackend] = {}

    def register(self, backend: RasterizerBackend, replace: bool = False) -> RasterizerBackend:
        """Add ``backend``; ``ValueError`` for the reserved name ``"auto"`` or a name
        already taken (unless ``replace``)."""
        name = backend.name
        if not isinstance(name, str) or not name or name == AUTO:
            raise ValueError(f"a {self.primitive} backend needs a name other than {AUTO!r}")
        if name in self._backends and not replace:
            raise ValueError(f"a {self.primitive} backend named {name!r} is already registered")
        self._backends[name] = backend
        return backend

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests register temporary backends)."""
        self.get(name)
        del self._backends[name]

    def names(self) -> tuple[str, ...]:
        """``"auto"`` then every registered name: the valid ``backend=`` values."""
        return (AUTO, *self._backends)

    def get(self, name: object) -> RasterizerBackend:
        """The backend called ``name``; one-line ``ValueError`` listing the known ones."""
        if not isinstance(name, str) or name not in self._backends:
            raise ValueError(f"backend must be one of {self.names()}, got {name!r}")
        return self._backends[name]

    def select(
        self, name: object, device: torch.device, dtype: torch.dtype, semantics: str | None = None
    ) -> RasterizerBackend:
        """Resolve ``name`` (``"auto"`` or a registered name) for inputs on
        ``device``/``dtype``; a named backend's ``require`` raises when it cannot run."""
        if name == AUTO:
            ranked = sorted(self._backends.values(), key=lambda b: -b.priority)
            for backend in ranked:
                if backend.auto(device, dtype, semantics):
                    return backend
            raise RuntimeError(f"no {self.primitive} backend can render {dtype} on {device}")
        backend = self.get(name)
        backend.require(device, dtype, semantics)
        return backend


_REGISTRIES = {"gaussians": BackendRegistry("gaussians"), "mesh": BackendRegistry("mesh")}


def registry(primitive: str) -> BackendRegistry:
    """The registry of ``"gaussians"`` or ``"mesh"`` backends."""
    if primitive not in _REGISTRIES:
        raise ValueError(f"primitive must be one of {sorted(_REGISTRIES)}, got {primitive!r}")
    return _REGISTRIES[primitive]


def register_backend(
    primitive: str,
    name: str,
    rasterize: Callable[..., tuple[Tensor, ...]],
    *,
    require: Callable[[torch.device, torch.dtype, str | None], None] = _no_requirement,
    auto: Callable[[torch.device, torch.dtype, str | None], bool] | bool = False,
    priority: int = 0,
    description: str = "",
    replace: bool = False,
) -> RasterizerBackend:
    """Register a backend of ``primitive`` (``"gaussians"``: a :class:`GaussianRasterizer`;
    ``"mesh"``: a :class:`MeshRasterizer`) under ``name``. ``auto``: a predicate, or
    True/False for always/never eligible for ``backend="auto"``."""
    if isinstance(auto, bool):
        auto = _always if auto else _never
    backend = RasterizerBackend(name, rasterize, require, auto, priority, description)
    return registry(primitive).register(backend, replace=replace)
