"""Memory budget checks: refuse sizes that cannot fit before allocating them.

A typo such as ``size=100000`` or a ``config.json`` with ``tet_resolution: 5000`` would
otherwise allocate tens of gigabytes and end in the kernel's OOM killer (or thrash the
machine for minutes first). The checks here estimate the bytes an operation needs from
its sizes and compare them with a **budget**:

* ``GPHM_MEMORY_LIMIT`` when set: bytes, or a number with a unit (``512M``, ``8G``,
  ``1.5T``; powers of 1024);
* otherwise 80 % of the memory available now (``MemAvailable`` in ``/proc/meminfo``;
  where that does not exist, ``os.sysconf`` physical pages), at least 1 GiB.

Estimates are lower bounds of the real peak (one buffer, not every intermediate), so
they only refuse what certainly cannot fit; errors are a ``ValueError`` whose one line
names the option, the estimate and the budget.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "ENV_VAR",
    "MemoryBudgetError",
    "check_bytes",
    "check_image_size",
    "check_model_config",
    "check_render_size",
    "format_bytes",
    "memory_budget",
]

ENV_VAR = "GPHM_MEMORY_LIMIT"
#: Fraction of the available memory one check may claim.
FRACTION = 0.8
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class MemoryBudgetError(ValueError):
    """A size that would not fit in the memory budget (module docstring)."""


def format_bytes(n: float) -> str:
    """``1.5 GB`` style (powers of 1024, as the budget's units)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") or os.sysconf("SC_PHYS_PAGES")
        return int(pages) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30  # unknown platform: assume a 16 GiB machine


def memory_budget() -> int:
    """Bytes one allocation may need (module docstring)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", env, flags=re.IGNORECASE)
        if not m:
            raise ValueError(f"{ENV_VAR}={env!r}: expected bytes or a size like 512M, 8G")
        return int(float(m[1]) * _UNITS[m[2].lower()])
    return max(1 << 30, int(FRACTION * _available()))


def _hint() -> str:
    return f"the limit is {format_bytes(memory_budget())} (set {ENV_VAR} to change it)"


def check_bytes(need: float, what: str) -> None:
    """Raise :class:`MemoryBudgetError` ``"WHAT would need N GB; the limit is ..."``."""
    if need > memory_budget():
        raise MemoryBudgetError(f"{what} would need {format_bytes(need)}; {_hint()}")


def check_image_size(
    name: str,
    height: int,
    width: int,
    channels: int = 3,
    batch: int = 1,
    itemsize: int = 4,
) -> None:
    """Refuse ``batch`` float images [height, width, channels] that would not fit.

    ``name`` is the option the size came from (``"size=4096"``); the message reads
    ``size=100000 would need 1164.2 GB for 1 32-channel 100000x100000 image; ...``.
    """
    need = float(height) * float(width) * channels * batch * itemsize
    plural = "image" if batch == 1 else "images"
    check_bytes(need, f"{name} ({batch} {channels}-channel {height}x{width} {plural})")


# ----------------------------------------------------------------------------- models

#: Bytes per DMTet grid cell: vertices, 6 tets of 4 int64 indices, extraction scratch.
BYTES_PER_TET_CELL = 400
#: Bytes per Gaussian: attributes, features and their gradients-free render buffers.
BYTES_PER_GAUSSIAN = 512


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        yield prefix, node
        for k, v in node.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def model_memory_terms(desc: dict[str, Any]) -> list[tuple[str, float]]:
    """``(field=value, bytes)`` for each size in a model description that costs memory.

    ``desc`` is a ``config.json`` (``{"config": ..., "extra": ...}``) or any nested
    dict. Recognised: ``tet_resolution`` (R³ grid cells), ``num_points`` (Gaussians),
    MLPs (``width`` and ``depth``: depth·width² weights), the upsampler (``width`` and
    ``blocks``: (2·blocks + 2)·9·width² weights), codebook ``dim`` × the larger of
    ``num_subjects`` / ``num_frames`` in ``init_kwargs``, and ``lr_size`` / ``hr_size``
    (one 32-channel image).
    """
    terms: list[tuple[str, float]] = []
    counts = [
        n for k, v in (desc.get("init_kwargs") or {}).items()
        if k in ("num_subjects", "num_frames") and (n := _int(v)) is not None
    ]  # fmt: skip
    for where, node in _walk(desc):
        dot = f"{where}." if where else ""
        r = _int(node.get("tet_resolution"))
        if r is not None:
            terms.append((f"{dot}tet_resolution={r}", float(r) ** 3 * BYTES_PER_TET_CELL))
        n = _int(node.get("num_points"))
        if n is not None:
            terms.append((f"{dot}num_points={n}", float(n) * BYTES_PER_GAUSSIAN))
        w = _int(node.get("width"))
        if w is not None and _int(node.get("depth")) is not None:
            depth = max(1, node["depth"])
            terms.append((f"{dot}width={w}", float(depth + 1) * w * w * 4))
        if w is not None and _int(node.get("blocks")) is not None:
            terms.append((f"{dot}width={w}", float(2 * max(0, node["blocks"]) + 2) * 9 * w * w * 4))
        d = _int(node.get("dim"))
        if d is not None and counts:
            terms.append((f"{dot}dim={d}", float(d) * max(counts) * 4))
        for key in ("lr_size", "hr_size"):
            s = _int(node.get(key))
            if s is not None:
                terms.append((f"{dot}{key}={s}", float(s) * s * 32 * 4))
    return terms


def check_model_config(desc: dict[str, Any], where: str = "config.json") -> None:
    """Refuse a model description whose sizes would not fit in the memory budget.

    The message names the file and the largest term: ``RUN/model/config.json:
    config.tet_resolution=5000 would need 45.5 TB; the limit is ...``.
    """
    terms = model_memory_terms(desc)
    if not terms:
        return
    total = sum(b for _, b in terms)
    name, biggest = max(terms, key=lambda t: t[1])
    if total > memory_budget():
        what = f"{where}: {name}" + ("" if biggest == total else " (with the other sizes)")
        check_bytes(total, what)


def check_render_size(size: int, frames: int = 1, option: str = "size") -> None:
    """Refuse a CLI's ``size`` (square views of ``size``² pixels) that cannot fit: one
    32-channel float feature image at that size, and ``frames`` RGB float frames kept in
    memory for a video or a strip."""
    check_image_size(f"{option}={size}", size, size, channels=32)
    if frames > 1:
        check_image_size(f"{option}={size} with frames={frames}", size, size, 3, batch=frames)
