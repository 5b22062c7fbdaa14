"""JSON files: reading ones that must hold one object (``config.json``, ``avatar.json``,
``meta.json``), with errors that name the file and say what was expected, and writing
reports atomically (:func:`write_report`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gphm.io.atomic import atomic_write_text

__all__ = ["read_json_object", "write_report"]


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


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write a JSON report atomically (sorted keys, 2-space indent); returns the path.

    Values JSON cannot hold are written with ``str`` (paths, dtypes), and non-finite floats
    as ``null``: ``NaN``/``Infinity`` are not JSON, and strict readers refuse the file.
    """
    path = Path(path)
    text = json.dumps(_finite_or_null(report), indent=2, sort_keys=True, default=str)
    atomic_write_text(path, text + "\n")
    return path


def _finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (also inside dicts, lists, tuples) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value
