"""Adaptive intra-op threads (gphm.io.threads): the decision on synthetic readings, the
controller on a simulated machine, ``/proc/stat`` parsing, the switch, the loops' hook,
and one real reading with a busy child process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gphm.io import threads
from gphm.io.threads import (
    AdaptiveThreads,
    CpuSample,
    ThreadStats,
    busy_ticks,
    next_threads,
    other_cores,
    read_busy_seconds,
    usable_cpus,
)

ROOT = Path(__file__).resolve().parents[2]


def _settle(current, *, other, cpus=2, n_max=2, readings=2):
    """The count after ``readings`` equal readings, starting with nothing pending."""
    pending = None
    for _ in range(readings):
        current, pending = next_threads(current, pending, other=other, cpus=cpus, n_max=n_max)
    return current, pending


# ---------------------------------------------------------------- pure decision
def test_other_cores_subtracts_this_process_and_divides_by_wall_time():
    before = CpuSample(wall_s=10.0, busy_s=100.0, own_s=5.0)
    # 2 s: the CPUs were busy 3 s, 1 s of it ours -> others kept 1 core busy
    assert other_cores(before, CpuSample(12.0, 103.0, 6.0)) == pytest.approx(1.0)
    # all the busy time ours: no other load (tick rounding can make it negative)
    assert other_cores(before, CpuSample(12.0, 103.98, 9.0)) == 0.0
    assert other_cores(before, CpuSample(10.0, 150.0, 5.0)) == 0.0  # no wall time


def test_alone_keeps_the_configured_count():
    assert _settle(2, other=0.0) == (2, None)
    assert _settle(2, other=0.4) == (2, None)  # light background work: still 2 free


def test_another_process_using_the_cores_takes_the_count_to_one():
    assert next_threads(2, None, other=2.0, cpus=2, n_max=2) == (2, 1)  # one reading: pending
    assert next_threads(2, 1, other=2.0, cpus=2, n_max=2) == (1, None)  # the second applies it
    # a second training with spinning threads gets about a core; one on 1 thread beside a
    # 2-thread one keeps 2/3 of a core busy: both call for 1 thread
    assert _settle(2, other=1.0) == (1, None)
    assert _settle(2, other=0.67) == (1, None)
    assert _settle(1, other=1.0) == (1, None)  # and 1 stays 1


def test_the_count_returns_when_the_cores_are_free_again():
    assert next_threads(1, None, other=0.1, cpus=2, n_max=2) == (1, 2)
    assert next_threads(1, 2, other=0.1, cpus=2, n_max=2) == (2, None)


def test_hysteresis_thresholds():
    # down when fewer than current - 0.5 cores are free
    assert _settle(2, other=0.45) == (2, None)
    assert _settle(2, other=0.55) == (1, None)
    # up only when current + 0.5 + UP_MARGIN (0.25) are free: a load between 0.25 and 0.5
    # of a core keeps whichever count is in force
    assert _settle(1, other=0.35) == (1, None)
    assert _settle(1, other=0.15) == (2, None)


def test_one_reading_is_not_enough_and_a_reversal_cancels_it():
    assert next_threads(2, None, other=1.5, cpus=2, n_max=2) == (2, 1)
    assert next_threads(2, 1, other=0.0, cpus=2, n_max=2) == (2, None)  # burst over
    assert next_threads(2, None, other=0.0, cpus=2, n_max=2) == (2, None)
    # on 8 CPUs, two readings calling for 5 and then 2 threads: the nearer one, 5
    assert next_threads(8, 5, other=6.0, cpus=8, n_max=8) == (5, None)


def test_never_above_n_max_and_n_max_1_never_changes():
    assert _settle(1, other=0.0, cpus=4, n_max=2) == (2, None)  # 4 free, at most 2
    assert _settle(2, other=1.5, cpus=4, n_max=2) == (2, None)  # 2.5 free: enough for 2
    for other in (0.0, 0.5, 1.0, 2.0, 7.0):
        assert _settle(1, other=other, n_max=1) == (1, None)
    # more threads configured than CPUs: down to the CPUs
    assert _settle(4, other=0.0, cpus=2, n_max=4) == (2, None)


# ---------------------------------------------------------------- /proc/stat
STAT = """\
cpu  9999 9999 9999 9999 9999 9999 9999 9999 9999 9999
cpu0 10 1 20 7000 50 3 4 5 600 700
cpu1 100 2 30 5000 40 6 7 8 900 1000
intr 143225 0 0
ctxt 12345
"""


def test_busy_ticks_counts_the_busy_columns_of_the_usable_cpus():
    # user + nice + system + irq + softirq + steal; not idle, iowait, guest (inside user)
    assert busy_ticks(STAT, {1}) == 100 + 2 + 30 + 6 + 7 + 8
    assert busy_ticks(STAT, {0, 1}) == (10 + 1 + 20 + 3 + 4 + 5) + 153
    assert busy_ticks(STAT, {3}) is None


def test_read_busy_seconds_in_seconds_or_none(tmp_path):
    (tmp_path / "stat").write_text(STAT)
    hz = os.sysconf("SC_CLK_TCK")
    assert read_busy_seconds({1}, tmp_path / "stat") == pytest.approx(153 / hz)
    assert read_busy_seconds({1}, tmp_path / "missing") is None
    (tmp_path / "odd").write_text("cpu1 a b c\n")
    assert read_busy_seconds({1}, tmp_path / "odd") is None


# ---------------------------------------------------------------- the controller
class Machine:
    """A simulated 2-CPU machine: clocks advanced by :meth:`run`, torch's count as a field."""

    def __init__(self, threads: int = 2):
        self.clock = self.busy = self.own = 0.0
        self.threads = threads
        self.sets: list[int] = []
        self.busy_reads = 0

    def read_busy(self) -> float:
        self.busy_reads += 1
        return self.busy

    def set_threads(self, n: int) -> None:
        self.sets.append(n)
        self.threads = n

    def controller(self, **kw) -> AdaptiveThreads:
        return AdaptiveThreads(cpus={0, 1}, read_busy=self.read_busy, read_own=lambda: self.own,
                               clock=lambda: self.clock, get_threads=lambda: self.threads,
                               set_threads=self.set_threads, **kw)  # fmt: skip

    def run(self, adaptive: AdaptiveThreads, seconds: float, other: float, step: float = 0.1):
        """Steps of ``step`` s, each polled, with other processes keeping ``other`` cores
        busy and this one the rest."""
        for _ in range(round(seconds / step)):
            adaptive.poll()
            self.clock += step
            self.own += (2 - other) * step
            self.busy += 2 * step


