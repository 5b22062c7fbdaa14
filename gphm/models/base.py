"""Self-describing checkpoints (diffusers style): ``config.json`` + ``model.safetensors``.

``config.json`` holds the class name, the config dataclass and the other constructor
arguments; ``from_pretrained`` rebuilds the module from it and loads the weights with
``strict=True``. No pickle anywhere.

Loading checks, each a one-line ``ValueError`` naming the file (and the tensor): the
config is a JSON object of the right class whose sizes fit in memory
(:func:`gphm.io.limits.check_model_config`, before anything is allocated); the weights
file is a readable safetensors file (not truncated or corrupt) that fits in memory, and
holds exactly the module's tensors, each of the module's shape and finite.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from gphm.io.atomic import atomic_output, atomic_write_text
from gphm.io.jsonfile import read_json_object
from gphm.io.limits import check_bytes, check_model_config

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "SerializableModule",
    "StateDictMismatch",
    "check_state_dict",
    "compare_state_dict",
    "dataclass_from_dict",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
T = TypeVar("T")
M = TypeVar("M", bound="SerializableModule")


def dataclass_from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Instantiate dataclass ``cls`` (nested dataclasses included) from a plain dict.

    Unknown keys and wrong types raise ``ValueError`` naming ``where``; the dataclass's
    ``__post_init__`` validation runs.
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(data))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except Exception as err:  # omegaconf raises several unrelated exception types
        raise ValueError(f"{where}: {str(err).splitlines()[0]}") from None


class SerializableModule(nn.Module):
    """Mixin for modules built as ``cls(config, **init_kwargs)``.

    Subclasses set ``config_class`` and call ``self._record_init(config, **kwargs)``
    in ``__init__`` with the JSON-able constructor arguments.
    """

    config_class: ClassVar[type]

    def _record_init(self, config: Any, **kwargs: Any) -> None:
        self.config = config
        self._init_kwargs = kwargs

    def describe(self) -> dict[str, Any]:
        """The JSON-able description written to ``config.json``."""
        return {
            "class": type(self).__name__,
            "config": dataclasses.asdict(self.config),
            "init_kwargs": self._init_kwargs,
            "num_parameters": sum(p.numel() for p in self.parameters()),
        }

    def save_pretrained(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_output(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp))
        desc = self.describe() | ({"extra": extra} if extra else {})
        atomic_write_text(directory / CONFIG_NAME, json.dumps(desc, indent=2) + "\n")
        return directory

    @classmethod
    def read_description(cls, directory: str | Path) -> dict[str, Any]:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file() and not path.is_dir():
            raise FileNotFoundError(f"{path}: no model config (expected {CONFIG_NAME})")
        desc = read_json_object(path, "model config")
        if desc.get("class") != cls.__name__:
            raise ValueError(f"{path}: holds a {desc.get('class')!r}, expected {cls.__name__!r}")
        for key in ("config", "init_kwargs"):
            if not isinstance(desc.get(key, {}), dict):
                raise ValueError(f"{path}: '{key}' must be a JSON object")
        return desc

    @classmethod
    def from_pretrained(
        cls: type[M], directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> M:
        """Rebuild the module from ``directory`` (``config.json`` + ``model.safetensors``),
        checked as the module docstring says."""
        directory = Path(directory)
        desc = cls.read_description(directory)
        config_path = directory / CONFIG_NAME
        check_model_config(desc, str(config_path))
        config = dataclass_from_dict(cls.config_class, desc.get("config", {}), str(config_path))
        try:
            model = cls(config, **desc.get("init_kwargs", {}))
        except TypeError as err:  # init_kwargs that the constructor does not take
            raise ValueError(
                f"{config_path}: init_kwargs do not fit {cls.__name__} ({err})"
            ) from None
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: missing model weights")
        check_bytes(weights.stat().st_size, f"loading {weights}")
        try:
            state = load_file(str(weights), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"{weights}: not a readable safetensors file, truncated or corrupt ({reason})"
            ) from None
        check_state_dict(state, model.state_dict(), str(weights), cls.__name__)
        model.load_state_dict(state, strict=True)
        return model.to(map_location)


@dataclasses.dataclass(frozen=True)
class StateDictMismatch:
    """How a state dict differs from the one a module expects; falsy when it fits."""

    missing: list[str]  # keys of ``expected`` not in ``state`` (``expected``'s order)
    unexpected: list[str]  # keys of ``state`` not in ``expected`` (``state``'s order)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, got, expected)
    nonfinite: list[tuple[str, int, int]]  # (key, non-finite count, numel)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes or self.nonfinite)


def compare_state_dict(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], finite: bool = True
) -> StateDictMismatch:
    """The one comparison of loaded weights with a module's ``state_dict()`` (model
    weights, training checkpoints, VGG/LPIPS backbones): keys, shapes, and with
    ``finite`` the NaN/inf count of every floating tensor of a fitting shape."""
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]  # fmt: skip
    nonfinite = []
    for key in expected if finite else ():
        got = state.get(key)
        if got is not None and (got.is_floating_point() or got.is_complex()):
            bad = int((~torch.isfinite(got)).sum())
            if bad:
                nonfinite.append((key, bad, got.numel()))
    return StateDictMismatch(
        missing=[k for k in expected if k not in state],
        unexpected=[k for k in state if k not in expected],
        shapes=shapes,
        nonfinite=nonfinite,
    )


def check_state_dict(
    state: dict[str, Tensor], expected: dict[str, Tensor], where: str, owner: str
) -> None:
    """Raise ``ValueError`` naming ``where`` and the first offending tensor when ``state``
    has missing or unexpected keys, a shape other than ``expected``'s, or non-finite values.
    """
    found = compare_state_dict(state, expected)
    missing, unexpected = found.missing, found.unexpected
    if missing or unexpected:
        parts = []
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            parts.append(f"missing {', '.join(missing[:3])}{more}")
        if unexpected:
            more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
            parts.append(f"unexpected {', '.join(unexpected[:3])}{more}")
        raise ValueError(f"{where}: weights do not match {owner} ({'; '.join(parts)})")
    if found.shapes:
        key, got, want = found.shapes[0]
        raise ValueError(
            f"{where}: tensor {key} has shape {list(got)}, {owner} expects {list(want)} "
            "(weights from another config?)"
        )
    if found.nonfinite:
        key, bad, numel = found.nonfinite[0]
        raise ValueError(f"{where}: tensor {key} has {bad} non-finite values (NaN/inf) of {numel}")
