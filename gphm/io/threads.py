"""Adaptive intra-op threads: the long loops use fewer torch threads while other
processes keep the CPUs busy, and the configured count again when they are free.

**Why.** torch's CPU kernels run in OpenMP parallel regions whose idle worker threads spin
between regions (OpenMP's default wait policy). Alone, a command gains from that (40
stage-2 steps of the demo model on 2 cores: 19.4 s, against 31.2 s with
``OMP_WAIT_POLICY=PASSIVE`` and 33.1 s on one thread); but two commands with 2 threads
each on 2 cores burn each other's time spinning, and a training beside a second one ran
~4.5x slower than alone. A process on one thread has no worker to spin: so, under load,
fewer threads.

**How.** The long loops (each training step, each fitting and tracking step) call
:func:`poll`. At most every :data:`INTERVAL_S` seconds of wall time it takes a
:class:`CpuSample` — the seconds the CPUs this process may run on (its affinity mask)
have been busy, by every process (``/proc/stat``), and this process's own CPU seconds,
all its threads (:func:`time.process_time`) — and :func:`other_cores` turns two samples
into the number of cores *other* processes kept busy in between. :func:`next_threads`
decides:

* the count follows ``cpus − other`` rounded, within ``[1, n_max]``: ``cpus`` the CPUs
  of the affinity mask, ``n_max`` the count torch had when adapting started (the user's
  ``OMP_NUM_THREADS`` or ``torch.set_num_threads``, else torch's default); it is never
  raised above ``n_max``, and a later ``torch.set_num_threads`` by the user becomes the
  new ``n_max``;
* with hysteresis: it goes down when fewer than ``current − 0.5`` cores are free, up only
  when at least ``current + 0.5 +`` :data:`UP_MARGIN` are, and only once two consecutive
  readings call for a change in the same direction, so a burst of other work shorter than
  a reading, or a load near a boundary, does not make it flap.

Two trainings on 2 cores each see the other keep one core busy, and both go to one
thread within a few seconds; there each sees one core used by the other and stays; when
one ends, the other sees both cores free and returns to 2 threads.

**Scope.** Linux only (``/proc/stat``); elsewhere, or where the file cannot be read,
nothing changes. Only torch's intra-op thread count changes (``torch.set_num_threads``):
results differ from a fixed count only in the order of floating-point sums, but a run
under changing load is not bit-for-bit reproducible (``GPHM_ADAPTIVE_THREADS=0`` or
``OMP_NUM_THREADS=1`` keeps the count fixed). The work of this process's child
processes counts as other processes' (the loops start none).

**Switch.** ``GPHM_ADAPTIVE_THREADS``: ``1`` on, ``0`` off, read at the process's first
:func:`poll`. The commands set it to ``1`` unless the user set it
(:mod:`gphm.cli._env`); unset, as under the Python API, it is off: a library leaves its
host's thread count alone.

**Record.** Each change is logged at INFO on this module's logger. :func:`stats` returns
the number of changes and the wall seconds spent at each count (:class:`ThreadStats`);
training records each stage's in its summary (``train_report.json``:
``stages.<stage>.threads``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ENV",
    "INTERVAL_S",
    "UP_MARGIN",
    "AdaptiveThreads",
    "CpuSample",
    "ThreadStats",
    "busy_ticks",
    "enabled",
    "next_threads",
    "other_cores",
    "poll",
    "read_busy_seconds",
    "stats",
    "usable_cpus",
]

ENV = "GPHM_ADAPTIVE_THREADS"
"""The switch: ``1`` on, ``0`` off (unset: off; the commands set ``1``)."""

INTERVAL_S = 1.0
"""Least wall seconds between two readings; a :func:`poll` in between reads the clock only."""

UP_MARGIN = 0.25
"""Cores beyond the rounding boundary that must be free before the count goes up."""

_log = logging.getLogger(__name__)

# /proc/stat's per-CPU columns: user nice system idle iowait irq softirq steal guest
# guest_nice, in USER_HZ ticks. Busy is everything but idle and iowait; guest time is
# already inside user and nice, and steal (another virtual machine on our CPU) is time the
# CPU was not ours either.
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class CpuSample:
    """One reading of the clocks, in seconds."""

    wall_s: float
    """Monotonic wall clock."""
    busy_s: float
    """Busy time of the usable CPUs since boot, summed over them, every process."""
    own_s: float
    """This process's CPU time, all its threads, user and system."""


