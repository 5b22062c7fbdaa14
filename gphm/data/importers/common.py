"""What every importer shares: its options, its error and its registry entry.

An importer converts one capture layout into the gphm dataset format
(:func:`gphm.data.format.write_dataset`). It is a module of :mod:`gphm.data.importers`
that defines ``IMPORTER = Importer(name, detect, run, description)``; the registry
(:data:`gphm.data.importers.IMPORTER_MODULES`) lists the modules, and ``gphm-import
layout=auto|NAME`` picks one (docs/architecture.md §9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gphm.data.format import check_camera_lists

__all__ = ["CaptureError", "ImportOptions", "Importer"]


class CaptureError(ValueError):
    """Bad capture input; the message starts with the path relative to ``src``."""


@dataclass
class ImportOptions:
    canonical: str = "auto"
    """``auto``: map into canonical head space (see module doc); ``none``: keep source."""
    subject: str | None = None
    """Subject name when frames.json does not give one; default: the src folder name."""
    heldout_cameras: list[str] = field(default_factory=list)
    """Cameras whose rows get split ``heldout_view`` (only reported)."""
    val_cameras: list[str] = field(default_factory=list)
    """Cameras whose rows get split ``val_view`` (for choosing defaults); disjoint from
    ``heldout_cameras``."""
    resolution: int = 0
    """Stored image height in pixels (width keeps the aspect ratio); 0 keeps the source."""
    lr_size: int | None = None
    """Recorded as meta ``lr_size``: the default low-res height of HeadDataset."""
    landmark_radius: float = 0.4
    """``auto``: largest landmark distance from the landmark centre after the transform."""
    principal_point_offset: float = 0.5
    """Added to the source cx, cy (OpenCV integer pixel centres → ours at i + 0.5)."""
    landmark_convention: str = "auto"
    """Name for meta; ``auto``: ``ibug68`` when L == 68, else ``unknown{L}``."""

    def __post_init__(self) -> None:
        if self.canonical not in ("auto", "none"):
            raise ValueError(f"canonical must be 'auto' or 'none', got {self.canonical!r}")
        if not 0 < self.landmark_radius <= 0.9:
            raise ValueError(f"landmark_radius must be in (0, 0.9], got {self.landmark_radius}")
        if self.resolution < 0:
            raise ValueError(f"resolution must be >= 0, got {self.resolution}")
        if self.lr_size is not None and self.lr_size < 1:
            raise ValueError(f"lr_size must be >= 1, got {self.lr_size}")
        check_camera_lists(self.heldout_cameras, self.val_cameras)


@dataclass(frozen=True)
class Importer:
    """One capture layout's importer (a registry entry)."""

    name: str
    """The ``layout=`` value (``nersemble``)."""
    detect: Callable[[Path], bool]
    """Whether a capture folder looks like this layout (cheap: names of files, no reads)."""
    run: Callable[[Path, Path, ImportOptions, bool], dict[str, Any]]
    """``run(src, out, options, overwrite)``: write the dataset, return the report; raises
    :class:`CaptureError` on bad input, ``FileExistsError`` for an existing ``out``."""
    description: str
    """One line: the layout's signature files (shown when no layout is recognised)."""
