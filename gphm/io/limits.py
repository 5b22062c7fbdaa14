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

**Time budget.** Counts (steps, frames, identities...) cost time rather than memory: a
typo such as ``frames=100000`` is hours of work, and stopping it leaves partial outputs.
Every command estimates the work its options ask for before it starts
(:func:`work_seconds`: optimistic per-pixel / per-grid-cell / per-Gaussian / per-item
costs, divided by :data:`CUDA_SPEEDUP` on a GPU) and refuses more than

* ``GPHM_TIME_LIMIT`` when set: seconds, or a number with a unit (``90m``, ``12h``,
  ``2d``), or ``none`` for no limit;
* otherwise :data:`DEFAULT_TIME_LIMIT` (2 hours) of estimated work.

Both variables are the one override of every command: a user with the memory or the
time sets them (``GPHM_TIME_LIMIT=none gphm-train ...``). Errors name the option, the
estimate, the limit and the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "ENV_VAR",
    "TIME_ENV_VAR",
    "MemoryBudgetError",
    "TimeBudgetError",
    "check_bytes",
    "check_disk",
    "check_frames",
    "check_render_work",
    "check_steps",
    "check_seconds",
    "compute_device",
    "check_image_size",
    "check_model_config",
    "check_render_size",
    "format_bytes",
    "format_seconds",
    "memory_budget",
    "time_budget",
    "work_seconds",
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


# ----------------------------------------------------------------------------- time

TIME_ENV_VAR = "GPHM_TIME_LIMIT"
#: Estimated seconds of work a command may start without ``GPHM_TIME_LIMIT``.
DEFAULT_TIME_LIMIT = 2 * 3600.0
_TIME_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}

# Optimistic CPU costs (seconds), about half of what the tiny model takes on one core of
# a 2-core machine, so that an estimate is a lower bound of the real time: one rendered
# output pixel (Gaussians, features, upsampler; forward and backward when training), one
# DMTet grid cell's SDF evaluation, one Gaussian's decoding and splatting, and the fixed
# cost of one step or frame (Python, small ops, writing it).
SECONDS_PER_PIXEL = 1.5e-6
SECONDS_PER_TET_CELL = 1e-6
SECONDS_PER_GAUSSIAN = 1e-6
SECONDS_PER_ITEM = 5e-3
#: How much faster a CUDA device is assumed to be (optimistic too).
CUDA_SPEEDUP = 30.0


class TimeBudgetError(ValueError):
    """Options asking for more estimated work than the time budget (module docstring)."""


def format_seconds(s: float) -> str:
    """``45 s``, ``12.5 min``, ``3.2 h`` or ``4.1 days``."""
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def time_budget() -> float | None:
    """Seconds of estimated work one command may start; None = no limit (module
    docstring). ``ValueError`` naming the variable for a value that does not parse."""
    env = os.environ.get(TIME_ENV_VAR, "").strip().lower()
    if not env:
        return DEFAULT_TIME_LIMIT
    if env in ("none", "off", "inf", "unlimited"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min|m|h|d)?", env)
    if not m:
        raise ValueError(
            f"{TIME_ENV_VAR}={env!r}: expected seconds, a duration like 90m, 12h, 2d, or none"
        )
    return float(m[1]) * _TIME_UNITS[m[2] or ""]


def compute_device(device: str = "auto") -> str:
    """``"cuda"`` or ``"cpu"``: where a command's ``device=`` option will run the work
    (``auto``: CUDA when available), for the time estimates."""
    d = str(device).strip().lower()
    if d == "cpu":
        return "cpu"
    import torch  # only to ask for CUDA; every command has torch loaded by now

    return "cuda" if torch.cuda.is_available() else "cpu"


