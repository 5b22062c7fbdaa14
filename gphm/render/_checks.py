"""Input validation shared by the renderers: errors name the argument, the expected
shape/dtype/device and what was received."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gphm.render._gaussians_torch import SEMANTICS


def check_tensor(
    name: str,
    x: object,
    shape: tuple[int | str | None, ...],
    *,
    floating: bool = True,
    device: torch.device | None = None,
) -> Tensor:
    """Validate ``x`` against ``shape`` (ints must match, str/None are free dims).

    Returns ``x`` so calls can be chained. Raises ``TypeError`` for non-tensors and
    wrong dtypes, ``ValueError`` for wrong shapes and devices.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    expected = "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    if x.dim() != len(shape) or any(
        isinstance(d, int) and x.shape[i] != d for i, d in enumerate(shape)
    ):
        raise ValueError(f"{name} must have shape {expected}, got {list(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if device is not None and x.device != device:
        raise ValueError(
            f"{name} is on {x.device} but the other inputs are on {device}; "
            "move all renderer inputs to one device"
        )
    return x


def check_named_dims(tensors: dict[str, Tensor], dims: dict[str, tuple[int, ...]]) -> None:
    """Check that symbolic dimensions agree across arguments.

    ``dims`` maps a dimension name (e.g. ``"N"``) to the axis it occupies in each
    argument of ``tensors`` with the same order, e.g. ``{"N": (0, 0, 0)}``.
    """
    names = list(tensors)
    for dim_name, axes in dims.items():
        sizes = {n: tensors[n].shape[a] for n, a in zip(names, axes) if a is not None}
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{n}: {s}" for n, s in sizes.items())
            raise ValueError(f"dimension {dim_name} disagrees between arguments ({listing})")


def check_image_size(width: object, height: object) -> tuple[int, int]:
    """Image size as positive ints."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(width), int(height)  # type: ignore[arg-type]


def check_eps2d(eps2d: float) -> float:
    """The rasterizers' screen-space blur (pixels²) as a finite float >= 0."""
    if not (math.isfinite(eps2d) and eps2d >= 0):
        raise ValueError(f"eps2d must be a finite number >= 0 (pixels²), got {eps2d}")
    return float(eps2d)


def check_semantics(semantics: object) -> str:
    """A rasterization rule's name (a key of ``_gaussians_torch.SEMANTICS``)."""
    if not isinstance(semantics, str) or semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {sorted(SEMANTICS)}, got {semantics!r}")
    return semantics


def check_same_dtype(tensors: dict[str, Tensor]) -> torch.dtype:
    """Check that all ``tensors`` share one dtype; returns it (the first one's)."""
    names = list(tensors)
    first = tensors[names[0]].dtype
    others = {n: t.dtype for n, t in tensors.items() if t.dtype != first}
    if others:
        listing = ", ".join(f"{n}: {d}" for n, d in others.items())
        raise TypeError(
            f"all floating-point inputs must share one dtype; {names[0]} is {first} but {listing}"
        )
    return first
