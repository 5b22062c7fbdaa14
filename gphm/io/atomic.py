"""Atomic file and directory writes.

A reader (or a crash) never sees a half-written file: data goes to a temporary sibling
in the same directory (same filesystem) and is moved into place with ``os.replace``.

Directories (datasets, checkpoints, avatars) are built under a temporary sibling
``.NAME.tmp-PID-XXXX`` and moved into place when complete. Replacing an existing
directory never leaves a moment where ``NAME`` is missing:

* on Linux the two directories are swapped in one ``renameat2(RENAME_EXCHANGE)`` call,
  then the old contents (now under the temporary name) are deleted;
* where the kernel or filesystem cannot exchange, ``NAME`` is renamed to
  ``.NAME.old-PID-XXXX``, the new directory is renamed to ``NAME`` and the old one is
  deleted. A kill between the two renames leaves ``.NAME.old-*`` beside a missing
  ``NAME``: the next atomic write of ``NAME`` (:func:`recover`) moves it back first.

Leftovers of killed writers (``.NAME.tmp-PID-*`` and ``.NAME.old-PID-*`` whose process
is gone) are deleted by the next atomic directory write of ``NAME``. A swap that cannot
work (the target is a mount point or the current directory, or the rename crosses
filesystems) raises :class:`ReplaceError` with a one-line reason and leaves the target
and its parent exactly as they were.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "ReplaceError",
    "atomic_directory",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_dir",
    "check_swappable",
    "io_error",
    "recover",
]


class ReplaceError(OSError):
    """An atomic replace that cannot be done here; ``str()`` is one line saying why."""

    def __str__(self) -> str:
        return str(self.strerror)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """``with atomic_output(p) as tmp: write tmp`` — for writers that want a file name.

    ``tmp`` is a sibling of ``path`` (same filesystem); on success it gets the
    permissions a plain ``open(path, "w")`` would give (0666 minus the umask, not
    mkstemp's 0600) and is renamed to ``path``; on error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, expected a file path")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        converted = io_error(err, path)
        if converted is not None:
            raise converted from err
        raise


_OS_CODE = re.compile(r"\bOs \{ code: (\d+)")


def io_error(err: BaseException, path: str | Path, tmp: Path | None = None) -> OSError | None:
    """The ``OSError`` naming ``path`` that a failed write ``err`` stands for, else None.

    * an ``OSError`` without a file name (``f.write()`` on a full disk names none);
    * a safetensors ``SafetensorError`` wrapping an I/O error (``save_file`` on a full
      disk raises ``Error while serializing: IoError(Os { code: 28, ... })``, not an
      ``OSError``): the errno is read from its message (EIO when it names none).

    * an ``OSError`` naming a file inside ``tmp`` (the temporary directory being built
      for ``path``): the same error naming that file's final place under ``path``.

    So every writer's disk-full ends as the one-line
    :func:`gphm.errors.os_error_message` naming a path the user knows, not a traceback.
    """
    if isinstance(err, ReplaceError):
        return None  # its one-line message already names the path
    if isinstance(err, OSError):
        if err.errno and err.filename is None:
            return OSError(err.errno, err.strerror, str(path))
        if tmp is not None and isinstance(err.filename, str) and err.errno:
            name = Path(err.filename)
            if name == tmp or name.is_relative_to(tmp):
                return OSError(err.errno, err.strerror, str(Path(path) / name.relative_to(tmp)))
        return None
    if type(err).__name__ == "SafetensorError" and "IoError" in str(err):
        m = _OS_CODE.search(str(err))
        code = int(m.group(1)) if m else errno.EIO
        return OSError(code, os.strerror(code), str(path))
    return None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent directories are created)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


# ----------------------------------------------------------------------------- directories

