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
