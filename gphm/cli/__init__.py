"""The command-line tools (docs/architecture.md §7).

One module per installed command, each with a ``cli()`` entry point (pyproject.toml's
``[project.scripts]``) and runnable as ``python -m gphm.cli.NAME`` or
``accelerate launch -m gphm.cli.train``: ``train`` (``gphm-train``), ``evaluate``,
``fit``, ``edit``, ``render``, ``synth``, ``preprocess``, ``import_capture``
(``gphm-import``), ``track``, ``reenact``, ``export``, ``view``. ``scripts/*.py`` are
shims over them, so ``python scripts/train.py`` keeps working. Importing this package
sets the offline variables (:mod:`gphm.cli._env`) before any command imports
``datasets``; :func:`cli_device` is every command's ``device=auto|cpu|cuda`` choice.

Every CLI takes hydra overrides (``key=value``, ``group=option``) against a dataclass
schema, composed by :mod:`gphm.config` (presets, ``config_dir=DIR``,
``$GPHM_CONFIG_PATH``, the checks on keys, types and YAML). A CLI's ``main(cfg)`` returns
a JSON-able dict; :func:`run_cli` prints a one-line summary and exits non-zero with a
one-line message on bad input (:class:`UserError`, or a ``ValueError`` raised while
validating the config).

This package is the top of the house: nothing else in ``gphm`` imports it
(``tests/test_layering.py``). The composition names re-exported here (``compose_config``,
``parse_config``, ``register_config``, ``config_dirs``, ``write_report``, ``UserError``)
are kept for scripts and tests written against ``gphm.cli``; new code imports them from
:mod:`gphm.config`, :mod:`gphm.io.jsonfile` and :mod:`gphm.errors`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

from gphm.cli import _env  # noqa: F401  (first: the offline variables, before `datasets`)
from gphm.config import (
    CONFIG_PATH_ENV,
    SHIPPED_CONFIGS,
    compose_config,
    config_dirs,
    group_options,
    parse_config,
    register_config,
    split_config_dirs,
)
from gphm.errors import UserError, os_error_message, override_syntax_hint, split_argument_hint
from gphm.io.jsonfile import write_report

__all__ = [
    "UserError",
    "CONFIG_PATH_ENV",
    "DEVICE_CHOICES",
    "SHIPPED_CONFIGS",
    "cli_device",
    "check_device_option",
    "compose_config",
    "config_dirs",
    "parse_config",
    "register_config",
    "run_cli",
    "write_report",
]

T = TypeVar("T")


DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""Values of every command's ``device`` option (``cuda:N`` picks a GPU)."""


def cli_device(device: str) -> Any:  # torch.device
    """The ``device=`` option of a command as a ``torch.device``: ``auto`` = CUDA when
    available, else the CPU; ``cpu``; ``cuda`` or ``cuda:N``. :class:`UserError` for
    anything else, or for CUDA where there is none."""
    from gphm.api import resolve_device  # torch: only once a command runs

    try:
        return resolve_device(device)
    except ValueError as err:
        raise UserError(f"device: {err}") from None


def check_device_option(device: str) -> None:
    """``ValueError`` unless ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (a
    schema's ``__post_init__``: checked at start, before any work)."""
    d = str(device).strip().lower()
    if d in DEVICE_CHOICES or re.fullmatch(r"cuda:\d+", d):
        return
    raise ValueError(f"device must be one of auto|cpu|cuda|cuda:N, got {device!r}")


def _help(schema: type, main: Callable, argv: Sequence[str], prog: str) -> str:
    """The script's docstring, its presets and its composed defaults."""
    doc = (sys.modules.get(getattr(main, "__module__", "")) or sys).__doc__ or ""
    extra, _ = split_config_dirs(argv)
    dirs = config_dirs(extra)
    fields = {f.name for f in dataclasses.fields(schema)}
    groups = sorted({p.name for d in dirs for p in d.iterdir() if p.is_dir()} & fields)
    presets = "".join(f"  {g}={'|'.join(group_options(g, dirs))}\n" for g in groups)
    defaults = OmegaConf.to_yaml(compose_config(schema, [f"config_dir={d}" for d in extra]))
    return (
        f"{doc.strip()}\n\nusage: {prog} key=value ... [group=preset] [config_dir=DIR]\n"
        + (f"presets:\n{presets}" if presets else "")
        + f"options (defaults):\n{defaults}"
    )


def run_cli(
    schema: type[T],
    main: Callable[[T], dict[str, Any]],
    argv: Sequence[str] | None = None,
    summary: Callable[[dict[str, Any]], str] | None = None,
) -> int:
    """Parse ``argv`` into ``schema``, run ``main(cfg)`` and print a one-line summary.

    ``-h``/``--help`` prints the script's docstring, its presets and its defaults.
    Returns the process exit status: 0 on success, 2 on a :class:`UserError`, an
    ``OSError`` (disk full, permissions: :func:`gphm.errors.os_error_message`) or a
    ``MemoryError``, each printed as one line. Other exceptions propagate (they are
    bugs, and their traceback is wanted).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "gphm"
    try:
        if any(a in ("-h", "--help") for a in argv):
            print(_help(schema, main, [a for a in argv if a not in ("-h", "--help")], prog))
            return 0
        split = split_argument_hint(argv)  # `out=my dir` unquoted: split by the shell
        if split:
            raise UserError(split)
        try:
            cfg = parse_config(schema, argv)
        except UserError as err:
            raise UserError(override_syntax_hint(str(err), argv) or str(err)) from None
        report = main(cfg)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the environment (disk full, permissions), not a bug
        print(f"{prog}: error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{prog}: error: out of memory; try smaller sizes", file=sys.stderr)
        return 2
    line = summary(report) if summary else json.dumps(report, default=str)
    print(line)
    return 0