@dataclass(frozen=True)
class ThreadStats:
    """What the adaptation did: ``active`` whether it runs in this process (False: switched
    off, or no ``/proc/stat``), ``changes`` how many times it set the thread count,
    ``seconds_at`` the wall seconds spent at each thread count while active."""

    active: bool
    changes: int = 0
    seconds_at: dict[int, float] = field(default_factory=dict)

    def since(self, before: ThreadStats) -> ThreadStats:
        """What happened between ``before`` (an earlier :meth:`AdaptiveThreads.stats` of
        the same controller) and this one."""
        seconds = {n: s - before.seconds_at.get(n, 0.0) for n, s in self.seconds_at.items()}
        return ThreadStats(self.active, self.changes - before.changes,
                           {n: s for n, s in seconds.items() if s > 0})  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """JSON form, e.g. ``{"adaptive": true, "changes": 2, "seconds_at": {"1": 30.1,
        "2": 12.4}}`` (seconds rounded to 0.01)."""
        seconds = {str(n): round(s, 2) for n, s in sorted(self.seconds_at.items())}
        return {"adaptive": self.active, "changes": self.changes, "seconds_at": seconds}


def other_cores(before: CpuSample, after: CpuSample) -> float:
    """Cores other processes kept busy on average between two samples: (busy seconds −
    own CPU seconds) / wall seconds, at least 0 (``/proc/stat`` counts in ticks of
    1/USER_HZ s, so a quiet interval can come out a little negative); 0 when no wall time
    has passed."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return 0.0
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return max(0.0, others / wall)


def next_threads(
    current: int, pending: int | None, *, other: float, cpus: int, n_max: int
) -> tuple[int, int | None]:
    """One reading's decision: ``(threads, pending)``, the count to use from now on and the
    change this reading calls for when it is not applied yet (None: none).

    ``current``: the count in force; ``pending``: the previous reading's unapplied change;
    ``other``: cores other processes kept busy (:func:`other_cores`); ``cpus``: the CPUs
    this process may use; ``n_max``: the most threads to use. With ``free = cpus − other``
    the reading calls for ``round(free)`` when that is below ``current`` and for
    ``round(free − UP_MARGIN)`` when that is above (halves round up), clamped to
    ``[1, n_max]``. A change is applied when the previous reading called for one in the
    same direction; of the two counts, the one nearer ``current``.
    """
    free = cpus - other
    down, up = math.floor(free + 0.5), math.floor(free - UP_MARGIN + 0.5)
    wanted = max(1, down) if down < current else min(n_max, up) if up > current else current
    if wanted == current:
        return current, None
    if pending is not None and (pending - current) * (wanted - current) > 0:
        return min(pending, wanted, key=lambda n: abs(n - current)), None
    return current, wanted


def busy_ticks(stat: str, cpus: Collection[int]) -> int | None:
    """Busy ticks since boot summed over the ``cpuN`` lines of ``/proc/stat`` text whose N is
    in ``cpus``; None when there is no such line."""
    total, found = 0, False
    for line in stat.splitlines():
        name, _, values = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values.split()]
            total += sum(ticks[i] for i in _BUSY_COLUMNS if i < len(ticks))
            found = True
    return total if found else None


def read_busy_seconds(cpus: Collection[int], path: str | Path = "/proc/stat") -> float | None:
    """Seconds the CPUs ``cpus`` have been busy since boot, every process, summed over
    them: :func:`busy_ticks` of ``path`` divided by USER_HZ (``os.sysconf('SC_CLK_TCK')``,
    usually 100); None where the file or the constant cannot be read."""
    try:
        ticks = busy_ticks(Path(path).read_text(), cpus)
        per_second = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):  # no /proc, odd content, no os.sysconf
        return None
    return None if ticks is None else ticks / per_second


def usable_cpus() -> set[int]:
    """The CPUs this process may run on: its affinity mask where the OS has one, else all."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        return set(range(os.cpu_count() or 1))


