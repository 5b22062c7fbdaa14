"""A fitted avatar: what single-image fitting produces and rendering/editing accept.

On disk (one directory, written atomically)::

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from gphm.io.atomic import atomic_directory
from gphm.models.gaussian_head import GaussianHead
from gphm.models.guidance import GuidanceModel

__all__ = ["Avatar", "is_avatar_dir"]

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
    def save(self, directory: str | Path, overwrite: bool = True) -> Path:
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
        with atomic_directory(directory, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_NAME))
            (tmp / JSON_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> Avatar:
        d = Path(directory)
        jpath, wpath = d / JSON_NAME, d / WEIGHTS_NAME
        if not jpath.is_file() or not wpath.is_file():
            raise FileNotFoundError(f"{d}: not an avatar (expected {JSON_NAME} and {WEIGHTS_NAME})")
        try:
            meta = json.loads(jpath.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{jpath}: invalid JSON ({err})") from None
        if meta.get("class") != "Avatar" or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{jpath}: not an avatar of format {FORMAT_VERSION} (class "
                f"{meta.get('class')!r}, version {meta.get('format_version')!r})"
            )
        t = load_file(str(wpath))
        missing = [k for k in ("z_id", "z_exp", "head_R", "head_T", "K") if k not in t]
        if missing:
            raise ValueError(f"{wpath}: missing tensors {missing}")
        f_col = {k[len("f_col.") :]: v for k, v in t.items() if k.startswith("f_col.")}
        return cls(
            checkpoint=meta["checkpoint"], model_class=meta["model_class"], z_id=t["z_id"],
            z_exp=t["z_exp"], head_R=t["head_R"], head_T=t["head_T"],
            head_scale=float(meta["head_scale"]), K=t["K"], image_size=int(meta["image_size"]),
            point_offsets=t.get("point_offsets"), f_col=f_col or None,
            report=meta.get("report", {}),
        )  # fmt: skip
