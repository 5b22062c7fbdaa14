"""The command-line tools (DESIGN.md §5) and their shared plumbing.

One module per installed command, each with a ``cli()`` entry point (pyproject.toml's
``[project.scripts]``) and runnable as ``python -m gphm.cli.NAME`` or
``accelerate launch -m gphm.cli.train``: ``train`` (``gphm-train``), ``evaluate``,
``fit``, ``edit``, ``render``, ``synth``, ``preprocess``, ``import_capture``
(``gphm-import``), ``track``, ``reenact``, ``export``, ``view``. ``scripts/*.py`` are
shims over them, so ``python scripts/train.py`` keeps working. Importing this package
sets the offline variables (:mod:`gphm.cli._env`) before any command imports
``datasets``; :func:`cli_device` is every command's ``device=auto|cpu|cuda`` choice.

Every CLI takes hydra overrides (``key=value``, ``group=option``) against a dataclass
schema registered in hydra's ConfigStore, so a typo fails at start with the list of valid
keys. We use hydra's *compose* API rather than ``@hydra.main``: it neither changes the
working directory nor creates per-process output folders, which matters under
``accelerate launch`` with several processes (DESIGN.md §7).

Presets live as YAML in the config folders (``configs/`` at the top of the repository,
shipped inside the package as ``gphm/configs``). A script's *root* config is the
top-level YAML whose defaults list names its schema, e.g. ``configs/train.yaml``::

    defaults: [TrainRunConfig, {model: tiny}, _self_]

and each sub-folder is a config group (``configs/model/paper.yaml`` is ``model=paper``).
Folders listed in the ``GPHM_CONFIG_PATH`` environment variable (``os.pathsep``
separated) and given as ``config_dir=DIR`` on the command line are searched first, so
their files add presets and override shipped ones of the same name. Every YAML is
validated against the schema when composed: an unknown key or a wrong type names the file
and the key. Every float option must be finite.

A CLI's ``main(cfg)`` returns a JSON-able dict; :func:`run_cli` prints a one-line summary
and exits non-zero with a one-line message on bad input (:class:`UserError`, or a
``ValueError`` raised while validating the config).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from hydra import compose, initialize
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from gphm.cli import _env  # noqa: F401  (first: the offline variables, before `datasets`)
from gphm.errors import UserError, os_error_message, override_syntax_hint, split_argument_hint
from gphm.io.atomic import atomic_write_text  # noqa: F401
from gphm.io.jsonfile import write_report

__all__ = [
    "UserError",
    "CONFIG_PATH_ENV",
    "DEVICE_CHOICES",
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

CONFIG_PATH_ENV = "GPHM_CONFIG_PATH"
"""Environment variable: extra config folders (``os.pathsep`` separated), searched first."""
SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
"""The presets shipped with the package (the repository's top-level ``configs`` links here)."""


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


def register_config(name: str, schema: type, group: str | None = None) -> None:
    """Register a dataclass schema in hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name=name, node=schema, group=group)


# --------------------------------------------------------------------------- config dirs


def config_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    """The config search path, highest priority first: ``extra`` (``config_dir=``), the
    folders of ``$GPHM_CONFIG_PATH``, then the shipped presets."""
    env = [p for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p]
    dirs = []
    for source, entries in (("config_dir", extra), (CONFIG_PATH_ENV, env)):
        for entry in entries:
            path = Path(entry).expanduser().resolve()
            if not path.is_dir():
                raise UserError(f"{source}: config folder {entry} not found")
            dirs.append(path)
    return [*dirs, SHIPPED_CONFIGS]


def _split_config_dirs(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pull our ``config_dir=DIR`` options (repeatable, first wins) out of the overrides."""
    dirs = [ov.split("=", 1)[1] for ov in overrides if ov.startswith("config_dir=")]
    return dirs, [ov for ov in overrides if not ov.startswith("config_dir=")]


def _yaml_error(err: yaml.YAMLError, path: Path | None = None) -> UserError:
    """ "FILE: not valid YAML (problem, line L)" from a PyYAML error."""
    mark = getattr(err, "problem_mark", None)
    where = f", line {mark.line + 1}" if mark is not None else ""
    name = path or (Path(mark.name) if mark is not None else None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return UserError(f"{_display(name) if name else 'config'}: not valid YAML ({problem}{where})")


def _root_config(schema_name: str, dirs: Sequence[Path]) -> str | None:
    """Name of the top-level YAML whose defaults list names ``schema_name``, if any."""
    for d in dirs:
        for path in sorted(d.glob("*.yaml")):
            try:
                node = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as err:
                raise _yaml_error(err, path) from None
            if isinstance(node, dict) and schema_name in (node.get("defaults") or []):
                return path.stem
    return None


def _find_yaml(config_path: str, dirs: Sequence[Path]) -> Path | None:
    """The file hydra loads for ``config_path`` (e.g. ``model/tiny``): the first match."""
    return next(
        (d / f"{config_path}.yaml" for d in dirs if (d / f"{config_path}.yaml").is_file()), None
    )


def _group_options(group: str, dirs: Sequence[Path]) -> list[str]:
    names = {p.stem for d in dirs for p in (d / group).glob("*.yaml")}
    try:
        names |= {c.removesuffix(".yaml") for c in ConfigStore.instance().list(group)}
    except OSError:  # no such group in the ConfigStore
        pass
    return sorted(names)


def _display(path: Path) -> str:
    """A config file's path as the user knows it: relative to the working directory when
    inside it (``configs/model/tiny.yaml`` in a checkout), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- validation


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


def _unknown_key_message(key: str, valid: Sequence[str]) -> str:
    """ "unknown option 'k'. Did you mean ...? Valid options under 'parent': ..."."""
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
    return f"unknown option '{key}'.{hint} Valid options{where}: {', '.join(siblings)}"


def _check_keys(schema: type, overrides: Sequence[str]) -> None:
    valid = _valid_keys(schema)
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key not in valid:
            raise UserError(_unknown_key_message(key, valid))


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _check_finite(cfg: DictConfig) -> None:
    """Refuse nan/inf in any float option: a learning rate of nan trains silently to
    garbage, and no option of ours means "unbounded" by inf."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for key, value in _leaves(container):
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"option {key}: must be a finite number, got {value}")


def _composition_error(err: Exception, schema: type, dirs: Sequence[Path]) -> UserError:
    """Turn hydra's composition error into one line naming the YAML file and the key."""
    cause = err.__cause__ or err
    text = str(err) if str(err) else type(err).__name__
    missing_option = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing_option:
        group, option = missing_option.groups()
        names = ", ".join(_group_options(group, dirs))
        return UserError(f"{group}={option} is not a known preset; choose one of: {names}")
    source = re.match(r"In '([^']+)': ", text)
    full_key = getattr(cause, "full_key", None) or next(
        iter(re.findall(r"full_key: (\S+)", text)), None
    )
    path = _find_yaml(source.group(1), dirs) if source else None
    if path is None:
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        return UserError(f"option {full_key}: {msg}" if full_key else msg)
    # Keys are shown as written in that file: relative to its package (model/x -> model.).
    package = source.group(1).rpartition("/")[0].replace("/", ".")
    local = full_key.removeprefix(package + ".") if full_key and package else full_key
    detail = text[source.end() :].splitlines()
    if "ConfigKeyError" in text and local:
        prefix = package + "." if package else ""
        valid = [k.removeprefix(prefix) for k in _valid_keys(schema) if k.startswith(prefix)]
        close = difflib.get_close_matches(local, valid, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return UserError(f"{_display(path)}: unknown key '{local}'{hint}")
    reason = next((line for line in detail[1:] if line.strip()), detail[0] if detail else "")
    return UserError(f"{_display(path)}: {local + ': ' if local else ''}{reason.strip()}")


# --------------------------------------------------------------------------- composing


def compose_config(
    schema: type, overrides: Sequence[str] = (), name: str | None = None
) -> DictConfig:
    """Compose the root config of ``schema`` with hydra ``overrides`` (not instantiated).

    The root config is the YAML of the config search path (:func:`config_dirs`) whose
    defaults list names the schema; a schema without one is composed from its own
    defaults. ``config_dir=DIR`` overrides add folders to the search path. Raises
    :class:`UserError` on unknown keys, wrong types and files that do not validate.
    """
    extra, overrides = _split_config_dirs(overrides)
    dirs = config_dirs(extra)
    name = name or schema.__name__
    register_config(name, schema)
    for ov in overrides:
        if "=" not in ov:
            raise UserError(f"expected key=value arguments, got {ov!r}")
    _check_keys(schema, overrides)
    root = _root_config(name, dirs)
    primary = name
    if root is not None:
        # A primary config must be found before hydra.searchpath applies, so the primary
        # is a stub in the ConfigStore that pulls the root YAML from the search path.
        primary = f"_gphm_root_{root}"
        ConfigStore.instance().store(name=primary, node={"defaults": [root]})
        search = ",".join("'file://" + d.as_posix().replace("'", r"\'") + "'" for d in dirs)
        overrides = [*overrides, f"hydra.searchpath=[{search}]"]
    try:
        with initialize(version_base=None, config_path=None):
            return compose(config_name=primary, overrides=list(overrides))
    except (ConfigCompositionException, HydraException, OmegaConfBaseException) as err:
        raise _composition_error(err, schema, dirs) from None
    except yaml.YAMLError as err:  # a group file that does not parse
        raise _yaml_error(err) from None


def parse_config(schema: type[T], overrides: Sequence[str], name: str | None = None) -> T:
    """Compose ``schema`` (a dataclass) with hydra ``overrides`` and instantiate it.

    See :func:`compose_config` for where the defaults come from. The dataclass's
    ``__post_init__`` runs on the result, so schemas validate their own values there
    (raise ``ValueError`` naming the field). Raises :class:`UserError` for unknown keys,
    wrong types, non-finite floats, missing mandatory values and failed validation.
    """
    cfg = compose_config(schema, overrides, name)
    _check_finite(cfg)
    try:
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err)
        raise UserError(f"missing required option {key}=...") from None
    except OmegaConfBaseException as err:
        cause = err.__cause__ or err
        key = getattr(cause, "full_key", None)
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        if isinstance(cause, ValueError) and not isinstance(cause, OmegaConfBaseException):
            raise UserError(str(cause)) from None  # a __post_init__ check, nested
        raise UserError(f"option {key}: {msg}" if key else msg) from None
    except ValueError as err:  # raised by the schema's __post_init__
        raise UserError(str(err)) from None
    return obj  # type: ignore[return-value]


def _help(schema: type, main: Callable, argv: Sequence[str], prog: str) -> str:
    """The script's docstring, its presets and its composed defaults."""
    doc = (sys.modules.get(getattr(main, "__module__", "")) or sys).__doc__ or ""
    extra, _ = _split_config_dirs(argv)
    dirs = config_dirs(extra)
    fields = {f.name for f in dataclasses.fields(schema)}
    groups = sorted({p.name for d in dirs for p in d.iterdir() if p.is_dir()} & fields)
    presets = "".join(f"  {g}={'|'.join(_group_options(g, dirs))}\n" for g in groups)
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