_MARK = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _marked(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (ours always does). Not a process
    id at all (not a positive int, or beyond what ``kill`` takes: a damaged lock file's
    ``1e20``) is False: such an owner is certainly gone. (``kill(0)`` and ``kill(-1)``
    would address process groups, never ask.)"""
    if pid == os.getpid():
        return True
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def recover(path: str | Path) -> list[Path]:
    """Undo what killed writers left beside ``path``; returns the paths acted on.

    If ``path`` is missing and a ``.NAME.old-*`` of a finished process exists, the
    newest one is moved back to ``path`` (a kill between the two renames of a swap).
    Other ``.NAME.old-*`` and ``.NAME.tmp-*`` of finished processes are deleted.
    Entries of live processes (a concurrent writer) are left alone.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return []
    olds, tmps = [], []
    with os.scandir(parent) as it:
        for entry in it:
            m = _MARK.match(entry.name)
            if m and m["name"] == path.name and not pid_alive(int(m["pid"])):
                (olds if m["kind"] == "old" else tmps).append(Path(entry.path))
    acted = []
    if olds and not os.path.lexists(path):
        newest = max(olds, key=lambda p: p.lstat().st_mtime)
        os.rename(newest, path)
        olds.remove(newest)
        acted.append(newest)
    for p in olds + tmps:
        _remove(p)
        acted.append(p)
    return acted


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    Raises ``OSError`` with ``ENOSYS`` where the call does not exist; the kernel's own
    errors (``EINVAL`` on filesystems without exchange, ``EXDEV``, ``EBUSY``) pass through.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}


def _why(path: Path, err: OSError) -> str:
    if err.errno == errno.EXDEV:
        return f"cannot replace {path}: it is on another filesystem than its parent"
    if err.errno == errno.EBUSY:
        return f"cannot replace {path}: it is busy (a mount point or in use)"
    return f"cannot replace {path}: {err.strerror or err}"


def _check_replaceable(path: Path) -> None:
    resolved = path.resolve()
    if resolved == Path(resolved.anchor) or os.path.ismount(resolved):
        raise ReplaceError(
            errno.EBUSY, f"cannot replace {path}: it is a mount point; choose a directory inside it"
        )
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ReplaceError(
            errno.EBUSY,
            f"cannot replace {path}: it is the current directory or contains it; "
            "choose a new directory (e.g. out=results)",
        )


def check_swappable(path: str | Path) -> None:
    """Refuse (:class:`ReplaceError`, one line) an existing directory that
    :func:`atomic_directory` could not swap (a mount point, the current directory or
    one containing it), so a command can refuse it at start instead of after its work."""
    if os.path.lexists(path):
        _check_replaceable(Path(os.path.abspath(path)))


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` to ``path``; ``path``, if it exists, is never missing."""
    if not os.path.lexists(path):
        try:
            os.rename(tmp, path)
        except OSError as err:
            raise ReplaceError(err.errno, _why(path, err)) from None
        return
    try:
        _exchange(tmp, path)
    except OSError as err:
        if err.errno not in _NO_EXCHANGE:
            raise ReplaceError(err.errno, _why(path, err)) from None
    else:
        _remove(tmp)  # now holds the old contents
        return
    # Fallback: two renames, recovered by `recover` if killed in between.
    old = _marked(path, "old")
    try:
        os.rename(path, old)
    except OSError as err:
        raise ReplaceError(err.errno, _why(path, err)) from None
    try:
        os.rename(tmp, path)
    except OSError as err:
        os.rename(old, path)
        raise ReplaceError(err.errno, _why(path, err)) from None
    _remove(old)


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory atomically: ``with atomic_directory(out) as tmp: write into tmp``.

    On success ``tmp`` is moved to ``path`` (module docstring: no moment without
    ``path``). If ``path`` exists and ``overwrite`` is False, ``FileExistsError`` is
    raised before anything is written; a ``path`` that is a file raises
    ``NotADirectoryError``; a target that cannot be swapped raises :class:`ReplaceError`
    before anything is written. On any error the temporary directory is removed and
    ``path`` is untouched.
    """
    path = Path(os.path.abspath(path))
    recover(path)
    if os.path.lexists(path):
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is a file, expected a directory (or a new path)")
        if not overwrite:
            raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
        _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _marked(path, "tmp")
    os.mkdir(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _swap_into_place(tmp, path)
    except BaseException as err:
        _remove(tmp)
        converted = io_error(err, path, tmp)
        if converted is not None:  # e.g. safetensors on a full disk: an OSError naming path
            raise converted from err
        raise


def check_output_dir(path: str | Path, overwrite: bool, option: str = "out") -> Path:
    """Refuse to write into ``path`` when it is a file, or a non-empty directory and not
    ``overwrite`` (nothing is created: writers create it). Errors are ``FileExistsError`` /
    ``NotADirectoryError`` whose message names ``option=path`` and says ``overwrite=true``.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise NotADirectoryError(f"{option}={path} is a file; expected a directory to write into")
    if path.is_dir() and not overwrite and any(path.iterdir()):
        raise FileExistsError(
            f"{option}={path} is not empty; pass overwrite=true to write into it "
            "(files with the same names are replaced)",
        )
    return path