def work_seconds(
    pixels: float = 0.0,
    cells: float = 0.0,
    gaussians: float = 0.0,
    items: float = 0.0,
    device: str = "cpu",
) -> float:
    """Optimistic seconds of work: ``pixels`` rendered output pixels, ``cells`` DMTet grid
    cell evaluations, ``gaussians`` Gaussian decodings, ``items`` steps or frames (their
    fixed cost), on ``device`` (``"cpu"`` or ``"cuda"``, see :func:`compute_device`)."""
    cpu = (
        pixels * SECONDS_PER_PIXEL
        + cells * SECONDS_PER_TET_CELL
        + gaussians * SECONDS_PER_GAUSSIAN
        + items * SECONDS_PER_ITEM
    )
    return cpu / CUDA_SPEEDUP if device == "cuda" else cpu


def check_seconds(need: float, what: str, device: str = "cpu") -> None:
    """Raise :class:`TimeBudgetError` ``"WHAT would take about 3.2 h of work on the CPU;
    the limit is 2.0 h (set GPHM_TIME_LIMIT=...)"`` when ``need`` seconds exceed the
    budget. ``what`` names the options (``"frames=100000 at size=256"``)."""
    budget = time_budget()
    if budget is None or need <= budget:
        return
    where = "a GPU" if device == "cuda" else "the CPU"
    raise TimeBudgetError(
        f"{what} would take about {format_seconds(need)} of work on {where} (estimated); "
        f"the limit is {format_seconds(budget)} (set {TIME_ENV_VAR}, e.g. "
        f"{TIME_ENV_VAR}=48h or {TIME_ENV_VAR}=none, to allow it)"
    )


def check_render_work(
    size: int, frames: int, option: str, device: str = "cpu", height: int | None = None
) -> None:
    """Refuse ``frames`` renders of ``size``² (or ``height`` × ``size``) pixels that would
    take longer than the time budget; ``option`` names them (``"frames=100000"``)."""
    pixels = float(size) * float(height or size)
    need = work_seconds(pixels=pixels * frames, items=frames, device=device)
    check_seconds(need, f"{option} ({frames} renders)", device)


def check_frames(size: int, frames: int, option: str, device: str = "cpu") -> None:
    """Refuse ``frames`` renders at ``size``² kept for a video or strip whose memory
    (:func:`check_render_size`) or time (:func:`check_render_work`) is over budget;
    ``option`` names the count (``"frames=100000"``, ``"steps_between=500 x 12 labels"``)."""
    check_image_size(f"size={size}", size, size, channels=32)
    if frames > 1:
        check_image_size(f"{option} at size={size}", size, size, 3, batch=frames)
    check_render_work(size, frames, f"{option} at size={size}", device)


#: Side (px) an optimisation step is assumed to render at when the size is not known
#: before the model is loaded (fitting renders at the model's output size).
STEP_RENDER_SIZE = 256


def check_steps(steps: int, option: str, device: str = "cpu", size: int = STEP_RENDER_SIZE) -> None:
    """Refuse ``steps`` optimisation steps (each a forward and backward render at
    ``size``², about 3 renders' work) over the time budget; ``option`` names them."""
    need = work_seconds(pixels=3.0 * steps * size * size, items=steps, device=device)
    check_seconds(need, option, device)


# ----------------------------------------------------------------------------- disk


def _free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem that would hold ``path`` (its first existing parent)."""
    import shutil
    from pathlib import Path

    p = Path(path).expanduser().absolute()
    for candidate in (p, *p.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def check_disk(need: float, what: str, path: str | os.PathLike) -> None:
    """Raise :class:`MemoryBudgetError` ``"WHAT would need about N GB on disk; F GB are
    free at PATH"`` when the estimate ``need`` (bytes, a lower bound) exceeds the free
    space of the filesystem that holds ``path``. Disk cannot be overridden: free space or
    choose another ``out``."""
    free = _free_bytes(path)
    if free is not None and need > free:
        raise MemoryBudgetError(
            f"{what} would need about {format_bytes(need)} on disk; {format_bytes(free)} "
            f"are free at {path}"
        )
