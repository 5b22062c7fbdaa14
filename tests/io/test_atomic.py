import errno
import os
import subprocess
import sys

import pytest

from gphm.io import atomic
from gphm.io.atomic import (
    ReplaceError,
    atomic_directory,
    atomic_write_text,
    check_output_dir,
    recover,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "a.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert sorted(os.listdir(p.parent)) == ["a.json"]


def test_atomic_directory_builds_then_renames(tmp_path):
    target = tmp_path / "ds"
    with atomic_directory(target) as tmp:
        (tmp / "x.txt").write_text("x")
        assert not target.exists()
    assert (target / "x.txt").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_atomic_directory_refuses_existing_and_keeps_it_on_failure(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_directory(target):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert (target / "keep.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_atomic_directory_overwrite_swaps_contents(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "y").write_text("y")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


# --------------------------------------------------------------------- no gap, recovery


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _old_target(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    return target


def test_replace_never_removes_the_target(tmp_path, monkeypatch):
    """The target exists at every rename: exchanged in one call, never renamed away."""
    a, b = tmp_path / "probe_a", tmp_path / "probe_b"
    a.mkdir(), b.mkdir()
    try:
        atomic._exchange(a, b)
    except OSError as err:  # this kernel/filesystem cannot exchange: the fallback is tested below
        pytest.skip(f"renameat2(RENAME_EXCHANGE) unavailable here: {err}")
    a.rmdir(), b.rmdir()
    target = _old_target(tmp_path)
    real_rename = os.rename

    def rename(src, dst):
        assert os.path.exists(target), "target missing during the swap"
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", rename)
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def _no_exchange(a, b):
    raise OSError(errno.ENOSYS, "renameat2 is not available")


@pytest.mark.parametrize("failing_step", [1, 2])
def test_fallback_swap_failing_at_each_step_keeps_the_old_directory(
    tmp_path, monkeypatch, failing_step
):
    target = _old_target(tmp_path)
    monkeypatch.setattr(atomic, "_exchange", _no_exchange)
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == failing_step:
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(ReplaceError) as info:
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert str(info.value) == f"cannot replace {target}: it is busy (a mount point or in use)"
    assert (target / "keep.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_fallback_swap_replaces(tmp_path, monkeypatch):
    target = _old_target(tmp_path)
    monkeypatch.setattr(atomic, "_exchange", _no_exchange)
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_kill_between_renames_is_recovered_on_the_next_write(tmp_path):
    """A writer killed after renaming the target away: the next write moves it back."""
    target = tmp_path / "ds"
    old = tmp_path / f".ds.old-{_dead_pid()}-0123abcd"
    old.mkdir()
    (old / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_directory(target):
            pass
    assert (target / "keep.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_leftovers_of_killed_writers_are_cleaned(tmp_path):
    target = _old_target(tmp_path)
    dead = _dead_pid()
    for name in (f".ds.tmp-{dead}-00000000", f".ds.old-{dead}-11111111"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "junk").write_text("x")
    live = tmp_path / f".ds.tmp-{os.getpid()}-22222222"  # a concurrent writer: kept
    live.mkdir()
    other = tmp_path / f".other.tmp-{dead}-33333333"  # another target's: not ours to touch
    other.mkdir()
    assert len(recover(target)) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(["ds", live.name, other.name])
    assert (target / "keep.txt").read_text() == "old"


def test_unswappable_targets_say_why_and_leave_nothing(tmp_path, monkeypatch):
    target = _old_target(tmp_path)
    monkeypatch.chdir(target)
    with pytest.raises(ReplaceError, match="current directory"):
        with atomic_directory(".", overwrite=True):
            raise AssertionError("must refuse before building")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(target))
    with pytest.raises(ReplaceError, match="mount point"):
        with atomic_directory(target, overwrite=True):
            raise AssertionError("must refuse before building")

    def cross_device(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os.path, "ismount", lambda p: False)
    monkeypatch.setattr(atomic, "_exchange", cross_device)
    with pytest.raises(ReplaceError, match="another filesystem"):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["ds"]
    assert sorted(os.listdir(target)) == ["keep.txt"]


def test_directory_target_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("user data")
    with pytest.raises(NotADirectoryError, match="is a file"):
        with atomic_directory(tmp_path / "f", overwrite=True):
            pass
    assert (tmp_path / "f").read_text() == "user data"


def test_check_output_dir(tmp_path):
    assert check_output_dir(tmp_path / "new", overwrite=False) == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # nothing created: a later error leaves no trace
    (tmp_path / "new").mkdir()
    check_output_dir(tmp_path / "new", overwrite=False)  # empty: fine
    (tmp_path / "new" / "a.png").write_text("x")
    with pytest.raises(FileExistsError, match=r"out=.*new is not empty; pass overwrite=true"):
        check_output_dir(tmp_path / "new", overwrite=False)
    check_output_dir(tmp_path / "new", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_output_dir(tmp_path / "file", overwrite=True)
