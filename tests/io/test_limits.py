import pytest

from gphm.io import limits
from gphm.io.limits import (
    MemoryBudgetError,
    check_image_size,
    check_model_config,
    format_bytes,
    memory_budget,
)
from gphm.models.guidance import GuidanceConfig


def test_budget_from_env_and_meminfo(monkeypatch):
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "1.5G")
    assert memory_budget() == int(1.5 * 2**30)
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "123")
    assert memory_budget() == 123
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="GPHM_MEMORY_LIMIT='lots'"):
        memory_budget()
    monkeypatch.delenv("GPHM_MEMORY_LIMIT")
    monkeypatch.setattr(limits, "_available", lambda: 10 * 2**30)
    assert memory_budget() == int(0.8 * 10 * 2**30)
    monkeypatch.setattr(limits, "_available", lambda: 0)
    assert memory_budget() == 2**30  # never below 1 GiB


def test_check_image_size_message(monkeypatch):
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "2G")
    check_image_size("size=4096", 4096, 4096, channels=32)  # 2 GiB exactly: fits
    with pytest.raises(MemoryBudgetError) as info:
        check_image_size("size=100000", 100000, 100000, channels=32)
    assert str(info.value) == (
        "size=100000 (1 32-channel 100000x100000 image) would need 1.2 TB; "
        "the limit is 2.0 GB (set GPHM_MEMORY_LIMIT to change it)"
    )
    assert format_bytes(512) == "512 B" and format_bytes(3 * 2**20) == "3.0 MB"


def test_model_config_terms(monkeypatch):
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "8G")
    import dataclasses

    default = {"class": "GuidanceModel", "config": dataclasses.asdict(GuidanceConfig()),
               "init_kwargs": {"num_subjects": 8, "num_frames": 100}}  # fmt: skip
    check_model_config(default)  # the defaults are tiny
    terms = dict(limits.model_memory_terms(default))
    assert terms["config.tet_resolution=32"] == 32**3 * limits.BYTES_PER_TET_CELL
    assert terms["config.f_mean.width=128"] == 5 * 128 * 128 * 4
    default["config"]["tet_resolution"] = 5000
    with pytest.raises(MemoryBudgetError, match=r"^m/config.json: config.tet_resolution=5000 "):
        check_model_config(default, "m/config.json")
    with pytest.raises(MemoryBudgetError, match=r"extra.hr_size=100000 would need"):
        check_model_config({"extra": {"hr_size": 100000}}, "m/config.json")


def test_time_budget_from_env(monkeypatch):
    monkeypatch.delenv("GPHM_TIME_LIMIT", raising=False)
    assert limits.time_budget() == 2 * 3600
    for text, seconds in [("90", 90), ("90s", 90), ("30m", 1800), ("30min", 1800),
                          ("1.5h", 5400), ("2d", 172800), ("12 H", 43200)]:  # fmt: skip
        monkeypatch.setenv("GPHM_TIME_LIMIT", text)
        assert limits.time_budget() == seconds, text
    for text in ("none", "off", "inf", "None"):
        monkeypatch.setenv("GPHM_TIME_LIMIT", text)
        assert limits.time_budget() is None
    monkeypatch.setenv("GPHM_TIME_LIMIT", "soon")
    with pytest.raises(ValueError, match="GPHM_TIME_LIMIT='soon': expected seconds"):
        limits.time_budget()


def test_check_seconds_message_and_override(monkeypatch):
    monkeypatch.setenv("GPHM_TIME_LIMIT", "1h")
    limits.check_seconds(3600, "frames=10")  # exactly the limit: allowed
    with pytest.raises(limits.TimeBudgetError) as info:
        limits.check_seconds(3 * 86400, "frames=100000", device="cuda")
    assert str(info.value) == (
        "frames=100000 would take about 3.0 days of work on a GPU (estimated); the limit is "
        "1.0 h (set GPHM_TIME_LIMIT, e.g. GPHM_TIME_LIMIT=48h or GPHM_TIME_LIMIT=none, to "
        "allow it)"
    )
    monkeypatch.setenv("GPHM_TIME_LIMIT", "none")
    limits.check_seconds(1e12, "frames=1e12")
    assert [limits.format_seconds(s) for s in (5, 90, 7200, 172800)] == [
        "5 s", "1.5 min", "2.0 h", "2.0 days"
    ]  # fmt: skip


def test_work_estimates_grow_with_every_size_and_are_faster_on_cuda():
    base = limits.work_seconds(pixels=1e6, cells=1e5, gaussians=1e5, items=10)
    expected = (1e6 * limits.SECONDS_PER_PIXEL + 1e5 * limits.SECONDS_PER_TET_CELL
                + 1e5 * limits.SECONDS_PER_GAUSSIAN + 10 * limits.SECONDS_PER_ITEM)  # fmt: skip
    assert base == pytest.approx(expected)
    for key in ("pixels", "cells", "gaussians", "items"):
        more = dict(pixels=1e6, cells=1e5, gaussians=1e5, items=10)
        more[key] *= 2
        assert limits.work_seconds(**more) > base, key
    cuda = limits.work_seconds(pixels=1e6, cells=1e5, gaussians=1e5, items=10, device="cuda")
    assert cuda == pytest.approx(base / limits.CUDA_SPEEDUP)
    assert limits.compute_device("cpu") == "cpu"


def test_check_frames_memory_then_time(monkeypatch):
    monkeypatch.setenv("GPHM_TIME_LIMIT", "1h")
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "1G")
    limits.check_frames(256, 48, "frames=48")
    with pytest.raises(MemoryBudgetError, match=r"^frames=10000 at size=256 \(10000 3-channel"):
        limits.check_frames(256, 10000, "frames=10000")
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "1T")
    with pytest.raises(limits.TimeBudgetError, match=r"^frames=100000 at size=256 \(100000 "
                       r"renders\) would take about 2\.\d h of work on the CPU"):  # fmt: skip
        limits.check_frames(256, 100000, "frames=100000")


def test_check_disk(tmp_path, monkeypatch):
    limits.check_disk(1024, "a small dataset", tmp_path / "new" / "deeper")  # parents exist
    monkeypatch.setattr(limits, "_free_bytes", lambda path: 2 << 30)
    with pytest.raises(MemoryBudgetError, match=r"^big would need about 3\.0 GB on disk; "
                       r"2\.0 GB are free at "):  # fmt: skip
        limits.check_disk(3 << 30, "big", tmp_path)
