"""``.npz`` archives from anyone (issue 28 finding 21): sizes and headers are checked
before any array is inflated; a zip bomb is refused with one line naming file and member."""

import io
import json
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from gphm.export.animatable import (
    BASIS_FORMAT,
    BASIS_FORMAT_VERSION,
    MARKER,
    load_expression_basis,
)
from gphm.io.npz import NpzError, load_npz


def _bomb(path, nbytes=64 * 2**20):
    """An npz whose one member inflates ``nbytes`` of zeros from ~nbytes/1000 on disk."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("basis_means.npy", "w", force_zip64=True) as f:
            npy_format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": (nbytes // 4,)}
            )
            chunk = bytes(2**20)
            for _ in range(nbytes // len(chunk)):
                f.write(chunk)
    return path


@pytest.fixture
def no_inflation(monkeypatch):
    """Fail the test if any array data is read."""

    def read_array(*args, **kwargs):
        raise AssertionError("an array was inflated before the archive was checked")

    monkeypatch.setattr(npy_format, "read_array", read_array)


def test_round_trip_of_a_plain_npz(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "labels": np.array(["x", "yz"])}
    np.savez(tmp_path / "x.npz", **arrays)
    back = load_npz(tmp_path / "x.npz")
    assert sorted(back) == ["a", "labels"]
    assert np.array_equal(back["a"], arrays["a"]) and list(back["labels"]) == ["x", "yz"]
    np.savez_compressed(tmp_path / "c.npz", **arrays)  # real data compresses little
    assert np.array_equal(load_npz(tmp_path / "c.npz")["a"], arrays["a"])


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path, no_inflation):
    bomb = _bomb(tmp_path / "bomb.npz")
    assert bomb.stat().st_size < 2**20
    with pytest.raises(NpzError, match=r"bomb.npz: member 'basis_means.npy' is compressed "
                       r"\d+:1 .*not reading it"):  # fmt: skip
        load_npz(bomb)
    with pytest.raises(NpzError, match=r"bomb.npz: member 'basis_means.npy' inflates to "
                       r"67108992 bytes.*more than the 1000000 allowed"):  # fmt: skip
        load_npz(bomb, max_bytes=10**6)


def test_a_header_declaring_more_than_the_member_holds_is_refused(tmp_path, no_inflation):
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": (10**9,)}
    )
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as zf:
        zf.writestr("a.npy", buf.getvalue() + bytes(64))
    with pytest.raises(NpzError, match=r"lie.npz: member 'a.npy' declares shape \[1000000000\] "
                       r"of float64 \(8000000000 bytes\) but holds \d+ bytes"):  # fmt: skip
        load_npz(tmp_path / "lie.npz")


def test_not_a_zip_is_one_line(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(NpzError, match=r"x.npz: unreadable npz \(BadZipFile"):
        load_npz(tmp_path / "x.npz")


def test_an_export_with_a_bomb_for_blendshapes_is_refused(tmp_path, no_inflation):
    meta = {"format": BASIS_FORMAT, "format_version": BASIS_FORMAT_VERSION}
    (tmp_path / MARKER).write_text(json.dumps(meta))
    _bomb(tmp_path / "blendshapes.npz")
    with pytest.raises(ValueError, match=r"blendshapes.npz: member 'basis_means.npy' is "
                       r"compressed"):  # fmt: skip
        load_expression_basis(tmp_path)
