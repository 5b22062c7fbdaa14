"""Reading ``.npz`` archives that may come from anyone, sizes checked before inflating.

``np.load`` of an ``.npz`` inflates a member fully when it is accessed: a 1.5 MB archive
of zeros compressed with deflate can declare 2 GB of array data and take that memory
(and the time to inflate it) before any check of ours runs. :func:`load_npz` looks at
the zip directory first (``ZipInfo.file_size``, the declared uncompressed size of each
member) and at each member's ``.npy`` header (shape and dtype) before reading any array
data, and refuses, with one line naming the file and the member:

* an archive whose members declare more than ``max_bytes`` in total;
* a member compressed more than :data:`MAX_RATIO` to 1 (beyond :data:`RATIO_FLOOR`
  bytes): real arrays do not shrink like that, zip bombs do;
* a member whose header declares more array data than the member holds, or an object
  (pickled) array.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

__all__ = ["MAX_BYTES", "MAX_RATIO", "NpzError", "load_npz"]

MAX_BYTES = 2**30
"""Default bound of the declared uncompressed size of all members together (1 GiB)."""
MAX_RATIO = 100
"""Largest compression ratio accepted for a member of more than :data:`RATIO_FLOOR`."""
RATIO_FLOOR = 2**20


class NpzError(ValueError):
    """An ``.npz`` refused or unreadable; ``str()`` is one line naming the file."""


def _check_directory(path: Path, infos: list[zipfile.ZipInfo], max_bytes: int) -> None:
    total = 0
    for info in infos:
        total += info.file_size
        if total > max_bytes:
            raise NpzError(
                f"{path}: member {info.filename!r} inflates to {info.file_size} bytes, "
                f"{total} in all: more than the {max_bytes} allowed; not reading it"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > MAX_RATIO:
            raise NpzError(
                f"{path}: member {info.filename!r} is compressed {ratio:.0f}:1 "
                f"({info.compress_size} -> {info.file_size} bytes), more than {MAX_RATIO}:1; "
                "not reading it (a zip bomb?)"
            )


def _check_header(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """The member's ``.npy`` header: no object dtype, no more data than it holds."""
    with zf.open(info) as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        else:
            shape, _, dtype = npy_format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise NpzError(f"{path}: member {info.filename!r} holds Python objects (pickle)")
    need = math.prod(shape) * dtype.itemsize
    if need > info.file_size:
        raise NpzError(
            f"{path}: member {info.filename!r} declares shape {list(shape)} of {dtype} "
            f"({need} bytes) but holds {info.file_size} bytes"
        )


def load_npz(path: str | Path, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` at ``path`` by name (``np.savez`` names, without
    ``.npy``), after the checks of the module docstring. Raises :class:`NpzError`
    (a ``ValueError``) naming the file, and the member where there is one;
    ``FileNotFoundError`` when there is no file."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            _check_directory(path, infos, max_bytes)
            out = {}
            for info in infos:
                _check_header(path, zf, info)
                with zf.open(info) as f:
                    out[info.filename.removesuffix(".npy")] = npy_format.read_array(
                        f, allow_pickle=False
                    )
            return out
    except (NpzError, FileNotFoundError):
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        msg = str(err).splitlines()[0] if str(err) else ""
        raise NpzError(f"{path}: unreadable npz ({type(err).__name__}: {msg})") from None