def test_alone_nothing_changes():
    m = Machine()
    adaptive = m.controller()
    m.run(adaptive, 10, other=0.0)
    assert m.sets == [] and adaptive.threads == 2
    s = adaptive.stats()
    assert s.active and s.changes == 0 and s.seconds_at == {2: pytest.approx(10)}


def test_beside_another_one_thread_then_back(caplog):
    m = Machine()
    adaptive = m.controller()
    with caplog.at_level(logging.INFO, logger="gphm.io.threads"):
        m.run(adaptive, 10, other=1.0)
    assert m.sets == [1]
    assert "threads 2 -> 1" in caplog.text and "1.0 of 2 CPUs" in caplog.text
    first = adaptive.stats()
    assert 2 <= first.seconds_at[2] < 3.5  # two readings of >= 1 s, then 1 thread
    assert first.seconds_at[1] == pytest.approx(10 - first.seconds_at[2])
    m.run(adaptive, 10, other=0.0)
    assert m.sets == [1, 2]
    s = adaptive.stats()
    assert s.changes == 2 and sum(s.seconds_at.values()) == pytest.approx(20)
    assert s.since(first).changes == 1 and 2 <= s.since(first).seconds_at[1] < 3.5


def test_polls_within_the_interval_only_read_the_clock():
    m = Machine()
    adaptive = m.controller(interval_s=1.0)
    m.run(adaptive, 0.9, other=2.0, step=0.01)
    assert m.busy_reads == 1  # the first sample, at construction
    m.run(adaptive, 0.3, other=2.0, step=0.1)
    assert m.busy_reads == 2


