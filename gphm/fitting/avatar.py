"""A fitted avatar: what single-image fitting produces and rendering/editing accept.

On disk (one directory, written atomically; an existing one is replaced only with
``overwrite=True``, and :meth:`Avatar.load` checks every field)::

    avatar.json          {"class": "Avatar", "format_version", "checkpoint", "model_class",
                          "head_scale", "image_size", "report", ...}
    avatar.safetensors   z_id [Did], z_exp [Dexp], head_R [3, 3], head_T [3], K [3, 3],
                         optional point_offsets [N, 3] and f_col.* (fine-tuned colour MLP)

The avatar refers to the trained run by path (``checkpoint``); the model itself is not
copied. ``head_R``/``head_T`` place the head in the input camera's frame (the camera is
the world origin, looking down +z) and ``K`` is that camera at ``image_size`` pixels.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from gphm.io.atomic import atomic_directory
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel

__all__ = ["Avatar", "AvatarExistsError", "is_avatar_dir"]

FORMAT_VERSION = 1
JSON_NAME = "avatar.json"
WEIGHTS_NAME = "avatar.safetensors"


def is_avatar_dir(path: str | Path) -> bool:
    return (Path(path) / JSON_NAME).is_file()


@dataclass
class Avatar:
    checkpoint: str
    """Run directory of the model the avatar was fitted with."""
    model_class: str
    z_id: Tensor  # [Did]
    z_exp: Tensor  # [Dexp]
    head_R: Tensor  # [3, 3] canonical -> input camera
    head_T: Tensor  # [3]
    head_scale: float
    K: Tensor  # [3, 3] input camera at image_size pixels
    image_size: int
    point_offsets: Tensor | None = None  # [N, 3] per-Gaussian X_can offsets (phase 2)
    f_col: dict[str, Tensor] | None = None  # fine-tuned f_col state (phase 2)
    report: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ model
    def personalised(self, model: GuidanceModel | GaussianHead) -> GuidanceModel | GaussianHead:
        """A copy of ``model`` with this avatar's fine-tuned f_col (``model`` unchanged)."""
        if type(model).__name__ != self.model_class:
            raise ValueError(
                f"the avatar was fitted with a {self.model_class}, got a {type(model).__name__}"
            )
        if self.point_offsets is not None and self.point_offsets.shape[0] != model.num_points:
            raise ValueError(
                f"the avatar has offsets for {self.point_offsets.shape[0]} Gaussians, the "
                f"model has {model.num_points}: it was fitted with another checkpoint"
            )
        if self.f_col is None:
            return model
        out = copy.deepcopy(model)
        out.f_col.load_state_dict(self.f_col)
        return out

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the avatar directory atomically. An existing non-empty ``directory`` is
        replaced only with ``overwrite=True`` (the user's ``overwrite=true``), otherwise
        :class:`AvatarExistsError`; an empty one is filled."""
        d = Path(directory)
        if d.is_dir() and any(d.iterdir()) and not overwrite:
            raise AvatarExistsError(
                f"{d} already exists and is not empty; pass overwrite=true to replace it"
            )
        tensors = {"z_id": self.z_id, "z_exp": self.z_exp, "head_R": self.head_R,
                   "head_T": self.head_T, "K": self.K}  # fmt: skip
        if self.point_offsets is not None:
            tensors["point_offsets"] = self.point_offsets
        for k, v in (self.f_col or {}).items():
            tensors[f"f_col.{k}"] = v
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "class": "Avatar",
            "format_version": FORMAT_VERSION,
            "checkpoint": str(Path(self.checkpoint).resolve()),
            "model_class": self.model_class,
            "head_scale": float(self.head_scale),
            "image_size": int(self.image_size),
            "report": self.report,
        }
        # An empty directory holds nothing to lose: replace it like a new path.
        with atomic_directory(d, overwrite=overwrite or d.is_dir()) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_NAME))
            (tmp / JSON_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return d

    @classmethod
    def load(
        cls, directory: str | Path, model: GuidanceModel | GaussianHead | None = None
    ) -> Avatar:
        """Read an avatar directory, checking every field: JSON types, tensor shapes
        (against ``model`` too when given: code sizes, Gaussian count, f_col weights) and
        that every tensor is finite. A damaged file raises ``ValueError`` naming the file
        and the field."""
        d = Path(directory)
        jpath, wpath = d / JSON_NAME, d / WEIGHTS_NAME
        if not jpath.is_file() or not wpath.is_file():
            raise FileNotFoundError(f"{d}: not an avatar (expected {JSON_NAME} and {WEIGHTS_NAME})")
        try:
            meta = json.loads(jpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{jpath}: invalid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{jpath}: expected a JSON object, got {type(meta).__name__}")
        if meta.get("class") != "Avatar" or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{jpath}: not an avatar of format {FORMAT_VERSION} (class "
                f"{meta.get('class')!r}, version {meta.get('format_version')!r})"
            )
        _check_meta(jpath, meta)
        try:
            t = load_file(str(wpath))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{wpath}: unreadable safetensors file ({err})") from None
        _check_tensors(wpath, t, model, meta["model_class"])
        f_col = {k[len("f_col.") :]: v for k, v in t.items() if k.startswith("f_col.")}
        return cls(
            checkpoint=meta["checkpoint"], model_class=meta["model_class"], z_id=t["z_id"],
            z_exp=t["z_exp"], head_R=t["head_R"], head_T=t["head_T"],
            head_scale=float(meta["head_scale"]), K=t["K"], image_size=int(meta["image_size"]),
            point_offsets=t.get("point_offsets"), f_col=f_col or None,
            report=meta.get("report", {}),
        )  # fmt: skip


class AvatarExistsError(FileExistsError, ValueError):
    """The avatar directory exists and ``overwrite`` was not asked for. A ``ValueError``
    too, so that CLIs turn it into their one-line bad-input error."""


def _check_meta(jpath: Path, meta: dict[str, Any]) -> None:
    for key, kind in (("checkpoint", str), ("model_class", str)):
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"{jpath}: field {key!r} must be a string, got {meta.get(key)!r}")
    scale, size = meta.get("head_scale"), meta.get("image_size")
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not (math.isfinite(scale) and scale > 0)
    ):
        raise ValueError(f"{jpath}: field 'head_scale' must be a finite number > 0, got {scale!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{jpath}: field 'image_size' must be an integer >= 1, got {size!r}")
    if not isinstance(meta.get("report", {}), dict):
        raise ValueError(f"{jpath}: field 'report' must be a JSON object")


def _check_tensors(
    wpath: Path, t: dict[str, Tensor], model: GuidanceModel | GaussianHead | None, model_class: str
) -> None:
    missing = [k for k in ("z_id", "z_exp", "head_R", "head_T", "K") if k not in t]
    if missing:
        raise ValueError(f"{wpath}: missing tensors {missing}")
    expected: dict[str, tuple[int | None, ...]] = {
        "z_id": (None,), "z_exp": (None,), "head_R": (3, 3), "head_T": (3,), "K": (3, 3),
        "point_offsets": (None, 3),
    }  # fmt: skip
    if model is not None:
        if type(model).__name__ != model_class:
            raise ValueError(
                f"{wpath.parent / JSON_NAME}: field 'model_class' is {model_class!r}, the "
                f"checkpoint holds a {type(model).__name__}"
            )
        expected["z_id"] = (model.identity_codes.config.dim,)
        expected["z_exp"] = (model.expression_codes.config.dim,)
        if isinstance(model, GaussianHead):
            expected["point_offsets"] = (model.num_points, 3)
        elif "point_offsets" in t:
            raise ValueError(f"{wpath}: field 'point_offsets' given for a {model_class}")
        f_col = model.f_col.state_dict()
        for k, v in f_col.items():
            expected[f"f_col.{k}"] = tuple(v.shape)
        stored = {k[len("f_col.") :] for k in t if k.startswith("f_col.")}
        if stored and stored != set(f_col):
            extra, lacking = sorted(stored - set(f_col)), sorted(set(f_col) - stored)
            raise ValueError(
                f"{wpath}: f_col weights do not match the model's (unexpected {extra[:3]}, "
                f"missing {lacking[:3]})"
            )
    for k, v in t.items():
        want = expected.get(k)
        if want is None and not k.startswith("f_col."):
            raise ValueError(f"{wpath}: unexpected tensor {k!r}")
        if want is not None and (
            v.dim() != len(want) or any(w is not None and w != n for w, n in zip(want, v.shape))
        ):
            shape = "[" + ", ".join("*" if w is None else str(w) for w in want) + "]"
            raise ValueError(f"{wpath}: field {k!r} has shape {list(v.shape)}, expected {shape}")
        if not v.is_floating_point():
            raise ValueError(f"{wpath}: field {k!r} must be floating point, got {v.dtype}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{wpath}: field {k!r} holds non-finite values (NaN or inf)")
