"""Shared command-line plumbing for ``scripts/*.py`` (DESIGN.md §5).

Every CLI takes hydra overrides (``key=value``, ``group=option``) against a dataclass
schema registered in hydra's ConfigStore, so a typo fails at start with the list of valid
keys. We use hydra's *compose* API rather than ``@hydra.main``: it neither changes the
working directory nor creates per-process output folders, which matters under
``accelerate launch`` with several processes (DESIGN.md §7).

A CLI's ``main(cfg)`` returns a JSON-able dict; :func:`run_cli` prints a one-line summary
and exits non-zero with a one-line message on bad input (:class:`UserError`, or a
``ValueError`` raised while validating the config).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from gphm.io.atomic import atomic_write_text

__all__ = ["UserError", "parse_config", "run_cli", "write_report", "register_config"]

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


def register_config(name: str, schema: type, group: str | None = None) -> None:
    """Register a dataclass schema in hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name=name, node=schema, group=group)


def _valid_keys(schema: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(schema)  # resolves `from __future__` string annotations
    keys = []
    for f in dataclasses.fields(schema):
        if f.name == "defaults":  # hydra's defaults list, not an option
            continue
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hints.get(f.name)):
            keys += _valid_keys(hints[f.name], prefix + f.name + ".")
    return keys


def _check_keys(schema: type, overrides: Sequence[str]) -> None:
    valid = _valid_keys(schema)
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key in valid:
            continue
        # List the options at the level of the typo (siblings), not the whole tree.
        parts = key.split(".")
        parent = ""
        for i in range(len(parts) - 1, 0, -1):
            if ".".join(parts[:i]) in valid:
                parent = ".".join(parts[:i]) + "."
                break
        depth = parent.count(".")
        siblings = [k for k in valid if k.startswith(parent) and k.count(".") == depth]
        close = difflib.get_close_matches(key, valid, n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        where = f" under '{parent[:-1]}'" if parent else ""
        listing = ", ".join(siblings)
        raise UserError(f"unknown option '{key}'.{hint} Valid options{where}: {listing}")


def parse_config(schema: type[T], overrides: Sequence[str], name: str | None = None) -> T:
    """Compose ``schema`` (a dataclass) with hydra ``overrides`` and instantiate it.

    The dataclass's ``__post_init__`` runs on the result, so schemas validate their own
    values there (raise ``ValueError`` naming the field). Raises :class:`UserError` for
    unknown keys, wrong types, missing mandatory values and failed validation.
    """
    name = name or schema.__name__
    register_config(name, schema)
    for ov in overrides:
        if "=" not in ov:
            raise UserError(f"expected key=value arguments, got {ov!r}")
    _check_keys(schema, overrides)
    try:
        with initialize(version_base=None, config_path=None):
            cfg = compose(config_name=name, overrides=list(overrides))
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err)
        raise UserError(f"missing required option {key}=...") from None
    except (ConfigCompositionException, HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ or err
        key = getattr(cause, "full_key", None)
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        missing_option = re.search(r"Could not find '([^/']+)/([^']+)'", msg)
        if missing_option:
            group, option = missing_option.groups()
            choices = ConfigStore.instance().list(group)
            names = ", ".join(sorted(c.removesuffix(".yaml") for c in choices))
            msg = f"{group}={option} is not a known preset; choose one of: {names}"
            raise UserError(msg) from None
        raise UserError(f"option {key}: {msg}" if key else msg) from None
    except ValueError as err:  # raised by the schema's __post_init__
        raise UserError(str(err)) from None
    return obj  # type: ignore[return-value]


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write a JSON report atomically (sorted keys, 2-space indent); returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return path


def run_cli(
    schema: type[T],
    main: Callable[[T], dict[str, Any]],
    argv: Sequence[str] | None = None,
    summary: Callable[[dict[str, Any]], str] | None = None,
) -> int:
    """Parse ``argv`` into ``schema``, run ``main(cfg)`` and print a one-line summary.

    Returns the process exit status: 0 on success, 2 on a :class:`UserError`. Other
    exceptions propagate (they are bugs, and their traceback is wanted).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "gphm"
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {prog} key=value ...\noptions (defaults):")
        defaults = OmegaConf.structured(schema)
        print(OmegaConf.to_yaml(defaults))
        return 0
    try:
        cfg = parse_config(schema, argv)
        report = main(cfg)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    line = summary(report) if summary else json.dumps(report, default=str)
    print(line)
    return 0