def test_no_proc_stat_no_op():
    m = Machine()
    reads = []
    adaptive = AdaptiveThreads(cpus={0, 1}, read_busy=lambda: None,
                               read_own=lambda: reads.append(1) or 0.0, clock=lambda: m.clock,
                               get_threads=lambda: 2, set_threads=m.set_threads)  # fmt: skip
    m.run(adaptive, 5, other=2.0)
    assert not adaptive.active and m.sets == [] and reads == []
    assert adaptive.stats() == ThreadStats(active=False)


def test_n_max_1_never_changes_and_a_users_count_becomes_the_ceiling():
    m = Machine(threads=1)
    adaptive = m.controller()
    m.run(adaptive, 5, other=2.0)
    m.run(adaptive, 5, other=0.0)
    assert m.sets == []
    m = Machine(threads=2)
    adaptive = m.controller()
    m.run(adaptive, 5, other=1.0)
    assert m.sets == [1]
    m.threads = 4  # the user: torch.set_num_threads(4)
    m.run(adaptive, 5, other=0.0)
    assert adaptive.n_max == 4 and m.sets == [1, 2]  # 2 CPUs free: 2, not 4
    m.threads = 1  # the user again, lower
    m.run(adaptive, 5, other=0.0)
    assert adaptive.n_max == 1 and m.sets == [1, 2]


def test_stats_since_and_json():
    before = ThreadStats(True, 1, {2: 5.0})
    after = ThreadStats(True, 3, {2: 7.5, 1: 4.0})
    assert after.since(before) == ThreadStats(True, 2, {2: 2.5, 1: 4.0})
    assert after.since(after) == ThreadStats(True, 0, {})
    assert after.as_dict() == {"adaptive": True, "changes": 3,
                               "seconds_at": {"1": 4.0, "2": 7.5}}  # fmt: skip


# ---------------------------------------------------------------- the switch and the hooks
@pytest.fixture
def fresh_process_controller():
    threads._process.cache_clear()
    yield
    threads._process.cache_clear()


@pytest.mark.parametrize("value, on", [(None, False), ("0", False), ("1", True), ("true", True),
                                       ("no", False)])  # fmt: skip
def test_switch(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(threads.ENV, raising=False)
    else:
        monkeypatch.setenv(threads.ENV, value)
    assert threads.enabled() is on


def test_switched_off_poll_changes_nothing(monkeypatch, fresh_process_controller):
    monkeypatch.setenv(threads.ENV, "0")
    monkeypatch.setattr(torch, "set_num_threads", lambda n: pytest.fail("set_num_threads"))
    threads.poll()
    assert threads._process() is None and threads.stats() == ThreadStats(active=False)


def test_commands_switch_it_on_the_python_api_does_not():
    code = ("import os, gphm, gphm.api; api = os.environ.get('GPHM_ADAPTIVE_THREADS'); "
            "import gphm.cli; print(api, os.environ.get('GPHM_ADAPTIVE_THREADS'))")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != threads.ENV} | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    assert out.split() == ["None", "1"]


def test_the_inversion_loop_polls_every_step(monkeypatch):
    from gphm.inversion import ParamGroup, Phase, run_phase

    polls = []
    monkeypatch.setattr(threads, "poll", lambda: polls.append(1))
    p = torch.tensor([1.0], requires_grad=True)
    phase = Phase("toy", 7, [ParamGroup([p], 0.1, "toy.lr", default=0.1)], {"a": 1.0},
                  prefix="toy", defaults={"a": 1.0})  # fmt: skip
    run_phase(phase, lambda i: {"a": (p**2).sum()})
    assert len(polls) == 7


# ---------------------------------------------------------------- this machine
@pytest.mark.skipif(read_busy_seconds(usable_cpus()) is None, reason="no /proc/stat")
def test_a_busy_child_process_is_other_load():
    """A real reading: a child spinning for ~1.5 s shows as at least half a core of other
    load (more on a loaded machine; only the direction is checked)."""
    cpus = usable_cpus()

    def sample() -> CpuSample:
        return CpuSample(time.monotonic(), read_busy_seconds(cpus), time.process_time())

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the interpreter starts
        before = sample()
        time.sleep(1.5)
        after = sample()
    finally:
        child.kill()
        child.wait()
    assert other_cores(before, after) >= 0.5
