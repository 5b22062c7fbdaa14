"""Self-describing checkpoints (diffusers style): ``config.json`` + ``model.safetensors``.

``config.json`` holds the class name, the config dataclass and the other constructor
arguments; ``from_pretrained`` rebuilds the module from it and loads the weights with
``strict=True``. No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from gphm.io.atomic import atomic_output, atomic_write_text

__all__ = ["SerializableModule", "dataclass_from_dict", "CONFIG_NAME", "WEIGHTS_NAME"]

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
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no model config (expected {CONFIG_NAME})")
        try:
            desc = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON ({err})") from None
        if desc.get("class") != cls.__name__:
            raise ValueError(f"{path}: holds a {desc.get('class')!r}, expected {cls.__name__!r}")
        return desc

    @classmethod
    def from_pretrained(
        cls: type[M], directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> M:
        """Rebuild the module from ``directory`` (``config.json`` + ``model.safetensors``)."""
        directory = Path(directory)
        desc = cls.read_description(directory)
        config = dataclass_from_dict(cls.config_class, desc["config"], str(directory / CONFIG_NAME))
        model = cls(config, **desc.get("init_kwargs", {}))
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: missing model weights")
        state = load_file(str(weights), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights}: weights do not match {cls.__name__} "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.to(map_location)
