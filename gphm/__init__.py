"""gphm: a generalized multi-identity 3D Gaussian parametric head model.

The Python API (:mod:`gphm.api`) is re-exported here and imported on first use, so that
``import gphm`` stays light::

    import gphm
    head = gphm.load("runs/demo")
    image = head.render(head.identities[0], yaw=30)  # [S, S, 3] in [0, 1]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("load", "fit", "load_avatar", "Head", "Avatar", "Gaussians", "resolve_device")

__all__ = [
    "__version__", "load", "fit", "load_avatar", "Head", "Avatar", "Gaussians", "resolve_device",
]  # fmt: skip

if TYPE_CHECKING:  # pragma: no cover
    from gphm.api import Avatar, Gaussians, Head, fit, load, load_avatar, resolve_device


def __getattr__(name: str) -> Any:
    if name in _API:
        from gphm import api

        return getattr(api, name)
    raise AttributeError(f"module 'gphm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