class AdaptiveThreads:
    """Sets torch's intra-op thread count from the other processes' CPU use (module
    docstring); inactive (:meth:`poll` does nothing) where the busy time cannot be read.

    The defaults read this machine and set torch's count; tests inject ``cpus`` (CPU ids),
    ``read_busy`` (() -> busy seconds of those CPUs, or None), ``read_own`` (() -> this
    process's CPU seconds), ``clock`` (() -> monotonic seconds) and the thread count's
    getter and setter.
    """

    def __init__(
        self,
        *,
        cpus: Collection[int] | None = None,
        read_busy: Callable[[], float | None] | None = None,
        read_own: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        get_threads: Callable[[], int] = torch.get_num_threads,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        interval_s: float = INTERVAL_S,
    ):
        cpu_ids = usable_cpus() if cpus is None else set(cpus)
        self.cpus = len(cpu_ids)
        self._read_busy = read_busy or functools.partial(read_busy_seconds, cpu_ids)
        self._read_own, self._clock, self._interval_s = read_own, clock, interval_s
        self._get_threads, self._set_threads = get_threads, set_threads
        self.n_max = self.threads = get_threads()
        self._pending: int | None = None
        self._changes = 0
        self._seconds_at: dict[int, float] = {}
        self._accounted = clock()
        self._sample = self._take(self._accounted)

    @property
    def active(self) -> bool:
        return self._sample is not None

    def poll(self) -> None:
        """The loops' per-step hook: a reading (and maybe a new thread count) when
        :data:`INTERVAL_S` has passed since the last one, else nothing but a clock read."""
        if self._sample is None:
            return
        now = self._clock()
        if now - self._sample.wall_s >= self._interval_s:
            self._reading(now)

    def stats(self) -> ThreadStats:
        """The counters so far (:class:`ThreadStats`)."""
        if self._sample is not None:
            self._account(self._clock())
        return ThreadStats(self.active, self._changes, dict(self._seconds_at))

    def _take(self, now: float) -> CpuSample | None:
        busy = self._read_busy()
        return None if busy is None else CpuSample(now, busy, self._read_own())

    def _account(self, now: float) -> None:
        """Add the wall seconds since the last account to the count in force."""
        spent = now - self._accounted
        self._seconds_at[self.threads] = self._seconds_at.get(self.threads, 0.0) + spent
        self._accounted = now

    def _reading(self, now: float) -> None:
        self._account(now)
        before, self._sample = self._sample, self._take(now)
        if self._sample is None:  # /proc/stat stopped being readable: keep the count
            return
        if (configured := self._get_threads()) != self.threads:  # the user set a count
            self.n_max = self.threads = configured
            self._pending = None
            return
        other = other_cores(before, self._sample)
        threads, self._pending = next_threads(self.threads, self._pending, other=other,
                                              cpus=self.cpus, n_max=self.n_max)  # fmt: skip
        if threads != self.threads:
            _log.info("threads %d -> %d: other processes kept %.1f of %d CPUs busy (%s=0 "
                      "keeps the count)", self.threads, threads, other, self.cpus, ENV)  # fmt: skip
            self._set_threads(threads)
            self.threads = threads
            self._changes += 1


def enabled() -> bool:
    """Whether ``GPHM_ADAPTIVE_THREADS`` switches adaptation on (``1``, ``true``, ``yes``,
    ``on``; anything else or unset: off)."""
    return os.environ.get(ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def _process() -> AdaptiveThreads | None:
    """The process's one controller, made at the first :func:`poll` or :func:`stats` (so
    its ``n_max`` is the count torch had then); None when switched off."""
    return AdaptiveThreads() if enabled() else None


def poll() -> None:
    """Call once per step of a long loop: adapts this process's torch thread count to the
    other processes' load when ``GPHM_ADAPTIVE_THREADS`` is on (module docstring)."""
    if (adaptive := _process()) is not None:
        adaptive.poll()


def stats() -> ThreadStats:
    """This process's counters so far; ``stats().since(earlier)`` is one loop's share."""
    adaptive = _process()
    return adaptive.stats() if adaptive is not None else ThreadStats(active=False)
