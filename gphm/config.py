"""Composing a command's configuration: hydra structured configs, presets as YAML.

Every command (and :func:`gphm.training.config.model_preset`) describes its options as a
dataclass *schema* registered in hydra's ConfigStore and composes it with ``key=value`` /
``group=option`` overrides here, so a typo fails at start with the list of valid keys
(docs/architecture.md §6). We use hydra's *compose* API rather than ``@hydra.main``: it
neither changes the working directory nor creates per-process output folders, which
matters under ``accelerate launch`` with several processes.

Presets live as YAML in the config folders (``configs/`` at the top of the repository,
shipped inside the package as ``gphm/configs``). A schema's *root* config is the
top-level YAML whose defaults list names it, e.g. ``configs/train.yaml``::

    defaults: [TrainRunConfig, {model: tiny}, _self_]

and each sub-folder is a config group (``configs/model/paper.yaml`` is ``model=paper``).
Folders listed in the ``GPHM_CONFIG_PATH`` environment variable (``os.pathsep``
separated) and given as ``config_dir=DIR`` are searched first, so their files add presets
and override shipped ones of the same name.

Checks, each a :class:`~gphm.errors.UserError` of one line: every YAML is validated
against the schema when composed (an unknown key or a wrong type names the file and the
key); every float option must be finite; a config group takes one preset name
(``model=[tiny,paper]``, ``model=nan`` are refused with the group's options); YAML in a
user's config folder may not expand its aliases beyond :data:`MAX_YAML_NODES` nodes (a
"billion laughs" file would otherwise hang hydra); a config folder that is a symlink loop
is named as such.

This module is plumbing below every package that has a schema; it imports nothing of
``gphm`` but :mod:`gphm.errors` (``tests/test_layering.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import math
import os
import re
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from hydra import compose, initialize
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import ConfigCompositionException, HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from gphm.errors import UserError

__all__ = [
    "CONFIG_PATH_ENV",
    "MAX_YAML_NODES",
    "SHIPPED_CONFIGS",
    "check_yaml_aliases",
    "compose_config",
    "config_dirs",
    "config_groups",
    "group_options",
    "parse_config",
    "register_config",
    "split_config_dirs",
]

T = TypeVar("T")

CONFIG_PATH_ENV = "GPHM_CONFIG_PATH"
"""Environment variable: extra config folders (``os.pathsep`` separated), searched first."""
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
"""The presets shipped with the package (the repository's top-level ``configs`` links here)."""
MAX_YAML_NODES = 100_000
"""Most YAML nodes a config file may hold once its aliases are expanded (a preset has a
few hundred; an 11-line alias bomb has ~10^9)."""


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
            try:
                path = Path(entry).expanduser().resolve(strict=True)
            except FileNotFoundError:
                raise UserError(f"{source}: config folder {entry} not found") from None
            except (RuntimeError, OSError) as err:  # RuntimeError: pathlib's symlink loop
                loop = isinstance(err, RuntimeError) or getattr(err, "errno", None) == errno.ELOOP
                why = "is a symlink loop" if loop else f"cannot be read ({err})"
                raise UserError(f"{source}: config folder {entry} {why}") from None
            if not path.is_dir():
                raise UserError(f"{source}: config folder {entry} is not a folder")
            dirs.append(path)
    return [*dirs, SHIPPED_CONFIGS]


def split_config_dirs(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
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


def group_options(group: str, dirs: Sequence[Path]) -> list[str]:
    """The preset names of config group ``group``: its YAML files and its schemas."""
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


# --------------------------------------------------------------------------- hostile YAML


def check_yaml_aliases(path: Path) -> None:
    """:class:`UserError` if ``path``'s YAML aliases expand beyond :data:`MAX_YAML_NODES`
    nodes, refer to themselves, or nest beyond Python's recursion limit.

    Composing keeps an alias as a reference to its anchor's node, so this costs time
    linear in the file; hydra would expand every alias into a copy (11 lines of nested
    ``&a [*b, *b, ...]`` make ~10^9 nodes: a hung CPU). Files that cannot be read or do
    not parse pass here: the loader that reads them reports that.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return
    if "*" not in text:  # no alias at all: the common case
        return
    try:
        docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        memo: dict[int, int] = {}
        for doc in docs:
            if doc is not None and _expanded_nodes(doc, memo, set()) > MAX_YAML_NODES:
                raise UserError(
                    f"{_display(path)}: YAML aliases expand to more than {MAX_YAML_NODES} "
                    "nodes; write the values out or use ${...} interpolation"
                )
    except yaml.YAMLError:
        return
    except RecursionError:
        raise UserError(f"{_display(path)}: YAML nested too deeply") from None
    except _SelfReference:
        raise UserError(f"{_display(path)}: a YAML alias refers to its own anchor") from None


class _SelfReference(Exception):
    """A YAML anchor whose node contains an alias to itself (an infinite structure)."""


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """Number of nodes under ``node`` with every alias expanded (memoised per node)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _SelfReference
    active.add(key)
    if isinstance(node, yaml.MappingNode):
        children = [item for pair in node.value for item in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    memo[key] = 1 + sum(_expanded_nodes(child, memo, active) for child in children)
    active.discard(key)
    return memo[key]


_MAX_GROUP_DEPTH = 3
"""Nesting of config groups searched for hostile YAML (``model/sub/x.yaml`` is depth 2)."""


def _check_user_yaml(dirs: Sequence[Path]) -> None:
    """:func:`check_yaml_aliases` on every YAML file hydra may load from the user's config
    folders: the root configs and config groups down to :data:`_MAX_GROUP_DEPTH` levels
    (symlinked sub-folders followed once each, so a symlink loop ends)."""
    for folder in dirs:
        if folder == SHIPPED_CONFIGS:
            continue
        seen: set[str] = set()
        for here, subdirs, files in os.walk(folder, followlinks=True):
            real = os.path.realpath(here)
            depth = len(Path(here).relative_to(folder).parts)
            if real in seen or depth > _MAX_GROUP_DEPTH:
                subdirs.clear()
                continue
            seen.add(real)
            for name in sorted(files):
                if name.endswith(".yaml"):
                    check_yaml_aliases(Path(here) / name)


def config_groups(dirs: Sequence[Path]) -> set[str]:
    """Names of the config groups: sub-folders of the config folders and the groups of
    hydra's ConfigStore."""
    groups = {p.name for d in dirs for p in d.iterdir() if p.is_dir() and p.name[0] not in "._"}
    groups |= {k for k, v in ConfigStore.instance().repo.items() if isinstance(v, dict)}
    return groups


def _check_group_overrides(overrides: Sequence[str], dirs: Sequence[Path]) -> None:
    """Refuse a config-group override that is not one preset name: hydra merges a list
    (``model=[tiny,paper]``) silently and fails with a traceback on ``model=nan``."""
    groups = config_groups(dirs)
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException:
        return  # reported, with a hint, by compose
    for ov in parsed:
        if ov.key_or_group not in groups or ov.is_delete():
            continue
        value = ov.value()
        if isinstance(value, str) and ov.value_type == ValueType.ELEMENT:
            continue
        options = ", ".join(group_options(ov.key_or_group, dirs))
        given = ov.input_line.split("=", 1)[-1] if ov.input_line else repr(value)
        raise UserError(
            f"{ov.key_or_group}={given}: config group {ov.key_or_group} takes one preset "
            f"name; choose one of: {options}"
        )


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
        names = ", ".join(group_options(group, dirs))
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
    extra, overrides = split_config_dirs(overrides)
    dirs = config_dirs(extra)
    name = name or schema.__name__
    register_config(name, schema)
    for ov in overrides:
        if "=" not in ov:
            raise UserError(f"expected key=value arguments, got {ov!r}")
    _check_keys(schema, overrides)
    _check_user_yaml(dirs)
    _check_group_overrides(overrides, dirs)
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
