"""Importers converting other capture layouts into the gphm dataset format.

One module per layout, each defining ``IMPORTER`` (:class:`~.common.Importer`: a name, a
cheap ``detect(src)``, ``run(src, out, options, overwrite)`` and a one-line description);
:data:`IMPORTER_MODULES` lists them, so a second importer is a new module and one line
here, not a new command. ``gphm-import layout=auto`` (the default) picks the one layout
whose ``detect`` recognises the capture folder; ``layout=NAME`` names it.

* :mod:`.nersemble` — NeRSemble-style multiview captures (``images/``, ``cameras/``,
  ``params/``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from gphm.data.importers.common import CaptureError, Importer, ImportOptions

__all__ = [
    "CaptureError",
    "IMPORTER_MODULES",
    "ImportOptions",
    "Importer",
    "detect_layout",
    "import_capture",
    "importers",
    "layouts",
]

IMPORTER_MODULES = ("nersemble",)
"""Modules of this package that define an ``IMPORTER`` (in detection order)."""


def importers() -> dict[str, Importer]:
    """``{layout name: Importer}`` of every registered importer (modules load on first use)."""
    found = {}
    for module in IMPORTER_MODULES:
        entry = importlib.import_module(f"{__name__}.{module}").IMPORTER
        found[entry.name] = entry
    return found


def layouts() -> list[str]:
    """The known layout names, for ``layout=`` (``auto`` not included)."""
    return list(importers())


def _known() -> str:
    return "; ".join(f"{i.name} ({i.description})" for i in importers().values())


def detect_layout(src: str | Path) -> str:
    """The name of the one importer whose ``detect`` recognises the folder ``src``.

    :class:`CaptureError` (the caller names ``src``) when ``src`` is not a folder, when no
    layout matches (listing the known layouts and their signature files) or when several
    do (say ``layout=NAME``).
    """
    src = Path(src)
    if not src.is_dir():
        raise CaptureError("capture folder not found")
    matches = [name for name, entry in importers().items() if entry.detect(src)]
    if not matches:
        raise CaptureError(f"not a capture layout gphm knows; known layouts: {_known()}")
    if len(matches) > 1:
        raise CaptureError(
            f"looks like several layouts ({', '.join(matches)}); pass layout=NAME"
        )
    return matches[0]


def import_capture(
    src: str | Path,
    out: str | Path,
    layout: str = "auto",
    opts: ImportOptions | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Import the capture at ``src`` into a gphm dataset at ``out`` with the importer of
    ``layout`` (``auto``: :func:`detect_layout`); returns its report with ``layout``.

    ``ValueError`` for an unknown ``layout`` (listing the known ones); otherwise what the
    importer raises (:class:`CaptureError`, ``FileExistsError``).
    """
    known = importers()
    if layout != "auto" and layout not in known:
        raise ValueError(f"layout must be auto or one of {', '.join(known)}, got {layout!r}")
    name = detect_layout(src) if layout == "auto" else layout
    report = known[name].run(Path(src), Path(out), opts or ImportOptions(), overwrite)
    return {**report, "layout": name}
