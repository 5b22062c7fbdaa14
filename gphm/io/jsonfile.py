"""Reading JSON files that must hold one object (``config.json``, ``avatar.json``,
``meta.json``), with errors that name the file and say what was expected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_json_object"]


def read_json_object(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object stored in ``path``.

    Raises ``FileNotFoundError`` (``"PATH: WHAT not found"``) when it is missing and
    ``ValueError`` with one line naming ``path`` when it is a directory, not UTF-8, not
    valid JSON (with the line and column), or valid JSON that is not an object (a list,
    a number, ``null``...).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); expected a {what}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: invalid JSON at line {err.lineno} column {err.colno} ({err.msg})"
        ) from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, got {type(data).__name__}")
    return data
