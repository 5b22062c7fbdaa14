"""One-line messages for failures that are the user's environment, not bugs.

:func:`gphm.cli.run_cli` turns these into ``PROG: error: MESSAGE`` and exit status 2,
so every script reports a full disk, a read-only folder or a mis-quoted path the same
way, without a traceback:

* :func:`os_error_message`: an ``OSError`` (disk full, permission denied, read-only
  filesystem, a file where a directory was expected...) with the path it concerns;
* :func:`split_argument_hint`: a command line where the shell split a path with
  spaces into two arguments (``out=my dir`` → ``out=my``, ``dir``);
* :func:`override_syntax_hint`: hydra's lexer rejecting an unquoted value with
  non-ASCII letters, brackets, braces or commas.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

__all__ = ["UserError", "os_error_message", "override_syntax_hint", "split_argument_hint"]


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback.

    Raised anywhere in the package; :func:`gphm.cli.run_cli` prints it as
    ``PROG: error: MESSAGE``. The Python API lets it propagate.
    """

_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only filesystem",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error_message(err: OSError) -> str:
    """``disk full while writing PATH``, ``PATH: permission denied``, ... (one line)."""
    path = err.filename
    if err.filename2:
        path = f"{path} -> {err.filename2}"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {path}" if path else ""
        return f"{_REASONS[err.errno]}{where}; free some space and run again"
    if path is None:  # messages of our own (FileExistsError("out=... is not empty"))
        text = str(err) or type(err).__name__
        return text.splitlines()[0]
    reason = _REASONS.get(err.errno) or (err.strerror or type(err).__name__).lower()
    return f"{path}: {reason}"


def split_argument_hint(argv: Sequence[str]) -> str | None:
    """A message when an argument without ``=`` follows a ``key=value`` one.

    That is what the shell makes of an unquoted path with spaces: ``out=my dir`` arrives
    as ``out=my`` and ``dir``. Returns None when every argument is ``key=value``.
    """
    for i, arg in enumerate(argv):
        if "=" in arg or arg.startswith("-"):
            continue
        prev = argv[i - 1] if i > 0 else None
        if prev is None or "=" not in prev:
            return f"expected key=value arguments, got {arg!r}"
        key, _, value = prev.partition("=")
        j = i
        while j < len(argv) and "=" not in argv[j]:
            j += 1
        joined = " ".join([value, *argv[i:j]])
        return (
            f"{arg!r} is not key=value: if it is the rest of {key}= (a path with spaces), "
            f"quote it: {key}=\"{joined}\" or '{key}={joined}'"
        )
    return None


def override_syntax_hint(message: str, argv: Sequence[str]) -> str | None:
    """A quoting hint for hydra's parse errors of unquoted values, else None."""
    if not any(s in message for s in ("LexerNoViableAlt", "mismatched input", "Ambiguous value")):
        return None
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or value[:1] in ("'", '"'):
            continue
        if not value.isascii() or any(c in value for c in "[]{},"):
            return (
                f"{arg!r}: hydra cannot read this value unquoted (non-ASCII letters or one "
                f"of [ ] {{ }} ,); quote it twice, for the shell and for hydra: "
                f"'{key}=\"{value}\"'"
            )
    return None
